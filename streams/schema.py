"""Wire schema v1 (JSON via orjson): the only module that spells a record's field names.

Probes and switches written by other teams read and write these records, so field names follow
DESIGN.md exactly and only ever grow. The decoder is strict: anything it cannot trust raises
:class:`InvalidEvent` with a short machine reason (a metric label and DLQ header) and a human
detail, so the worker can route the original bytes to the dead-letter topic and carry on.
Records encode with ``orjson.dumps(record)``: orjson writes dataclasses itself, the same bytes
as ``asdict`` at a quarter of the cost.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from streams.numbers import (CALLER_CLASSES, CALLER_TEXT_MAX, InvalidNumber, NumberPlan)
from streams.scope import SCOPE_NUMBER, CallMatch, covers

SCHEMA_VERSION = 1

Proto = Literal["sip", "isup"]
Kind = Literal["attempt", "answer", "release", "fail"]
Action = Literal["block", "rate_limit", "label", "unblock"]
LabelKind = Literal["complaint", "appeal_upheld", "appeal_denied", "analyst_robot",
                    "analyst_legit", "callback_ok", "legit", "robot"]

PROTOS: frozenset[str] = frozenset({"sip", "isup"})
KINDS: tuple[str, ...] = ("attempt", "answer", "release", "fail")
ACTIONS: tuple[str, ...] = ("label", "rate_limit", "block", "unblock")
ATTESTATIONS: frozenset[str] = frozenset({"A", "B", "C"})
#: Labels that say the number is a nuisance robot (1) or a legitimate caller (0).
LABEL_TARGET: dict[str, int] = {
    "complaint": 1, "appeal_denied": 1, "analyst_robot": 1, "robot": 1,
    "appeal_upheld": 0, "analyst_legit": 0, "callback_ok": 0, "legit": 0,
}

# DLQ reasons: bounded set, used as a metric label.
REASON_NOT_JSON = "not_json"
REASON_NOT_OBJECT = "not_object"
REASON_VERSION = "unsupported_version"
REASON_MISSING = "missing_field"
REASON_TYPE = "wrong_type"
REASON_VALUE = "bad_value"
REASON_NUMBER = "bad_number"
REASON_FUTURE = "future_timestamp"
DLQ_REASONS: tuple[str, ...] = (REASON_NOT_JSON, REASON_NOT_OBJECT, REASON_VERSION,
                                REASON_MISSING, REASON_TYPE, REASON_VALUE, REASON_NUMBER,
                                REASON_FUTURE)

# DLQ record headers (the value is the original bytes, untouched).
DLQ_HEADER_REASON = "dlq.reason"
DLQ_HEADER_DETAIL = "dlq.detail"
DLQ_HEADER_SOURCE = "dlq.source"
DLQ_HEADER_TOPIC = "dlq.topic"
DLQ_HEADER_PARTITION = "dlq.partition"
DLQ_HEADER_OFFSET = "dlq.offset"
#: Only on a truncated copy (a value longer than the DLQ keeps): the original value's length
#: in bytes and its SHA-256 (hex), so the original can be found and checked at its source.
DLQ_HEADER_ORIGINAL_SIZE = "dlq.original_size"
DLQ_HEADER_SHA256 = "dlq.sha256"
#: The event's place inside its record (0 for a record holding one event, or a batch's first).
DLQ_HEADER_INDEX = "dlq.index"

#: Batch records: dialguard's own producers write up to this many events of one partition as
#: one JSON array, so the worker pays Kafka's and Faust's per-record cost once per batch, not
#: once per event. A record holding one JSON object (any other producer) stays valid.
BATCH_MAX_EVENTS = 1000

# SIP status codes and ISUP cause values that mean "no such number": the scanning signal.
SIP_UNALLOCATED = frozenset({404, 484})
ISUP_UNALLOCATED = frozenset({1, 28})
SIP_BUSY_OR_NO_ANSWER = frozenset({408, 480, 486, 487, 600})
ISUP_BUSY_OR_NO_ANSWER = frozenset({17, 18, 19})
SIP_REJECTED = frozenset({403, 603, 607, 608})
ISUP_REJECTED = frozenset({21})
#: What a switch answers a blocked caller (the "603+" with redress contact; ISUP cause 21).
SIP_BLOCKED_CODE = 603
ISUP_BLOCKED_CAUSE = 21


class InvalidEvent(ValueError):
    """Input that cannot become an event; ``reason`` is the DLQ reason, ``detail`` the why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class SignalingEvent:
    ts: float
    proto: str
    kind: str
    call_id: str
    caller: str
    callee: str
    code: int | None = None
    duration_s: float | None = None
    trunk: str | None = None
    switch: str | None = None
    attest: str | None = None
    v: int = SCHEMA_VERSION
    #: None: ``caller`` is a number. ``withheld`` / ``invalid`` (streams.numbers): the caller
    #: is not a number; ``caller`` keeps its text as received (at most 64 characters).
    caller_class: str | None = None

    def encode(self) -> bytes:
        return orjson.dumps(self)

    @property
    def key(self) -> bytes:
        """Keyed by caller (its state's partition); a call without a caller number by its
        call id, so withheld calls spread over partitions instead of all landing on one."""
        return (self.call_id if self.caller_class else self.caller).encode()


_REQUIRED: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("v", int), ("ts", (int, float)), ("proto", str), ("kind", str), ("call_id", str),
    ("caller", str), ("callee", str),
)
_OPTIONAL: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("code", int), ("duration_s", (int, float)), ("trunk", str), ("switch", str),
    ("attest", str), ("caller_class", str),
)



def record_values(raw: bytes) -> list[Any]:
    """The JSON values one record carries: its object, or each item of a batch record.

    Raises :class:`InvalidEvent` when the record as a whole is unusable; an item that is not
    an object is left for the caller to dead-letter alone (the rest of the batch counts).
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(REASON_NOT_JSON, f"not JSON ({exc.msg})") from None
    if isinstance(obj, list):
        if len(obj) > BATCH_MAX_EVENTS:
            raise InvalidEvent(REASON_VALUE, f"batch of {len(obj)} events; at most "
                                             f"{BATCH_MAX_EVENTS} per record")
        return obj
    return [obj]


def encode_batch(events: list[Any]) -> bytes:
    """One batch record of events (dataclasses of this module or plain dicts)."""
    return orjson.dumps(events)


def json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` parsed as one JSON object, or :class:`InvalidEvent` saying why not."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(REASON_NOT_JSON, f"not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise InvalidEvent(REASON_NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    return obj


@dataclass(frozen=True)
class EventValidator:
    """Turns raw bytes into a trusted :class:`SignalingEvent` or raises :class:`InvalidEvent`."""

    plan: NumberPlan = field(default_factory=NumberPlan)
    max_future_skew_s: float = 300.0
    max_duration_s: float = 86_400.0

    @classmethod
    def of(cls, settings: Any) -> "EventValidator":
        """The worker's checks with this deployment's plan and limits; ingest runs the same
        ones, so what it publishes the worker accepts."""
        return cls(NumberPlan.of(settings), settings.max_future_skew_s,
                   settings.max_duration_s)

    def decode(self, raw: bytes, now: float | None = None) -> SignalingEvent:
        return self.check(json_object(raw), now)

    def check(self, obj: Any, now: float | None = None) -> SignalingEvent:
        """One decoded JSON value as an event (each event of a batch record comes here).

        Written for the common case, every field present with its exact type, tested in one
        expression; anything else goes through :func:`_explain_types`, which names the field.
        """
        if type(obj) is not dict:
            raise InvalidEvent(REASON_NOT_OBJECT,
                               f"expected a JSON object, got {type(obj).__name__}")
        get = obj.get
        v, ts, proto, kind, call_id = get("v"), get("ts"), get("proto"), get("kind"), \
            get("call_id")
        raw_caller, raw_callee = get("caller"), get("callee")
        code, duration, trunk, switch, attest = get("code"), get("duration_s"), get("trunk"), \
            get("switch"), get("attest")
        klass = get("caller_class")
        if not (type(v) is int and type(ts) in _NUMBER and type(proto) is str
                and type(kind) is str and type(call_id) is str and type(raw_caller) is str
                and type(raw_callee) is str and (code is None or type(code) is int)
                and (duration is None or type(duration) in _NUMBER)
                and (trunk is None or type(trunk) is str)
                and (switch is None or type(switch) is str)
                and (attest is None or type(attest) is str)
                and (klass is None or type(klass) is str)):
            _explain_types(obj)
        if v != SCHEMA_VERSION:
            raise InvalidEvent(REASON_VERSION, f"schema version {v} is not {SCHEMA_VERSION}")
        ts = float(ts)
        if not math.isfinite(ts) or ts <= 0:
            raise InvalidEvent(REASON_VALUE, f"ts {obj['ts']!r} is not a positive epoch time")
        wall = time.time() if now is None else now
        if ts > wall + self.max_future_skew_s:
            raise InvalidEvent(REASON_FUTURE, f"ts {ts:.0f} is {ts - wall:.0f}s in the future")
        if proto not in PROTOS:
            raise InvalidEvent(REASON_VALUE, f"proto {proto!r} is not one of sip, isup")
        if kind not in KINDS:
            raise InvalidEvent(REASON_VALUE, f"kind {kind!r} is not one of {', '.join(KINDS)}")
        if not call_id:
            raise InvalidEvent(REASON_VALUE, "call_id is empty")
        if duration is not None:
            duration = float(duration)
            if not math.isfinite(duration) or duration < 0 or duration > self.max_duration_s:
                raise InvalidEvent(REASON_VALUE, f"duration_s {obj['duration_s']!r} is out of range")
        if code is not None and not 0 <= code <= 999:
            raise InvalidEvent(REASON_VALUE, f"code {code} is out of range")
        if attest is not None and attest not in ATTESTATIONS:
            raise InvalidEvent(REASON_VALUE, f"attest {attest!r} is not A, B or C")
        normalise = self.plan.normalise
        if klass is not None:
            if klass not in CALLER_CLASSES:
                raise InvalidEvent(REASON_VALUE, f"caller_class {klass!r} is not one of "
                                                 f"{', '.join(CALLER_CLASSES)}")
            if len(raw_caller) > CALLER_TEXT_MAX:
                raise InvalidEvent(REASON_VALUE, f"a {klass} caller is kept as at most "
                                                 f"{CALLER_TEXT_MAX} characters")
            caller = raw_caller
        else:
            try:
                caller = normalise(raw_caller)
            except InvalidNumber as exc:
                raise InvalidEvent(REASON_NUMBER, f"caller: {exc}") from None
        try:
            callee = normalise(raw_callee)
        except InvalidNumber as exc:
            raise InvalidEvent(REASON_NUMBER, f"callee: {exc}") from None
        return SignalingEvent(ts, proto, kind, call_id, caller, callee, code, duration, trunk,
                              switch, attest, SCHEMA_VERSION, klass)


_NUMBER = frozenset({int, float})


def _explain_types(obj: dict[str, Any]) -> None:
    """Raise the :class:`InvalidEvent` that names the first missing or mistyped field."""
    for name, kind in _REQUIRED:
        if obj.get(name) is None:
            raise InvalidEvent(REASON_MISSING, f"field {name!r} is missing")
        _check_type(obj, name, kind)
    for name, kind in _OPTIONAL:
        if obj.get(name) is not None:
            _check_type(obj, name, kind)


def _check_type(obj: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> None:
    value = obj[name]
    # bool is an int subclass in Python; a probe sending true for a code is a broken probe.
    if isinstance(value, bool) or not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InvalidEvent(REASON_TYPE, f"field {name!r} must be {want}, got {type(value).__name__}")


@dataclass(slots=True)
class Decision:
    """What switches must do, on ``switch.control.decisions`` (key: ``number``).

    ``scope`` says what the decision covers (see :mod:`streams.scope`): ``number`` (the caller
    ``target``), ``prefix`` (every caller starting with the digits ``target``) or ``trunk``
    (every call entering through ``target`` = ``<switch>/<trunk>``, narrowed by ``match`` when
    given). ``number`` is the topic key: the number itself for number decisions (so consumers
    written before scopes keep working), ``prefix:<digits>`` / ``trunk:<switch>/<trunk>``
    otherwise. Records written before scopes existed decode as number decisions.
    """

    number: str
    action: str
    ttl_s: int
    score: float
    reasons: list[str]
    policy: str
    policy_version: int
    decided_at: float
    trigger_ts: float
    dry_run: bool = False
    scope: str = SCOPE_NUMBER
    target: str = ""
    #: The switch a trunk decision's trunk belongs to (None for other scopes).
    switch: str | None = None
    #: Only part of a trunk's calls (see :class:`streams.scope.CallMatch`); None: all of them.
    match: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.target:
            self.target = self.number

    @property
    def call_match(self) -> CallMatch | None:
        return CallMatch.from_dict(self.match)

    def covers(self, caller: str, callee: str, switch: str | None, trunk: str | None,
               attest: str | None) -> bool:
        """Whether this decision applies to that call (the one coverage rule, streams.scope)."""
        return covers(self.scope, self.target, self.call_match, caller, callee, switch, trunk,
                      attest)

    def encode(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def decode(cls, raw: bytes) -> "Decision":
        return cls(**orjson.loads(raw))


@dataclass(slots=True)
class ScoreRecord:
    number: str
    ts: float
    score: float
    anomaly: float
    prior: float
    classifier: float | None
    features: dict[str, float]
    action: str | None
    policy: str
    policy_version: int
    #: Guarded rollout (optional, v1 records without them stay valid): the action in force
    #: for this number under the shadow candidate of ``policy`` and that candidate's version;
    #: None when no shadow was evaluated.
    shadow_action: str | None = None
    shadow_version: int | None = None

    def encode(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def decode(cls, raw: bytes) -> "ScoreRecord":
        return cls(**orjson.loads(raw))


@dataclass(slots=True)
class Label:
    """Feedback on a number. ``id`` makes intake idempotent (the same id is taken once).

    Appeals carry who appeals and how to reach them (``appellant``, ``contact``): an appeal is
    the redress channel a blocked caller is pointed to, so the answer must reach a person.
    """

    number: str
    label: str
    ts: float
    id: str = ""
    source: str = ""
    note: str = ""
    appellant: str = ""
    contact: str = ""

    @property
    def target(self) -> int:
        return LABEL_TARGET[self.label]

    def encode(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def decode(cls, raw: bytes) -> "Label":
        obj = orjson.loads(raw)
        if not isinstance(obj, dict) or obj.get("label") not in LABEL_TARGET:
            raise ValueError(f"not a label: {raw[:80]!r}")
        return cls(number=str(obj["number"]), label=obj["label"], ts=float(obj.get("ts", 0.0)),
                   id=str(obj.get("id", "")), source=str(obj.get("source", "")),
                   note=str(obj.get("note", "")), appellant=str(obj.get("appellant", "")),
                   contact=str(obj.get("contact", "")))


@dataclass(slots=True)
class AllowEntry:
    """An allowlisted number, a prefix when ``prefix`` is true, or a trunk when ``trunk`` is
    true (``number`` then holds ``<switch>/<trunk>``, e.g. a bank's or a hospital's trunk).
    ``expires_at`` 0 = never. Topic key: the number, the prefix, or ``trunk:<switch>/<trunk>``.
    """

    number: str
    reason: str
    prefix: bool = False
    expires_at: float = 0.0
    author: str = ""
    trunk: bool = False

    def encode(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def decode(cls, raw: bytes) -> "AllowEntry":
        return cls(**orjson.loads(raw))


@dataclass(slots=True)
class AuditRecord:
    """One write made through the control API or CLI, on ``control.audit`` (kept forever).

    ``subject`` names what changed (``policy/default``, ``allowlist/8613800138000``,
    ``number/8613800138000``, ``switches``, ``token/alice``, ``label/<id>``); ``before`` and
    ``after`` are the records as they were and became (None where there was or is nothing).
    """

    id: str
    at: float
    actor: str
    role: str
    action: str
    subject: str
    reason: str = ""
    before: Any = None
    after: Any = None

    def encode(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def decode(cls, raw: bytes) -> "AuditRecord":
        return cls(**orjson.loads(raw))


@dataclass(slots=True)
class SourceEvent:
    """A validated event as the source stage receives it, on ``signaling.sources``.

    The per-number stage re-keys every event it accepted by where it came from (its trunk, and
    its caller's number ranges) and adds what only the owner of the caller number knows:
    ``caller_new`` (the number had not called in the last day) and ``caller_trunks`` (how many
    distinct trunks the number was seen on lately: a real subscriber's number arriving on a
    second trunk is probably spoofed). ``key`` is the source key it was published under: the
    key of the decision it may lead to (``trunk:<switch>/<trunk>``, ``prefix:<digits>``).
    """

    key: str
    ts: float
    kind: str
    proto: str
    call_id: str
    caller: str
    callee: str
    code: int | None = None
    duration_s: float | None = None
    trunk: str | None = None
    switch: str | None = None
    attest: str | None = None
    caller_new: bool = False
    caller_trunks: int = 1
    #: Where the number stage read the event (``signaling.events`` partition, offset, place
    #: in its batch): the source stage skips what it already folded (streams.position).
    #: -1: unknown, never skipped.
    origin_partition: int = -1
    origin_offset: int = -1
    origin_index: int = 0
    #: As SignalingEvent.caller_class: the call counts for its trunk, never as a caller.
    caller_class: str | None = None

    def encode(self) -> bytes:
        return orjson.dumps(self)

    @staticmethod
    def row_tail(ev: SignalingEvent, caller_new: bool, caller_trunks: int,
                 origin: tuple[int, int, int]) -> tuple[Any, ...]:
        """The row form without its key. A row is the compact form of a source event inside a
        batch record of ``signaling.sources``: its fields in declaration order, without their
        names (the topic is internal; both ends are this module), so ``SourceEvent(*row)``
        reads it back. The number stage builds the tail once per event and prefixes each
        source key it re-keys the event to, without building a SourceEvent per key (a sixth
        of its time went to that)."""
        return (ev.ts, ev.kind, ev.proto, ev.call_id, ev.caller, ev.callee, ev.code,
                ev.duration_s, ev.trunk, ev.switch, ev.attest, caller_new, caller_trunks,
                *origin, ev.caller_class)

    @classmethod
    def decode(cls, raw: bytes) -> "SourceEvent":
        """Raises :class:`InvalidEvent` for anything that is not a source event."""
        return cls.from_value(json_object(raw))

    @classmethod
    def from_value(cls, obj: Any) -> "SourceEvent":
        """A source event from its object form or its row form (see :meth:`row_tail`)."""
        try:
            if isinstance(obj, list):
                ev = cls(*obj)
            elif isinstance(obj, dict):
                ev = cls(**obj)
            else:
                raise InvalidEvent(REASON_NOT_OBJECT,
                                   f"not a source event: a {type(obj).__name__}")
        except TypeError as exc:
            raise InvalidEvent(REASON_MISSING, f"not a source event: {exc}") from None
        if not isinstance(ev.ts, (int, float)) or ev.kind not in KINDS or \
                not isinstance(ev.caller, str) or not isinstance(ev.callee, str) or \
                not isinstance(ev.key, str):
            raise InvalidEvent(REASON_VALUE, "source event with a bad ts, kind or number")
        return ev


#: Ack statuses: the switch enforces the decision now; it could not (yet: the adapter keeps
#: retrying); it deliberately did nothing (dry run, label, older than what it applied).
ACK_STATUSES: tuple[str, ...] = ("applied", "failed", "skipped")


@dataclass(slots=True)
class Ack:
    """A switch adapter's answer to one decision, on ``switch.control.acks`` (key: number).

    ``latency_s`` is ``applied_at - decided_at`` (the worker stamps ``decided_at`` as it
    publishes). ``decided_at`` and ``trigger_ts`` identify the decision's version; ``attempts``
    counts JSON-RPC tries; ``expires_at`` is when the switch entry lapses (0: no entry).
    """

    number: str
    action: str
    status: Literal["applied", "failed", "skipped"]
    latency_s: float
    detail: str = ""
    switch: str = ""
    decided_at: float = 0.0
    trigger_ts: float = 0.0
    applied_at: float = 0.0
    attempts: int = 0
    expires_at: float = 0.0
    policy: str = ""
    policy_version: int = 0

    def encode(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def decode(cls, raw: bytes) -> "Ack":
        return cls(**orjson.loads(raw))
