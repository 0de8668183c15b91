"""Per-number windowed counters on event time, and the feature math over them.

State per caller is a ring of one-minute buckets (sparse: only minutes with traffic are stored)
covering the longest window, plus a bounded map of recently dialled callees for distinct counts.
Windows of 1, 10 and 60 minutes are sums over the newest buckets, so one update serves all three
(hopping windows with a one-minute hop). Everything here is plain Python without Kafka: the
worker folds events in with :meth:`CallerState.add`, serialises the state once per micro-batch,
and asks :func:`features` for the vector the model scores.

Time is the *event's* time, never the wall clock: a replay or a simulation running faster than
real time yields the same counters as live traffic.
"""

from __future__ import annotations

import math
import zlib
from operator import add
from dataclasses import dataclass
from typing import Iterable

import orjson

from streams.position import Folded
from streams.scope import trunk_id
from streams.schema import (ISUP_BUSY_OR_NO_ANSWER, ISUP_REJECTED, ISUP_UNALLOCATED,
                            SIP_BUSY_OR_NO_ANSWER, SIP_REJECTED, SIP_UNALLOCATED,
                            SignalingEvent)

MINUTE_S = 60
#: Window lengths in minutes; names are used in feature keys and in reasons.
WINDOWS: dict[str, int] = {"1m": 1, "10m": 10, "1h": 60}
RING_MINUTES = max(WINDOWS.values())

# Bucket slots: one flat list per minute keeps the serialised state small.
ATTEMPTS, ANSWERED, RELEASES, SHORT, DUR_SUM, F_UNALLOC, F_BUSY, F_REJECTED, F_OTHER, SEQ, \
    GAP_N, GAP_SUM, GAP_SQ, ATTEST_A, ATTEST_C = range(15)
N_SLOTS = 15
#: A new bucket's slots start as int 0, not 0.0: the counts then stay ints, which CPython
#: shares below 257 where each float is an object of its own (24 B per nonzero slot of every
#: bucket held), and which the state's JSON writes as ``1`` rather than ``1.0``. Sums
#: (durations, gaps) turn float on their first addition; windows sum into floats.
BUCKET_ZERO = 0

FAIL_UNALLOCATED = "unallocated"
FAIL_BUSY_NO_ANSWER = "busy_no_answer"
FAIL_REJECTED = "rejected"
FAIL_OTHER = "other"
#: Gaps longer than this are pauses between bursts, not the rhythm of one burst.
MAX_RHYTHM_GAP_S = 300.0


@dataclass(frozen=True)
class FeatureConfig:
    short_call_s: float = 10.0
    sequential_max_step: int = 3
    distinct_callees_cap: int = 512
    late_grace_s: float = 120.0
    #: A number silent for this long is "new to the network" when it calls again.
    caller_new_after_s: float = 86_400.0
    #: Trunks remembered per number (seen on several: probably spoofed).
    trunks_cap: int = 4
    #: An answered call lasting this long is a real conversation (see the source settings).
    conversation_s: float = 60.0


def fail_class(proto: str, code: int | None) -> str:
    """Class of a failed call from its SIP status or ISUP cause."""
    if code is None:
        return FAIL_OTHER
    if proto == "isup":
        unalloc, busy, rejected = ISUP_UNALLOCATED, ISUP_BUSY_OR_NO_ANSWER, ISUP_REJECTED
    else:
        unalloc, busy, rejected = SIP_UNALLOCATED, SIP_BUSY_OR_NO_ANSWER, SIP_REJECTED
    if code in unalloc:
        return FAIL_UNALLOCATED
    if code in busy:
        return FAIL_BUSY_NO_ANSWER
    if code in rejected:
        return FAIL_REJECTED
    return FAIL_OTHER


_FAIL_SLOT = {FAIL_UNALLOCATED: F_UNALLOC, FAIL_BUSY_NO_ANSWER: F_BUSY,
              FAIL_REJECTED: F_REJECTED, FAIL_OTHER: F_OTHER}


def callee_key(callee: str) -> int:
    """Stable 32-bit key of a callee (Python's ``hash`` is salted per process)."""
    return zlib.crc32(callee.encode())


def _callee_value(callee: str) -> int:
    return int(callee) if callee.isdigit() else -1


class CallerState:
    """Windowed counters of one caller plus the decision state the policy keeps for it."""

    __slots__ = ("hwm_ts", "buckets", "callees", "last_attempt_ts", "last_callee",
                 "attempts_total", "scored_attempts", "action", "action_until", "action_score",
                 "action_dry", "first_ts", "trunks", "last_trunk", "folded")

    def __init__(self) -> None:
        self.hwm_ts: float = 0.0
        #: minute index (epoch minutes) -> slot list
        self.buckets: dict[int, list[float]] = {}
        #: callee key -> last minute dialled
        self.callees: dict[int, int] = {}
        self.last_attempt_ts: float = 0.0
        self.last_callee: int = -1
        self.attempts_total: int = 0
        #: attempts_total at the last score (so we score again only when counters moved)
        self.scored_attempts: int = 0
        self.action: str = ""
        self.action_until: float = 0.0
        self.action_score: float = 0.0
        self.action_dry: bool = False
        #: Start of this number's current stretch of activity (after a silence of a day).
        self.first_ts: float = 0.0
        #: trunk id (``<switch>/<trunk>``) -> [last minute, attempts, conversations] of this
        #: number through that trunk in the last day: where its owner talks, and where else
        #: it shows up
        self.trunks: dict[str, list[int]] = {}
        #: The trunk of this number's newest attempt.
        self.last_trunk: str = ""
        #: Where the newest event folded in came from (see :class:`streams.position.Folded`):
        #: written with the counters, so a replay after a crash skips what they already hold.
        self.folded: Folded | None = None

    # -- updates --------------------------------------------------------------------------
    def add(self, ev: SignalingEvent, cfg: FeatureConfig) -> bool:
        """Fold one event in. Returns False if it is too late to count (caller must meter it)."""
        if ev.ts < self.hwm_ts - cfg.late_grace_s:
            return False
        minute = int(ev.ts // MINUTE_S)
        if ev.ts > self.hwm_ts:
            moved = minute != int(self.hwm_ts // MINUTE_S)
            self.hwm_ts = ev.ts
            if moved:  # the horizon only moves with the minute
                self._evict(minute)
        bucket = self.buckets.get(minute)
        if bucket is None:
            bucket = self.buckets[minute] = [BUCKET_ZERO] * N_SLOTS
        kind = ev.kind
        if kind == "attempt":
            self._add_attempt(ev, minute, bucket, cfg)
        elif kind == "answer":
            bucket[ANSWERED] += 1
        elif kind == "release":
            bucket[RELEASES] += 1
            duration = ev.duration_s or 0.0
            bucket[DUR_SUM] += duration
            if duration < cfg.short_call_s:
                bucket[SHORT] += 1
            elif duration >= cfg.conversation_s:
                seen = self.trunks.get(trunk_id(ev.switch, ev.trunk))
                if seen is not None:
                    seen[2] += 1
        else:
            bucket[_FAIL_SLOT[fail_class(ev.proto, ev.code)]] += 1
        return True

    def _add_attempt(self, ev: SignalingEvent, minute: int, bucket: list[float],
                     cfg: FeatureConfig) -> None:
        bucket[ATTEMPTS] += 1
        self.attempts_total += 1
        if not self.first_ts or ev.ts - self.last_attempt_ts > cfg.caller_new_after_s:
            self.first_ts = ev.ts
        self._add_trunk(trunk_id(ev.switch, ev.trunk), minute, cfg)
        if ev.attest == "A":
            bucket[ATTEST_A] += 1
        elif ev.attest == "C":
            bucket[ATTEST_C] += 1
        value = _callee_value(ev.callee)
        if value >= 0 and self.last_callee >= 0 and \
                0 < abs(value - self.last_callee) <= cfg.sequential_max_step:
            bucket[SEQ] += 1
        self.last_callee = value
        if self.last_attempt_ts and ev.ts >= self.last_attempt_ts:
            gap = ev.ts - self.last_attempt_ts
            if gap <= MAX_RHYTHM_GAP_S:
                bucket[GAP_N] += 1
                bucket[GAP_SUM] += gap
                bucket[GAP_SQ] += gap * gap
        self.last_attempt_ts = max(self.last_attempt_ts, ev.ts)
        key = callee_key(ev.callee)
        callees = self.callees
        last = callees.get(key)
        if last is not None:
            if minute > last:  # newest last: the first key is the least recently dialled
                del callees[key]
                callees[key] = minute
        else:
            if len(callees) >= cfg.distinct_callees_cap:
                del callees[next(iter(callees))]  # O(1); a robot at the cap dials on
            callees[key] = minute

    def _add_trunk(self, trunk: str, minute: int, cfg: FeatureConfig) -> None:
        trunks = self.trunks
        horizon = minute - int(cfg.caller_new_after_s // MINUTE_S)
        for t in [t for t, e in trunks.items() if e[0] <= horizon]:
            del trunks[t]
        entry = trunks.get(trunk)
        if entry is None:
            if len(trunks) >= cfg.trunks_cap:
                del trunks[min(trunks, key=lambda t: trunks[t][0])]
            entry = trunks[trunk] = [minute, 0, 0]
        entry[0] = max(entry[0], minute)
        entry[1] += 1
        self.last_trunk = trunk

    def owner_elsewhere(self, min_share: float = 0.2) -> str:
        """A trunk other than the newest attempt's where this number holds conversations
        (its owner talks there), or "": then calls on another trunk are probably spoofed."""
        for trunk, (_, attempts, talks) in self.trunks.items():
            if trunk != self.last_trunk and talks >= 1 and talks >= min_share * attempts:
                return trunk
        return ""

    def is_new(self, ts: float, cfg: FeatureConfig) -> bool:
        """The number had not called for a day before its current stretch, begun < a day ago."""
        return ts - self.first_ts < cfg.caller_new_after_s

    def _evict(self, now_minute: int) -> None:
        horizon = now_minute - RING_MINUTES
        stale = [m for m in self.buckets if m <= horizon]
        for m in stale:
            del self.buckets[m]
        if stale:
            old = [k for k, m in self.callees.items() if m <= horizon]
            for k in old:
                del self.callees[k]

    # -- reads ----------------------------------------------------------------------------
    @property
    def hwm_minute(self) -> int:
        return int(self.hwm_ts // MINUTE_S)

    def window(self, minutes: int) -> list[float]:
        """Slot sums over the newest ``minutes`` minutes (ending at this caller's newest event)."""
        start = self.hwm_minute - minutes
        total = [0.0] * N_SLOTS
        for m, bucket in self.buckets.items():
            if m > start:
                total = list(map(add, total, bucket))  # the slot loop in C: same sums, 3x faster
        return total

    def distinct_callees(self, minutes: int) -> int:
        start = self.hwm_minute - minutes
        return sum(1 for m in self.callees.values() if m > start)

    def attempts(self, minutes: int) -> int:
        start = self.hwm_minute - minutes
        return int(sum(b[ATTEMPTS] for m, b in self.buckets.items() if m > start))

    def is_idle(self, now_ts: float) -> bool:
        """No traffic within the longest window: the state can be forgotten."""
        return now_ts - self.hwm_ts > RING_MINUTES * MINUTE_S and now_ts > self.action_until

    # -- persistence ----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return orjson.dumps([
            self.hwm_ts, [[m, *b] for m, b in self.buckets.items()],
            list(self.callees.items()), self.last_attempt_ts, self.last_callee,
            self.attempts_total, self.scored_attempts, self.action, self.action_until,
            self.action_score, self.action_dry, self.first_ts,
            [[t, *e] for t, e in self.trunks.items()], self.last_trunk,
            None if self.folded is None else list(self.folded),
        ])

    @classmethod
    def from_bytes(cls, raw: bytes) -> "CallerState":
        row = orjson.loads(raw)
        (hwm, buckets, callees, last_ts, last_callee, total, scored, action, until,
         action_score, action_dry) = row[:11]
        st = cls()
        st.hwm_ts = hwm
        st.buckets = {int(row[0]): list(row[1:]) for row in buckets}
        st.callees = {int(k): int(m) for k, m in callees}
        st.last_attempt_ts = last_ts
        st.last_callee = last_callee
        st.attempts_total = total
        st.scored_attempts = scored
        st.action_dry = action_dry
        st.action = action
        st.action_until = until
        st.action_score = action_score
        # Fields added for the source view (issue 10); states written before them read as a
        # number whose stretch began at its newest event, seen on no trunk yet.
        if len(row) >= 14:
            st.first_ts = row[11]
            st.trunks = {str(r[0]): [int(r[1]), int(r[2]), int(r[3])] for r in row[12]}
            st.last_trunk = row[13]
        else:
            st.first_ts = hwm
        # Added for exact recovery (issue 11); older states read as "nothing known folded".
        if len(row) >= 15 and row[14] is not None:
            st.folded = Folded(*row[14])
        return st


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def gap_cv(n: float, total: float, sq: float) -> float:
    """Coefficient of variation of inter-attempt gaps: low for machine-paced dialing."""
    if n < 2 or total <= 0:
        return 1.0
    mean = total / n
    var = max(sq / n - mean * mean, 0.0)
    return math.sqrt(var) / mean


#: Per-window features of a number, in the order :func:`features` emits them (keys are
#: ``<name>_<window>``, e.g. ``attempts_1h``).
WINDOW_FEATURES = ("attempts", "distinct", "answered", "released", "short", "unallocated",
                   "answer_ratio", "short_ratio", "mean_duration", "fail_ratio",
                   "unallocated_ratio", "rejected_ratio", "busy_no_answer_ratio",
                   "other_fail_ratio", "sequential_ratio", "breadth", "gap_cv", "attest_a_ratio",
                   "attest_c_ratio")
#: The keys per window, built once: formatting them on every score was a tenth of scoring.
_WINDOW_KEYS = {window: tuple(f"{name}_{window}" for name in WINDOW_FEATURES)
                for window in WINDOWS}


def features(state: CallerState) -> dict[str, float]:
    """The feature vector of a caller, per window. Ratios are in [0, 1]; counts are raw."""
    out: dict[str, float] = {}
    for name, minutes in WINDOWS.items():
        w = state.window(minutes)
        attempts = w[ATTEMPTS]
        fails = w[F_UNALLOC] + w[F_BUSY] + w[F_REJECTED] + w[F_OTHER]
        distinct = state.distinct_callees(minutes)
        out.update(zip(_WINDOW_KEYS[name], (
            attempts,
            float(distinct),
            w[ANSWERED],
            w[RELEASES],
            w[SHORT],
            w[F_UNALLOC],
            min(_ratio(w[ANSWERED], attempts), 1.0),
            _ratio(w[SHORT], w[RELEASES]),
            _ratio(w[DUR_SUM], w[RELEASES]),
            min(_ratio(fails, attempts), 1.0),
            min(_ratio(w[F_UNALLOC], attempts), 1.0),
            min(_ratio(w[F_REJECTED], attempts), 1.0),
            min(_ratio(w[F_BUSY], attempts), 1.0),
            min(_ratio(w[F_OTHER], attempts), 1.0),
            min(_ratio(w[SEQ], attempts - 1), 1.0),
            min(_ratio(distinct, attempts), 1.0),
            gap_cv(w[GAP_N], w[GAP_SUM], w[GAP_SQ]),
            min(_ratio(w[ATTEST_A], attempts), 1.0),
            min(_ratio(w[ATTEST_C], attempts), 1.0))))
    return out


#: Distinct callers a pool remembers; past it the least recently seen is forgotten, so
#: ``pool_callers`` saturates here. A trunk carries every caller behind it: unbounded, a big
#: one held millions of entries, and each score scanned them all.
POOL_CALLERS_CAP = 100_000


class PoolCounters:
    """Per-prefix or per-trunk aggregate: distinct active callers and their attempts per hour.

    Snowshoe campaigns spread over hundreds of numbers so that each stays under any per-number
    threshold; the pool as a whole does not. Kept in memory per worker (see README, "Limits").
    """

    __slots__ = ("callers", "by_minute", "attempts", "answered", "short", "releases")

    def __init__(self) -> None:
        #: caller -> newest minute seen
        self.callers: dict[str, int] = {}
        #: minute -> callers whose newest minute it was when seen (stale once they call
        #: again): eviction visits the callers of expired minutes only, not every caller
        self.by_minute: dict[int, list[str]] = {}
        self.attempts: dict[int, int] = {}
        self.answered: dict[int, int] = {}
        self.short: dict[int, int] = {}
        self.releases: dict[int, int] = {}

    def add(self, ev: SignalingEvent, short_call_s: float) -> None:
        minute = int(ev.ts // MINUTE_S)
        if ev.kind == "attempt":
            seen = self.callers.get(ev.caller)
            if seen is None or minute > seen:
                if seen is None and len(self.callers) >= POOL_CALLERS_CAP:
                    self._forget_oldest()
                self.callers[ev.caller] = minute
                bucket = self.by_minute.get(minute)
                if bucket is None:
                    bucket = self.by_minute[minute] = []
                bucket.append(ev.caller)
            self.attempts[minute] = self.attempts.get(minute, 0) + 1
        elif ev.kind == "answer":
            self.answered[minute] = self.answered.get(minute, 0) + 1
        elif ev.kind == "release":
            self.releases[minute] = self.releases.get(minute, 0) + 1
            if (ev.duration_s or 0.0) < short_call_s:
                self.short[minute] = self.short.get(minute, 0) + 1

    def summary(self, now_minute: int, minutes: int = RING_MINUTES) -> dict[str, float]:
        start = now_minute - minutes
        self._evict(start)
        attempts = sum(self.attempts.values())
        releases = sum(self.releases.values())
        return {
            "pool_callers": float(len(self.callers)),
            "pool_attempts": float(attempts),
            "pool_answer_ratio": min(_ratio(sum(self.answered.values()), attempts), 1.0),
            "pool_short_ratio": _ratio(sum(self.short.values()), releases),
        }

    def idle_since(self, start: int) -> bool:
        """True when nothing happened after minute ``start`` (the pool can be forgotten)."""
        self._evict(start)
        return not self.callers and not self.attempts and not self.releases

    def _evict(self, start: int) -> None:
        for d in (self.attempts, self.answered, self.short, self.releases):
            for m in [m for m in d if m <= start]:
                del d[m]
        callers = self.callers
        for minute in [m for m in self.by_minute if m <= start]:
            for caller in self.by_minute.pop(minute):
                if callers.get(caller) == minute:
                    del callers[caller]

    def _forget_oldest(self) -> None:
        """At the cap: forget one caller of the oldest minute (skipping stale entries)."""
        while self.by_minute:
            minute = min(self.by_minute)
            bucket = self.by_minute[minute]
            while bucket:
                caller = bucket.pop()
                if self.callers.get(caller) == minute:
                    del self.callers[caller]
                    if not bucket:
                        del self.by_minute[minute]
                    return
            del self.by_minute[minute]


def fold(events: Iterable[SignalingEvent], cfg: FeatureConfig,
         state: CallerState | None = None) -> CallerState:
    """Fold events into a (new) state: handy for tests and for replays."""
    st = state or CallerState()
    for ev in events:
        st.add(ev, cfg)
    return st
