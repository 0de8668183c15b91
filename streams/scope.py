"""What a decision covers: its scope (a number, a number range, a trunk) and the calls it matches.

The robots this project exists for show a fresh caller number on every call, so a decision
cannot always name a number. It names where the calls come from instead: a caller-number range
(``prefix``) or the trunk a switch received them on (``trunk``), optionally narrowed to the
offending part of that trunk (:class:`CallMatch`: its calls with unverified attestation, or its
calls whose caller copies the callee's leading digits). Every consumer judges coverage through
:func:`covers`, so the worker, the switch adapter, what-if and ``make eval`` agree on which calls
a decision stops.

Keys: a number decision is keyed by the number (as always); a range by ``prefix:<digits>``; a
trunk by ``trunk:<switch>/<trunk>``. The key is also the decision's ``number`` field, so a
consumer written for number decisions only ever sees an identifier that matches no caller:
it can ignore scoped decisions, never widen them.

Examples
--------
>>> trunk_id("sw-2", "ent-7")
'sw-2/ent-7'
>>> decision_key(SCOPE_TRUNK, "sw-2/ent-7")
'trunk:sw-2/ent-7'
>>> parse_key("prefix:86170123")
('prefix', '86170123')
>>> parse_key("8613800138000")
('number', '8613800138000')
>>> m = CallMatch(neighbour_tail=4)
>>> m.matches("8613812340001", "8613812345678", "A")
True
>>> m.matches("8613900000001", "8613812345678", "A")
False
>>> CallMatch(attest=("B", "C", "none")).matches("8613900000001", "8613812345678", None)
True
>>> covers("trunk", "-/gw-5", None, "8613900000001", "8613812345678", "sw-3", "gw-5", None)
True
>>> covers("trunk", "sw-2/gw-5", None, "8613900000001", "8613812345678", "sw-3", "gw-5", None)
False
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

SCOPE_NUMBER = "number"
SCOPE_PREFIX = "prefix"
SCOPE_TRUNK = "trunk"
SCOPES: tuple[str, ...] = (SCOPE_NUMBER, SCOPE_PREFIX, SCOPE_TRUNK)
#: Scopes decided per source (by the source stage), not per number.
SOURCE_SCOPES: tuple[str, ...] = (SCOPE_PREFIX, SCOPE_TRUNK)
#: Attestation value a :class:`CallMatch` uses for a call that carries none.
NO_ATTEST = "none"
ATTEST_VALUES: tuple[str, ...] = ("A", "B", "C", NO_ATTEST)
#: Stand-in for a missing switch or trunk field, so an event without them still has a source.
UNKNOWN = "-"
#: Largest trunk id accepted (switch + "/" + trunk); longer ones are cut (counted by the caller).
MAX_TRUNK_ID = 128
#: Trunk ids kept formatted (see trunk_id): more than a network's trunks.
TRUNK_IDS_CACHED = 16_384


#: Parts of a trunk's calls that a narrowed trunk decision can cover, as the feature-name
#: prefixes the source stage counts them under: all calls, neighbour-spoofed calls (a
#: :class:`CallMatch` with ``neighbour_tail``), calls without A attestation (``attest``).
SEGMENT_ALL = ""
SEGMENT_NEIGHBOUR = "nb_"
SEGMENT_UNVERIFIED = "uv_"


class ScopeError(ValueError):
    """A scope, target or match that cannot be applied; the message says which part."""


@functools.lru_cache(maxsize=TRUNK_IDS_CACHED)
def trunk_id(switch: str | None, trunk: str | None) -> str:
    """The id a trunk decision targets: ``<switch>/<trunk>``; a trunk is only unique per switch.

    Cached: a network has a few thousand trunks and every event asks for its own, so the
    cache saves the formatting and hands every state the same string object for a trunk
    (states held in memory name their trunks)."""
    sw = (switch or UNKNOWN).replace("/", "_")
    return f"{sw}/{trunk or UNKNOWN}"[:MAX_TRUNK_ID]


def split_trunk_id(target: str) -> tuple[str, str]:
    """(switch, trunk) of a trunk target."""
    switch, sep, trunk = target.partition("/")
    if not sep or not switch or not trunk:
        raise ScopeError(f"trunk target {target!r} must be <switch>/<trunk>")
    return switch, trunk


def decision_key(scope: str, target: str) -> str:
    """Topic key (and ``Decision.number``) of a decision with this scope and target."""
    if scope == SCOPE_NUMBER:
        return target
    if scope in SOURCE_SCOPES:
        return f"{scope}:{target}"
    raise ScopeError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")


def parse_key(key: str) -> tuple[str, str]:
    """(scope, target) of a decision or allowlist key."""
    for scope in SOURCE_SCOPES:
        head = scope + ":"
        if key.startswith(head):
            return scope, key[len(head):]
    return SCOPE_NUMBER, key


def range_of(number: str, strip_digits: int) -> str:
    """The number range a caller belongs to: the number minus its last ``strip_digits`` digits.

    Numbers too short to have a range (short codes) have none (empty string).
    """
    if len(number) <= strip_digits + 3:
        return ""
    return number[:-strip_digits]


def is_neighbour(caller: str, callee: str, tail: int) -> bool:
    """Caller equals the callee except (at most) in the callee's last ``tail`` digits.

    Neighbour spoofing copies the callee's leading digits so the call looks local; the two
    numbers then share their number block.
    """
    if len(caller) != len(callee) or len(callee) <= tail + 3 or caller == callee:
        return False
    return caller[:-tail] == callee[:-tail]


@dataclass(frozen=True)
class CallMatch:
    """Narrows a trunk decision to the offending part of the trunk's calls.

    ``attest``: only calls whose STIR/SHAKEN attestation is one of these (``none`` = unsigned);
    ``neighbour_tail``: only calls whose caller equals the callee but for the last this many
    digits. Both given: both must hold. A decision without a match covers every call.
    """

    attest: tuple[str, ...] | None = None
    neighbour_tail: int | None = None

    def __post_init__(self) -> None:
        if self.attest is not None:
            if not self.attest or any(a not in ATTEST_VALUES for a in self.attest):
                raise ScopeError(f"match.attest must be a non-empty list of "
                                 f"{', '.join(ATTEST_VALUES)}, got {self.attest!r}")
        if self.neighbour_tail is not None and (
                not isinstance(self.neighbour_tail, int) or isinstance(self.neighbour_tail, bool)
                or not 1 <= self.neighbour_tail <= 8):
            raise ScopeError(f"match.neighbour_tail must be an integer in [1, 8], got "
                             f"{self.neighbour_tail!r}")
        if self.attest is None and self.neighbour_tail is None:
            raise ScopeError("a match needs attest or neighbour_tail")

    def matches(self, caller: str, callee: str, attest: str | None) -> bool:
        if self.attest is not None and (attest or NO_ATTEST) not in self.attest:
            return False
        if self.neighbour_tail is not None and \
                not is_neighbour(caller, callee, self.neighbour_tail):
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.attest is not None:
            out["attest"] = list(self.attest)
        if self.neighbour_tail is not None:
            out["neighbour_tail"] = self.neighbour_tail
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any] | None) -> "CallMatch | None":
        if obj is None:
            return None
        if not isinstance(obj, Mapping):
            raise ScopeError("match must be an object with attest and/or neighbour_tail")
        unknown = set(obj) - {"attest", "neighbour_tail"}
        if unknown:
            raise ScopeError(f"match: unknown fields {', '.join(sorted(unknown))}")
        attest = obj.get("attest")
        if attest is not None and (isinstance(attest, str) or not isinstance(attest, list)):
            raise ScopeError("match.attest must be a list")
        return cls(tuple(attest) if attest is not None else None, obj.get("neighbour_tail"))

    def describe(self) -> str:
        parts = []
        if self.attest is not None:
            parts.append("attestation " + "/".join(self.attest))
        if self.neighbour_tail is not None:
            parts.append(f"caller equal to the callee but for the last {self.neighbour_tail} "
                         "digits (neighbour spoofing)")
        return " and ".join(parts)


def _trunk_hit(target: str, switch: str | None, trunk: str | None) -> bool:
    """A call's trunk against a trunk target; ``-/<trunk>`` (learnt from events that named no
    switch) is that trunk on any switch."""
    call = trunk_id(switch, trunk)
    if call == target:
        return True
    return target.startswith(UNKNOWN + "/") and call.split("/", 1)[1] == target[2:]


def covers(scope: str, target: str, match: CallMatch | None, caller: str, callee: str,
           switch: str | None, trunk: str | None, attest: str | None) -> bool:
    """Whether a decision with this scope, target and match applies to this call.

    A number decision covers the caller that equals it; a prefix decision every caller that
    starts with it; a trunk decision every call that entered through that trunk of that switch,
    narrowed by ``match`` when there is one.
    """
    if scope == SCOPE_NUMBER:
        hit = caller == target
    elif scope == SCOPE_PREFIX:
        hit = bool(target) and caller.startswith(target)
    elif scope == SCOPE_TRUNK:
        hit = _trunk_hit(target, switch, trunk)
    else:
        return False
    return hit and (match is None or match.matches(caller, callee, attest))
