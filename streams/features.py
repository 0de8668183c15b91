"""Per-number windowed counters on event time, and the feature math over them.

State per caller (:class:`CallerState`) is a ring of one-minute buckets (sparse: only minutes
with traffic are stored) covering the longest window, plus a bounded map of recently dialled
callees for distinct counts (the least recently dialled is forgotten at the cap), the trunks the
number was seen on in the last day (attempts and real conversations per trunk: where its owner
talks), the decision state the policy keeps for it and the position of the newest event folded
in (:mod:`streams.position`). Windows of 1, 10 and 60 minutes are sums over the newest buckets,
so one update serves all three (hopping windows with a one-minute hop). An event later than
``late_grace_s`` behind the caller's newest is not counted.

The state and the prefix/trunk pools (:class:`PoolCounters`) are folded by the compiled number
stage, :mod:`streams._native` (``streams/native/src/state.rs``, ``pool.rs``): that runs for
every event. Everything a decision reads is computed here, in Python, without Kafka: the worker
asks :func:`features` and :func:`pool_features` for the vector the model scores.

>>> st = fold([SignalingEvent(ts=600.0, proto="sip", kind="attempt", call_id="c1",
...                           caller="8613800138000", callee="8613900139000")], FeatureConfig())
>>> features(st)["attempts_1h"], CallerState.from_bytes(st.to_bytes()).attempts_total
(1.0, 1)

Time is the *event's* time, never the wall clock: a replay or a simulation running faster than
real time yields the same counters as live traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from streams._native import CallerState, PoolCounters, SLOT_NAMES, set_fail_codes
from streams.schema import (ISUP_BUSY_OR_NO_ANSWER, ISUP_REJECTED, ISUP_UNALLOCATED,
                            SIP_BUSY_OR_NO_ANSWER, SIP_REJECTED, SIP_UNALLOCATED,
                            SignalingEvent)

MINUTE_S = 60
#: Window lengths in minutes; names are used in feature keys and in reasons.
WINDOWS: dict[str, int] = {"1m": 1, "10m": 10, "1h": 60}
RING_MINUTES = max(WINDOWS.values())

# Bucket slots: one flat list per minute keeps the serialised state small. Counts are written
# as integers (``1``, not ``1.0``), sums (durations, gaps) keep their fraction.
ATTEMPTS, ANSWERED, RELEASES, SHORT, DUR_SUM, F_UNALLOC, F_BUSY, F_REJECTED, F_OTHER, SEQ, \
    GAP_N, GAP_SUM, GAP_SQ, ATTEST_A, ATTEST_C = range(15)
N_SLOTS = 15
#: A new bucket's slots start as int 0, not 0.0 (the source stage's buckets, in Python): the
#: counts then stay ints, which CPython shares below 257 where each float is an object of its
#: own, and which JSON writes as ``1`` rather than ``1.0``.
BUCKET_ZERO = 0

FAIL_UNALLOCATED = "unallocated"
FAIL_BUSY_NO_ANSWER = "busy_no_answer"
FAIL_REJECTED = "rejected"
FAIL_OTHER = "other"
#: Gaps longer than this are pauses between bursts, not the rhythm of one burst (folded in
#: ``state.rs``; the rhythm features read the gaps it kept).
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


# The state itself (``CallerState``) and the pools (``PoolCounters``) are folded by the
# compiled number stage, ``streams._native`` (streams/native/src/state.rs and pool.rs): they
# run for every event, and in Python they were most of the worker's time. Their rules are
# the ones documented here and in the module docstring; the slot order above is theirs
# (``SLOT_NAMES``, held equal by a test), and the fail classes count the codes of
# ``streams.schema``, given to them here once:
set_fail_codes([sorted(SIP_UNALLOCATED), sorted(SIP_BUSY_OR_NO_ANSWER), sorted(SIP_REJECTED)],
               [sorted(ISUP_UNALLOCATED), sorted(ISUP_BUSY_OR_NO_ANSWER), sorted(ISUP_REJECTED)])


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
#: What a pool summary holds (``PoolCounters.summary``: distinct active callers, their
#: attempts, answer and short-call ratios over the hour), named per pool kind by
#: :func:`pool_features`. Snowshoe campaigns spread over hundreds of numbers so that each
#: stays under any per-number threshold; the pool of their prefix or trunk does not.
POOL_FEATURES = ("callers", "attempts", "answer_ratio", "short_ratio")
POOL_PREFIX = "pool_"
TRUNK_POOL_PREFIX = "trunk_"


def pool_features(summary: Iterable[float] | None, prefix: str = POOL_PREFIX
                  ) -> dict[str, float]:
    """A pool summary as features (``pool_callers``, ``trunk_callers``, ...); {} for none."""
    if summary is None:
        return {}
    return {prefix + name: float(v) for name, v in zip(POOL_FEATURES, summary)}


def fold(events: Iterable[SignalingEvent], cfg: FeatureConfig,
         state: CallerState | None = None) -> CallerState:
    """Fold events into a (new) state: handy for tests and for replays."""
    st = state or CallerState()
    for ev in events:
        st.add(ev, cfg)
    return st
