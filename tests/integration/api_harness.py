"""Starts the real control API (``dialguard api``) as a child process for integration tests.

Usage::

    with ApiHarness(broker_settings, tmp_path, {"ana": "analyst", "vic": "viewer"}) as api:
        api.client("ana").put("/api/v1/policies/default", {...})
        requests to api.url + "/api/v1/..." with "Authorization: Bearer " + api.tokens["ana"]

Tokens are made here (random plaintext) and handed to the process hashed through
``DIALGUARD_API_TOKENS``, exactly like a deployment would; ``start`` returns once ``/healthz``
answers, which the API does only after its views have read the topics.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from services.api.auth import hash_token, new_token
from services.api_client import ApiClient
from services.broker import free_ports
from services.child_process import LOG_TAIL_LINES, child_env, log_tail, stop_group
from services.settings import REPO_ROOT, Settings

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.3


class ApiHarness:
    def __init__(self, settings: Settings, home: Path, roles: dict[str, str] | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.home = home
        self.roles = dict(roles or {"admin": "admin", "analyst": "analyst", "viewer": "viewer"})
        self.tokens = {name: new_token() for name in self.roles}
        self.port, self.metrics_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = dict(extra_env or {})
        self.log_path = home / "api.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = child_env(self.settings, self.home, {
            "API_HOST": "127.0.0.1", "API_PORT": self.port,
            "API_METRICS_PORT": self.metrics_port,
            "API_TOKENS": ",".join(f"{name}:{role}:{hash_token(self.tokens[name])}"
                                   for name, role in self.roles.items())})
        env.update(self.extra_env)
        return env

    def start(self) -> "ApiHarness":
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", "api"],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                         cwd=REPO_ROOT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"API exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(POLL_S)
        self.stop()
        raise RuntimeError(f"API not up within {START_TIMEOUT_S:.0f}s:\n{self.tail()}")

    def client(self, name: str) -> ApiClient:
        return ApiClient(self.url, self.tokens[name])

    def raw(self, method: str, path: str, body: bytes | None = None,
            token: str | None = None, content_type: str = "application/json"
            ) -> tuple[int, Any]:
        """(status, decoded JSON body or text) of one request, errors included."""
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        try:
            return status, orjson.loads(payload)
        except orjson.JSONDecodeError:
            return status, payload.decode(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as resp:
            return resp.read().decode()

    def stop(self) -> None:
        stop_group(self.proc, STOP_TIMEOUT_S)

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> "ApiHarness":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
