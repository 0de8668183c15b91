"""``dialguard ingest cdr``: replay call detail records (CSV) as signaling events.

Carriers that cannot tap signaling yet have billing records. A CDR is a whole call after the
fact, so each becomes the events the call would have made: attempt at ``start_time``, then
answer at ``answer_time`` and release at ``end_time`` (duration = end - answer), or a fail at
``end_time`` with its cause. Two dialects:

* ``dialguard`` (default): a header row naming the columns of :data:`COLUMNS` (any order,
  unknown columns ignored, see ``dialguard ingest cdr --help``);
* ``asterisk``: Asterisk's ``cdr_csv`` Master.csv, no header, columns by position
  (accountcode, src, dst, dcontext, clid, channel, dstchannel, lastapp, lastdata, start,
  answer, end, duration, billsec, disposition, amaflags[, uniqueid, userfield]).

Times are ISO 8601 (``2026-11-23T08:00:00Z``, ``2026-11-23 08:00:00+08:00``) or epoch seconds;
times without a zone are read in ``--timezone`` (UTC by default; Asterisk writes local time).
A row that cannot become events goes to the DLQ as its CSV text with the reason.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Iterable, Iterator, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.ingest import replay_guard
from services.ingest.sink import EventSink, replay_sink
from services.settings import Settings
from streams.numbers import InvalidNumber, NumberPlan
from streams.schema import (REASON_MISSING, REASON_NUMBER, REASON_VALUE, EventValidator,
                            InvalidEvent, SignalingEvent)

SOURCE = "cdr"
DIALECTS: tuple[str, ...] = ("dialguard", "asterisk")

# Columns of the dialguard dialect.
COLUMNS: dict[str, str] = {
    "start_time": "required: when the call was placed (ISO 8601 or epoch seconds)",
    "caller": "required: calling number (+E.164, 00..., 0... national, or E.164 digits)",
    "callee": "required: called number, same forms",
    "answer_time": "when it was answered; empty = not answered",
    "end_time": "when it ended (released or failed)",
    "duration": "seconds from answer to end; used when end_time is empty",
    "disposition": "ANSWERED, NO ANSWER, BUSY, FAILED, CONGESTION, REJECTED, UNALLOCATED",
    "cause": "Q.850 / ISUP release cause (1 and 28 = no such number, 17 busy, 21 rejected)",
    "sip_code": "SIP final status instead of a cause (404, 486, 603...); makes proto sip",
    "trunk": "optional trunk or route name",
    "switch": "optional switch name (default --switch)",
    "call_id": "optional; default a hash of the row, stable across replays",
}
REQUIRED = ("start_time", "caller", "callee")
ASTERISK_COLUMNS: tuple[str, ...] = (
    "accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp",
    "lastdata", "start", "answer", "end", "duration", "billsec", "disposition", "amaflags",
    "uniqueid", "userfield")
ASTERISK_MIN_COLUMNS = 16

#: Dispositions that say the call was answered.
ANSWERED = "ANSWERED"
#: Release cause a disposition stands for when the row has no cause of its own (Q.850).
DISPOSITION_CAUSE: dict[str, int | None] = {
    "NO ANSWER": 19, "BUSY": 17, "CONGESTION": 34, "REJECTED": 21, "UNALLOCATED": 1,
    "FAILED": None,
}
MAX_CAUSE = 127
SIP_OK, MIN_SIP_FAILURE, MAX_SIP_STATUS = 200, 300, 699
#: Epoch seconds below this are not call times (a duration or a row number in the column).
MIN_EPOCH = 946_684_800  # 2000-01-01

WHY_HEADER = "cdr_header"
WHY_BLANK = "blank_line"


class CdrError(InvalidEvent):
    """A billing record that cannot become events."""


@dataclass(frozen=True, slots=True)
class Cdr:
    """One call as a billing record tells it, times as epoch seconds."""

    start: float
    caller: str
    callee: str
    answer: float | None = None
    end: float | None = None
    duration: float | None = None
    disposition: str = ""
    cause: int | None = None
    sip_code: int | None = None
    trunk: str | None = None
    switch: str | None = None
    call_id: str = ""


# -- values ---------------------------------------------------------------------------------
def parse_time(text: str, tz: tzinfo) -> float:
    """ISO 8601 or epoch seconds -> epoch seconds; a time without a zone is in ``tz``."""
    value = text.strip()
    try:
        epoch = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(epoch) or epoch < MIN_EPOCH:
            raise CdrError(REASON_VALUE, f"time {text!r} is not a plausible epoch time")
        return epoch
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise CdrError(REASON_VALUE, f"time {text!r} is neither ISO 8601 nor epoch seconds") \
            from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return when.timestamp()


def _optional_time(text: str | None, tz: tzinfo) -> float | None:
    return parse_time(text, tz) if text and text.strip() else None


def _optional_int(text: str | None, name: str, low: int, high: int) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise CdrError(REASON_VALUE, f"{name} {text!r} is not an integer") from None
    if not low <= value <= high:
        raise CdrError(REASON_VALUE, f"{name} {value} is not in {low}..{high}")
    return value


def _optional_seconds(text: str | None, name: str) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text.strip())
    except ValueError:
        raise CdrError(REASON_VALUE, f"{name} {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise CdrError(REASON_VALUE, f"{name} {text!r} is not a number of seconds")
    return value


def _text(row: dict[str, str], name: str) -> str | None:
    value = row.get(name)
    return value.strip() if value and value.strip() else None


# -- rows -> records ------------------------------------------------------------------------
def cdr_from_row(row: dict[str, str], tz: tzinfo, default_switch: str | None = None) -> Cdr:
    """A dialguard-dialect row (column name -> text) -> :class:`Cdr`, or CdrError."""
    for name in REQUIRED:
        if not _text(row, name):
            raise CdrError(REASON_MISSING, f"column {name!r} is empty or missing")
    disposition = (_text(row, "disposition") or "").upper()
    if disposition and disposition != ANSWERED and disposition not in DISPOSITION_CAUSE:
        raise CdrError(REASON_VALUE, f"disposition {disposition!r} is not one of "
                                     f"{', '.join([ANSWERED, *DISPOSITION_CAUSE])}")
    return Cdr(start=parse_time(row["start_time"], tz), caller=row["caller"].strip(),
               callee=row["callee"].strip(), answer=_optional_time(row.get("answer_time"), tz),
               end=_optional_time(row.get("end_time"), tz),
               duration=_optional_seconds(row.get("duration"), "duration"),
               disposition=disposition,
               cause=_optional_int(row.get("cause"), "cause", 0, MAX_CAUSE),
               sip_code=_optional_int(row.get("sip_code"), "sip_code", 100, MAX_SIP_STATUS),
               trunk=_text(row, "trunk"), switch=_text(row, "switch") or default_switch,
               call_id=_text(row, "call_id") or "")


def cdr_from_asterisk(fields: list[str], tz: tzinfo, default_switch: str | None = None) -> Cdr:
    """An Asterisk Master.csv line (already split) -> :class:`Cdr`, or CdrError."""
    if len(fields) < ASTERISK_MIN_COLUMNS:
        raise CdrError(REASON_MISSING, f"{len(fields)} columns, Asterisk writes at least "
                                       f"{ASTERISK_MIN_COLUMNS}")
    col = dict(zip(ASTERISK_COLUMNS, fields))
    row = {"start_time": col["start"], "caller": col["src"], "callee": col["dst"],
           "answer_time": col["answer"], "end_time": col["end"], "duration": col["billsec"],
           "disposition": col["disposition"], "trunk": col["channel"].rsplit("-", 1)[0],
           "call_id": col.get("uniqueid", "")}
    return cdr_from_row(row, tz, default_switch)


def events_of(cdr: Cdr, plan: NumberPlan, call_id: str) -> list[SignalingEvent]:
    """attempt + answer + release, or attempt + fail (see the module docstring)."""
    try:
        caller = plan.normalise(cdr.caller)
    except InvalidNumber as exc:
        raise CdrError(REASON_NUMBER, f"caller: {exc}") from None
    try:
        callee = plan.normalise(cdr.callee)
    except InvalidNumber as exc:
        raise CdrError(REASON_NUMBER, f"callee: {exc}") from None
    proto = "sip" if cdr.sip_code is not None else "isup"
    answered = cdr.answer is not None or cdr.disposition == ANSWERED

    def ev(ts: float, kind: str, code: int | None = None,
           duration: float | None = None) -> SignalingEvent:
        return SignalingEvent(ts=ts, proto=proto, kind=kind, call_id=call_id, caller=caller,
                              callee=callee, code=code, duration_s=duration, trunk=cdr.trunk,
                              switch=cdr.switch)

    events = [ev(cdr.start, "attempt")]
    if answered:
        answer, end = cdr.answer, cdr.end
        if answer is None:  # ANSWERED without an answer time: end - billed seconds
            if end is None or cdr.duration is None:
                raise CdrError(REASON_MISSING, "answered call without answer_time, and "
                                               "without end_time and duration to derive it")
            answer = end - cdr.duration
        if end is None:
            if cdr.duration is None:
                raise CdrError(REASON_MISSING, "answered call without end_time or duration")
            end = answer + cdr.duration
        if not cdr.start <= answer <= end:
            raise CdrError(REASON_VALUE, "times are not in the order start <= answer <= end")
        events.append(ev(answer, "answer", code=SIP_OK if proto == "sip" else None))
        events.append(ev(end, "release", duration=end - answer))
        return events
    end = cdr.end if cdr.end is not None else cdr.start
    if end < cdr.start:
        raise CdrError(REASON_VALUE, "end_time is before start_time")
    if cdr.sip_code is not None:
        if cdr.sip_code < MIN_SIP_FAILURE:
            raise CdrError(REASON_VALUE, f"unanswered call with SIP status {cdr.sip_code}")
        code: int | None = cdr.sip_code
    else:
        code = cdr.cause if cdr.cause is not None else DISPOSITION_CAUSE.get(cdr.disposition)
    events.append(ev(end, "fail", code=code))
    return events


def row_call_id(text: str) -> str:
    """Stable per CDR, so replaying a file twice names the same calls the same way."""
    return "cdr-" + hashlib.sha1(text.encode()).hexdigest()[:16]


# -- driver ---------------------------------------------------------------------------------
def _csv_line(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def _rows(stream: TextIO) -> Iterator[tuple[int, list[str], str]]:
    """(line number, fields, the row's CSV text) of each record (quoted newlines allowed)."""
    reader = csv.reader(stream)
    for fields in reader:
        yield reader.line_num, fields, _csv_line(fields)


def ingest_rows(stream: TextIO, dialect: str, sink: EventSink, plan: NumberPlan,
                validator: EventValidator, tz: tzinfo, label: str,
                default_switch: str | None = None) -> None:
    header: list[str] | None = None
    for line, fields, text in _rows(stream):
        if not any(f.strip() for f in fields):
            sink.ignore(WHY_BLANK)
            continue
        raw = text.encode()
        try:
            if dialect == "asterisk":
                cdr = cdr_from_asterisk(fields, tz, default_switch)
            else:
                if header is None:
                    header = [f.strip().lower() for f in fields]
                    missing = [c for c in REQUIRED if c not in header]
                    if missing:
                        raise SystemExit(f"{label}: the header row {text!r} lacks the "
                                         f"column(s) {', '.join(missing)}; see "
                                         "`dialguard ingest cdr --help`")
                    sink.ignore(WHY_HEADER)
                    continue
                if len(fields) != len(header):
                    raise CdrError(REASON_VALUE, f"{len(fields)} columns, the header has "
                                                 f"{len(header)}")
                cdr = cdr_from_row(dict(zip(header, fields)), tz, default_switch)
            events = events_of(cdr, plan, cdr.call_id or row_call_id(text))
            for ev in events:
                validator.decode(ev.encode())
        except InvalidEvent as exc:  # a CdrError, or an event the worker would refuse
            sink.dead_letter(raw, exc.reason, f"{label} line {line}: {exc.detail}")
            continue
        for ev in events:
            sink.event(ev)


def _timezone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SystemExit(f"--timezone {name!r} is not an IANA time zone name "
                         "(e.g. UTC, Asia/Shanghai)") from None


def _open(path: str) -> TextIO:
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")
    return Path(path).open("r", encoding="utf-8", newline="")


def run(args: argparse.Namespace, settings: Settings) -> int:
    tz = _timezone(args.timezone)
    plan = NumberPlan.of(settings)
    validator = EventValidator.of(settings)
    sink = replay_sink(settings, SOURCE, args.again)
    try:
        for path in args.files:
            with _open(path) as stream:
                ingest_rows(stream, args.dialect, sink, plan, validator, tz,
                            "stdin" if path == "-" else path, args.switch)
    finally:
        sink.close()
    return 0


def _columns_help(items: Iterable[tuple[str, str]]) -> str:
    return "\n".join(f"  {name:<12} {text}" for name, text in items)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cdr", help="replay CDR files (CSV) as call events",
        description="Replay call detail records to signaling.events: each CDR becomes "
                    "attempt + answer + release (answered) or attempt + fail (with its "
                    "cause). Rows that cannot go to signaling.events.dlq as their CSV text "
                    "with the reason and the file and line in dlq.detail.",
        epilog="dialect 'dialguard' (default): a header row naming these columns, any "
               "order, unknown ones ignored:\n" + _columns_help(COLUMNS.items())
               + "\n\nAn answered call needs answer_time (or disposition ANSWERED with "
               "end_time and duration); a call with sip_code is proto sip, otherwise isup "
               "(cause = Q.850 release cause; without one the disposition stands for it: "
               "BUSY 17, NO ANSWER 19, CONGESTION 34, REJECTED 21, UNALLOCATED 1).\n\n"
               "dialect 'asterisk': Asterisk cdr_csv Master.csv without header: "
               + ", ".join(ASTERISK_COLUMNS) + " (the last two optional).\n\n"
               "Times: ISO 8601 or epoch seconds; times without a zone are in --timezone.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE", help="CSV file(s); - = stdin")
    p.add_argument("--dialect", choices=DIALECTS, default="dialguard",
                   help="column layout (default: dialguard, with a header row)")
    p.add_argument("--timezone", default="UTC",
                   help="IANA zone of times written without one (default UTC)")
    p.add_argument("--switch", default=None, help="switch name for rows that name none")
    replay_guard.add_arguments(p)
    p.set_defaults(ingest_func=run)
