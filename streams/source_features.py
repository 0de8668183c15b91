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
precision, and wide buckets keep a busy trunk's state a few kilobytes. The state is folded by
the compiled source stage (:mod:`streams._native`); the features here are plain Python
without Kafka (see :mod:`streams.source_detector` for who calls it).

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

import math
from dataclasses import dataclass
from typing import Any

from streams._native import SOURCE_SLOT_NAMES, SourceState
from streams.schema import SourceEvent
from streams.scope import SEGMENT_ALL, SEGMENT_NEIGHBOUR, SEGMENT_UNVERIFIED

BUCKET_S = 300
#: Window lengths in buckets; names are used in feature keys and reasons.
WINDOWS: dict[str, int] = {"10m": 2, "1h": 12}
RING_BUCKETS = max(WINDOWS.values())
#: A day of calls and conversations per segment, in hourly buckets: people who share a trunk
#: with a campaign may all be asleep in the hour it dials, but not all day.
DAY_HOURS = 24
HOUR_S = 3600
#: The state's wire form is a list whose first element is its version (2: with origin
#: positions; version 1, without, still reads as "nothing known folded"): source_state.rs.

# Slots of one segment in a bucket.
ATTEMPTS, ANSWERED, RELEASES, SHORT, CONV, DUR_SUM, F_UNALLOC, F_BUSY, F_REJECTED, F_OTHER, \
    NEW, SPOOFED, ATTEST_A, ATTEST_C, ATTEST_NONE, PROTECTED = range(16)
N_SLOTS = 16

# Segments: feature-name prefix of each. A range has only the first.
SEG_ALL, SEG_NEIGHBOUR, SEG_UNVERIFIED = 0, 1, 2
SEGMENT_PREFIX: tuple[str, ...] = (SEGMENT_ALL, SEGMENT_NEIGHBOUR, SEGMENT_UNVERIFIED)
TRUNK_SEGMENTS = 3
RANGE_SEGMENTS = 1

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


# The state itself (``SourceState``) is folded by the compiled source stage,
# ``streams._native`` (streams/native/src/source_state.rs), by the rules above and those of
# the module docstring: per segment, an attempt counts its caller (new to the network,
# probably spoofed), attestation and protected callers; an answer, a release (short call,
# conversation, duration) or a fail class counts in the segments of its call (the attempt's,
# remembered per trunk: attestation is only on the attempt); distinct callers, callees and
# caller ranges are capped at ``distinct_cap`` (the least recently seen leave first); hours
# keep attempts and conversations for a day. Its slot order is the one above
# (``SOURCE_SLOT_NAMES``, held equal by a test).


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
    # A caller with ``heavy_caller_calls`` calls or more (calls are whole: a fractional
    # threshold counts from the next whole call).
    callers, once, per_segment = st.caller_summary(start, math.ceil(heavy_caller_calls))
    day = st.day_totals()
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
        distinct, heavy_calls, talkers = per_segment[seg]
        out[p + "distinct_callers_1h"] = float(distinct)
        out[p + "heavy_caller_share_1h"] = _ratio(heavy_calls, attempts)
        out[p + "talkers_1h"] = float(talkers)
        out[p + "attempts_24h"] = float(day[2 * seg])
        out[p + "conversations_24h"] = float(day[2 * seg + 1])
    out["observed_s"] = min(st.hwm_ts - st.first_ts, float(RING_BUCKETS * BUCKET_S))
    out["callers_once_share_1h"] = _ratio(once, callers)
    out["distinct_callees_1h"] = float(st.callees_since(start))
    out["caller_range_spread_1h"] = _ratio(st.ranges_since(start), callers)
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
