"""What-if: what a candidate policy would do to the numbers and sources scored recently, before
it is applied.

Pure function over score records: each key's latest :class:`ScoreRecord` in the window is run
through the same decision function the worker runs, once with the live policy and once with
the candidate (fresh state per key, one blast-radius limiter per side and scope, the live
allowlist), so the preview answers with the worker's own logic, not an approximation:

* a number record through :func:`streams.policy.decide`;
* a source record (``ScoreRecord.number`` is ``prefix:<digits>`` or ``trunk:<switch>/<trunk>``)
  through :func:`streams.policy.decide_source` with the policy's scope policy. The source
  stage records which part of a trunk its score is for in the feature ``decision_segment``
  (0: the whole trunk, 1: its neighbour-spoofed calls, 2: its calls without full attestation);
  that part's feature prefix and call match are rebuilt from it. A record without it (or with
  a value this module does not know) is judged as the whole source (segment ``""``, no match).

A key carrying a legitimate label (its latest label's target is 0) that a side would enforce
against is an estimated false positive; for a range, so is any number inside it whose latest
label is legitimate (blocking the range cuts that caller off too).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Iterable, Mapping, Sequence

from streams.policy import (ENFORCING, THRESHOLD_ACTIONS, AllowList, BlockLimiter, CurrentAction,
                            Policy, SourceTarget, decide, decide_source)
from streams.schema import LABEL_TARGET, Decision, Label, ScoreRecord
from streams.scope import (SCOPE_NUMBER, SCOPE_PREFIX, SCOPES, CallMatch, ScopeError,
                           parse_key, split_trunk_id)

#: At most this many changed keys are listed (the total is always given).
CHANGED_CAP = 200
NO_ACTION = "none"
#: Feature the source stage stores its chosen trunk segment in, and what each value means:
#: (feature-name prefix of the segment, which of the trunk's calls it covers).
SEGMENT_FEATURE = "decision_segment"
SEGMENT_ALL, SEGMENT_NEIGHBOUR, SEGMENT_UNVERIFIED = 0, 1, 2
SEGMENT_PREFIXES: dict[int, str] = {SEGMENT_ALL: "", SEGMENT_NEIGHBOUR: "nb_",
                                    SEGMENT_UNVERIFIED: "uv_"}
#: The calls a trunk's "unverified" segment covers: anything not fully (A) attested.
UNVERIFIED_ATTEST: tuple[str, ...] = ("B", "C", "none")
#: Neighbour-spoofing tail when the caller does not say (the worker's default setting).
DEFAULT_NEIGHBOUR_TAIL = 4
WHATIF_EXPLANATION = "what-if replay of the latest score"


def legit_numbers(labels: Mapping[str, Sequence[Label]]) -> set[str]:
    """Numbers (or source keys) whose most recent label says legitimate."""
    out: set[str] = set()
    for number, seen in labels.items():
        if seen and LABEL_TARGET.get(max(seen, key=lambda lb: lb.ts).label) == 0:
            out.add(number)
    return out


def source_of(rec: ScoreRecord, neighbour_tail: int = DEFAULT_NEIGHBOUR_TAIL
              ) -> tuple[SourceTarget, str]:
    """(what a source record's decision would act on, the feature segment it was scored on)."""
    scope, target = parse_key(rec.number)
    if scope == SCOPE_PREFIX:
        return SourceTarget(scope, target), ""
    try:
        switch: str | None = split_trunk_id(target)[0]
    except ScopeError:
        switch = None
    raw = rec.features.get(SEGMENT_FEATURE) if isinstance(rec.features, Mapping) else None
    segment = int(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) \
        and float(raw).is_integer() else SEGMENT_ALL
    match: CallMatch | None = None
    if segment == SEGMENT_NEIGHBOUR:
        match = CallMatch(neighbour_tail=neighbour_tail)
    elif segment == SEGMENT_UNVERIFIED:
        match = CallMatch(attest=UNVERIFIED_ATTEST)
    else:
        segment = SEGMENT_ALL
    return SourceTarget(scope, target, switch, match), SEGMENT_PREFIXES[segment]


def judge(policy: Policy, allow: AllowList, limiters: Mapping[str, BlockLimiter],
          rec: ScoreRecord, now: float, neighbour_tail: int = DEFAULT_NEIGHBOUR_TAIL
          ) -> Decision | None:
    """The decision ``policy`` would make on this record with no history (None: nothing)."""
    scope, _ = parse_key(rec.number)
    feats = rec.features if isinstance(rec.features, Mapping) else {}
    if scope == SCOPE_NUMBER:
        decision, _ = decide(policy, allow, limiters[scope], rec.number, rec.score, feats,
                             CurrentAction(), trigger_ts=rec.ts, decided_at=now)
        return decision
    source, segment = source_of(rec, neighbour_tail)
    decision, _ = decide_source(policy, allow, limiters[scope], source, rec.score, feats,
                                WHATIF_EXPLANATION, CurrentAction(), trigger_ts=rec.ts,
                                decided_at=now, segment=segment)
    return decision


def _actions(policy: Policy, allow: AllowList, records: Sequence[ScoreRecord], now: float,
             neighbour_tail: int) -> dict[str, tuple[str, bool]]:
    """key -> (action or NO_ACTION, enforced: acts on traffic for real)."""
    limiters = {scope: BlockLimiter() for scope in SCOPES}
    out: dict[str, tuple[str, bool]] = {}
    for rec in records:
        decision = judge(policy, allow, limiters, rec, now, neighbour_tail)
        if decision is None:
            out[rec.number] = (NO_ACTION, False)
        else:
            out[rec.number] = (decision.action,
                               decision.action in ENFORCING and not decision.dry_run)
    return out


def _hits_legit(key: str, legit: set[str], legit_sorted: Sequence[str]) -> bool:
    """Whether enforcing against ``key`` would cut off a caller labelled legitimate."""
    if key in legit:
        return True
    scope, target = parse_key(key)
    if scope != SCOPE_PREFIX:
        return False
    i = bisect_left(legit_sorted, target)
    return i < len(legit_sorted) and legit_sorted[i].startswith(target)


def what_if(records: Iterable[ScoreRecord], current: Policy, candidate: Policy,
            allow: AllowList, labels: Mapping[str, Sequence[Label]], now: float,
            window_s: float, changed_cap: int = CHANGED_CAP,
            neighbour_tail: int = DEFAULT_NEIGHBOUR_TAIL) -> dict[str, Any]:
    latest: dict[str, ScoreRecord] = {}
    for rec in records:
        if rec.number not in latest or rec.ts >= latest[rec.number].ts:
            latest[rec.number] = rec
    ordered = sorted(latest.values(), key=lambda r: (r.ts, r.number))
    legit = legit_numbers(labels)
    legit_sorted = sorted(legit)
    before = _actions(current, allow, ordered, now, neighbour_tail)
    after = _actions(candidate, allow, ordered, now, neighbour_tail)
    scope_of = {r.number: parse_key(r.number)[0] for r in ordered}
    risky = {r.number for r in ordered if _hits_legit(r.number, legit, legit_sorted)}

    def counts(side: dict[str, tuple[str, bool]], scope: str | None = None) -> dict[str, int]:
        c = {a: 0 for a in THRESHOLD_ACTIONS}
        for key, (action, _) in side.items():
            if action in c and (scope is None or scope_of[key] == scope):
                c[action] += 1
        return c

    def false_positives(side: dict[str, tuple[str, bool]]) -> int:
        return sum(1 for n, (_, enforced) in side.items() if enforced and n in risky)

    changed = [{"number": r.number, "scope": scope_of[r.number],
                "from": before[r.number][0], "to": after[r.number][0],
                "score": r.score, "legit_label": r.number in risky}
               for r in ordered if before[r.number][0] != after[r.number][0]]
    changed.sort(key=lambda c: (-c["score"], c["number"]))
    keys_by_scope = {scope: sum(1 for s in scope_of.values() if s == scope) for scope in SCOPES}
    return {"window_s": window_s, "numbers": keys_by_scope[SCOPE_NUMBER],
            "keys": len(ordered), "keys_by_scope": keys_by_scope,
            "current": counts(before), "candidate": counts(after),
            "by_scope": {scope: {"current": counts(before, scope),
                                 "candidate": counts(after, scope)} for scope in SCOPES},
            "current_version": current.version,
            "estimated_false_positives": {"current": false_positives(before),
                                          "candidate": false_positives(after)},
            "changed": changed[:changed_cap], "changed_total": len(changed)}


__all__ = ["what_if", "judge", "source_of", "legit_numbers"]
