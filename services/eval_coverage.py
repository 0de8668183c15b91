"""Which calls the decisions published so far stop: ``make eval``'s model of the switches.

Evaluation scores calls, not numbers, because the robots of issue 10 show a new number on every
call: what matters is whether the network stopped the call. A call is stopped when a live
(not dry-run) enforcing decision (``rate_limit`` or ``block``) covers it at its attempt time:
``trigger_ts <= ts < trigger_ts + ttl_s``, coverage by the one rule
(:meth:`streams.schema.Decision.covers`). Per key (``Decision.number``: the number,
``prefix:<digits>`` or ``trunk:<switch>/<trunk>``) the latest decision replaces the earlier
ones, so an ``unblock`` or a ``label`` ends enforcement, as it does on the detector's side.
Dry-run decisions are never applied to a switch, so they change nothing here either.

The index answers per call in a few dictionary lookups however many decisions are live: number
decisions by number, prefix decisions by prefix length then prefix, trunk decisions by trunk id.
It is pure (no clock, no I/O), so it is tested on its own.
"""

from __future__ import annotations

from streams.policy import ENFORCING
from streams.schema import Decision
from streams.scope import SCOPE_NUMBER, SCOPE_PREFIX, SCOPE_TRUNK, trunk_id


def in_force(decision: Decision, ts: float) -> bool:
    """Whether a decision's TTL window, counted in event time from its trigger, holds ``ts``."""
    return decision.trigger_ts <= ts < decision.trigger_ts + decision.ttl_s


class CoverageIndex:
    """Live enforcing decisions, indexed so a call finds the ones that could cover it."""

    def __init__(self) -> None:
        #: key -> the enforcing decision in force for it (latest per key)
        self._live: dict[str, Decision] = {}
        self._numbers: dict[str, Decision] = {}
        #: prefix length -> prefix digits -> decision (longest lengths are tried first)
        self._prefixes: dict[int, dict[str, Decision]] = {}
        self._prefix_lengths: list[int] = []
        self._trunks: dict[str, Decision] = {}

    def __len__(self) -> int:
        return len(self._live)

    def apply(self, decision: Decision) -> None:
        """Take a decision as it is published (in publication order)."""
        if decision.dry_run:
            return
        self._drop(decision.number)
        if decision.action not in ENFORCING:
            return  # unblock, label: the key is no longer enforced
        table = self._table(decision)
        if table is None:
            return  # a scope this evaluator does not know covers nothing
        self._live[decision.number] = decision
        table[decision.target] = decision

    def stopped(self, ts: float, caller: str, callee: str, switch: str | None,
                trunk: str | None, attest: str | None) -> Decision | None:
        """The decision that stops this call attempt, or None. Number decisions are tried
        first, then prefixes from the longest, then the trunk (so a stop is credited to the
        narrowest scope that caught it)."""
        d = self._numbers.get(caller)
        if d is not None and in_force(d, ts) and d.covers(caller, callee, switch, trunk, attest):
            return d
        for length in self._prefix_lengths:
            d = self._prefixes[length].get(caller[:length])
            if d is not None and in_force(d, ts) and \
                    d.covers(caller, callee, switch, trunk, attest):
                return d
        if self._trunks:
            d = self._trunks.get(trunk_id(switch, trunk))
            if d is not None and in_force(d, ts) and \
                    d.covers(caller, callee, switch, trunk, attest):
                return d
        return None

    def _table(self, decision: Decision) -> dict[str, Decision] | None:
        if decision.scope == SCOPE_NUMBER:
            return self._numbers
        if decision.scope == SCOPE_TRUNK:
            return self._trunks
        if decision.scope == SCOPE_PREFIX:
            length = len(decision.target)
            if length not in self._prefixes:
                self._prefixes[length] = {}
                self._prefix_lengths = sorted(self._prefixes, reverse=True)
            return self._prefixes[length]
        return None

    def _drop(self, key: str) -> None:
        old = self._live.pop(key, None)
        if old is not None:
            table = self._table(old)
            if table is not None and table.get(old.target) is old:
                del table[old.target]
