"""Debian's Kamailio run in the foreground with dialguard's configuration, for ``make run`` and tests.

Why a helper: the shipped ``services/kamailio/dialguard.cfg`` is parametrised by kamailio's
command-line defines (``-A NAME=VALUE``), and a Kamailio started beside a packaged one must not
touch ``/run/kamailio`` or ``/etc/kamailio``: it gets its own runtime folder and pid file, free
loopback ports, and logs to a file of its own (``-DD -E``: no fork, log to stderr). It is ready
once its JSON-RPC answers over HTTP, the interface the switch adapter drives.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.broker import free_ports
from services.child_process import LOG_TAIL_LINES, log_tail, stop_group
from services.ingest.sip_dialogs import TgrpPeers
from services.settings import REPO_ROOT, Settings

CONFIG = REPO_ROOT / "services" / "kamailio" / "dialguard.cfg"
LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.2
RPC_TIMEOUT_S = 2.0
#: Shared memory and per-process memory (MB): plenty for a test switch, small on a shared laptop.
SHM_MB = 64
PKG_MB = 8


def emergency_regex() -> str:
    """Callees the switch never screens: the emergency numbers of the policy's built-in
    allowlist, so the worker and the switch protect the same ones."""
    from streams.policy import BUILTIN_ALLOW

    numbers = sorted(n for n, why in BUILTIN_ALLOW.items() if why.startswith("emergency"))
    return "^(" + "|".join(numbers) + ")$"


def kamailio_string(value: str) -> str:
    """``value`` as a Kamailio config string token (for a ``-A NAME="..."`` define)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RpcError(RuntimeError):
    """Kamailio did not take a JSON-RPC call (down, timeout, or an error reply)."""


def rpc_call(url: str, method: str, *params: Any, timeout: float = RPC_TIMEOUT_S,
             request_id: int = 1) -> Any:
    """One JSON-RPC 2.0 call to Kamailio's ``/RPC`` (xhttp + jsonrpcs transport 1); returns
    ``result`` or raises :class:`RpcError` with Kamailio's message. Used by the switch adapter,
    ``make run`` and the tests alike."""
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params),
                       "id": request_id}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            reply = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        # jsonrpcs answers an RPC error with an HTTP error status and a JSON error body.
        text = exc.read().decode(errors="replace")
        raise RpcError(f"{method}: HTTP {exc.code} {_rpc_message(text) or exc.reason}") \
            from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RpcError(f"{method}: {getattr(exc, 'reason', exc)}") from None
    if "error" in reply:
        raise RpcError(f"{method}: {reply['error']}")
    return reply.get("result")


def _rpc_message(text: str) -> str:
    try:
        err = json.loads(text).get("error", {})
        return str(err.get("message", "")) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        return text.strip()[:200]


@dataclass
class KamailioProcess:
    """One Kamailio with ``dialguard.cfg`` on loopback; ``run_dir`` holds its pid file and log.

    Ports default to free ones chosen at construction, so callers know them before ``start``.
    """

    run_dir: Path
    hep_port: int
    dest_uri: str
    redress: str
    sip_port: int = 0
    http_port: int = 0
    unalloc_prefix: str = ""
    unalloc_uri: str = ""
    country_code: str = "86"
    capture_id: int = 1
    rate_window_s: int = 60
    prefix_min_digits: int = 5
    #: Peers whose Contact tgrp names the trunk (DIALGUARD_SIP_TGRP_PEERS); empty: none.
    tgrp_peers: str = ""
    extra_defines: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.sip_port or not self.http_port:
            self.sip_port, self.http_port = free_ports(2)

    @classmethod
    def for_settings(cls, settings: Settings, run_dir: Path | None = None) -> "KamailioProcess":
        """The switch of ``make run``: SIP on ``kamailio_sip_port``, JSON-RPC where the adapter
        looks for it (``kamailio_rpc_url``), siptrace to the HEP collector (``hep_port``)."""
        rpc = urllib.parse.urlsplit(settings.kamailio_rpc_url)
        if rpc.hostname not in (LOOPBACK, "localhost") or not rpc.port:
            raise ValueError(f"DIALGUARD_KAMAILIO_RPC_URL={settings.kamailio_rpc_url} is not a "
                             f"loopback URL with a port: the embedded Kamailio serves "
                             f"http://{LOOPBACK}:PORT/RPC")
        return cls(run_dir=run_dir or settings.run_dir / "kamailio", hep_port=settings.hep_port,
                   dest_uri=settings.kamailio_dest_uri, redress=settings.redress_contact,
                   sip_port=settings.kamailio_sip_port, http_port=rpc.port,
                   country_code=settings.country_code,
                   prefix_min_digits=settings.adapter_prefix_min_digits,
                   tgrp_peers=settings.sip_tgrp_peers)

    @property
    def rpc_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}/RPC"

    @property
    def sip_address(self) -> str:
        return f"{LOOPBACK}:{self.sip_port}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "kamailio.log"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / "kamailio.pid"

    def defines(self) -> dict[str, str]:
        """The ``-A`` defines that tie ``dialguard.cfg`` to this instance."""
        out = {
            "SIP_ADDR": LOOPBACK, "SIP_PORT": str(self.sip_port),
            "HTTP_PORT": str(self.http_port),
            "HEP_URI": kamailio_string(f"sip:{LOOPBACK}:{self.hep_port}"),
            "HEP_CAPTURE_ID": str(self.capture_id),
            "DEST_URI": kamailio_string(self.dest_uri),
            "COUNTRY_CODE": kamailio_string(self.country_code),
            "REDRESS": kamailio_string(self.redress),
            "RATE_WINDOW_S": str(self.rate_window_s),
            "PREFIX_MIN_DIGITS": str(self.prefix_min_digits),
            "EMERGENCY": kamailio_string(emergency_regex()),
            "TGRP_PEERS": kamailio_string(str(TgrpPeers.parse(self.tgrp_peers))),
        }
        if self.unalloc_prefix:
            out["UNALLOC_PREFIX"] = kamailio_string(self.unalloc_prefix)
            out["UNALLOC_URI"] = kamailio_string(self.unalloc_uri)
        out.update(self.extra_defines)
        return out

    def command(self, binary: str) -> list[str]:
        cmd = [binary, "-f", str(CONFIG), "-DD", "-E", "-m", str(SHM_MB), "-M", str(PKG_MB),
               "-P", str(self.pid_path), "-Y", str(self.run_dir), "-w", str(self.run_dir)]
        for name, value in self.defines().items():
            cmd += ["-A", f"{name}={value}"]
        return cmd

    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start Kamailio and return once its JSON-RPC answers (raises with its log if not)."""
        from services.system import system_tool

        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command(system_tool("kamailio")), stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.run_dir,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                rpc_call(self.rpc_url, "core.version")
                return
            except (urllib.error.URLError, OSError, RuntimeError, ValueError):
                time.sleep(POLL_S)
        self.stop()
        raise RuntimeError(f"kamailio RPC not up within {timeout:.0f}s:\n{self.tail()}")

    def rpc(self, method: str, *params: Any) -> Any:
        return rpc_call(self.rpc_url, method, *params)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the process group (main process and its children), SIGKILL if it hangs."""
        stop_group(self.proc, STOP_TIMEOUT_S)

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)
