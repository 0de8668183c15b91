"""Real processes around a Kamailio switch for the tests: the switch adapter, SIPp peers, and
readers of SIPp's own statistics files (-trace_stat, -trace_counts, -trace_shortmsg, -trace_err).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from confluent_kafka import Producer

from services.broker import free_ports
from services.child_process import child_env, log_tail, stop_group
from services.settings import REPO_ROOT, Settings
from services.switch_adapter import READY_MARK
from services.system import system_tool
from streams.schema import Ack, Decision
from streams.sink import producer_config
from streams.topics import DECISIONS

SCENARIOS = REPO_ROOT / "services" / "kamailio" / "sipp"
STOP_TIMEOUT_S = 15.0
POLL_S = 0.2


tail = log_tail


def wait_for_line(path: Path, mark: str, proc: subprocess.Popen, timeout: float,
                  what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and mark in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{tail(path)}")
        time.sleep(POLL_S)
    raise RuntimeError(f"{what} not ready within {timeout:.0f}s:\n{tail(path)}")


def produce_decisions(settings: Settings, decisions: Iterable[Decision]) -> None:
    producer = Producer(producer_config(settings))
    for d in decisions:
        producer.produce(DECISIONS.name, key=d.number.encode(), value=d.encode())
    assert producer.flush(30) == 0


def acks_of(messages) -> list[Ack]:
    return [Ack.decode(m.value()) for m in messages if m.value() is not None]


@dataclass
class AdapterProcess:
    """``dialguard switch-adapter`` as a child process, tuned to retry fast."""

    settings: Settings
    home: Path
    rpc_url: str
    switch: str
    extra_env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = 0
    #: Extra command-line arguments (``--log-only``).
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        if not self.metrics_port:
            self.metrics_port = free_ports(1)[0]

    @property
    def log_path(self) -> Path:
        return self.home / "switch-adapter.log"

    def env(self) -> dict[str, str]:
        env = child_env(self.settings, self.home, {
            "KAMAILIO_RPC_URL": self.rpc_url, "SWITCH_NAME": self.switch,
            "ADAPTER_METRICS_PORT": self.metrics_port, "ADAPTER_RETRY_ATTEMPTS": 3,
            "ADAPTER_RETRY_INITIAL_S": 0.1, "ADAPTER_RETRY_MAX_S": 0.4,
            "ADAPTER_PENDING_RETRY_S": 1})
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "switch-adapter", *self.args], stdout=log,
                stderr=subprocess.STDOUT, env=self.env(), cwd=REPO_ROOT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")[offset:]
            if READY_MARK in text:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"adapter exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(POLL_S)
        raise RuntimeError(f"adapter not ready within {timeout:.0f}s:\n{self.tail()}")

    def stop(self) -> None:
        stop_group(self.proc, STOP_TIMEOUT_S)

    def tail(self) -> str:
        return tail(self.log_path)


# --- SIPp -------------------------------------------------------------------------------------
def _sipp_base(scenario: str, port: int) -> list[str]:
    return [system_tool("sipp"), "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1",
            "-p", str(port), "-nostdin", "-trace_err", "-trace_stat", "-fd", "1",
            "-trace_counts", "-trace_shortmsg"]


@dataclass
class SippStats:
    """What SIPp itself counted for one run (its own files, read after it exited)."""

    returncode: int
    stat: dict[str, str]
    counts: dict[str, int]
    #: -trace_shortmsg rows: (epoch seconds, "S"/"R", call id, cseq, first line).
    messages: list[tuple[float, str, str, str, str]]
    errors: str
    #: -trace_msg: every message in full (UAC runs only).
    full_messages: str = ""

    @property
    def successful(self) -> int:
        return int(self.stat.get("SuccessfulCall(C)", 0))

    @property
    def failed(self) -> int:
        return int(self.stat.get("FailedCall(C)", 0))

    def received(self, code: int) -> list[tuple[float, str, str, str, str]]:
        """Final/provisional responses with this status code that SIPp received."""
        return [m for m in self.messages
                if m[1] == "R" and m[4].startswith(f"SIP/2.0 {code} ")]

    def sent(self, method: str) -> list[tuple[float, str, str, str, str]]:
        return [m for m in self.messages if m[1] == "S" and m[4].startswith(f"{method} ")]


def read_stats(workdir: Path, returncode: int) -> SippStats:
    stat: dict[str, str] = {}
    for path in workdir.glob("*_.csv"):
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        if len(lines) >= 2:
            stat = dict(zip(lines[0].split(";"), lines[-1].split(";")))
    counts: dict[str, int] = {}
    for path in workdir.glob("*_counts.csv"):
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        if len(lines) >= 2:
            head, last = lines[0].split(";"), lines[-1].split(";")
            counts = {k: int(v) for k, v in zip(head[2:], last[2:]) if k and v.isdigit()}
    messages = []
    for path in workdir.glob("*_shortmessages.log"):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) >= 7:
                messages.append((float(parts[2]), parts[3], parts[4], parts[5], parts[6]))
    errors = "\n".join(p.read_text(errors="replace") for p in workdir.glob("*_errors.log"))
    full = "\n".join(p.read_text(errors="replace") for p in workdir.glob("*_messages.log"))
    return SippStats(returncode, stat, counts, sorted(messages), errors, full)


@dataclass
class SippUas:
    """A SIPp server scenario listening on a loopback port until stopped."""

    scenario: str
    workdir: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_ports(1)[0]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "sipp.out").open("ab") as out:
            self.proc = subprocess.Popen(_sipp_base(self.scenario, self.port), cwd=self.workdir,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise RuntimeError(f"sipp {self.scenario} exited:\n{tail(self.workdir / 'sipp.out')}")

    def stop(self) -> SippStats:
        stop_group(self.proc, STOP_TIMEOUT_S)
        return read_stats(self.workdir, self.proc.returncode if self.proc else -1)


@dataclass
class SippUac:
    """A SIPp client scenario placing ``calls`` calls from an injection CSV (caller;callee;
    any further fields the scenario reads)."""

    scenario: str
    workdir: Path
    target: str
    rows: list[tuple[str, ...]]
    calls: int
    rate: float
    pause_ms: int = 0
    max_seconds: int = 120
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        csv = self.workdir / "calls.csv"
        csv.write_text("SEQUENTIAL\n" + "".join(";".join(row) + "\n" for row in self.rows))
        cmd = _sipp_base(self.scenario, 0) + [
            "-inf", str(csv), "-m", str(self.calls), "-r", str(self.rate), "-rp", "1000",
            "-timeout", f"{self.max_seconds}s", "-timeout_error", "-recv_timeout", "10s",
            "-trace_msg", self.target]
        if self.pause_ms:
            cmd[1:1] = ["-d", str(self.pause_ms)]
        with (self.workdir / "sipp.out").open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self) -> SippStats:
        assert self.proc is not None
        try:
            self.proc.wait(self.max_seconds + 30)
        except subprocess.TimeoutExpired:
            stop_group(self.proc, STOP_TIMEOUT_S)
        return read_stats(self.workdir, self.proc.returncode)

    def stop(self) -> None:
        stop_group(self.proc, STOP_TIMEOUT_S)
