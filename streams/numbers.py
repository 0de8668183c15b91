"""Phone number normalisation to E.164 digits without ``+``.

Probes write numbers the way their switch saw them: ``+8613800138000``, ``008613800138000``,
``013800138000`` (national with trunk prefix), ``tel:+86-138...``. Counters must see one caller as
one key, so every number is reduced to digits. The rule is idempotent on purpose: a bare digit
string is taken to be E.164 already, so re-normalising a normalised number never changes it
(national numbers must carry the national prefix to be recognised as national).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

E164_MAX_DIGITS = 15
#: Short codes (emergency 110/112/911, service numbers like 95588) are kept as dialled.
SHORT_CODE_MAX_DIGITS = 6
SHORT_CODE_MIN_DIGITS = 3
_SEPARATORS = str.maketrans("", "", " -().\u00a0/")
_URI_SCHEMES = ("tel:", "sip:", "sips:")


class InvalidNumber(ValueError):
    """The string cannot be a phone number; the message says why."""


@dataclass(frozen=True)
class NumberPlan:
    country_code: str = "86"
    national_prefix: str = "0"
    international_prefix: str = "00"

    @classmethod
    def of(cls, settings: Any) -> "NumberPlan":
        """This deployment's plan (``DIALGUARD_COUNTRY_CODE`` and prefixes)."""
        return cls(settings.country_code, settings.national_prefix,
                   settings.international_prefix)

    def normalise(self, raw: str) -> str:
        """Return the E.164 digits of ``raw`` (no ``+``) or raise :class:`InvalidNumber`."""
        if not isinstance(raw, str):
            raise InvalidNumber(f"number must be a string, got {type(raw).__name__}")
        if raw.isdigit() and raw.isascii() and SHORT_CODE_MAX_DIGITS < len(raw) <= \
                E164_MAX_DIGITS and raw[0] != "0" and not raw.startswith(self._dial_prefixes):
            return raw  # already E.164 digits: what most probes send, checked in one pass
        text = raw.strip()
        lower = text.lower()
        for scheme in _URI_SCHEMES:
            if lower.startswith(scheme):
                text = text[len(scheme):]
                break
        text = text.split("@", 1)[0].split(";", 1)[0].translate(_SEPARATORS)
        if not text:
            raise InvalidNumber("empty number")
        if text.startswith("+"):
            digits = text[1:]
            _require_digits(digits, raw)
            return _require_e164(digits, raw)
        _require_digits(text, raw)
        if len(text) <= SHORT_CODE_MAX_DIGITS:
            if len(text) < SHORT_CODE_MIN_DIGITS:
                raise InvalidNumber(f"{raw!r} is too short to be a number")
            return text
        if self.international_prefix and text.startswith(self.international_prefix):
            return _require_e164(text[len(self.international_prefix):], raw)
        if self.national_prefix and text.startswith(self.national_prefix):
            return _require_e164(self.country_code + text[len(self.national_prefix):], raw)
        return _require_e164(text, raw)

    @cached_property
    def _dial_prefixes(self) -> tuple[str, ...]:
        """The plan's international and national prefixes (for one ``startswith``)."""
        return tuple(p for p in (self.international_prefix, self.national_prefix) if p)


#: Caller classes of calls whose caller is not a number. The call is kept as an event (its
#: trunk's counters see it: robots hide behind withheld numbers) but it has no per-number
#: state: "anonymous" is not one caller. ``withheld``: the caller asked for privacy or the
#: network has no number (SIP ``anonymous``/``unavailable``, ISUP presentation restricted);
#: ``invalid``: something that is not a dialable number (letters, too long, ...).
CALLER_WITHHELD = "withheld"
CALLER_INVALID = "invalid"
CALLER_CLASSES = (CALLER_WITHHELD, CALLER_INVALID)
#: Most characters of a non-number caller kept in its event (for the audit trail).
CALLER_TEXT_MAX = 64
_WITHHELD_USERS = frozenset({"", "anonymous", "anonymous.invalid", "unavailable", "unknown",
                             "restricted", "private", "withheld", "not available"})


def caller_class(raw: str) -> str:
    """The class of a caller that did not normalise: withheld or invalid.

    >>> caller_class("sip:anonymous@anonymous.invalid"), caller_class("Unavailable")
    ('withheld', 'withheld')
    >>> caller_class("bob"), caller_class("+8613800138000123456")
    ('invalid', 'invalid')
    """
    text = raw.strip().lower()
    for scheme in _URI_SCHEMES:
        if text.startswith(scheme):
            text = text[len(scheme):]
            break
    user = text.split("@", 1)[0].split(";", 1)[0].strip()
    return CALLER_WITHHELD if user in _WITHHELD_USERS else CALLER_INVALID


def _require_digits(text: str, raw: str) -> None:
    if not text.isascii() or not text.isdigit():
        raise InvalidNumber(f"{raw!r} has characters that are not digits")


def _require_e164(digits: str, raw: str) -> str:
    if not digits or not digits.isdigit():
        raise InvalidNumber(f"{raw!r} has no digits after its prefix")
    if digits[0] == "0":
        raise InvalidNumber(f"{raw!r}: an E.164 number cannot start with 0")
    if len(digits) > E164_MAX_DIGITS:
        raise InvalidNumber(f"{raw!r} has more than {E164_MAX_DIGITS} digits")
    if len(digits) <= SHORT_CODE_MAX_DIGITS:
        raise InvalidNumber(f"{raw!r} is too short for an international number")
    return digits


def prefix_of(number: str, length: int) -> str:
    """Leading digits that group numbers of one pool (snowshoe campaigns share a block)."""
    return number[:length]
