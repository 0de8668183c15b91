"""Real Kamailio siptrace output: a Kamailio proxy mirrors SIP calls as HEPv3 to a UDP socket.

Used two ways:

* the integration test runs :func:`record` live and feeds what Kamailio sent to the collector;
* ``python tests/integration/kamailio_trace.py tests/fixtures/sip`` regenerates the committed
  fixtures (``kamailio_calls.hep``: the HEP packets back to back, exactly as received;
  ``kamailio_calls.pcap``: the same SIP traffic captured on loopback by dumpcap, needs root),
  so unit tests decode real Kamailio bytes without Kamailio.

Kamailio (Debian 5.6.3) runs in the foreground (``-DD -E``) on free loopback ports as a
stateful record-routing proxy with ``siptrace`` in ``trace_mode`` 1 (every message it receives
or sends is mirrored over HEPv3 to ``duplicate_uri``). The two ends of the calls are plain UDP
sockets driven by :class:`Phone`, a scripted user agent (SIP text built here, parsed with
sipmessage). The calls cover what the dialog tracker must tell apart: answered with BYE from
either side, busy, CANCEL, unallocated number, an INVITE retransmission, an OPTIONS ping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sipmessage import Message, Request, Response  # noqa: E402

from services.broker import free_ports  # noqa: E402
from services.system import system_tool  # noqa: E402

HOST = "127.0.0.1"
MODULES_DIR = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
READY_TIMEOUT_S = 20.0
REPLY_TIMEOUT_S = 5.0
#: The capture agent id Kamailio stamps on every packet (chunk 12).
CAPTURE_ID = 2024
#: A SHAKEN PASSporT (header.payload.signature, RFC 8225/8588) with attest "A"; the signature
#: is not real, dialguard reads the claim without verifying it.
IDENTITY_A = (
    "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jZXJ0"
    "LmV4YW1wbGUub3JnL3NoYWtlbi5wZW0ifQ.eyJhdHRlc3QiOiJBIiwiZGVzdCI6eyJ0biI6WyI4NjEzOTAwMTM5"
    "MDAxIl19LCJpYXQiOjE3OTU0MjA4MDAsIm9yaWciOnsidG4iOiI4NjEzODAwMTM4MDk5In0sIm9yaWdpZCI6IjEy"
    "M2U0NTY3LWU4OWItMTJkMy1hNDU2LTQyNjY1NTQ0MDAwMCJ9.c2lnbmF0dXJlLW5vdC1jaGVja2Vk"
    ";info=<https://cert.example.org/shaken.pem>;alg=ES256;ppt=shaken")

KAMAILIO_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
disable_tcp=yes
auto_aliases=no
listen=udp:{host}:{sip_port}
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "xlog.so"
loadmodule "siptrace.so"
modparam("siptrace", "duplicate_uri", "sip:{host}:{hep_port}")
modparam("siptrace", "trace_to_database", 0)
modparam("siptrace", "hep_mode_on", 1)
modparam("siptrace", "hep_version", 3)
modparam("siptrace", "hep_capture_id", {capture_id})
modparam("siptrace", "trace_on", 1)
modparam("siptrace", "trace_mode", 1)

request_route {{
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{ t_relay(); }}
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "Alive"); exit; }}
    record_route();
    $du = "sip:{host}:{callee_port}";
    t_relay();
}}
"""


@dataclass
class Phone:
    """One end of the calls: a UDP socket that sends SIP text to Kamailio and waits for replies."""

    port: int
    proxy: tuple[str, int]
    sock: socket.socket = field(init=False)
    backlog: list[Request | Response] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, self.port))

    def send(self, text: str) -> None:
        self.sock.sendto(text.replace("\n", "\r\n").encode(), self.proxy)

    def expect(self, what: str, timeout: float = REPLY_TIMEOUT_S) -> Request | Response:
        """The next message whose first word (method) or status code is ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.backlog):
                if _label(msg) == what:
                    return self.backlog.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"phone {self.port}: no {what} within {timeout}s; "
                                   f"got {[_label(m) for m in self.backlog]}")
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            self.backlog.append(Message.parse(data))

    def close(self) -> None:
        self.sock.close()


def _label(msg: Request | Response) -> str:
    return msg.method if isinstance(msg, Request) else str(msg.code)


def _reply(req: Request, code: int, phrase: str, to_tag: str, contact: str | None = None) -> str:
    """A response to ``req`` as its UAS writes it: Via, Record-Route, From, Call-ID, CSeq copied."""
    lines = [f"SIP/2.0 {code} {phrase}"]
    lines += [f"Via: {v}" for v in req.headers.getlist("Via")]
    lines += [f"Record-Route: {r}" for r in req.headers.getlist("Record-Route")]
    to = req.headers["To"]
    if ";tag=" not in to:
        to += f";tag={to_tag}"
    lines += [f"From: {req.headers['From']}", f"To: {to}", f"Call-ID: {req.call_id}",
              f"CSeq: {req.headers['CSeq']}"]
    if contact:
        lines.append(f"Contact: <{contact}>")
    lines += ["Content-Length: 0", "", ""]
    return "\n".join(lines)


class Call:
    """One call's dialog state on both phones, enough to write in-dialog requests."""

    def __init__(self, caller: Phone, callee: Phone, caller_user: str, callee_user: str,
                 pai: str | None = None, identity: str | None = None) -> None:
        self.caller, self.callee = caller, callee
        self.call_id = f"{uuid.uuid4().hex[:16]}@dialguard.test"
        self.from_tag = uuid.uuid4().hex[:8]
        self.to_tag = uuid.uuid4().hex[:8]
        self.branch = f"z9hG4bK{uuid.uuid4().hex[:12]}"
        self.caller_user, self.callee_user = caller_user, callee_user
        self.pai, self.identity = pai, identity
        self.caller_contact = f"sip:{caller_user}@{HOST}:{caller.port}"
        self.callee_contact = f"sip:{callee_user}@{HOST}:{callee.port}"
        self.routes: list[str] = []
        self.invite_at_callee: Request | None = None

    def invite_text(self) -> str:
        extra = ""
        if self.pai:
            extra += f"P-Asserted-Identity: <{self.pai}>\n"
        if self.identity:
            extra += f"Identity: {self.identity}\n"
        return (f"INVITE sip:{self.callee_user}@{HOST} SIP/2.0\n"
                f"Via: SIP/2.0/UDP {HOST}:{self.caller.port};branch={self.branch};rport\n"
                f"Max-Forwards: 70\n"
                f"From: \"Caller\" <sip:{self.caller_user}@{HOST}>;tag={self.from_tag}\n"
                f"To: <sip:{self.callee_user}@{HOST}>\n"
                f"Call-ID: {self.call_id}\n"
                f"CSeq: 1 INVITE\n"
                f"Contact: <{self.caller_contact}>\n"
                f"{extra}"
                f"Content-Length: 0\n\n")

    def invite(self, retransmit: bool = False) -> Request:
        text = self.invite_text()
        self.caller.send(text)
        if retransmit:
            time.sleep(0.05)
            self.caller.send(text)
        self.caller.expect("100")
        # Kamailio's tm absorbs a retransmission (it is only in the trace): one INVITE arrives.
        req = self.callee.expect("INVITE")
        self.invite_at_callee = req
        self.routes = req.headers.getlist("Record-Route")
        return req

    def callee_replies(self, code: int, phrase: str) -> None:
        assert self.invite_at_callee is not None
        contact = self.callee_contact if code < 300 else None
        self.callee.send(_reply(self.invite_at_callee, code, phrase, self.to_tag, contact))
        if code >= 300:
            self.callee.expect("ACK")  # hop-by-hop ACK from Kamailio's tm
        self.caller.expect(str(code))
        if code >= 300:
            self.caller.send(self._ack_for_failure())

    def _ack_for_failure(self) -> str:
        return (f"ACK sip:{self.callee_user}@{HOST} SIP/2.0\n"
                f"Via: SIP/2.0/UDP {HOST}:{self.caller.port};branch={self.branch};rport\n"
                f"Max-Forwards: 70\n"
                f"From: \"Caller\" <sip:{self.caller_user}@{HOST}>;tag={self.from_tag}\n"
                f"To: <sip:{self.callee_user}@{HOST}>;tag={self.to_tag}\n"
                f"Call-ID: {self.call_id}\nCSeq: 1 ACK\nContent-Length: 0\n\n")

    def _in_dialog(self, method: str, cseq: int, from_caller: bool) -> str:
        me = self.caller if from_caller else self.callee
        target = self.callee_contact if from_caller else self.caller_contact
        # The caller uses the Record-Route set in reverse order, the callee as received.
        routes = list(reversed(self.routes)) if from_caller else list(self.routes)
        local = (f"\"Caller\" <sip:{self.caller_user}@{HOST}>;tag={self.from_tag}",
                 f"<sip:{self.callee_user}@{HOST}>;tag={self.to_tag}")
        frm, to = local if from_caller else (local[1], local[0])
        branch = f"z9hG4bK{uuid.uuid4().hex[:12]}"
        route_lines = "".join(f"Route: {r}\n" for r in routes)
        return (f"{method} {target} SIP/2.0\n"
                f"Via: SIP/2.0/UDP {HOST}:{me.port};branch={branch};rport\n"
                f"{route_lines}Max-Forwards: 70\nFrom: {frm}\nTo: {to}\n"
                f"Call-ID: {self.call_id}\nCSeq: {cseq} {method}\nContent-Length: 0\n\n")

    def answer(self) -> None:
        self.callee_replies(180, "Ringing")
        self.callee_replies(200, "OK")
        ack = self._in_dialog("ACK", 1, from_caller=True)
        self.caller.send(ack)
        self.callee.expect("ACK")

    def hangup(self, by_caller: bool) -> None:
        me, peer = (self.caller, self.callee) if by_caller else (self.callee, self.caller)
        cseq = 2 if by_caller else 1
        me.send(self._in_dialog("BYE", cseq, from_caller=by_caller))
        bye = peer.expect("BYE")
        assert isinstance(bye, Request)
        peer.send(_reply(bye, 200, "OK", self.to_tag if by_caller else self.from_tag))
        me.expect("200")

    def cancel(self) -> None:
        self.callee_replies(180, "Ringing")
        self.caller.send(f"CANCEL sip:{self.callee_user}@{HOST} SIP/2.0\n"
                         f"Via: SIP/2.0/UDP {HOST}:{self.caller.port};branch={self.branch};rport\n"
                         f"Max-Forwards: 70\n"
                         f"From: \"Caller\" <sip:{self.caller_user}@{HOST}>;tag={self.from_tag}\n"
                         f"To: <sip:{self.callee_user}@{HOST}>\n"
                         f"Call-ID: {self.call_id}\nCSeq: 1 CANCEL\nContent-Length: 0\n\n")
        self.caller.expect("200")  # Kamailio answers the CANCEL itself
        cancel = self.callee.expect("CANCEL")
        assert isinstance(cancel, Request)
        self.callee.send(_reply(cancel, 200, "OK", self.to_tag))
        self.callee_replies(487, "Request Terminated")


#: Expected outcome of :func:`run_calls`, per callee user: what the tracker must report.
EXPECTED = {
    "+8613900139001": {"kinds": ["attempt", "answer", "release"], "caller": "+8613800138099",
                       "attest": "A"},
    "+8613900139002": {"kinds": ["attempt", "fail"], "code": 486, "caller": "+8613800138000"},
    "+8613900139003": {"kinds": ["attempt", "fail"], "code": 487, "caller": "+8613800138000"},
    "+8613900139004": {"kinds": ["attempt", "fail"], "code": 404, "caller": "+8613800138000"},
    "+8613900139005": {"kinds": ["attempt", "answer", "release"], "caller": "+8613800138000"},
}
#: Seconds an answered call is held before the BYE (the durations the tracker must measure).
HOLD_S = {"+8613900139001": 1.2, "+8613900139005": 0.6}


def run_calls(caller: Phone, callee: Phone) -> None:
    """Five calls and a ping through the proxy, one after the other."""
    c = Call(caller, callee, "+8613800138000", "+8613900139001", pai="tel:+8613800138099",
             identity=IDENTITY_A)
    c.invite(retransmit=True)
    c.answer()
    time.sleep(HOLD_S["+8613900139001"])
    c.hangup(by_caller=True)

    c = Call(caller, callee, "+8613800138000", "+8613900139002")
    c.invite()
    c.callee_replies(486, "Busy Here")

    c = Call(caller, callee, "+8613800138000", "+8613900139003")
    c.invite()
    c.cancel()

    c = Call(caller, callee, "+8613800138000", "+8613900139004")
    c.invite()
    c.callee_replies(404, "Not Found")

    c = Call(caller, callee, "+8613800138000", "+8613900139005")
    c.invite()
    c.answer()
    time.sleep(HOLD_S["+8613900139005"])
    c.hangup(by_caller=False)

    caller.send(f"OPTIONS sip:{HOST} SIP/2.0\n"
                f"Via: SIP/2.0/UDP {HOST}:{caller.port};branch=z9hG4bK{uuid.uuid4().hex[:12]}\n"
                f"Max-Forwards: 70\nFrom: <sip:monitor@{HOST}>;tag={uuid.uuid4().hex[:8]}\n"
                f"To: <sip:{HOST}>\nCall-ID: {uuid.uuid4().hex}@dialguard.test\n"
                f"CSeq: 1 OPTIONS\nContent-Length: 0\n\n")
    caller.expect("200")


class Kamailio:
    """Debian's kamailio in the foreground with the tracing proxy config, on free ports."""

    def __init__(self, workdir: Path, hep_port: int, callee_port: int) -> None:
        self.sip_port = free_ports(1)[0]
        self.workdir = workdir
        self.cfg = workdir / "kamailio.cfg"
        self.cfg.write_text(KAMAILIO_CFG.format(host=HOST, sip_port=self.sip_port,
                                                modules=MODULES_DIR, hep_port=hep_port,
                                                capture_id=CAPTURE_ID, callee_port=callee_port))
        self.log = workdir / "kamailio.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        binary = system_tool("kamailio")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "-DD", "-E", "-f", str(self.cfg), "-Y", str(self.workdir),
                 "-P", str(self.workdir / "kamailio.pid")], stdout=log, stderr=log)
        deadline = time.monotonic() + READY_TIMEOUT_S
        probe = Phone(free_ports(1)[0], (HOST, self.sip_port))
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"kamailio exited {self.proc.returncode}: "
                                       f"{self.log.read_text()[-2000:]}")
                probe.send(f"OPTIONS sip:{HOST} SIP/2.0\nVia: SIP/2.0/UDP {HOST}:{probe.port};"
                           f"branch=z9hG4bK{uuid.uuid4().hex[:12]}\nMax-Forwards: 70\n"
                           f"From: <sip:probe@{HOST}>;tag=p\nTo: <sip:{HOST}>\n"
                           f"Call-ID: {uuid.uuid4().hex}@probe\nCSeq: 1 OPTIONS\n"
                           f"Content-Length: 0\n\n")
                try:
                    probe.expect("200", timeout=0.5)
                    return
                except TimeoutError:
                    continue
            raise RuntimeError(f"kamailio did not answer within {READY_TIMEOUT_S}s: "
                               f"{self.log.read_text()[-2000:]}")
        finally:
            probe.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def collect(sock: socket.socket, quiet_s: float = 1.0) -> list[bytes]:
    """Datagrams arriving on ``sock`` until none came for ``quiet_s``."""
    got: list[bytes] = []
    sock.settimeout(quiet_s)
    while True:
        try:
            data, _ = sock.recvfrom(65535)
        except socket.timeout:
            return got
        got.append(data)


def record(hep_port: int, workdir: Path, pcap: Path | None = None,
           hep_sock: socket.socket | None = None) -> tuple[list[bytes], int]:
    """Run the calls through a tracing Kamailio that sends HEP to ``hep_port``.

    With ``hep_sock`` (bound to ``hep_port``) the datagrams are collected and returned; without
    it they go to whoever listens there (a running collector). With ``pcap`` the SIP traffic is
    also captured by dumpcap on loopback. Returns (datagrams, Kamailio's SIP port).
    """
    caller_port, callee_port = free_ports(2)
    kam = Kamailio(workdir, hep_port, callee_port)
    dump: subprocess.Popen | None = None
    caller = callee = None
    try:
        kam.start()
        if hep_sock is not None:
            collect(hep_sock, quiet_s=0.5)  # the readiness probe's OPTIONS traces
        if pcap is not None:
            dump = subprocess.Popen([shutil.which("dumpcap") or "dumpcap", "-q", "-i", "lo",
                                     "-f", f"udp port {kam.sip_port} and not udp port {hep_port}",
                                     "-w", str(pcap),
                                     "-P"], stderr=subprocess.PIPE)
            time.sleep(1.5)  # dumpcap needs a moment before it captures
        caller = Phone(caller_port, (HOST, kam.sip_port))
        callee = Phone(callee_port, (HOST, kam.sip_port))
        run_calls(caller, callee)
        datagrams = collect(hep_sock) if hep_sock is not None else []
        time.sleep(0.5)
        return datagrams, kam.sip_port
    finally:
        if dump is not None:
            dump.send_signal(signal.SIGINT)
            _, err = dump.communicate(timeout=10)
            if not pcap or not pcap.exists():
                raise RuntimeError(f"dumpcap wrote no {pcap} (exit {dump.returncode}): "
                                   f"{err.decode(errors='replace')[-500:]}")
        for phone in (caller, callee):
            if phone is not None:
                phone.close()
        kam.stop()


def main(out_dir: str) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        hep_port = free_ports(1)[0]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, hep_port))
        try:
            pcap = out / "kamailio_calls.pcap" if os.geteuid() == 0 else None
            datagrams, _ = record(hep_port, Path(tmp), pcap=pcap, hep_sock=sock)
        finally:
            sock.close()
    (out / "kamailio_calls.hep").write_bytes(b"".join(datagrams))
    if pcap is not None:
        pcap.chmod(0o644)  # dumpcap writes it private
    print(f"{len(datagrams)} HEP packets -> {out / 'kamailio_calls.hep'}"
          + (f"; pcap -> {pcap}" if pcap else " (no pcap: dumpcap needs root)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/sip"))
