"""Ranges and trunks given by a person, checked before they reach a topic.

A scoped decision or allowlist entry acts on everyone behind it, so what an analyst types is
held to stricter rules than a number: a trunk id must be ``<switch>/<trunk>`` in printable
characters without spaces (it is compared byte for byte with what the switches report, see
:func:`streams.scope.trunk_id`), and a range must be long enough not to cover a country.
The minimum lengths are settings (``api_min_block_prefix``, ``api_min_allow_prefix``).
"""

from __future__ import annotations

from typing import Any

from services.api.errors import BadRequest
from streams.scope import (MAX_TRUNK_ID, SCOPE_PREFIX, SCOPE_TRUNK, UNKNOWN, ScopeError,
                           decision_key, split_trunk_id)

#: E.164 numbers have at most 15 digits: a longer "range" is a typing error.
MAX_PREFIX_DIGITS = 15


def check_prefix(raw: Any, minimum: int, what: str = "prefix") -> str:
    """Digits of a number range, at least ``minimum`` and at most 15 of them."""
    if not isinstance(raw, str) or not raw.strip().isdigit() or not raw.strip().isascii():
        raise BadRequest(f"{what} must be digits (E.164 without '+'), got {raw!r}")
    digits = raw.strip()
    if len(digits) < minimum:
        raise BadRequest(f"{what} {digits} is too short: at least {minimum} digits (a shorter "
                         "range covers too many subscribers)")
    if len(digits) > MAX_PREFIX_DIGITS:
        raise BadRequest(f"{what} {digits} is longer than {MAX_PREFIX_DIGITS} digits")
    return digits


def check_trunk(raw: Any) -> str:
    """A trunk id ``<switch>/<trunk>`` as switches report it (printable, no spaces, bounded)."""
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("trunk must be a non-empty string <switch>/<trunk>")
    tid = raw.strip()
    if len(tid) > MAX_TRUNK_ID:
        raise BadRequest(f"trunk id is longer than {MAX_TRUNK_ID} characters")
    if not all(c.isprintable() and not c.isspace() for c in tid):
        raise BadRequest("trunk id must be printable characters without spaces")
    try:
        _, trunk = split_trunk_id(tid)
    except ScopeError as exc:
        raise BadRequest(str(exc)) from None
    if trunk == UNKNOWN:
        raise BadRequest(f"trunk id {tid!r} names an unknown trunk ({UNKNOWN!r}): no switch "
                         "can match it")
    # A switch of UNKNOWN is allowed: ``-/<trunk>`` is that trunk on any switch (calls that
    # named a trunk but no switch).
    return tid


def trunk_from_path(switch: str, trunk: str) -> str:
    """The trunk id of a ``.../{switch}/{trunk}`` route (a '/' in the trunk part may be sent
    as %2F)."""
    return check_trunk(f"{switch}/{trunk}")


def prefix_key(digits: str) -> str:
    return decision_key(SCOPE_PREFIX, digits)


def trunk_key(tid: str) -> str:
    return decision_key(SCOPE_TRUNK, tid)


__all__ = ["check_prefix", "check_trunk", "trunk_from_path", "prefix_key", "trunk_key",
           "MAX_PREFIX_DIGITS"]
