"""``dialguard run`` / ``make run``: the whole system on the embedded default, in one terminal.

Starts what is not running (broker, topics, default policy, worker, control API, HEP collector,
Kamailio with its switch adapter, simulator), prints decisions as they are published, and on
Ctrl-C stops exactly what it started. Child processes write their logs to ``.dialguard/run/``;
their pids are recorded there so ``dialguard stop`` can clean up after a run whose terminal went
away. A machine where Kamailio cannot start still gets the rest, with the switch adapter in
log-only mode and a banner that says why: the detection side must not depend on a switch.
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
#: Started in this order, stopped in the reverse one.
CHILDREN = ("worker", "api", "hep-collector", "kamailio", "switch-adapter", "simulator")
#: The local admin token of ``dialguard run`` (plaintext, mode 0600), under the run folder.
ADMIN_TOKEN_FILE = "admin.token"
ADMIN_TOKEN_NAME = "local-admin"


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


def _start_kamailio(settings: Settings) -> tuple[subprocess.Popen | None, str]:
    """The embedded switch, or ``None`` and why not (the adapter then runs log-only)."""
    from services.kamailio_process import KamailioProcess
    from services.system import ToolMissing

    try:
        kam = KamailioProcess.for_settings(settings)
        kam.start()
    except (ToolMissing, RuntimeError, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"kamailio not started: {reason}")
        return None, reason
    assert kam.proc is not None
    _pid_file(settings, "kamailio").write_text(str(kam.proc.pid))
    print(f"started kamailio (pid {kam.proc.pid}), log {kam.log_path}")
    return kam.proc, ""


def _ensure_default_policy(settings: Settings) -> None:
    from services.control_client import publish_policy, read_policies
    from streams.policy import Policy

    if settings.policy_name not in read_policies(settings):
        policy = publish_policy(settings, Policy(name=settings.policy_name).to_dict(),
                                author="dialguard run", reason="initial default policy")
        print(f"published initial policy {policy.name} v{policy.version}")


def ensure_admin_token(settings: Settings) -> tuple[str, Path]:
    """The local admin token, created on first run; its plaintext is kept (0600) under the
    run folder so the console can be opened again after a restart."""
    from services.api.auth import TOKENS_FILE_MODE, TokenStore, write_private

    path = settings.run_dir / ADMIN_TOKEN_FILE
    store = TokenStore(settings.api_tokens_path, settings.api_tokens)
    token = path.read_text().strip() if path.exists() else ""
    if token and store.authenticate(token) is not None:
        # A file written by an older version (or copied around) may be 0644: an admin token
        # readable by every local user. Opening O_TRUNC keeps a file's mode; chmod does not.
        os.chmod(path, TOKENS_FILE_MODE)
        return token, path
    token = store.create(ADMIN_TOKEN_NAME, "admin", replace=True)
    write_private(path, (token + "\n").encode())
    return token, path


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _start_children(settings: Settings, procs: dict[str, subprocess.Popen], simulate: bool,
                    seed: int, scenario: str, token: str, token_path: Path,
                    broker_log: str) -> None:
    """Start everything after the broker into ``procs`` (filled as they start, so a failure
    half-way still stops what did start) and print what runs where."""
    procs["worker"] = _spawn(settings, "worker", ["worker"], to_terminal=False)
    procs["api"] = _spawn(settings, "api", ["api"], to_terminal=False)
    # The collector hears the embedded Kamailio only: its events name the switch the adapter
    # drives, so trunk decisions made from them reach that adapter (not "hep-1").
    procs["hep-collector"] = _spawn(settings, "hep-collector",
                                    ["ingest", "hep", "--switch",
                                     settings.sip_switch or settings.switch_name],
                                    to_terminal=False)
    kamailio, no_switch = _start_kamailio(settings)
    if kamailio is not None:
        procs["kamailio"] = kamailio
    procs["switch-adapter"] = _spawn(settings, "switch-adapter",
                                     ["switch-adapter", *(["--log-only"] if no_switch else [])],
                                     to_terminal=False)
    adapter_log = settings.run_dir / "switch-adapter.log"
    if no_switch:
        switch = (f"LOG ONLY, no switch attached ({no_switch}):\n"
                  f"              decisions are logged in {adapter_log}, not applied")
    else:
        switch = (f"kamailio sip:127.0.0.1:{settings.kamailio_sip_port} (udp), JSON-RPC "
                  f"{settings.kamailio_rpc_url}; blocked callers get 603 Decline,\n"
                  f"              other calls go on to {settings.kamailio_dest_uri}; adapter log "
                  f"{adapter_log}")
    if simulate:
        procs["simulator"] = _spawn(
            settings, "simulator",
            ["simulate", "--seed", str(seed), "--scenario", scenario], to_terminal=True)
    simulator = ("ground truth in " + str(settings.data_dir / "simulation-truth.jsonl")
                 if simulate else "off: produce your own events to signaling.events")
    print(f"""
dialguard is running on the embedded default:
  broker      {settings.kafka_bootstrap} (log: {broker_log})
  worker      metrics http://127.0.0.1:{settings.metrics_port}/metrics, log {settings.run_dir / 'worker.log'}
  console     http://{settings.api_host}:{settings.api_port}/  admin token {token}
              (saved in {token_path}; CLI: export DIALGUARD_API_TOKEN=$(cat {token_path}))
              API log {settings.run_dir / 'api.log'}, metrics http://127.0.0.1:{settings.api_metrics_port}/metrics
  ingest      HEPv3 collector udp+tcp {settings.hep_host}:{settings.hep_port} (Kamailio's siptrace), log {settings.run_dir / 'hep-collector.log'}
  switch      {switch}
  decisions   printed below as they are published (topic switch.control.decisions)
  simulator   {simulator}
Ctrl-C stops everything this command started.
""", flush=True)


def run_all(settings: Settings, simulate: bool = True, seed: int = 7,
            scenario: str = "default") -> int:
    from services.admin import ensure_topics
    from services.broker import EmbeddedBroker
    from services.watch import watch

    # SIGTERM (a service manager, `kill`) stops what was started, like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    broker = EmbeddedBroker(settings)
    started_broker = not broker.status()["running"]
    broker.start()
    ensure_topics(settings)
    _ensure_default_policy(settings)
    token, token_path = ensure_admin_token(settings)
    procs: dict[str, subprocess.Popen] = {}
    try:
        _start_children(settings, procs, simulate, seed, scenario, token, token_path,
                        broker.status()["log"])
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

    for name in reversed(CHILDREN):
        path = _pid_file(settings, name)
        if path.exists():
            _terminate(int(path.read_text().strip()), name)
            path.unlink(missing_ok=True)
    EmbeddedBroker(settings).stop()
    return 0
