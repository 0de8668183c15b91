"""Headless Debian Chromium driven by Selenium, for the analyst console tests.

Selenium Manager is never asked for anything (it would try to download a driver): the driver is
Debian's ``chromedriver`` and the browser Debian's ``chromium``, both found (or installed) by
``services.system.system_tool``. The flags keep Chromium off the network beyond 127.0.0.1: this
machine refuses its background connections (updates, sync, QUIC probes), which otherwise stall
start-up or spam the log.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from services.system import system_tool

#: Every screenshot the console tests take goes here (git-ignored).
OUTPUT_DIR = Path(__file__).resolve().parents[1] / "output"
WINDOW = (1400, 1800)
PAGE_LOAD_TIMEOUT_S = 30
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions")
T = TypeVar("T")


class Browser:
    """One headless Chromium with a fresh profile; ``close`` quits it and deletes the profile."""

    def __init__(self) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="dialguard-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = system_tool("chromium")
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
        # Browser console messages (JS errors) become readable through get_log("browser").
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=system_tool("chromedriver"))
        try:
            self.driver = webdriver.Chrome(service=service, options=options)
        except Exception:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)

    # -- finding and waiting ---------------------------------------------------------------
    def find(self, element_id: str) -> WebElement:
        return self.driver.find_element(By.ID, element_id)

    def css(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def text(self, element_id: str) -> str:
        return self.find(element_id).text

    def wait_for(self, what: str, check: Callable[[], T], timeout: float = 20.0,
                 interval: float = 0.2) -> T:
        """Poll ``check`` until it returns something truthy; fail saying ``what`` was awaited
        and what the page showed (errors, JS console) so a failure is diagnosable."""
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            try:
                result = check()
                if result:
                    return result
            except (StaleElementReferenceException, WebDriverException) as exc:
                last_exc = exc
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; "
                             f"last error {last_exc!r}; page errors {self.page_errors()}; "
                             f"console {self.console_log()[-10:]}")

    def page_errors(self) -> dict[str, str]:
        """The console's visible error boxes (``.error`` elements that say something)."""
        out: dict[str, str] = {}
        for el in self.css(".error"):
            try:
                if el.text.strip():
                    out[el.get_attribute("id") or "?"] = el.text.strip()
            except StaleElementReferenceException:
                continue
        return out

    def console_log(self) -> list[str]:
        try:
            return [f"{e['level']}: {e['message']}" for e in self.driver.get_log("browser")]
        except WebDriverException:
            return []

    def js_errors(self) -> list[str]:
        """Script errors of the page. Chromium also logs every 4xx answer as SEVERE "Failed to
        load resource"; those are the API's answers the page is expected to show, not bugs."""
        return [e for e in self.console_log()
                if e.startswith("SEVERE") and "Failed to load resource" not in e]

    def screenshot(self, name: str) -> Path:
        OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        path = OUTPUT_DIR / f"{name}.png"
        # The whole page, not just the window: the decisions and the preview are both on it.
        height = self.driver.execute_script(
            "window.scrollTo(0, 0); return document.documentElement.scrollHeight")
        self.driver.set_window_size(WINDOW[0], max(WINDOW[1], int(height)))
        assert self.driver.save_screenshot(str(path)), f"screenshot {path} failed"
        print(f"\nscreenshot: {path}")
        return path

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
