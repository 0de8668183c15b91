"""Guarded rollout: roll a live policy version back when its false-positive rate is too high.

For the live version of each policy: the numbers it enforced against (rate_limit/block, not
dry-run; a range decision enforces against every number in the range, a trunk decision against
no number the API can name) that got a fresh label (arrived after the version came in force) are its evidence.
Once there are at least ``fp_min_labels`` of them and the share labelled legitimate exceeds
``fp_target``, the previous version's content is republished as a new version by "guard",
audited, counted in ``dialguard_policy_auto_rollbacks_total{policy}`` (alerted on) and logged.
:func:`evaluate` is the pure decision; :class:`Guard` the loop around it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

from services.api import metrics
from services.api.auth import Identity
from services.api.views import SeenLabel
from streams.policy import Policy
from streams.schema import LABEL_TARGET, AuditRecord
from streams.scope import SCOPE_PREFIX, parse_key

log = logging.getLogger(__name__)
GUARD = Identity("guard", "admin", "builtin")
#: Audit records of a policy searched for earlier automatic rollbacks.
AUDIT_LOOKBACK = 1000


@dataclass(frozen=True)
class Verdict:
    policy: str
    version: int
    enforced: int
    labelled: int
    legit: int
    rollback: bool

    @property
    def share(self) -> float:
        return self.legit / self.labelled if self.labelled else 0.0

    def describe(self, target: float) -> str:
        return (f"false-positive rate {100 * self.share:.1f}% ({self.legit} legitimate of "
                f"{self.labelled} labelled among {self.enforced} enforced numbers) exceeds "
                f"target {100 * target:.1f}%")


def _in_ranges(number: str, prefixes: set[str]) -> bool:
    return any(number[:n] in prefixes for n in range(1, len(number) + 1))


def judged_numbers(enforced: Mapping[str, float], labels: Mapping[str, Sequence[SeenLabel]]
                   ) -> set[str]:
    """The keys whose labels judge a version: what it enforced against (numbers, and range or
    trunk keys should anyone label those), plus every labelled number inside a range it
    enforced against (a range block cut that caller off too). Numbers behind an enforced
    trunk cannot be told from a label (a label names a number, not the trunk its calls took),
    so they do not count."""
    prefixes = {target for scope, target in map(parse_key, enforced) if scope == SCOPE_PREFIX}
    judged = set(enforced)
    if prefixes:
        judged |= {n for n in labels if _in_ranges(n, prefixes)}
    return judged


def evaluate(policy: Policy, in_force_since: float, enforced: Mapping[str, float],
             labels: Mapping[str, Sequence[SeenLabel]]) -> Verdict:
    """Judge one live version by the latest fresh label of each number it enforced against
    (see :func:`judged_numbers` for range and trunk decisions)."""
    labelled = legit = 0
    for number in judged_numbers(enforced, labels):
        fresh = [s for s in labels.get(number, ()) if s.arrived >= in_force_since]
        if not fresh:
            continue
        labelled += 1
        latest = max(fresh, key=lambda s: (s.arrived, s.label.ts))
        if LABEL_TARGET.get(latest.label.label) == 0:
            legit += 1
    rollback = labelled >= policy.fp_min_labels and labelled > 0 and \
        legit / labelled > policy.fp_target
    return Verdict(policy.name, policy.version, len(enforced), labelled, legit, rollback)


def previous_version(versions: Sequence[Policy], live: Policy,
                     rolled_back: set[int] | frozenset[int] = frozenset()) -> Policy | None:
    """The newest version older than the live one that the guard has not already rolled back
    (so a second rollback never returns to a version that failed before)."""
    older = [p for p in versions if p.version < live.version and p.version not in rolled_back]
    return max(older, key=lambda p: p.version) if older else None


def rolled_back_versions(audit: Sequence[AuditRecord], name: str) -> set[int]:
    """Versions of ``name`` the guard rolled back, from the audit trail."""
    out: set[int] = set()
    for rec in audit:
        if rec.actor == GUARD.name and rec.action == "policy.rollback" and \
                rec.subject == f"policy/{name}" and isinstance(rec.before, dict):
            version = rec.before.get("version")
            if isinstance(version, int):
                out.add(version)
    return out


class Guard:
    """Checks every live policy each ``interval_s``; rolls back through ``ops``."""

    def __init__(self, ops, interval_s: float) -> None:  # type: ignore[no-untyped-def]
        self.ops = ops
        self.views = ops.views
        self.interval_s = interval_s
        #: Versions already reported as failing with nothing to return to (logged once).
        self._stuck: set[tuple[str, int]] = set()

    def check_once(self) -> list[Verdict]:
        """One pass (blocking); returns the verdicts that led to a rollback."""
        rolled: list[Verdict] = []
        labels = self.views.labels_by_number()
        for name in self.views.policy_names():
            with self.views.cond:
                live = self.views.live.get(name)
                since = self.views.live_since.get(name, 0.0)
            if live is None:
                continue
            verdict = evaluate(live, since, self.views.enforced_by(name, live.version), labels)
            if not verdict.rollback:
                continue
            failed = rolled_back_versions(self.views.audit_records(f"policy/{name}",
                                                                   AUDIT_LOOKBACK), name)
            target = previous_version(self.views.versions(name), live, failed)
            if target is None:
                if (name, live.version) not in self._stuck:
                    self._stuck.add((name, live.version))
                    log.error("guard: policy %s v%d: %s, but there is no earlier version to "
                              "return to", name, live.version, verdict.describe(live.fp_target))
                continue
            reason = (f"automatic rollback of v{live.version}: "
                      f"{verdict.describe(live.fp_target)}")
            new = self.ops.rollback(GUARD, name, target.version, reason)
            metrics.AUTO_ROLLBACKS.labels(name).inc()
            log.warning("guard rolled policy %s back from v%d to v%d's content as v%d: %s",
                        name, live.version, target.version, new.version, reason)
            rolled.append(verdict)
        return rolled

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await loop.run_in_executor(None, self.check_once)
            except Exception:  # noqa: BLE001 - the guard must outlive one bad pass
                log.exception("guard pass failed")
