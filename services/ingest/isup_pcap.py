"""``dialguard ingest isup-pcap``: ISUP over M3UA (SIGTRAN) from pcap / pcapng captures.

Layers and who decodes them:

* capture file, link layer, IP (fragments reassembled), SCTP chunks: ``tshark`` (Debian
  package), which prints per frame its epoch time, the payload protocol id of every DATA chunk
  and the chunk payloads (M3UA's dissector is switched off so they come out as raw bytes);
  only DATA chunks with payload protocol id 3 (M3UA, RFC 4666) are read;
* M3UA: ``pycrate_mobile.M3UA.parse_M3UA``; DATA messages carry Protocol Data (OPC, DPC,
  service indicator, the MTP3 user's bytes); ASP management, heartbeats, SSNM are counted and
  skipped; service indicators other than 5 (ISUP), e.g. SCCP, are counted and skipped;
* ISUP (ITU-T Q.763): pycrate's message classes (as ``parse_ISUP``, reused: see
  :class:`IsupParser`). Called and calling party numbers
  are BCD with an odd/even indicator: with an odd number of address signals the last octet's
  high nibble is a filler that must not become a digit, and the called number may end with ST
  (end of pulsing, 0xF). pycrate reads the filler right only when it is 0000 and drops one
  digit too many when it meets ST, so :func:`address_signals` reads the signals from the
  octets pycrate isolated, by the indicator.

IAM / ACM / ANM / CON / REL / RLC then go through the same call tracker as probe records
(:mod:`services.ingest.isup_calls`), with the frame time as event time. A chunk that is not
valid M3UA, or a DATA message whose ISUP does not decode, goes to the DLQ (the chunk's bytes,
the file and frame number in ``dlq.detail``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Iterator

from pycrate_mobile.ISUP import ISUPTypeClasses
from pycrate_mobile.M3UA import M3UATag, parse_M3UA

from services.ingest.isup_calls import (ACM, ANM, CON, IAM, REL, RLC, IsupFeed, IsupMessage,
                                        tracker_for)
from services.ingest.sink import EventSink
from services.settings import Settings
from services.system import system_tool
from streams.schema import REASON_NUMBER, EventValidator, InvalidEvent

SOURCE = "isup-pcap"

#: SCTP payload protocol identifier of M3UA (IANA).
PPID_M3UA = 3
#: MTP3 service indicator of ISUP (Q.704 14.2.1).
SI_ISUP = 5
M3UA_CLASS_TRANSFER, M3UA_TYPE_DATA = 1, 1
#: ISUP message type codes (Q.763 table 4) of the messages the call tracker follows.
ISUP_TYPES: dict[int, str] = {1: IAM, 6: ACM, 9: ANM, 7: CON, 12: REL, 16: RLC}
#: BCD address signal "ST" (end of pulsing) in a called party number.
SIGNAL_ST = 0xF
#: Offset of the first pointer in an ISUP message (after CIC and message type).
POINTERS_AT = 3
#: Q.850 octet extension bit (clear: another octet of the group follows) and cause value.
EXT_BIT, CAUSE_MASK = 0x80, 0x7F

# Reasons (bounded set: metric label and DLQ header).
REASON_BAD_M3UA = "bad_m3ua"
REASON_BAD_ISUP = "bad_isup"
REASON_SCTP_UNPAIRED = "sctp_unpaired"

WHY_M3UA_MGMT = "m3ua_management"
WHY_NOT_ISUP = "mtp3_not_isup"
WHY_ISUP_OTHER = "isup_other"

TSHARK_FIELDS = ("frame.number", "frame.time_epoch", "sctp.data_payload_proto_id", "data.data")


class DecodeError(InvalidEvent):
    """An M3UA/ISUP payload that cannot be decoded."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """The payload of one SCTP DATA chunk with payload protocol id 3."""

    frame: int
    ts: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class BadFrame:
    frame: int
    raw: bytes
    reason: str
    detail: str


# -- tshark: pcap -> SCTP chunks ------------------------------------------------------------
def tshark_command(tshark: str, path: str) -> list[str]:
    """M3UA's dissector off, so chunk payloads come out as ``data.data``; TSN analysis off,
    because with it tshark withholds the payload of a chunk it takes for a retransmission
    (the call tracker recognises repeated messages itself, and a TSN seen in the other
    direction of a port-symmetric association, 2905 <-> 2905, is no retransmission)."""
    cmd = [tshark, "-r", path, "-n", "-Y", f"sctp.data_payload_proto_id == {PPID_M3UA}",
           "--disable-protocol", "m3ua", "-o", "sctp.tsn_analysis:FALSE", "-T", "fields", "-E", "separator=/t",
           "-E", "occurrence=a", "-E", "aggregator=,"]
    for name in TSHARK_FIELDS:
        cmd += ["-e", name]
    return cmd


def chunks_from_fields(line: str) -> list[Chunk] | BadFrame:
    """One line of tshark's field output -> the frame's M3UA chunks.

    Payload protocol ids and payloads come as two comma-separated lists in chunk order; a
    frame where they do not pair up (a fragmented SCTP user message, a payload some other
    dissector took) cannot be read chunk by chunk and is reported whole.
    """
    parts = line.rstrip("\n").split("\t")
    parts += [""] * (len(TSHARK_FIELDS) - len(parts))
    frame_text, ts_text, ppids_text, payloads_text = parts[:4]
    frame = int(frame_text)
    ppids = [int(p) for p in ppids_text.split(",") if p]
    payloads = [bytes.fromhex(h) for h in payloads_text.split(",") if h]
    if len(ppids) != len(payloads):
        return BadFrame(frame, b"".join(payloads), REASON_SCTP_UNPAIRED,
                        f"frame {frame}: {len(ppids)} DATA chunks but {len(payloads)} payloads "
                        "(fragmented SCTP message?)")
    ts = float(ts_text)
    return [Chunk(frame, ts, data) for ppid, data in zip(ppids, payloads) if ppid == PPID_M3UA]


def read_chunks(path: str, tshark: str | None = None) -> Iterator[Chunk | BadFrame]:
    """Stream the capture's M3UA chunks; raises RuntimeError if tshark cannot read it all."""
    cmd = tshark_command(tshark or system_tool("tshark"), path)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          bufsize=1) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            if line.strip():
                result = chunks_from_fields(line)
                if isinstance(result, BadFrame):
                    yield result
                else:
                    yield from result
        err = proc.stderr.read()
        code = proc.wait()
    if code != 0:
        noise = "Running as user"
        text = " ".join(ln for ln in err.splitlines() if noise not in ln).strip()
        raise RuntimeError(f"tshark could not read all of {path} (exit {code}): {text}")


# -- M3UA and ISUP --------------------------------------------------------------------------
def decode_m3ua(payload: bytes) -> tuple[int, int, int, bytes] | None:
    """(OPC, DPC, service indicator, user data) of an M3UA DATA message; None for the
    other M3UA classes (management, ASP state, SSNM); DecodeError if it is not M3UA."""
    msg, err = parse_M3UA(payload)
    if msg is None:
        raise DecodeError(REASON_BAD_M3UA, f"pycrate M3UA error {err} "
                                           f"({len(payload)} bytes)")
    header = msg[0]
    if header["Len"].get_val() != len(payload):
        raise DecodeError(REASON_BAD_M3UA, f"length field {header['Len'].get_val()} but "
                                           f"{len(payload)} bytes")
    if (header["Class"].get_val(), header["Type"].get_val()) != (M3UA_CLASS_TRANSFER,
                                                                  M3UA_TYPE_DATA):
        return None
    if err:
        raise DecodeError(REASON_BAD_M3UA, f"DATA message, pycrate M3UA error {err}")
    data = msg[1].get_prm_first(M3UATag.ProtocolData)
    # pycrate keeps a parameter it could not structure as raw bytes: a truncated one.
    if data is None or "OPC" not in getattr(data, "_by_name", ()):
        raise DecodeError(REASON_BAD_M3UA, "DATA message without a well-formed Protocol Data")
    return (data["OPC"].get_val(), data["DPC"].get_val(), data["SI"].get_val(),
            data["Data"].get_val())


def address_signals(octets: bytes, odd: bool) -> str:
    """Digits of a Q.763 BCD address: two signals an octet, low nibble first; with an odd
    number of signals the last high nibble is filler (whatever its value); ST ends the
    number; the codes 11 and 12 (operator access) and spare values are not digits."""
    nibbles = [n for b in octets for n in (b & 0x0F, b >> 4)]
    if odd and nibbles:
        nibbles.pop()
    digits = []
    for n in nibbles:
        if n == SIGNAL_ST:
            break
        if n > 9:
            raise DecodeError(REASON_NUMBER, f"address signal {n} is not a digit")
        digits.append(chr(ord("0") + n))
    return "".join(digits)


def _number(param: Any) -> tuple[str, int]:
    """(digits, nature of address) of a pycrate ISUP number parameter."""
    return (address_signals(param["Num"].get_val(), bool(param["OE"].get_val())),
            param["NAI"].get_val())


def q850_cause(octets: bytes) -> int:
    """Cause value of a Q.850 cause indicator: octet 3 (coding, location) with its extension
    bit clear is followed by the recommendation octet 3a, then octet 4 holds the cause.
    pycrate's CauseInd has no octet 3a and reads the recommendation as the cause, so the
    cause is taken from the parameter's octets here. Two octets with the bit clear (what
    some encoders, pycrate's default among them, write) can only mean octet 3 + cause."""
    if len(octets) < 2:
        raise DecodeError(REASON_BAD_ISUP, f"cause indicator of {len(octets)} octets has no "
                                           "cause value")
    cause_at = 2 if not octets[0] & EXT_BIT and len(octets) > 2 else 1
    return octets[cause_at] & CAUSE_MASK


def _rel_cause(msg: Any, data: bytes) -> int:
    """REL's mandatory variable cause indicator, located by its pointer (Q.763 1.5)."""
    start = POINTERS_AT + msg["Pointers"]["Ptr0"].get_val()
    length = data[start] if start < len(data) else 0
    return q850_cause(data[start + 1:start + 1 + length])


def _opt_cause(param: Any) -> int | None:
    """RLC's optional cause as pycrate lays it out (None if it has a recommendation octet,
    which that layout cannot place)."""
    if not param[0].get_val():
        return None
    return (param["Class"].get_val() << 4) | param["Cause"].get_val()


def _optional(msg: Any, name: str) -> Any | None:
    """An optional parameter of a parsed message, None when the message did not carry it."""
    opt = msg["Opt"]
    if name not in opt._by_name:
        return None
    wrapper = opt[name]
    return None if wrapper.get_trans() else wrapper[name]


class IsupParser:
    """``parse_ISUP`` with one message object per type, reused.

    ``parse_ISUP`` builds a new message object each time, cloning every optional-parameter
    template of the type: about 3 ms for an IAM, 1 ms for an ANM (~600 messages/s, where
    tshark reads ~35k frames/s). Parsing into a kept object costs ~0.05 ms. pycrate only
    marks the optional parameters it finds as present, so before each parse every optional
    parameter is marked absent again and unknown ones it inserted are removed; otherwise an
    IAM without a calling number would show the previous IAM's.
    """

    def __init__(self) -> None:
        self._messages: dict[int, Any] = {}

    def parse(self, data: bytes) -> Any:
        """The parsed message, or DecodeError (too short, unknown type, does not parse)."""
        if len(data) < 3:
            raise DecodeError(REASON_BAD_ISUP, f"{len(data)} bytes, shorter than CIC + type")
        kind = data[2]
        cls = ISUPTypeClasses.get(kind)
        if cls is None:
            raise DecodeError(REASON_BAD_ISUP, f"message type {kind} is not an ISUP message")
        msg = self._messages.pop(kind, None) or cls()
        if "Opt" in msg._by_name:
            opt = msg["Opt"]
            for param in list(opt._content):
                if param._name.startswith(UNKNOWN_OPTION_PREFIX):
                    opt.remove(param)
                else:
                    param.set_trans(True)
        try:
            msg.from_bytes(data)
        except Exception as exc:  # pycrate raises several types; the object is dropped
            raise DecodeError(REASON_BAD_ISUP, f"message type {kind} does not parse: "
                                               f"{type(exc).__name__}: {exc}") from None
        self._messages[kind] = msg
        return msg


#: Name pycrate gives an optional parameter it does not know (``_unk_<code>``).
UNKNOWN_OPTION_PREFIX = "_unk_"
_PARSER = IsupParser()


def decode_isup(data: bytes, ts: float, opc: int, dpc: int, switch: str | None = None,
                parser: IsupParser = _PARSER) -> IsupMessage | None:
    """An :class:`IsupMessage` for the call messages, None for other ISUP messages."""
    msg = parser.parse(data)
    name = ISUP_TYPES.get(data[2])
    if name is None:
        return None
    cic = msg["CIC"].get_val()
    if name == IAM:
        called, called_nai = _number(msg["CalledPartyNum"]["CalledPartyNum"])
        calling_param = _optional(msg, "CallingPartyNum")
        calling, calling_nai = _number(calling_param) if calling_param is not None else (None, 0)
        return IsupMessage(ts=ts, msg=IAM, opc=opc, dpc=dpc, cic=cic, calling=calling or None,
                           called=called or None, calling_nai=calling_nai,
                           called_nai=called_nai, switch=switch)
    cause = None
    if name == REL:
        cause = _rel_cause(msg, data)
    elif name == RLC:
        param = _optional(msg, "CauseInd")
        cause = _opt_cause(param) if param is not None else None
    return IsupMessage(ts=ts, msg=name, opc=opc, dpc=dpc, cic=cic, cause=cause, switch=switch)


# -- driver ---------------------------------------------------------------------------------
def ingest_chunks(chunks: Iterator[Chunk | BadFrame], feed: IsupFeed, label: str,
                  switch: str | None = None) -> None:
    sink = feed.sink
    for item in chunks:
        if isinstance(item, BadFrame):
            sink.dead_letter(item.raw, item.reason, f"{label} {item.detail}")
            continue
        try:
            decoded = decode_m3ua(item.payload)
            if decoded is None:
                sink.ignore(WHY_M3UA_MGMT)
                continue
            opc, dpc, si, data = decoded
            if si != SI_ISUP:
                sink.ignore(WHY_NOT_ISUP)
                continue
            message = decode_isup(data, item.ts, opc, dpc, switch)
        except DecodeError as exc:
            sink.dead_letter(item.payload, exc.reason,
                             f"{label} frame {item.frame}: {exc.detail}")
            continue
        if message is None:
            sink.ignore(WHY_ISUP_OTHER)
            continue
        feed.message(message, item.payload, f"{label} frame {item.frame}")


def run(args: argparse.Namespace, settings: Settings) -> int:
    sink = EventSink(settings, SOURCE)
    tracker = tracker_for(settings)
    feed = IsupFeed(tracker, sink, EventValidator.of(settings))
    failed = []
    try:
        for path in args.files:
            try:
                ingest_chunks(read_chunks(path), feed, path, args.switch)
            except RuntimeError as exc:
                failed.append(str(exc))
                print(f"[ingest] ERROR {exc}", file=sys.stderr, flush=True)
    finally:
        print(f"[ingest] {tracker.summary()}", file=sys.stderr, flush=True)
        sink.close()
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "isup-pcap", help="ISUP over M3UA/SCTP from pcap captures",
        description="Replay ISUP call signalling (IAM, ACM, ANM, CON, REL, RLC) from pcap or "
                    "pcapng captures of M3UA/SIGTRAN links to signaling.events. tshark reads "
                    "the capture and its SCTP chunks, pycrate decodes M3UA and ISUP (ITU-T "
                    "Q.763). The frame time is the event time; a call is the circuit (OPC, "
                    "DPC, CIC) in either direction.",
        epilog="Chunks that are not valid M3UA and ISUP that does not decode go to "
               "signaling.events.dlq with the reason (bad_m3ua, bad_isup, bad_number, "
               "sctp_unpaired) and the file and frame number. M3UA management, non-ISUP "
               "service indicators and other ISUP messages are counted and skipped. Exit "
               "status 1 if tshark could not read a file to its end.")
    p.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng capture(s)")
    p.add_argument("--switch", default=None, help="switch name to put on the events")
    p.set_defaults(ingest_func=run)
