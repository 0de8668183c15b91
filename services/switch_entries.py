"""Where a decision lands in the Kamailio switch, and the htable entry that says what to do.

``services/kamailio/dialguard.cfg`` and the switch adapter share one contract, kept here:

========== ================== =========================== =======================================
scope      htable             key                         value
========== ================== =========================== =======================================
number     ``blocked``        the caller number           ``1`` (presence blocks)
number     ``ratelimit``      the caller number           INVITEs allowed per window (integer)
prefix     ``prefix``         the range's leading digits  an *entry* (below)
trunk      ``trunk``          the trunk (without switch)  an *entry* (below)
========== ================== =========================== =======================================

An entry is ``<action>:<calls>:<attest>:<tail>`` (:func:`entry_value`): ``action`` is ``block`` or
``rate_limit``; ``calls`` the INVITEs per window a rate limit allows (0 for a block); ``attest``
the attestations covered, as letters ``A``/``B``/``C``/``N`` (N = unsigned), or ``*`` for every
call; ``tail`` the neighbour-spoofing match (caller equal to the callee but for the last
``tail`` digits), 0 for none. One entry per key: a newer decision on the same range or trunk
replaces the older in one write (a narrowed trunk block escalated to a whole-trunk block, or
back), so the switch never holds two contradicting answers for one source.

Why one string instead of a table per field: Kamailio's htable keeps one value per key with one
expiry, and the cfg reads the fields with ``{s.select,N,:}``, so the entry and its TTL live and
lapse together.

A trunk is only unique per switch (``streams.scope.trunk_id``): the adapter of switch ``sw``
takes ``trunk:sw/<trunk>`` decisions (and ``trunk:-/<trunk>``, learnt from events that named no
switch, which the coverage rule applies on any switch) and keys them by ``<trunk>``, which is
what the cfg computes for each INVITE (``route[TRUNK]``: the RFC 4904 ``tgrp`` of the Contact
URI when the source is a trusted peer, else the source IP, the same rule as
``services.ingest.sip_dialogs.trunk_of``). Decisions it cannot apply exactly are refused with a
reason (:class:`Unsupported`), never applied wider than they were meant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from streams.schema import Decision
from streams.scope import (SCOPE_NUMBER, SCOPE_PREFIX, SCOPE_TRUNK, SCOPES, UNKNOWN, CallMatch,
                           ScopeError, decision_key, split_trunk_id)

if TYPE_CHECKING:
    from services.settings import Settings

#: Letter of each attestation value in an entry (``none``: the call carried no PASSporT).
ATTEST_LETTERS: dict[str, str] = {"A": "A", "B": "B", "C": "C", "none": "N"}
#: An entry's attest field when the decision does not narrow by attestation.
ANY_ATTEST = "*"
ENTRY_SEPARATOR = ":"
#: Longest caller the cfg walks for a prefix (E.164 numbers have at most 15 digits).
MAX_NUMBER_DIGITS = 15

# Why a decision cannot be applied to this switch (metric label, ack detail prefix).
SKIP_OTHER_SWITCH = "other_switch"
SKIP_UNSUPPORTED_MATCH = "unsupported_match"
SKIP_BAD_TARGET = "bad_target"
SKIP_UNKNOWN_SCOPE = "unknown_scope"


class Unsupported(Exception):
    """This switch cannot apply the decision exactly; ``why`` is a bounded reason."""

    def __init__(self, why: str, detail: str) -> None:
        super().__init__(detail)
        self.why = why
        self.detail = detail


@dataclass(frozen=True)
class Tables:
    """Names of the switch's htables and what a rate limit allows, per scope."""

    blocked: str = "blocked"
    ratelimit: str = "ratelimit"
    rate_limit_calls: int = 6
    prefix: str = "prefix"
    trunk: str = "trunk"
    prefix_rate_limit_calls: int = 30
    trunk_rate_limit_calls: int = 60
    #: Shorter ranges are refused: a 2-digit "range" is a country, not a robot's number pool.
    prefix_min_digits: int = 5

    @classmethod
    def of(cls, settings: "Settings") -> "Tables":
        s = settings
        return cls(s.adapter_htable_blocked, s.adapter_htable_ratelimit,
                   s.adapter_rate_limit_calls, s.adapter_htable_prefix, s.adapter_htable_trunk,
                   s.adapter_prefix_rate_limit_calls, s.adapter_trunk_rate_limit_calls,
                   s.adapter_prefix_min_digits)

    def calls(self, scope: str) -> int:
        """INVITEs per window a rate limit of this scope allows."""
        return {SCOPE_NUMBER: self.rate_limit_calls, SCOPE_PREFIX: self.prefix_rate_limit_calls,
                SCOPE_TRUNK: self.trunk_rate_limit_calls}[scope]


@dataclass(frozen=True)
class Target:
    """Where a decision lands on this switch: its scope, htable key and (optional) match."""

    scope: str
    key: str
    match: CallMatch | None = None
    #: A ``-/<trunk>`` decision: no switch named, applied on every switch.
    any_switch: bool = False

    def describe(self) -> str:
        where = {SCOPE_NUMBER: "caller", SCOPE_PREFIX: "caller range",
                 SCOPE_TRUNK: "trunk"}[self.scope]
        if self.any_switch:
            where = "trunk (of any switch: the decision named none)"
        text = f"{where} {self.key}"
        return f"{text}, only calls with {self.match.describe()}" if self.match else text


def entry_value(action: str, calls: int, match: CallMatch | None) -> str:
    """The htable value of a prefix or trunk entry (module docstring)."""
    attest = ANY_ATTEST
    tail = 0
    if match is not None:
        if match.attest is not None:
            attest = "".join(sorted(ATTEST_LETTERS[a] for a in match.attest))
        tail = match.neighbour_tail or 0
    return ENTRY_SEPARATOR.join((action, str(calls if action == "rate_limit" else 0), attest,
                                 str(tail)))


def target_of(decision: Decision, switch: str, tables: Tables) -> Target:
    """Where ``decision`` lands on the switch named ``switch``; :class:`Unsupported` if it
    cannot be applied there exactly (another switch's trunk, a match this switch does not
    know, a key that does not fit its scope)."""
    scope = decision.scope or SCOPE_NUMBER
    if scope not in SCOPES:
        raise Unsupported(SKIP_UNKNOWN_SCOPE, f"unknown scope {scope!r}: not applied")
    target = decision.target or decision.number
    key = decision_key(scope, target)
    try:
        match = decision.call_match
    except (ScopeError, TypeError, ValueError) as exc:
        raise Unsupported(SKIP_UNSUPPORTED_MATCH, f"match {decision.match!r} not understood "
                          f"({exc}): not applied, never wider than decided") from None
    if key != decision.number:
        raise Unsupported(SKIP_BAD_TARGET, f"key {decision.number!r} does not fit scope {scope} "
                          f"target {target!r} (expected {key!r})")
    if scope == SCOPE_NUMBER:
        if match is not None:
            raise Unsupported(SKIP_UNSUPPORTED_MATCH, "a number decision with a match: the "
                              "switch's number tables cannot narrow, not applied")
        return Target(scope, target)
    if scope == SCOPE_PREFIX:
        return Target(scope, _prefix_key(target, tables.prefix_min_digits), match)
    return Target(scope, _trunk_key(decision, target, switch), match,
                  any_switch=target.startswith(UNKNOWN + "/"))


def _prefix_key(target: str, min_digits: int) -> str:
    if not target.isdigit() or not min_digits <= len(target) <= MAX_NUMBER_DIGITS:
        raise Unsupported(SKIP_BAD_TARGET, f"caller range {target!r} is not {min_digits} to "
                          f"{MAX_NUMBER_DIGITS} digits: refused rather than blocking a whole "
                          "number block")
    return target


def _trunk_key(decision: Decision, target: str, switch: str) -> str:
    try:
        target_switch, trunk = split_trunk_id(target)
    except ScopeError as exc:
        raise Unsupported(SKIP_BAD_TARGET, str(exc)) from None
    if decision.switch is not None and decision.switch.replace("/", "_") != target_switch:
        raise Unsupported(SKIP_BAD_TARGET, f"decision names switch {decision.switch!r} but its "
                          f"trunk target is on {target_switch!r}")
    # "-/<trunk>" was learnt from events that named no switch: streams.scope.covers takes it
    # as that trunk on any switch, so every adapter applies it.
    if target_switch not in (UNKNOWN, switch.replace("/", "_")):
        raise Unsupported(SKIP_OTHER_SWITCH, f"trunk {trunk} of switch {target_switch}, not of "
                          f"this switch {switch}: nothing to apply here")
    if trunk == UNKNOWN:
        raise Unsupported(SKIP_BAD_TARGET, f"trunk {UNKNOWN!r} (events without a trunk): this "
                          "switch names every trunk, so it would match no call")
    return trunk
