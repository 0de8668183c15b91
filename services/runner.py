"""``dialguard run`` / ``make run``: the whole system on the embedded default, in one terminal.

Starts what is not running (broker, topics, default policy, worker, simulator), prints decisions
as they are published, and on Ctrl-C stops exactly what it started. Child processes write their
logs to ``.dialguard/run/``; their pids are recorded there so ``dialguard stop`` can clean up
after a run whose terminal went away.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.settings import Settings

CHILD_STOP_TIMEOUT_S = 20.0
CHILDREN = ("worker", "simulator")


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def _spawn(settings: Settings, name: str, args: list[str], to_terminal: bool) -> subprocess.Popen:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.run_dir / f"{name}.log"
    out = None if to_terminal else log_path.open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", *args], stdout=out,
                            stderr=None if to_terminal else subprocess.STDOUT,
                            start_new_session=True)
    _pid_file(settings, name).write_text(str(proc.pid))
    print(f"started {name} (pid {proc.pid})" + ("" if to_terminal else f", log {log_path}"))
    return proc


def _terminate(pid: int, name: str) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"stopped {name}")
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    print(f"killed {name} (did not stop within {CHILD_STOP_TIMEOUT_S:.0f}s)")


def _ensure_default_policy(settings: Settings) -> None:
    from services.control_client import publish_policy, read_policies
    from streams.policy import Policy

    if settings.policy_name not in read_policies(settings):
        policy = publish_policy(settings, Policy(name=settings.policy_name).to_dict(),
                                author="dialguard run", reason="initial default policy")
        print(f"published initial policy {policy.name} v{policy.version}")


def run_all(settings: Settings, simulate: bool = True, seed: int = 7,
            scenario: str = "default") -> int:
    from services.admin import ensure_topics
    from services.broker import EmbeddedBroker
    from services.watch import watch

    broker = EmbeddedBroker(settings)
    started_broker = not broker.status()["running"]
    broker.start()
    ensure_topics(settings)
    _ensure_default_policy(settings)
    procs: dict[str, subprocess.Popen] = {
        "worker": _spawn(settings, "worker", ["worker"], to_terminal=False)}
    if simulate:
        procs["simulator"] = _spawn(
            settings, "simulator",
            ["simulate", "--seed", str(seed), "--scenario", scenario], to_terminal=True)
    print(f"""
dialguard is running on the embedded default:
  broker      {settings.kafka_bootstrap} (log: {broker.status()['log']})
  worker      metrics http://127.0.0.1:{settings.metrics_port}/metrics, log {settings.run_dir / 'worker.log'}
  decisions   printed below as they are published (topic switch.control.decisions)
  simulator   {'ground truth in ' + str(settings.data_dir / 'simulation-truth.jsonl') if simulate else 'off: produce your own events to signaling.events'}
Ctrl-C stops everything this command started.
""", flush=True)
    try:
        watch(settings, from_beginning=False)
    finally:
        for name in reversed(list(procs)):
            _terminate(procs[name].pid, name)
            _pid_file(settings, name).unlink(missing_ok=True)
        if started_broker:
            broker.stop()
    return 0


def stop_all(settings: Settings) -> int:
    from services.broker import EmbeddedBroker

    for name in CHILDREN:
        path = _pid_file(settings, name)
        if path.exists():
            _terminate(int(path.read_text().strip()), name)
            path.unlink(missing_ok=True)
    EmbeddedBroker(settings).stop()
    return 0
