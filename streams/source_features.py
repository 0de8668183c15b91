"""Per-source windowed counters on event time: what a trunk or a number range is sending.

A robot that shows a fresh number on every call leaves nothing for a per-number counter to
see, but its calls still enter through one trunk and often come from one number range. This
module keeps, per source key (``trunk:<switch>/<trunk>`` or ``prefix:<digits>``), the same kind
of one-bucket-per-interval ring the per-number state keeps, and turns it into features.

A trunk may carry people and a campaign at once. So trunk counters are kept per *segment*:
all calls, the calls whose caller copies the callee's number block ("neighbour" callers,
:func:`streams.scope.is_neighbour`), and the calls without full (A) attestation. A segment
is exactly what a narrowed trunk decision (:class:`streams.scope.CallMatch`) covers, so the
detector can judge the offending part of a trunk on its own evidence. Ranges keep one segment.

Buckets are five minutes wide: a source decision needs an hour of evidence, not minute
precision, and wide buckets keep a busy trunk's state a few kilobytes. Everything here is pure
Python without Kafka (see :mod:`streams.source_detector` for who calls it).

Examples
--------
>>> cfg = SourceConfig()
>>> st = SourceState(TRUNK_SEGMENTS)
>>> ev = SourceEvent("trunk:sw-1/tk-1", 1_800_000_000.0, "attempt", "sip", "c1",
...                  "8613800000001", "8613912345678", attest="C", caller_new=True)
>>> st.add(ev, cfg)
True
>>> f = features(st)
>>> f["attempts_1h"], f["uv_attempts_1h"], f["nb_attempts_1h"], f["new_caller_share_1h"]
(1.0, 1.0, 0.0, 1.0)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from operator import add
from typing import Any

import orjson

from streams.features import (BUCKET_ZERO, FAIL_BUSY_NO_ANSWER, FAIL_OTHER, FAIL_REJECTED,
                              FAIL_UNALLOCATED, fail_class)
from streams.position import Origins
from streams.schema import SourceEvent
from streams.scope import (SEGMENT_ALL, SEGMENT_NEIGHBOUR, SEGMENT_UNVERIFIED, is_neighbour,
                           range_of)

BUCKET_S = 300
#: Window lengths in buckets; names are used in feature keys and reasons.
WINDOWS: dict[str, int] = {"10m": 2, "1h": 12}
RING_BUCKETS = max(WINDOWS.values())
#: A day of calls and conversations per segment, in hourly buckets: people who share a trunk
#: with a campaign may all be asleep in the hour it dials, but not all day.
DAY_HOURS = 24
HOUR_S = 3600
#: State format version, first element of the serialised list (a new field bumps it; readers
#: of an older version fill defaults, see :meth:`SourceState.from_bytes`).
STATE_VERSION = 2
#: Version 1 had no origin positions: read as "nothing known folded".
READABLE_VERSIONS = (1, 2)

# Slots of one segment in a bucket.
ATTEMPTS, ANSWERED, RELEASES, SHORT, CONV, DUR_SUM, F_UNALLOC, F_BUSY, F_REJECTED, F_OTHER, \
    NEW, SPOOFED, ATTEST_A, ATTEST_C, ATTEST_NONE, PROTECTED = range(16)
N_SLOTS = 16
_FAIL_SLOT = {FAIL_UNALLOCATED: F_UNALLOC, FAIL_BUSY_NO_ANSWER: F_BUSY,
              FAIL_REJECTED: F_REJECTED, FAIL_OTHER: F_OTHER}

# Segments: feature-name prefix of each. A range has only the first.
SEG_ALL, SEG_NEIGHBOUR, SEG_UNVERIFIED = 0, 1, 2
SEGMENT_PREFIX: tuple[str, ...] = (SEGMENT_ALL, SEGMENT_NEIGHBOUR, SEGMENT_UNVERIFIED)
TRUNK_SEGMENTS = 3
RANGE_SEGMENTS = 1
#: Bits of a call remembered between its attempt and its outcome (attestation is only on the
#: attempt, so the outcome learns its segment from here).
_BIT_NEIGHBOUR, _BIT_UNVERIFIED = 1, 2

#: Source kinds (a metric label): trunks, and caller-number ranges (prefix decisions).
KIND_TRUNK = "trunk"
KIND_RANGE = "range"


@dataclass(frozen=True)
class SourceConfig:
    short_call_s: float = 10.0
    conversation_s: float = 60.0
    neighbour_tail: int = 4
    distinct_cap: int = 512
    #: Events reach the source stage out of order: the number stage re-keys them from many
    #: partitions, each at its own pace (a replay or a backlog shuffles whole minutes). So
    #: anything inside the window still counts; only what fell out of it is late.
    late_grace_s: float = float(RING_BUCKETS * BUCKET_S)
    #: Calls in progress remembered per trunk for their segment (in memory only).
    open_calls_cap: int = 4096

    @classmethod
    def of(cls, settings: Any) -> "SourceConfig":
        return cls(short_call_s=settings.short_call_s,
                   conversation_s=settings.source_conversation_s,
                   neighbour_tail=settings.source_neighbour_tail,
                   distinct_cap=settings.source_distinct_cap)


def source_kind(key: str) -> str:
    """``trunk`` for ``trunk:<switch>/<trunk>``, ``range`` for ``prefix:<digits>``."""
    return KIND_TRUNK if key.startswith(KIND_TRUNK + ":") else KIND_RANGE


def _key32(text: str) -> int:
    return zlib.crc32(text.encode())


def _remember(d: dict[int, int], key: int, bucket: int, cap: int) -> None:
    """Last bucket of ``key``; past ``cap`` entries the least recently seen is forgotten.

    A key seen in a newer bucket moves to the end, so the dict's first key is the least
    recently seen and forgetting it costs O(1) (a scan for the oldest cost tens of
    microseconds per event on a trunk at its cap: every live call brings a new caller).
    """
    old = d.get(key)
    if old is not None:
        if bucket > old:
            del d[key]
            d[key] = bucket
        return
    if len(d) >= cap:
        del d[next(iter(d))]
    d[key] = bucket


class SourceState:
    """Windowed counters of one trunk or range plus the decision the policy holds for it."""

    __slots__ = ("segments", "hwm_ts", "first_ts", "buckets", "hours", "callers", "callees",
                 "ranges",
                 "attempts_total", "scored_attempts", "action", "action_until",
                 "action_score", "action_dry", "action_match", "open_calls", "origins")

    def __init__(self, segments: int) -> None:
        self.segments = segments
        self.hwm_ts = 0.0
        #: Oldest event of the current stretch of traffic (reset after an idle window).
        self.first_ts = 0.0
        #: bucket index -> segments * N_SLOTS counters
        self.buckets: dict[int, list[float]] = {}
        #: hour index -> [attempts, conversations] per segment, over the last day
        self.hours: dict[int, list[int]] = {}
        #: caller key -> [last bucket, attempts, segment bits, conversations] (distinct
        #: callers per segment, callers seen once, calls from numbers busy enough for the
        #: number view, callers who held a real conversation: "talkers", i.e. people)
        self.callers: dict[int, list[int]] = {}
        #: callee key -> last bucket
        self.callees: dict[int, int] = {}
        #: caller range key -> last bucket (how widely the callers are spread)
        self.ranges: dict[int, int] = {}
        self.attempts_total = 0
        self.scored_attempts = 0
        self.action = ""
        self.action_until = 0.0
        self.action_score = 0.0
        self.action_dry = False
        #: The CallMatch (as a dict) of the action in force, None = the whole source.
        self.action_match: dict[str, Any] | None = None
        self.open_calls: dict[int, int] = {}
        #: Newest event folded in, per origin partition: replays after a crash are skipped.
        self.origins = Origins()

    # -- updates --------------------------------------------------------------------------
    def add(self, ev: SourceEvent, cfg: SourceConfig, protected: bool = False) -> bool:
        """Fold one event in. False if it is too late to count (the caller meters it)."""
        if ev.ts < self.hwm_ts - cfg.late_grace_s:
            return False
        bucket_no = int(ev.ts // BUCKET_S)
        if ev.ts > self.hwm_ts:
            if ev.ts - self.hwm_ts > RING_BUCKETS * BUCKET_S:
                self.first_ts = ev.ts  # idle for a whole window: a new stretch
            moved = bucket_no != int(self.hwm_ts // BUCKET_S)
            self.hwm_ts = ev.ts
            if moved:  # the horizon only moves with the bucket
                self._evict(bucket_no)
        if not self.first_ts or ev.ts < self.first_ts:
            self.first_ts = ev.ts
        bucket = self.buckets.get(bucket_no)
        if bucket is None:
            bucket = self.buckets[bucket_no] = [BUCKET_ZERO] * (N_SLOTS * self.segments)
        segs = self._segments(ev, cfg)
        kind = ev.kind
        people = ev.caller_class is None  # "anonymous" is not one caller
        if kind == "attempt":
            self.attempts_total += 1
            if people:
                self._add_people(ev, bucket_no, cfg, segs)
        elif people and kind == "release" and (ev.duration_s or 0.0) >= cfg.conversation_s:
            talker = self.callers.get(_key32(ev.caller))
            if talker is not None:
                talker[3] += 1
        if kind == "attempt" or (kind == "release" and
                                 (ev.duration_s or 0.0) >= cfg.conversation_s):
            hour = self.hours.get(int(ev.ts // HOUR_S))
            if hour is None:
                hour = self.hours[int(ev.ts // HOUR_S)] = [0] * (2 * self.segments)
            for seg in segs:
                hour[2 * seg + (kind != "attempt")] += 1
        for seg in segs:
            b = seg * N_SLOTS
            if kind == "attempt":
                bucket[b + ATTEMPTS] += 1
                if ev.caller_new:
                    bucket[b + NEW] += 1
                if ev.caller_trunks > 1:
                    bucket[b + SPOOFED] += 1
                if ev.attest == "A":
                    bucket[b + ATTEST_A] += 1
                elif ev.attest == "C":
                    bucket[b + ATTEST_C] += 1
                elif ev.attest is None:
                    bucket[b + ATTEST_NONE] += 1
                if protected:
                    bucket[b + PROTECTED] += 1
            elif kind == "answer":
                bucket[b + ANSWERED] += 1
            elif kind == "release":
                duration = ev.duration_s or 0.0
                bucket[b + RELEASES] += 1
                bucket[b + DUR_SUM] += duration
                if duration < cfg.short_call_s:
                    bucket[b + SHORT] += 1
                if duration >= cfg.conversation_s:
                    bucket[b + CONV] += 1
            else:
                bucket[b + _FAIL_SLOT[fail_class(ev.proto, ev.code)]] += 1
        return True

    def _segments(self, ev: SourceEvent, cfg: SourceConfig) -> tuple[int, ...]:
        if self.segments == RANGE_SEGMENTS:
            return (SEG_ALL,)
        call = _key32(ev.call_id)
        if ev.kind == "attempt":
            bits = (_BIT_NEIGHBOUR if is_neighbour(ev.caller, ev.callee, cfg.neighbour_tail)
                    else 0) | (_BIT_UNVERIFIED if ev.attest != "A" else 0)
            if len(self.open_calls) >= cfg.open_calls_cap:
                del self.open_calls[next(iter(self.open_calls))]
            self.open_calls[call] = bits
        else:
            bits = self.open_calls.get(call, -1)
            if ev.kind in ("release", "fail"):
                self.open_calls.pop(call, None)
            if bits < 0:  # attempt not seen (evicted, restarted): neighbour is in the event
                bits = _BIT_NEIGHBOUR if is_neighbour(ev.caller, ev.callee,
                                                      cfg.neighbour_tail) else 0
        segs = [SEG_ALL]
        if bits & _BIT_NEIGHBOUR:
            segs.append(SEG_NEIGHBOUR)
        if bits & _BIT_UNVERIFIED:
            segs.append(SEG_UNVERIFIED)
        return tuple(segs)

    def _add_people(self, ev: SourceEvent, bucket_no: int, cfg: SourceConfig,
                    segs: tuple[int, ...]) -> None:
        key = _key32(ev.caller)
        bits = sum(1 << seg for seg in segs)
        entry = self.callers.get(key)
        if entry is not None:
            if bucket_no > entry[0]:  # least recently seen first, as in _remember
                entry[0] = bucket_no
                del self.callers[key]
                self.callers[key] = entry
            entry[1] += 1
            entry[2] |= bits
        else:
            if len(self.callers) >= cfg.distinct_cap:
                del self.callers[next(iter(self.callers))]
            self.callers[key] = [bucket_no, 1, bits, 0]
        _remember(self.callees, _key32(ev.callee), bucket_no, cfg.distinct_cap)
        rng = range_of(ev.caller, cfg.neighbour_tail)
        if rng:
            _remember(self.ranges, _key32(rng), bucket_no, cfg.distinct_cap)

    def _evict(self, now_bucket: int) -> None:
        day_horizon = now_bucket * BUCKET_S // HOUR_S - DAY_HOURS
        for h in [h for h in self.hours if h <= day_horizon]:
            del self.hours[h]
        horizon = now_bucket - RING_BUCKETS
        stale = [b for b in self.buckets if b <= horizon]
        for b in stale:
            del self.buckets[b]
        if stale:
            for k in [k for k, e in self.callers.items() if e[0] <= horizon]:
                del self.callers[k]
            for d in (self.callees, self.ranges):
                for k in [k for k, b in d.items() if b <= horizon]:
                    del d[k]

    # -- reads ----------------------------------------------------------------------------
    @property
    def hwm_bucket(self) -> int:
        return int(self.hwm_ts // BUCKET_S)

    def window(self, buckets: int) -> list[float]:
        start = self.hwm_bucket - buckets
        total = [0.0] * (N_SLOTS * self.segments)
        for b, values in self.buckets.items():
            if b > start:
                total = list(map(add, total, values))  # as CallerState.window
        return total

    def attempts(self, buckets: int = RING_BUCKETS) -> int:
        start = self.hwm_bucket - buckets
        return int(sum(v[ATTEMPTS] for b, v in self.buckets.items() if b > start))

    def is_idle(self, now_ts: float) -> bool:
        """Nothing within the longest window and no action in force: forget it."""
        return now_ts - self.hwm_ts > RING_BUCKETS * BUCKET_S and now_ts > self.action_until

    # -- persistence ----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return orjson.dumps([
            STATE_VERSION, self.segments, self.hwm_ts, self.first_ts,
            [[b, *v] for b, v in self.buckets.items()],
            [[h, *v] for h, v in self.hours.items()],
            [[k, *e] for k, e in self.callers.items()], list(self.callees.items()),
            list(self.ranges.items()), self.attempts_total, self.scored_attempts, self.action,
            self.action_until, self.action_score, self.action_dry, self.action_match,
            self.origins.to_list(),
        ])

    @classmethod
    def from_bytes(cls, raw: bytes) -> "SourceState":
        row = orjson.loads(raw)
        if not isinstance(row, list) or not row or row[0] not in READABLE_VERSIONS:
            raise ValueError(f"source state of an unknown version: {raw[:40]!r}")
        (_, segments, hwm, first, buckets, hours, callers, callees, ranges, total, scored,
         action, until, score, dry, match) = row[:16]
        st = cls(segments)
        st.hwm_ts, st.first_ts = hwm, first
        st.buckets = {int(r[0]): list(r[1:]) for r in buckets}
        st.hours = {int(r[0]): [int(v) for v in r[1:]] for r in hours}
        st.callers = {int(r[0]): [int(r[1]), int(r[2]), int(r[3]), int(r[4])]
                      for r in callers}
        st.callees = {int(k): int(b) for k, b in callees}
        st.ranges = {int(k): int(b) for k, b in ranges}
        st.attempts_total, st.scored_attempts = total, scored
        st.action, st.action_until, st.action_score, st.action_dry = action, until, score, dry
        st.action_match = match
        if row[0] >= 2:
            st.origins = Origins.from_list(row[16])
        return st


def _ratio(num: float, den: float) -> float:
    return min(num / den, 1.0) if den > 0 else 0.0


#: Calls in the window that make a caller "heavy" unless told otherwise: the number view's
#: default evidence for enforcing (``Policy.min_attempts``).
HEAVY_CALLER_CALLS = 30


def features(st: SourceState, heavy_caller_calls: int = HEAVY_CALLER_CALLS) -> dict[str, float]:
    """Feature vector of a source: per segment over the hour, plus who calls through it.

    ``heavy_caller_calls``: a caller with this many calls in the window has enough evidence
    for the number view to act on it alone (pass the live policy's ``min_attempts``).
    """
    out: dict[str, float] = {}
    hour = st.window(WINDOWS["1h"])
    ten = st.window(WINDOWS["10m"])
    start = st.hwm_bucket - WINDOWS["1h"]
    callers = [e for e in st.callers.values() if e[0] > start]
    day = [0] * (2 * st.segments)
    for values in st.hours.values():
        for i, v in enumerate(values):
            day[i] += v
    for seg in range(st.segments):
        p = SEGMENT_PREFIX[seg]
        w = hour[seg * N_SLOTS:(seg + 1) * N_SLOTS]
        attempts = w[ATTEMPTS]
        fails = w[F_UNALLOC] + w[F_BUSY] + w[F_REJECTED] + w[F_OTHER]
        out[p + "attempts_1h"] = attempts
        out[p + "attempts_10m"] = ten[seg * N_SLOTS + ATTEMPTS]
        out[p + "answered_1h"] = w[ANSWERED]
        out[p + "released_1h"] = w[RELEASES]
        out[p + "short_1h"] = w[SHORT]
        out[p + "conversations_1h"] = w[CONV]
        out[p + "settled_1h"] = w[ANSWERED] + fails
        out[p + "answer_ratio_1h"] = _ratio(w[ANSWERED], attempts)
        out[p + "short_ratio_1h"] = _ratio(w[SHORT], w[RELEASES])
        out[p + "conversation_share_1h"] = _ratio(w[CONV], attempts)
        out[p + "mean_duration_1h"] = w[DUR_SUM] / w[RELEASES] if w[RELEASES] else 0.0
        out[p + "unallocated_ratio_1h"] = _ratio(w[F_UNALLOC], attempts)
        out[p + "rejected_ratio_1h"] = _ratio(w[F_REJECTED], attempts)
        out[p + "busy_no_answer_ratio_1h"] = _ratio(w[F_BUSY], attempts)
        out[p + "new_caller_share_1h"] = _ratio(w[NEW], attempts)
        out[p + "spoofed_share_1h"] = _ratio(w[SPOOFED], attempts)
        out[p + "attest_a_ratio_1h"] = _ratio(w[ATTEST_A], attempts)
        out[p + "attest_c_ratio_1h"] = _ratio(w[ATTEST_C], attempts)
        out[p + "attest_none_ratio_1h"] = _ratio(w[ATTEST_NONE], attempts)
        out[p + "protected_1h"] = w[PROTECTED]
        mine = [e for e in callers if e[2] >> seg & 1]
        out[p + "distinct_callers_1h"] = float(len(mine))
        out[p + "heavy_caller_share_1h"] = _ratio(
            sum(e[1] for e in mine if e[1] >= heavy_caller_calls), attempts)
        out[p + "talkers_1h"] = float(sum(1 for e in mine if e[3] > 0))
        out[p + "attempts_24h"] = float(day[2 * seg])
        out[p + "conversations_24h"] = float(day[2 * seg + 1])
    out["observed_s"] = min(st.hwm_ts - st.first_ts, float(RING_BUCKETS * BUCKET_S))
    out["callers_once_share_1h"] = _ratio(sum(1 for e in callers if e[1] == 1), len(callers))
    out["distinct_callees_1h"] = float(sum(1 for b in st.callees.values() if b > start))
    out["caller_range_spread_1h"] = _ratio(sum(1 for b in st.ranges.values() if b > start),
                                           len(callers))
    if st.segments == TRUNK_SEGMENTS:
        out["neighbour_share_1h"] = _ratio(out["nb_attempts_1h"], out["attempts_1h"])
        out["unverified_share_1h"] = _ratio(out["uv_attempts_1h"], out["attempts_1h"])
    return out


def segment_view(feats: dict[str, float], prefix: str) -> dict[str, float]:
    """The features of one segment under the plain names (what the scorer and the gates read),
    with the source-wide ones (callers, callees, spread) alongside."""
    if not prefix:
        return feats
    narrowed = SEGMENT_PREFIX[1:]
    out = {k: v for k, v in feats.items() if not k.startswith(narrowed)}
    out.update({k[len(prefix):]: v for k, v in feats.items() if k.startswith(prefix)})
    return out


def _count(value: float, cap: int) -> str:
    return f"{value:,.0f}+" if value >= cap else f"{value:,.0f}"


def explain(feats: dict[str, float], cap: int, short_call_s: float = 10.0) -> str:
    """What a NOC engineer reads: the counters behind a source score, in words."""
    def pct(x: float) -> str:
        return f"{100 * x:.0f}%"
    parts = [f"{feats.get('attempts_1h', 0):,.0f} calls in 1 h from "
             f"{_count(feats.get('distinct_callers_1h', 0), cap)} distinct numbers",
             f"{pct(feats.get('new_caller_share_1h', 0))} new to the network",
             f"{pct(feats.get('answer_ratio_1h', 0))} answered"]
    if feats.get("released_1h", 0) > 0:
        parts.append(f"{pct(feats.get('short_ratio_1h', 0))} of answered calls under "
                     f"{short_call_s:g} s")
    parts.append(f"{pct(feats.get('conversation_share_1h', 0))} real conversations")
    if feats.get("unallocated_ratio_1h", 0) >= 0.05:
        parts.append(f"{pct(feats['unallocated_ratio_1h'])} to unallocated numbers")
    if feats.get("spoofed_share_1h", 0) >= 0.05:
        parts.append(f"{pct(feats['spoofed_share_1h'])} from numbers also seen on other trunks")
    return ", ".join(parts)
