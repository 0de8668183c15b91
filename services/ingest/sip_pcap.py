"""``dialguard ingest sip-pcap FILE...``: replay SIP from packet captures (pcap / pcapng).

tshark (Debian's 4.0) does the packet work: link layers, IPv4/IPv6, fragments, TCP reassembly
and SIP detection on any port (its SIP heuristics, given the first look at every TCP/UDP
payload so that a port registered for another protocol does not hide SIP; ``--sip-port``
forces ports it would still miss). It prints, per frame, the capture time, the source address
and the UDP payload, reassembled TCP data or SCTP chunk in hex (``-T fields``); each SIP
message then goes through the same dialog tracker as the live HEP collector, so a capture
replayed yields the events the live traffic did (event time = capture time of each frame).

Transports: UDP, TCP, WebSocket (RFC 7118: the frames are unmasked and joined here,
:func:`websocket_messages`) and SCTP (chunks that start like a SIP message). A TCP segment may
carry several SIP messages back to back; they are split with their Content-Length (RFC 3261
section 18.3 framing). Frames that hold "SIP/2.0" but that tshark did not decode as SIP are
counted, and the file's summary line names their ports (the ``--sip-port`` to add). Dialogs
still open when the last file ends are reported in the summary, not published: the capture
ended, not the call. Every file named is read (a folder: its capture files), each gets a line.
"""

from __future__ import annotations

import argparse
import binascii
import re
import subprocess
import sys
import tempfile
from collections import Counter as Tally
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from services.ingest.capture_files import FileReport, clean_tshark_errors, exit_status, read_all
from services.ingest import replay_guard
from services.ingest.sink import replay_sink
from services.ingest.sip_feed import SipFeed
from services.settings import Settings
from services.system import system_tool

SOURCE = "sip-pcap"
REASON_BAD_FRAME = "bad_frame"
#: Fields tshark prints per frame, in this order; every occurrence, joined by AGGREGATOR (the
#: last is the innermost header; data.data has one per SCTP DATA chunk).
FIELDS = ("frame.number", "frame.time_epoch", "ip.src", "ipv6.src", "udp.payload",
          "tcp.reassembled.data", "tcp.payload", "frame.protocols", "tcp.dstport",
          "udp.dstport", "data.data")
#: SIP frames, SCTP DATA (SIP over SCTP is read from the chunk bytes) and frames that hold
#: "SIP/2.0" but were not taken for SIP (the hint about --sip-port).
DISPLAY_FILTER = 'sip or sctp.data_payload_proto_id or frame contains "SIP/2.0"'
#: tshark preferences: SIP's heuristics get the first look at every TCP/UDP payload (a port
#: registered for another protocol, X11's 6000-6063 say, no longer hides SIP on it); SCTP
#: hands its chunks over as bytes.
TSHARK_PREFS = ("tcp.try_heuristic_first:TRUE", "udp.try_heuristic_first:TRUE",
                "sctp.ulp_dissection:FALSE")
AGGREGATOR = ","
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$",
                             re.IGNORECASE | re.MULTILINE)
_HEADER_END_ANY = re.compile(rb"\r?\n\r?\n")
#: The start of a SIP request or response (used on payloads tshark did not call SIP).
_SIP_START = re.compile(rb"^(?:[A-Z]{3,10} sips?:\S+ SIP/2\.0\r?\n|SIP/2\.0 \d{3} )")

# Why a frame gives no SIP message (ignored, counted).
WHY_SIP_OTHER_PORT = "sip_like_not_decoded"
WHY_SCTP_NOT_SIP = "sctp_not_sip"
WHY_NOT_SIP = "not_sip"  # "SIP/2.0" somewhere in a payload that does not start like SIP


@dataclass(slots=True)
class Frame:
    """One captured frame that holds SIP: its messages' bytes (several for a TCP segment or
    WebSocket frames carrying more than one)."""

    number: int
    ts: float
    src: str | None
    data: bytes
    messages: list[bytes] | None = None


@dataclass(frozen=True, slots=True)
class NotSip:
    """A frame that looks like SIP but was not decoded as SIP (``port`` it used), or SCTP
    DATA that is not SIP."""

    number: int
    why: str
    transport: str = ""
    port: int = 0


def tshark_command(tshark: str, path: Path, sip_ports: tuple[int, ...] = ()) -> list[str]:
    cmd = [tshark, "-n", "-r", str(path), "-Y", DISPLAY_FILTER, "-T", "fields",
           "-E", "occurrence=a", "-E", f"aggregator={AGGREGATOR}", "-E", "separator=/t"]
    for pref in TSHARK_PREFS:
        cmd += ["-o", pref]
    for port in sip_ports:
        cmd += ["-d", f"udp.port=={port},sip", "-d", f"tcp.port=={port},sip"]
    for name in FIELDS:
        cmd += ["-e", name]
    return cmd


def looks_like_sip(data: bytes) -> bool:
    """A request line or a status line at the start of the payload."""
    return _SIP_START.match(data) is not None


#: WebSocket (RFC 6455) frame header bits.
WS_FIN, WS_OPCODE, WS_MASKED, WS_LEN = 0x80, 0x0F, 0x80, 0x7F
WS_LEN16, WS_LEN64 = 126, 127
WS_CONTINUATION, WS_TEXT, WS_BINARY = 0x0, 0x1, 0x2
WS_MASK_OCTETS = 4


def websocket_messages(data: bytes) -> list[bytes]:
    """The data messages (text or binary, continuation frames joined, client masking undone)
    of the WebSocket frames in a TCP segment; control frames (ping, pong, close) are left
    out. A frame cut short ends the list: tshark reassembles what it can."""
    out: list[bytes] = []
    pending = b""
    pos = 0
    while pos + 2 <= len(data):
        first, second = data[pos], data[pos + 1]
        pos += 2
        length = second & WS_LEN
        if length == WS_LEN16:
            length, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif length == WS_LEN64:
            length, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
        key = b""
        if second & WS_MASKED:
            key, pos = data[pos:pos + WS_MASK_OCTETS], pos + WS_MASK_OCTETS
        payload = data[pos:pos + length]
        pos += length
        if len(payload) < length or (second & WS_MASKED and len(key) < WS_MASK_OCTETS):
            break
        if key:
            payload = bytes(b ^ key[i % WS_MASK_OCTETS] for i, b in enumerate(payload))
        opcode = first & WS_OPCODE
        if opcode in (WS_TEXT, WS_BINARY, WS_CONTINUATION):
            pending += payload
            if first & WS_FIN:
                out.append(pending)
                pending = b""
    return out


def parse_line(line: str) -> Frame | NotSip:
    """One line of :func:`tshark_command` output -> :class:`Frame` or :class:`NotSip`
    (ValueError if malformed)."""
    cols = line.rstrip("\n").split("\t")
    if len(cols) != len(FIELDS):
        raise ValueError(f"{len(cols)} columns, expected {len(FIELDS)}")
    chunks = [c for c in cols[-1].split(AGGREGATOR) if c]
    (number_text, epoch, ip4, ip6, udp, tcp_whole, tcp_seg, protocols, tcp_port,
     udp_port) = (c.rsplit(AGGREGATOR, 1)[-1] for c in cols[:-1])
    number = int(number_text)
    layers = protocols.split(":")
    src = ip4 or ip6 or None
    if "sctp" in layers and not udp and not tcp_seg:
        sip = [binascii.unhexlify(c) for c in chunks]
        sip = [m for m in sip if looks_like_sip(m)]
        if not sip:
            return NotSip(number, WHY_SCTP_NOT_SIP, "sctp")
        return Frame(number, float(epoch), src, b"".join(sip), messages=sip)
    hex_data = udp or tcp_whole or tcp_seg
    if not hex_data:
        raise ValueError("no UDP payload or TCP data")
    data = binascii.unhexlify(hex_data.replace(":", ""))
    if "sip" not in layers:
        if not looks_like_sip(data):
            return NotSip(number, WHY_NOT_SIP)
        transport, port = ("udp", udp_port) if udp else ("tcp", tcp_port)
        return NotSip(number, WHY_SIP_OTHER_PORT, transport, int(port or 0))
    frame = Frame(number, float(epoch), src, data)
    if "websocket" in layers:
        frame.messages = [m for ws in websocket_messages(data) for m in split_messages(ws)]
    return frame


def split_messages(data: bytes) -> list[bytes]:
    """SIP messages back to back in one stream segment, framed by Content-Length.

    A message without Content-Length (allowed over UDP) takes the rest of the data; leftover
    bytes that do not make a message are returned as the last element so that the caller
    dead-letters them rather than losing them.
    """
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        while (pos < len(data) and data[pos:pos + 1] in (b"\r", b"\n")
               and not _HEADER_END_ANY.match(data, pos)):
            pos += 1  # CRLF (or LF) keepalives between messages
        if pos >= len(data):
            break
        found = _HEADER_END_ANY.search(data, pos)
        if found is None:
            out.append(data[pos:])
            break
        end = found.start()
        match = _CONTENT_LENGTH.search(data, pos, end)
        stop = len(data) if match is None else found.end() + int(match.group(1))
        out.append(data[pos:stop])
        pos = stop
    return out


def frames(path: Path, sip_ports: tuple[int, ...] = ()
           ) -> Iterator[Frame | NotSip | tuple[str, str]]:
    """SIP frames of one capture file, streamed from tshark; (line, error) for a bad line."""
    tshark = system_tool("tshark")
    # stderr to a file, not a pipe: a capture full of malformed packets makes tshark warn a
    # lot, and a full stderr pipe nobody reads would stall it.
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(tshark_command(tshark, path, sip_ports), stdout=subprocess.PIPE,
                                stderr=errors, text=True)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if not line.strip():
                    continue
                try:
                    yield parse_line(line)
                except ValueError as exc:
                    yield line, str(exc)
        finally:
            proc.stdout.close()
            code = proc.wait()
            errors.seek(0)
            err = errors.read()
    if code != 0:
        raise RuntimeError(f"tshark could not read {path} (exit {code}): "
                           f"{clean_tshark_errors(err)}")


def port_hint(other_ports: Tally[tuple[str, int]]) -> str:
    """The summary's hint when frames looked like SIP on ports tshark did not decode."""
    parts = ", ".join(f"{n} on {t} port {p}" for (t, p), n in other_ports.most_common())
    ports = " ".join(f"--sip-port {p}" for p in sorted({p for _, p in other_ports}))
    return f"SIP-like payloads not decoded as SIP: {parts}; to read them add {ports}"


def ingest_file(path: Path, feed: SipFeed, switch: str | None,
                sip_ports: tuple[int, ...] = (), report: FileReport | None = None) -> int:
    """Every SIP message of one capture into ``feed``; returns the number of SIP frames."""
    count = 0
    other_ports: Tally[tuple[str, int]] = Tally()
    for item in frames(path, sip_ports):
        if isinstance(item, NotSip):
            feed.sink.ignore(item.why)
            if item.why == WHY_SIP_OTHER_PORT:
                other_ports[(item.transport, item.port)] += 1
            continue
        count += 1
        if isinstance(item, tuple):
            line, error = item
            feed.sink.dead_letter(line.encode(), REASON_BAD_FRAME, f"{path.name}: {error}")
            continue
        messages = item.messages if item.messages is not None else split_messages(item.data)
        for message in messages:
            feed.payload(message, item.ts, message, trunk=item.src, switch=switch,
                         origin=f"{path.name} frame {item.number}")
    if report is not None:
        report.frames = count
        if other_ports:
            report.notes.append(port_hint(other_ports))
        elif not count:
            report.notes.append("no SIP in it (no SIP over UDP, TCP, WebSocket or SCTP)")
    return count


def run(args: argparse.Namespace, settings: Settings) -> int:
    sink = replay_sink(settings, SOURCE, args.again)
    feed = SipFeed.for_settings(settings, sink)
    ports = tuple(args.sip_port or ())

    def read(path: Path, report: FileReport) -> None:
        ingest_file(path, feed, args.switch or settings.sip_switch or path.stem, ports, report)

    try:
        reports = read_all(args.files, sink, read, "SIP frames")
        feed.expire(feed.latest_ts)  # what timed out within the capture
    finally:
        print(f"[ingest] {feed.summary()}", file=sys.stderr, flush=True)
        sink.close()
    return exit_status(reports)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sip-pcap", help="SIP from pcap/pcapng captures (offline replay, through tshark)",
        description="Replay the SIP traffic of packet captures (pcap or pcapng; SIP over UDP, "
                    "TCP, WebSocket or SCTP, on any port tshark's SIP heuristics recognise) to "
                    "signaling.events: dialogs are followed by Call-ID exactly like the live "
                    "HEP collector does, event time is each frame's capture time. Needs tshark "
                    "(Debian package, installed on first use). Unusable SIP goes to "
                    "signaling.events.dlq.",
        epilog="Each file gets a line: SIP frames, events, dead letters and skips with their "
               "reasons, and a hint naming the ports of payloads that look like SIP but were "
               "not decoded (add them with --sip-port). Bare LF line ends, bytes that are not "
               "UTF-8 and unbracketed IPv6 hosts are repaired, not dead-lettered. Every file "
               "is read even after a bad one; a folder is read for its capture files. Exit "
               "status 1 if a file could not be read (missing, empty, not a capture, cut).")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="capture files or folders of them, replayed in order")
    p.add_argument("--switch", default=None, help="switch name stamped on the events "
                   "(default DIALGUARD_SIP_SWITCH, else the file name without extension)")
    p.add_argument("--sip-port", type=int, action="append", metavar="PORT",
                   help="decode this UDP/TCP port as SIP even when tshark's heuristics do not "
                        "(repeatable)")
    replay_guard.add_arguments(p)
    p.set_defaults(ingest_func=run)
