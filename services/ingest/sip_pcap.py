"""``dialguard ingest sip-pcap FILE...``: replay SIP from packet captures (pcap / pcapng).

tshark (Debian's 4.0) does the packet work: link layers, IPv4/IPv6, fragments, TCP reassembly
and SIP detection on any port (its SIP heuristics; ``--sip-port`` forces ports it would miss).
It prints, per SIP frame, the capture time, the source address and the UDP payload or
reassembled TCP data in hex (``-T fields``); each SIP message then goes through the same dialog
tracker as the live HEP collector, so a capture replayed yields the events the live traffic did
(event time = capture time of each frame).

A TCP segment may carry several SIP messages back to back; they are split with their
Content-Length (RFC 3261 section 18.3 framing). Dialogs still open when the last file ends are
reported in the summary, not published: the capture ended, not the call.
"""

from __future__ import annotations

import argparse
import binascii
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from services.ingest.sink import EventSink
from services.ingest.sip_feed import SipFeed
from services.settings import Settings
from services.system import system_tool

SOURCE = "sip-pcap"
REASON_BAD_FRAME = "bad_frame"
#: Fields tshark prints per SIP frame, in this order (last occurrence = innermost header).
FIELDS = ("frame.number", "frame.time_epoch", "ip.src", "ipv6.src", "udp.payload",
          "tcp.reassembled.data", "tcp.payload")
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*$",
                             re.IGNORECASE | re.MULTILINE)
_HEADER_END = b"\r\n\r\n"


@dataclass(slots=True)
class Frame:
    """One captured frame that tshark recognised as SIP."""

    number: int
    ts: float
    src: str | None
    data: bytes


def tshark_command(tshark: str, path: Path, sip_ports: tuple[int, ...] = ()) -> list[str]:
    cmd = [tshark, "-n", "-r", str(path), "-Y", "sip", "-T", "fields", "-E", "occurrence=l",
           "-E", "separator=/t"]
    for port in sip_ports:
        cmd += ["-d", f"udp.port=={port},sip", "-d", f"tcp.port=={port},sip"]
    for name in FIELDS:
        cmd += ["-e", name]
    return cmd


def parse_line(line: str) -> Frame:
    """One line of :func:`tshark_command` output -> :class:`Frame` (ValueError if malformed)."""
    cols = line.rstrip("\n").split("\t")
    if len(cols) != len(FIELDS):
        raise ValueError(f"{len(cols)} columns, expected {len(FIELDS)}")
    number, epoch, ip4, ip6, udp, tcp_whole, tcp_seg = cols
    hex_data = udp or tcp_whole or tcp_seg
    if not hex_data:
        raise ValueError("no UDP payload or TCP data")
    return Frame(int(number), float(epoch), ip4 or ip6 or None,
                 binascii.unhexlify(hex_data.replace(":", "")))


def split_messages(data: bytes) -> list[bytes]:
    """SIP messages back to back in one stream segment, framed by Content-Length.

    A message without Content-Length (allowed over UDP) takes the rest of the data; leftover
    bytes that do not make a message are returned as the last element so that the caller
    dead-letters them rather than losing them.
    """
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        while data.startswith(b"\r\n", pos) and not data.startswith(_HEADER_END, pos):
            pos += 2  # CRLF keepalives between messages
        if pos >= len(data):
            break
        end = data.find(_HEADER_END, pos)
        if end < 0:
            out.append(data[pos:])
            break
        match = _CONTENT_LENGTH.search(data, pos, end)
        stop = len(data) if match is None else end + len(_HEADER_END) + int(match.group(1))
        out.append(data[pos:stop])
        pos = stop
    return out


def frames(path: Path, sip_ports: tuple[int, ...] = ()) -> Iterator[Frame | tuple[str, str]]:
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
        raise RuntimeError(f"tshark could not read {path} (exit {code}): {err.strip()[-500:]}")


def ingest_file(path: Path, feed: SipFeed, switch: str | None,
                sip_ports: tuple[int, ...] = ()) -> int:
    """Every SIP message of one capture into ``feed``; returns the number of SIP frames."""
    count = 0
    for item in frames(path, sip_ports):
        count += 1
        if isinstance(item, tuple):
            line, error = item
            feed.sink.dead_letter(line.encode(), REASON_BAD_FRAME, f"{path.name}: {error}")
            continue
        for message in split_messages(item.data):
            feed.payload(message, item.ts, message, trunk=item.src, switch=switch,
                         origin=f"{path.name} frame {item.number}")
    return count


def run(args: argparse.Namespace, settings: Settings) -> int:
    sink = EventSink(settings, SOURCE)
    feed = SipFeed.for_settings(settings, sink)
    ports = tuple(args.sip_port or ())
    try:
        for name in args.files:
            path = Path(name)
            if not path.is_file():
                raise FileNotFoundError(f"no such capture file: {path}")
            switch = args.switch or settings.sip_switch or path.stem
            n = ingest_file(path, feed, switch, ports)
            print(f"[ingest] {path}: {n} SIP frames", file=sys.stderr, flush=True)
        feed.expire(feed.latest_ts)  # what timed out within the capture
    finally:
        print(f"[ingest] {feed.summary()}", file=sys.stderr, flush=True)
        sink.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sip-pcap", help="SIP from pcap/pcapng captures (offline replay, through tshark)",
        description="Replay the SIP traffic of packet captures (pcap or pcapng, SIP over UDP "
                    "or TCP, any port tshark's SIP heuristics recognise) to signaling.events: "
                    "dialogs are followed by Call-ID exactly like the live HEP collector does, "
                    "event time is each frame's capture time. Needs tshark (Debian package, "
                    "installed on first use). Unusable SIP goes to signaling.events.dlq.")
    p.add_argument("files", nargs="+", metavar="FILE", help="capture files, replayed in order")
    p.add_argument("--switch", default=None, help="switch name stamped on the events "
                   "(default DIALGUARD_SIP_SWITCH, else the file name without extension)")
    p.add_argument("--sip-port", type=int, action="append", metavar="PORT",
                   help="decode this UDP/TCP port as SIP even when tshark's heuristics do not "
                        "(repeatable)")
    p.set_defaults(ingest_func=run)
