"""What-if: what a candidate policy would do to the numbers scored recently, before it is applied.

Pure function over score records: each number's latest :class:`ScoreRecord` in the window is
run through the same :func:`streams.policy.decide` the worker runs, once with the live policy
and once with the candidate (fresh state per number, one blast-radius limiter per side, the
live allowlist), so the preview answers with the worker's own logic, not an approximation.
A number carrying a legitimate label (its latest label's target is 0) that a side would
enforce against is an estimated false positive.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from streams.policy import (ENFORCING, THRESHOLD_ACTIONS, AllowList, BlockLimiter, CurrentAction,
                            Policy, decide)
from streams.schema import LABEL_TARGET, Label, ScoreRecord

#: At most this many changed numbers are listed (the total is always given).
CHANGED_CAP = 200
NO_ACTION = "none"


def legit_numbers(labels: Mapping[str, Sequence[Label]]) -> set[str]:
    """Numbers whose most recent label says legitimate."""
    out: set[str] = set()
    for number, seen in labels.items():
        if seen and LABEL_TARGET.get(max(seen, key=lambda lb: lb.ts).label) == 0:
            out.add(number)
    return out


def _actions(policy: Policy, allow: AllowList, records: Sequence[ScoreRecord],
             now: float) -> dict[str, tuple[str, bool]]:
    """number -> (action or NO_ACTION, enforced: acts on traffic for real)."""
    limiter = BlockLimiter()
    out: dict[str, tuple[str, bool]] = {}
    for rec in records:
        decision, _ = decide(policy, allow, limiter, rec.number, rec.score, rec.features,
                             CurrentAction(), trigger_ts=rec.ts, decided_at=now)
        if decision is None:
            out[rec.number] = (NO_ACTION, False)
        else:
            out[rec.number] = (decision.action,
                               decision.action in ENFORCING and not decision.dry_run)
    return out


def what_if(records: Iterable[ScoreRecord], current: Policy, candidate: Policy,
            allow: AllowList, labels: Mapping[str, Sequence[Label]], now: float,
            window_s: float, changed_cap: int = CHANGED_CAP) -> dict[str, Any]:
    latest: dict[str, ScoreRecord] = {}
    for rec in records:
        if rec.number not in latest or rec.ts >= latest[rec.number].ts:
            latest[rec.number] = rec
    ordered = sorted(latest.values(), key=lambda r: (r.ts, r.number))
    legit = legit_numbers(labels)
    before = _actions(current, allow, ordered, now)
    after = _actions(candidate, allow, ordered, now)

    def counts(side: dict[str, tuple[str, bool]]) -> dict[str, int]:
        c = {a: 0 for a in THRESHOLD_ACTIONS}
        for action, _ in side.values():
            if action in c:
                c[action] += 1
        return c

    def false_positives(side: dict[str, tuple[str, bool]]) -> int:
        return sum(1 for n, (_, enforced) in side.items() if enforced and n in legit)

    changed = [{"number": r.number, "from": before[r.number][0], "to": after[r.number][0],
                "score": r.score, "legit_label": r.number in legit}
               for r in ordered if before[r.number][0] != after[r.number][0]]
    changed.sort(key=lambda c: (-c["score"], c["number"]))
    return {"window_s": window_s, "numbers": len(ordered),
            "current": counts(before), "candidate": counts(after),
            "current_version": current.version,
            "estimated_false_positives": {"current": false_positives(before),
                                          "candidate": false_positives(after)},
            "changed": changed[:changed_cap], "changed_total": len(changed)}
