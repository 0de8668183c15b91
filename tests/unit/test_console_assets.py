"""The analyst console's static files keep the two promises a browser test cannot cover fully:
it works offline (nothing fetched from anywhere but the API's own origin) and no value from the
network is ever parsed as HTML (no innerHTML-style sinks in the script).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

CONSOLE = Path(__file__).resolve().parents[2] / "services" / "api" / "console"
#: DOM sinks that parse a string as markup (or code): the console must never use them.
HTML_SINKS = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
              "new Function", "setTimeout(\"", "setTimeout('")
EXTERNAL = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", re.I)


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.ids: list[str] = []
        self.inline_scripts = 0
        self._in_script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(a["id"] or "")
        for name in ("src", "href"):
            if a.get(name):
                self.refs.append(a[name] or "")
        self._in_script_without_src = tag == "script" and not a.get("src")

    def handle_data(self, data: str) -> None:
        if self._in_script_without_src and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script_without_src = False


def parsed() -> _Refs:
    p = _Refs()
    p.feed((CONSOLE / "index.html").read_text())
    return p


def test_every_asset_the_page_loads_is_a_console_file():
    refs = [r for r in parsed().refs if not r.startswith(("#", "data:"))]
    assert refs, "index.html loads its script and style"
    for ref in refs:
        assert ref.startswith("/console/"), f"{ref} is not served by the API's /console/ route"
        assert (CONSOLE / ref.removeprefix("/console/")).is_file(), f"{ref} does not exist"


def test_nothing_is_fetched_from_elsewhere():
    for path in CONSOLE.iterdir():
        text = path.read_text()
        found = [m.group(0) for m in EXTERNAL.finditer(text)]
        assert not found, f"{path.name} refers to other hosts: {found}"


def test_no_inline_script_and_no_html_sinks():
    assert parsed().inline_scripts == 0, "inline scripts would need a weaker CSP"
    script = (CONSOLE / "app.js").read_text()
    code = "\n".join(line for line in script.splitlines()
                     if not line.lstrip().startswith(("//", "*", "/*")))
    used = [s for s in HTML_SINKS if s in code]
    assert not used, f"app.js parses strings as markup/code: {used}"


def test_ids_the_browser_test_relies_on_are_unique_and_present():
    ids = parsed().ids
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    for required in ("token", "login", "login-error", "decisions", "offenders", "slider-label",
                     "slider-rate_limit", "slider-block", "whatif-result", "apply",
                     "apply-reason", "start-shadow", "versions", "allowlist", "fb-submit",
                     "appeals", "lookup-number", "lookup-result"):
        assert required in ids, f"#{required} missing from index.html"


def _js_function(name: str) -> str:
    """The source of one top-level function of app.js (up to the closing brace at column 0)."""
    text = (CONSOLE / "app.js").read_text()
    match = re.search(rf"^function {name}\(.*?^}}$", text, re.S | re.M)
    assert match, f"app.js has no top-level function {name}"
    return match.group(0)


def test_time_formatter_renders_what_it_cannot_format_as_text():
    """fmtTime(1e13) used to throw (RangeError: Invalid time value) and stop the console."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed")
    script = (_js_function("asText") + "\n" + _js_function("fmtTime") + "\n" +
              "console.log(JSON.stringify([1e13, 1795420800, -5, NaN, 'soon', 0, null, 8.64e12]"
              ".map((v) => { try { return fmtTime(v); } catch (e) { return 'THROWS ' + e; } })));")
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    assert json.loads(out) == ["10000000000000", "2026-11-23 08:00:00Z", "-5", "NaN", "soon",
                               "", "", "+275760-09-13 00:00:00Z"]
