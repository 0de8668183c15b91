"""``dialguard run`` (``make run``) as a newcomer gets it: every part started for real, decisions
printed, and Ctrl-C stops exactly what it started.

The run gets a home of its own and free ports for everything (its own broker too, with the
shared jars linked in), so it never touches a ``make run`` on the same machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from services.broker import free_ports
from services.kamailio_process import rpc_call
from services.runner import ADMIN_TOKEN_FILE, CHILDREN
from services.settings import ENV_PREFIX, REPO_ROOT
from services.switch_adapter import READY_MARK
from tests.integration.conftest import shared_libs_dir

pytestmark = pytest.mark.integration

BANNER = "dialguard is running on the embedded default"
#: ``[12:00:01 event time] BLOCK      8613...``: one printed decision.
DECISION_LINE = re.compile(r"^\[\d\d:\d\d:\d\d event time\] (LABEL|RATE_LIMIT|BLOCK|UNBLOCK)",
                           re.M)
START_TIMEOUT_S = 120.0
DECISION_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 120.0


def _wait_for(what: str, check, timeout: float, log: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    text = log.read_text(errors="replace") if log.exists() else ""
    raise AssertionError(f"{what} not seen within {timeout:.0f}s (run exit {proc.poll()}):\n"
                         f"{text[-4000:]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dialguard_run_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "kafka").mkdir(parents=True)
    (home / "kafka" / "libs").symlink_to(shared_libs_dir())
    (broker, controller, metrics, api, api_metrics, hep, ingest_metrics, adapter_metrics,
     sip, rpc) = free_ports(10)
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update({f"{ENV_PREFIX}{name}": str(value) for name, value in {
        "HOME": home, "BROKER_PORT": broker, "CONTROLLER_PORT": controller,
        "KAFKA_BOOTSTRAP": f"127.0.0.1:{broker}", "TOPIC_PARTITIONS": 2, "BROKER_HEAP": "512m",
        "METRICS_PORT": metrics, "API_PORT": api, "API_METRICS_PORT": api_metrics,
        "HEP_PORT": hep, "INGEST_METRICS_PORT": ingest_metrics,
        "ADAPTER_METRICS_PORT": adapter_metrics, "KAMAILIO_SIP_PORT": sip,
        "KAMAILIO_RPC_URL": f"http://127.0.0.1:{rpc}/RPC"}.items()})
    env["PYTHONPATH"] = str(REPO_ROOT)
    log = tmp_path / "run.log"
    run_dir = home / "run"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "--seed", "11"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                start_new_session=True)
    pids: dict[str, int] = {}
    try:
        _wait_for("the banner", lambda: BANNER in log.read_text(errors="replace"),
                  START_TIMEOUT_S, log, proc)
        banner = log.read_text(errors="replace")
        assert "LOG ONLY" not in banner, "Kamailio is installed here: the switch must be real"
        pids = {name: int((run_dir / f"{name}.pid").read_text()) for name in CHILDREN}
        assert all(_alive(pid) for pid in pids.values()), pids

        # The switch: Kamailio answers JSON-RPC; its adapter rebuilt and drives it.
        assert rpc_call(f"http://127.0.0.1:{rpc}/RPC", "core.version")
        adapter_log = run_dir / "switch-adapter.log"
        _wait_for("the switch adapter", lambda: adapter_log.exists() and READY_MARK in
                  adapter_log.read_text(errors="replace"), START_TIMEOUT_S, log, proc)
        assert f"kamailio http://127.0.0.1:{rpc}/RPC" in adapter_log.read_text()

        # The console and API, with the admin token the banner points to.
        token = (run_dir / ADMIN_TOKEN_FILE).read_text().strip()
        assert token in banner

        def api_up() -> bool:
            req = urllib.request.Request(f"http://127.0.0.1:{api}/api/v1/whoami",
                                         headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(req, timeout=2) as resp:
                    return json.loads(resp.read())["role"] == "admin"
            except OSError:
                return False

        _wait_for("the control API", api_up, START_TIMEOUT_S, log, proc)

        def scrapes(port: int, name: str) -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return name in r.read().decode()
            except OSError:
                return False

        _wait_for("the HEP collector's metrics",
                  lambda: scrapes(ingest_metrics, "dialguard_ingest_"), START_TIMEOUT_S, log,
                  proc)

        # Simulated traffic -> worker -> decisions printed in the terminal.
        _wait_for("a printed decision",
                  lambda: DECISION_LINE.search(log.read_text(errors="replace")) is not None,
                  DECISION_TIMEOUT_S, log, proc)
        assert scrapes(metrics, "dialguard_events_total")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            for pid in pids.values():
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise
    text = log.read_text(errors="replace")
    assert rc == 0, text[-3000:]
    left = [name for name, pid in pids.items() if _alive(pid)]
    assert not left, f"still running after Ctrl-C: {left}\n{text[-3000:]}"
    assert not any((run_dir / f"{name}.pid").exists() for name in CHILDREN)
    for name in CHILDREN:
        assert f"stopped {name}" in text or f"killed {name}" in text, name
