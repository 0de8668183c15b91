"""A real ``dialguard worker`` run as a child process, for the benchmark and the tests.

One place knows how to start a worker beside a scratch broker (its own home, app id and ports,
production defaults otherwise), how to tell it is up, and how to stop it the way an operator
would (SIGTERM: Faust flushes state and checkpoints the model). Ports are chosen once, at
construction, so whoever scrapes the worker knows them and a restart keeps them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from services.broker import free_ports
from services.child_process import LOG_TAIL_LINES, child_env, log_tail, stop_group
from services.settings import REPO_ROOT, Settings

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.3
SCRAPE_TIMEOUT_S = 2.0
#: What Faust logs once partitions are assigned, and what the worker logs once it serves metrics.
FAUST_READY_MARK = "Ready"
METRICS_READY_MARK = "metrics on"


def scrape(port: int) -> str | None:
    """A worker's metrics text, or None while its endpoint is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=SCRAPE_TIMEOUT_S) as resp:
            return resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None


class WorkerProcess:
    def __init__(self, settings: Settings, home: Path, app_id: str,
                 extra_env: dict[str, str] | None = None,
                 command: tuple[str, ...] = ("services.cli", "worker")) -> None:
        self.settings = settings
        #: ``python -m`` arguments (the bench also runs a plain Faust agent this way).
        self.command = command
        self.home = home
        self.app_id = app_id
        self.extra_env = dict(extra_env or {})
        self.web_port, self.metrics_port = free_ports(2)
        self.log_path = home / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def env(self) -> dict[str, str]:
        """Production defaults, except where this worker lives and listens."""
        env = child_env(self.settings, self.home, {
            "APP_ID": self.app_id, "WORKER_WEB_PORT": self.web_port,
            "METRICS_PORT": self.metrics_port})
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        """Launch the process and return at once (see ``wait_ready`` / ``wait_metrics``)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", *self.command],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                         cwd=REPO_ROOT, start_new_session=True)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until this run has its partitions and serves metrics (both logged)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            text = self.log_path.read_text(errors="replace")[self._log_offset:]
            if FAUST_READY_MARK in text and METRICS_READY_MARK in text:
                return
            time.sleep(POLL_S)
        raise RuntimeError(f"worker not ready in {timeout:.0f}s:\n{self.tail()}")

    def wait_metrics(self, timeout: float = READY_TIMEOUT_S) -> str:
        """First metrics text: the worker has read its control topics and built its runtime."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            text = scrape(self.metrics_port)
            if text is not None:
                return text
            time.sleep(POLL_S)
        raise RuntimeError(f"worker metrics not up within {timeout:.0f}s:\n{self.tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"worker exited ({code}):\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM its process group (Faust flushes and checkpoints), SIGKILL if it hangs."""
        stop_group(self.proc, STOP_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL its process group: a crash, nothing flushed (fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)
