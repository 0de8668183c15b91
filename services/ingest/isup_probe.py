"""``dialguard ingest isup-json``: ISUP messages from a signalling probe, one JSON object a line.

SS7 probes (link monitors on the E1/M3UA links of a TDM switch) export decoded ISUP messages;
this is the record they must write (field names are the contract, see FORMAT below). Each
valid line goes through :class:`services.ingest.isup_calls.IsupCallTracker`, which turns the
message sequence of each circuit into attempt / answer / release / fail events; a line that is
not a valid record goes to ``signaling.events.dlq`` untouched, with the reason in its headers.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, BinaryIO, Iterable


from services.ingest.isup_calls import (MESSAGES, NAI_NAMES, NAI_UNKNOWN, REL, IsupFeed,
                                        IsupMessage, tracker_for)
from services.ingest import replay_guard
from services.ingest.sink import replay_sink
from services.settings import Settings
from streams.schema import (REASON_MISSING, REASON_NUMBER, REASON_TYPE, REASON_VALUE,
                            EventValidator, InvalidEvent, json_object)

SOURCE = "isup-json"

FORMAT = """\
record format (one JSON object per line; UTF-8; blank lines are skipped):
  ts           number   capture time of the message, epoch seconds (event time)
  msg          string   IAM | ACM | ANM | CON | REL | RLC (other Q.763 names such as CPG,
                        SAM, GRS are counted and skipped)
  opc, dpc     integer  originating / destination point code of this message (0..2^24-1)
  cic          integer  circuit identification code (0..65535)
  calling      string   IAM only: calling party number digits as signalled
  called       string   IAM only: called party number digits as signalled (no filler, no ST)
  calling_nai  string or integer, IAM only: nature of address of "calling": subscriber,
  called_nai            unknown, national, international, network (or the Q.763 value 1..5);
                        default unknown (the digits are read as dialled)
  cause        integer  REL (required) and RLC (optional): ISUP cause value 0..127
  trunk        string   optional; default "<opc>-<dpc>" of the IAM
  switch       string   optional; default --switch

  {"ts":1795420800.25,"msg":"IAM","opc":1001,"dpc":2002,"cic":17,"calling":"13800138000",
   "called":"2112345678","calling_nai":"national","called_nai":"national"}
  {"ts":1795420803.9,"msg":"REL","opc":2002,"dpc":1001,"cic":17,"cause":17}

A call is the circuit (OPC, DPC, CIC) in either direction: IAM -> attempt, ANM/CON -> answer,
REL after answer -> release (duration = REL - ANM), REL before answer -> fail with the cause
(1/28 no such number, 17 busy, 18/19 no answer, 21 rejected); ACM and RLC move the call's
state only. A line that is not such a record goes to signaling.events.dlq with the reason."""

#: Q.763 messages that are valid ISUP but carry nothing for call counting.
OTHER_MESSAGES: frozenset[str] = frozenset(
    "SAM CPG INR INF COT CCR FOT SUS RES GRS GRA CGB CGU CGBA CGUA BLO BLA UBL UBA RSC UCIC "
    "CFN FAC FAR FAA FRJ IDR IRS LPA LPP NRM OLM PAM SGM UPT UPA USR APM PRI SDN CQM CQR"
    .split())
WHY_OTHER = "isup_other"
WHY_BLANK = "blank_line"

MAX_POINT_CODE = (1 << 24) - 1  # ANSI point codes are 24 bits, ITU ones 14
MAX_CIC = 0xFFFF
MAX_CAUSE = 127


class _Skip(Exception):
    """A valid record that carries no call message (counted under ``why``)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def parse_record(raw: bytes, default_switch: str | None = None) -> IsupMessage:
    """One probe line -> :class:`IsupMessage`; raises :class:`InvalidEvent` (reason, detail)
    for a line that is not a valid record and :class:`_Skip` for other ISUP messages."""
    obj = json_object(raw)
    msg = _field(obj, "msg", str)
    if msg not in MESSAGES:
        if msg in OTHER_MESSAGES:
            raise _Skip(WHY_OTHER)
        raise InvalidEvent(REASON_VALUE, f"msg {msg!r} is not an ISUP message name")
    ts = float(_field(obj, "ts", (int, float)))
    if not math.isfinite(ts) or ts <= 0:
        raise InvalidEvent(REASON_VALUE, f"ts {obj['ts']!r} is not a positive epoch time")
    opc = _bounded(obj, "opc", MAX_POINT_CODE)
    dpc = _bounded(obj, "dpc", MAX_POINT_CODE)
    cic = _bounded(obj, "cic", MAX_CIC)
    cause = _bounded(obj, "cause", MAX_CAUSE, required=msg == REL)
    calling = _digits(obj, "calling")
    called = _digits(obj, "called")
    return IsupMessage(ts=ts, msg=msg, opc=opc, dpc=dpc, cic=cic, calling=calling,
                       called=called, calling_nai=_nai(obj, "calling_nai"),
                       called_nai=_nai(obj, "called_nai"), cause=cause,
                       trunk=_optional_str(obj, "trunk"),
                       switch=_optional_str(obj, "switch") or default_switch)


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if obj.get(name) is None:
        raise InvalidEvent(REASON_MISSING, f"field {name!r} is missing")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InvalidEvent(REASON_TYPE,
                           f"field {name!r} must be {want}, got {type(value).__name__}")
    return value


def _bounded(obj: dict[str, Any], name: str, top: int, required: bool = True) -> Any:
    if not required and obj.get(name) is None:
        return None
    value = _field(obj, name, int)
    if not 0 <= value <= top:
        raise InvalidEvent(REASON_VALUE, f"{name} {value} is not in 0..{top}")
    return value


def _digits(obj: dict[str, Any], name: str) -> str | None:
    if obj.get(name) is None:
        return None
    value = _field(obj, name, str)
    if not value.isascii() or not value.isdigit():
        raise InvalidEvent(REASON_NUMBER, f"{name} {value!r} is not a string of digits")
    return value


def _nai(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    if value is None:
        return NAI_UNKNOWN
    if isinstance(value, str) and value in NAI_NAMES:
        return NAI_NAMES[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_CAUSE:
        return value
    raise InvalidEvent(REASON_VALUE, f"{name} {value!r} is not one of {', '.join(NAI_NAMES)} "
                                     "or a Q.763 value 0..127")


def _optional_str(obj: dict[str, Any], name: str) -> str | None:
    return None if obj.get(name) is None else _field(obj, name, str)


def ingest_lines(lines: Iterable[bytes], feed: IsupFeed, label: str,
                 default_switch: str | None = None) -> None:
    """Feed every line of one input (``label`` names it in dead letters' detail)."""
    sink = feed.sink
    for number, line in enumerate(lines, start=1):
        raw = line.rstrip(b"\r\n")
        if not raw.strip():
            sink.ignore(WHY_BLANK)
            continue
        where = f"{label} line {number}"
        try:
            message = parse_record(raw, default_switch)
        except InvalidEvent as exc:
            sink.dead_letter(raw, exc.reason, f"{where}: {exc.detail}")
            continue
        except _Skip as skip:
            sink.ignore(skip.why)
            continue
        feed.message(message, raw, where)


def _open(path: str) -> BinaryIO:
    return sys.stdin.buffer if path == "-" else Path(path).open("rb")


def run(args: argparse.Namespace, settings: Settings) -> int:
    sink = replay_sink(settings, SOURCE, args.again)
    tracker = tracker_for(settings)
    feed = IsupFeed(tracker, sink, EventValidator.of(settings))
    try:
        for path in args.files:
            with _open(path) as stream:
                ingest_lines(stream, feed, "stdin" if path == "-" else path, args.switch)
    finally:
        print(f"[ingest] {tracker.summary()}", file=sys.stderr, flush=True)
        sink.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("isup-json", help="ISUP messages from a probe, JSON lines",
                       description="Replay ISUP messages exported by an SS7 probe (one JSON "
                                   "object per line) to signaling.events.",
                       epilog=FORMAT, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE", help="JSON-lines file(s); - = stdin")
    p.add_argument("--switch", default=None,
                   help="switch name put on events whose record has no 'switch'")
    replay_guard.add_arguments(p)
    p.set_defaults(ingest_func=run)
