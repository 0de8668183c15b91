"""How the API shows a decision: the record, what it covers in words, and whether it holds now.

One place, so the recent-decisions list, a number's look-up, a range's or trunk's look-up and
the campaigns list describe a scoped decision in the same sentence.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from streams.schema import Decision
from streams.scope import SCOPE_PREFIX, SCOPE_TRUNK, CallMatch, ScopeError


def describe(decision: Decision) -> str:
    """What a decision covers, in words (the console shows the same sentence)."""
    if decision.scope == SCOPE_PREFIX:
        return f"every caller number starting {decision.target}"
    if decision.scope == SCOPE_TRUNK:
        what = f"calls entering through trunk {decision.target}"
        try:
            match = CallMatch.from_dict(decision.match)
        except (ScopeError, TypeError):
            return what + " (with a match this API cannot read)"
        return what if match is None else f"{what} with {match.describe()}"
    return f"calls from {decision.target}"


def decision_view(decision: Decision, now: float) -> dict[str, Any]:
    """A decision as the API shows it: the record, plus its coverage in words and whether it is
    in force now."""
    until = decision.decided_at + decision.ttl_s
    return {**asdict(decision), "covers": describe(decision),
            "in_force": decision.action != "unblock" and until > now, "until": until}


__all__ = ["describe", "decision_view"]
