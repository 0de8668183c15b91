"""ISUP call tracking: a sequence of IAM / ACM / ANM / CON / REL / RLC messages -> call events.

ISUP has no call id. A call is a circuit between two signalling points, named by its CIC
(circuit identification code) and the two point codes; the IAM goes one way (OPC = the
switch the caller is on), ACM and ANM come back the other way, REL may come from either side
and RLC completes it. So calls are keyed by ``(min(opc, dpc), max(opc, dpc), cic)`` and each
message moves that circuit's call through setup -> ringing -> answered -> released -> closed.

What becomes an event (DESIGN.md mapping):

* IAM -> ``attempt``; ANM or CON -> ``answer``;
* REL after answer -> ``release`` with ``duration_s`` = REL time - ANM time;
* REL before answer -> ``fail`` with ``code`` = the ISUP cause value (1 and 28 = no such
  number, 17 busy, 18/19 no answer, 21 rejected...);
* ACM (the callee is ringing) and RLC (release complete) carry no event but move the state:
  RLC closes the call; an RLC whose REL was not captured closes it as REL would have
  (its time is within milliseconds of the REL's, its optional cause is used).

Captures duplicate messages (two probes, mirrored links) and lose some; a repeated message is
recognised by the state it would move and counted, never turned into a second event. Memory is
bounded (``max_calls`` circuits; the least recently active is forgotten first) and calls whose
REL never came are forgotten after a timeout on *event* time, so a replay of old captures and a
live feed behave the same. Everything here is pure: no Kafka, no clock.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streams.numbers import SHORT_CODE_MAX_DIGITS, InvalidNumber, NumberPlan
from streams.schema import (REASON_MISSING, REASON_NUMBER, EventValidator, SignalingEvent)

if TYPE_CHECKING:
    from services.ingest.sink import EventSink
    from services.settings import Settings

PROTO = "isup"

# Message names (ITU-T Q.763 abbreviations) this tracker understands.
IAM, ACM, ANM, CON, REL, RLC = "IAM", "ACM", "ANM", "CON", "REL", "RLC"
MESSAGES: tuple[str, ...] = (IAM, ACM, ANM, CON, REL, RLC)

# Nature of address indicator (Q.763 3.9 / 3.10), by value and by the name probes write.
NAI_SUBSCRIBER = 1
NAI_UNKNOWN = 2
NAI_NATIONAL = 3
NAI_INTERNATIONAL = 4
NAI_NETWORK = 5
NAI_NAMES: dict[str, int] = {"subscriber": NAI_SUBSCRIBER, "unknown": NAI_UNKNOWN,
                             "national": NAI_NATIONAL, "international": NAI_INTERNATIONAL,
                             "network": NAI_NETWORK}

#: A second IAM on a circuit in setup, same numbers, within this many seconds, is a copy.
DUPLICATE_IAM_WINDOW_S = 5.0
#: A released call whose RLC was not captured is closed this long after its REL.
RLC_WAIT_S = 60.0

# Call states.
SETUP, RINGING, ANSWERED, RELEASED = "setup", "ringing", "answered", "released"

# Why a message carries no event (ignored, counted by the sink under these names).
WHY_RINGING = "isup_acm"
WHY_RLC = "isup_rlc"
WHY_DUPLICATE = "isup_duplicate"
WHY_NO_CALL = "isup_no_call"
WHY_LATE = "isup_out_of_order"


def address_string(digits: str, nai: int, plan: NumberPlan) -> str:
    """The number as a string :class:`NumberPlan` reads the way the switch meant it.

    ISUP carries bare digits and says what they are in the nature of address: an
    international number is E.164 already ("+" + digits), a national (significant) number
    lacks the country code (national prefix + digits, so "13800138000" becomes
    "013800138000" and then 86...). Subscriber, unknown and network-specific numbers are
    passed as dialled: short codes (110, 12321) stay short codes, digits that carry their own
    prefix ("0...", "00...") are read by that prefix, anything else is taken as E.164, the
    project's rule for bare digits.
    """
    if nai == NAI_INTERNATIONAL:
        return "+" + digits
    if nai == NAI_NATIONAL and len(digits) > SHORT_CODE_MAX_DIGITS:
        return plan.national_prefix + digits
    return digits


def isup_trunk(m: "IsupMessage") -> str:
    """Trunk of an IAM when the probe names none: ``<OPC>-<DPC>``, the circuits between the
    originating signalling point and this one (the interconnect trunk group a robot's calls
    enter through, whatever caller number they show). A probe that knows the circuit group's
    name puts it in the record's ``trunk``."""
    return f"{m.opc}-{m.dpc}"


def isup_switch(m: "IsupMessage") -> str:
    """Switch of an IAM when no ``--switch``/record names one: the destination point code,
    the exchange that received the call (never null, so a trunk decision names a switch)."""
    return f"pc-{m.dpc}"


@dataclass(frozen=True, slots=True)
class IsupMessage:
    """One ISUP message as a probe or a capture saw it (numbers only on IAM, cause on REL)."""

    ts: float
    msg: str
    opc: int
    dpc: int
    cic: int
    calling: str | None = None
    called: str | None = None
    calling_nai: int = NAI_NATIONAL
    called_nai: int = NAI_NATIONAL
    cause: int | None = None
    trunk: str | None = None
    switch: str | None = None

    @property
    def circuit(self) -> tuple[int, int, int]:
        """The same key whichever direction the message travels."""
        return (min(self.opc, self.dpc), max(self.opc, self.dpc), self.cic)


@dataclass(slots=True)
class _Call:
    call_id: str
    caller: str
    callee: str
    iam_ts: float
    last_ts: float
    trunk: str
    switch: str | None
    state: str = SETUP
    answer_ts: float | None = None


@dataclass(slots=True)
class Step:
    """What one message produced: events to publish, or why there are none.

    ``reject`` is a (reason, detail) pair: the message itself is unusable (its original
    bytes go to the dead-letter topic); ``ignored`` names why a valid message carries no
    event (ringing, release complete, a duplicate...).
    """

    events: list[SignalingEvent] = field(default_factory=list)
    ignored: str | None = None
    reject: tuple[str, str] | None = None


class IsupCallTracker:
    """Folds ISUP messages of many circuits into call events (see the module docstring)."""

    def __init__(self, plan: NumberPlan, max_calls: int = 100_000,
                 setup_timeout_s: float = 300.0, max_duration_s: float = 86_400.0) -> None:
        self.plan = plan
        self.max_calls = max_calls
        self.setup_timeout_s = setup_timeout_s
        self.max_duration_s = max_duration_s
        self.calls: OrderedDict[tuple[int, int, int], _Call] = OrderedDict()
        #: Call-level outcomes (started, answered, released, failed, closed, expired...).
        self.counts: Tally[str] = Tally()
        self.newest_ts = 0.0

    # -- one message ----------------------------------------------------------------------
    def feed(self, m: IsupMessage) -> Step:
        self.newest_ts = max(self.newest_ts, m.ts)
        if m.msg == IAM:
            return self._iam(m)
        call = self.calls.get(m.circuit)
        if call is None:
            return Step(ignored=WHY_NO_CALL)
        if m.ts < call.iam_ts:
            # Older than the call on the circuit: belongs to a call we never saw the IAM of.
            return Step(ignored=WHY_LATE)
        call.last_ts = max(call.last_ts, m.ts)
        self.calls.move_to_end(m.circuit)
        if m.msg == ACM:
            if call.state == SETUP:
                call.state = RINGING
                return Step(ignored=WHY_RINGING)
            return Step(ignored=WHY_DUPLICATE if call.state == RINGING else WHY_LATE)
        if m.msg in (ANM, CON):
            if call.state in (SETUP, RINGING):
                call.state = ANSWERED
                call.answer_ts = m.ts
                self.counts["answered"] += 1
                return Step(events=[self._event(call, m.ts, "answer")])
            return Step(ignored=WHY_DUPLICATE)
        if m.msg == REL:
            if call.state == RELEASED:
                return Step(ignored=WHY_DUPLICATE)  # both sides released at once, or a copy
            return Step(events=[self._release(call, m.ts, m.cause)])
        if m.msg == RLC:
            del self.calls[m.circuit]
            self.counts["closed"] += 1
            if call.state == RELEASED:
                return Step(ignored=WHY_RLC)
            self.counts["rlc_without_rel"] += 1
            return Step(events=[self._release(call, m.ts, m.cause)])
        raise ValueError(f"not an ISUP call message: {m.msg!r}")

    def _iam(self, m: IsupMessage) -> Step:
        if not m.calling:
            return Step(reject=(REASON_MISSING, "IAM without a calling party number"))
        if not m.called:
            return Step(reject=(REASON_MISSING, "IAM without a called party number"))
        try:
            caller = self.plan.normalise(address_string(m.calling, m.calling_nai, self.plan))
        except InvalidNumber as exc:
            return Step(reject=(REASON_NUMBER, f"calling party: {exc}"))
        try:
            callee = self.plan.normalise(address_string(m.called, m.called_nai, self.plan))
        except InvalidNumber as exc:
            return Step(reject=(REASON_NUMBER, f"called party: {exc}"))
        key = m.circuit
        old = self.calls.get(key)
        if old is not None:
            if (old.state in (SETUP, RINGING) and old.caller == caller and old.callee == callee
                    and abs(m.ts - old.iam_ts) <= DUPLICATE_IAM_WINDOW_S):
                return Step(ignored=WHY_DUPLICATE)
            # A new call on a circuit whose REL/RLC we missed: the old call is over.
            del self.calls[key]
            self.counts["superseded"] += 1
        call = _Call(call_id=f"{m.opc}-{m.dpc}-{m.cic}-{m.ts:.3f}", caller=caller,
                     callee=callee, iam_ts=m.ts, last_ts=m.ts, trunk=m.trunk or isup_trunk(m),
                     switch=m.switch or isup_switch(m))
        self.calls[key] = call
        self.counts["started"] += 1
        while len(self.calls) > self.max_calls:
            self.calls.popitem(last=False)
            self.counts["evicted"] += 1
        return Step(events=[self._event(call, m.ts, "attempt")])

    def _release(self, call: _Call, ts: float, cause: int | None) -> SignalingEvent:
        answered = call.state == ANSWERED
        call.state = RELEASED
        if answered:
            self.counts["released"] += 1
            assert call.answer_ts is not None
            return self._event(call, ts, "release", duration=max(0.0, ts - call.answer_ts))
        self.counts["failed"] += 1
        return self._event(call, ts, "fail", code=cause)

    @staticmethod
    def _event(call: _Call, ts: float, kind: str, code: int | None = None,
               duration: float | None = None) -> SignalingEvent:
        return SignalingEvent(ts=ts, proto=PROTO, kind=kind, call_id=call.call_id,
                              caller=call.caller, callee=call.callee, code=code,
                              duration_s=duration, trunk=call.trunk, switch=call.switch)

    # -- housekeeping ---------------------------------------------------------------------
    def expire(self, now: float | None = None) -> int:
        """Forget calls whose next message is overdue at event time ``now`` (default: the
        newest message seen); returns how many. No event is made up for them: a guessed
        release would invent a duration, so they are counted instead."""
        now = self.newest_ts if now is None else now
        gone = []
        for key, call in self.calls.items():
            if call.state == RELEASED:
                overdue = now - call.last_ts > RLC_WAIT_S
                why = "closed_without_rlc"
            elif call.state == ANSWERED:
                overdue = now - call.last_ts > self.max_duration_s
                why = "expired_answered"
            else:
                overdue = now - call.iam_ts > self.setup_timeout_s
                why = "expired_unanswered"
            if overdue:
                gone.append((key, why))
        for key, why in gone:
            del self.calls[key]
            self.counts[why] += 1
        return len(gone)

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "none"
        return f"isup calls: {parts}; {len(self.calls)} still open"


#: The tracker looks for overdue calls once per this many messages (a scan of open calls).
EXPIRE_EVERY_MESSAGES = 10_000


class IsupFeed:
    """Glue between a message source (probe records, pcap) and an :class:`EventSink`.

    Each message either becomes events, or is ignored with a why, or its original bytes go to
    the dead-letter topic with a reason. Events are checked by the worker's own validator
    before they leave, so what the worker would reject (a timestamp in the future, say) is
    dead-lettered here with the input record, where it can still be understood.
    """

    def __init__(self, tracker: IsupCallTracker, sink: "EventSink",
                 validator: EventValidator) -> None:
        self.tracker = tracker
        self.sink = sink
        self.validator = validator
        self._since_expiry = 0

    def message(self, m: IsupMessage, raw: bytes, where: str = "") -> None:
        """``raw`` is the input record as it came (for the DLQ); ``where`` says where it
        was (file and line or frame), put in front of a dead letter's detail."""
        prefix = f"{where}: " if where else ""
        step = self.tracker.feed(m)
        if step.reject is not None:
            reason, detail = step.reject
            self.sink.dead_letter(raw, reason, prefix + detail)
        elif step.ignored is not None:
            self.sink.ignore(step.ignored)
        for ev in step.events:
            self.sink.checked_event(ev, self.validator, raw, f"{prefix}{m.msg}")
        self._since_expiry += 1
        if self._since_expiry >= EXPIRE_EVERY_MESSAGES:
            self._since_expiry = 0
            self.tracker.expire()


def tracker_for(settings: "Settings") -> IsupCallTracker:
    return IsupCallTracker(NumberPlan.of(settings), settings.isup_max_calls,
                           settings.isup_setup_timeout_s, settings.max_duration_s)
