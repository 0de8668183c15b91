"""ITU-T ISUP (Q.763) call messages -> :class:`IsupMessage`, with pycrate, and the number and
cause readers ITU-T and ANSI ISUP share.

pycrate's message classes decode ITU-T ISUP (as ``parse_ISUP``, reused: see
:class:`IsupParser`). Called and calling party numbers are BCD with an odd/even indicator:
with an odd number of address signals the last octet's high nibble is a filler that must not
become a digit, and the called number may end with ST (end of pulsing, 0xF). pycrate reads
the filler right only when it is 0000 and drops one digit too many when it meets ST, so
:func:`address_signals` reads the signals from the octets pycrate isolated, by the indicator.
"""

from __future__ import annotations

from typing import Any

from pycrate_mobile.ISUP import ISUPTypeClasses

from services.ingest.isup_calls import ACM, ANM, CON, IAM, REL, RLC, IsupMessage
from services.ingest.mtp3 import DecodeError
from streams.schema import REASON_NUMBER

REASON_BAD_ISUP = "bad_isup"
#: ISUP message type codes (Q.763 table 4) of the messages the call tracker follows.
ISUP_TYPES: dict[int, str] = {1: IAM, 6: ACM, 9: ANM, 7: CON, 12: REL, 16: RLC}
#: BCD address signal "ST" (end of pulsing) in a called party number.
SIGNAL_ST = 0xF
#: Offset of the first pointer in an ISUP message (after CIC and message type).
POINTERS_AT = 3
#: Q.850 octet extension bit (clear: another octet of the group follows) and cause value.
EXT_BIT, CAUSE_MASK = 0x80, 0x7F

__all__ = ["DecodeError", "IsupParser", "REASON_BAD_ISUP", "address_signals", "decode_isup",
           "q850_cause"]


def address_signals(octets: bytes, odd: bool) -> str:
    """Digits of a Q.763 BCD address: two signals an octet, low nibble first; with an odd
    number of signals the last high nibble is filler (whatever its value); ST ends the
    number; the codes 11 and 12 (operator access) and spare values are not digits."""
    nibbles = [n for b in octets for n in (b & 0x0F, b >> 4)]
    if odd and nibbles:
        nibbles.pop()
    digits = []
    for n in nibbles:
        if n == SIGNAL_ST:
            break
        if n > 9:
            raise DecodeError(REASON_NUMBER, f"address signal {n} is not a digit")
        digits.append(chr(ord("0") + n))
    return "".join(digits)


def _number(param: Any) -> tuple[str, int]:
    """(digits, nature of address) of a pycrate ISUP number parameter."""
    return (address_signals(param["Num"].get_val(), bool(param["OE"].get_val())),
            param["NAI"].get_val())


def q850_cause(octets: bytes) -> int:
    """Cause value of a Q.850 cause indicator: octet 3 (coding, location) with its extension
    bit clear is followed by the recommendation octet 3a, then octet 4 holds the cause.
    pycrate's CauseInd has no octet 3a and reads the recommendation as the cause, so the
    cause is taken from the parameter's octets here. Two octets with the bit clear (what
    some encoders, pycrate's default among them, write) can only mean octet 3 + cause."""
    if len(octets) < 2:
        raise DecodeError(REASON_BAD_ISUP, f"cause indicator of {len(octets)} octets has no "
                                           "cause value")
    cause_at = 2 if not octets[0] & EXT_BIT and len(octets) > 2 else 1
    return octets[cause_at] & CAUSE_MASK


def _rel_cause(msg: Any, data: bytes) -> int:
    """REL's mandatory variable cause indicator, located by its pointer (Q.763 1.5)."""
    start = POINTERS_AT + msg["Pointers"]["Ptr0"].get_val()
    length = data[start] if start < len(data) else 0
    return q850_cause(data[start + 1:start + 1 + length])


def _opt_cause(param: Any) -> int | None:
    """RLC's optional cause as pycrate lays it out (None if it has a recommendation octet,
    which that layout cannot place)."""
    if not param[0].get_val():
        return None
    return (param["Class"].get_val() << 4) | param["Cause"].get_val()


def _optional(msg: Any, name: str) -> Any | None:
    """An optional parameter of a parsed message, None when the message did not carry it."""
    opt = msg["Opt"]
    if name not in opt._by_name:
        return None
    wrapper = opt[name]
    return None if wrapper.get_trans() else wrapper[name]


class IsupParser:
    """``parse_ISUP`` with one message object per type, reused.

    ``parse_ISUP`` builds a new message object each time, cloning every optional-parameter
    template of the type: about 3 ms for an IAM, 1 ms for an ANM (~600 messages/s, where
    tshark reads ~35k frames/s). Parsing into a kept object costs ~0.05 ms. pycrate only
    marks the optional parameters it finds as present, so before each parse every optional
    parameter is marked absent again and unknown ones it inserted are removed; otherwise an
    IAM without a calling number would show the previous IAM's.
    """

    def __init__(self) -> None:
        self._messages: dict[int, Any] = {}

    def parse(self, data: bytes) -> Any:
        """The parsed message, or DecodeError (too short, unknown type, does not parse)."""
        if len(data) < 3:
            raise DecodeError(REASON_BAD_ISUP, f"{len(data)} bytes, shorter than CIC + type")
        kind = data[2]
        cls = ISUPTypeClasses.get(kind)
        if cls is None:
            raise DecodeError(REASON_BAD_ISUP, f"message type {kind} is not an ISUP message")
        msg = self._messages.pop(kind, None) or cls()
        if "Opt" in msg._by_name:
            opt = msg["Opt"]
            for param in list(opt._content):
                if param._name.startswith(UNKNOWN_OPTION_PREFIX):
                    opt.remove(param)
                else:
                    param.set_trans(True)
        try:
            msg.from_bytes(data)
        except Exception as exc:  # pycrate raises several types; the object is dropped
            raise DecodeError(REASON_BAD_ISUP, f"message type {kind} does not parse: "
                                               f"{type(exc).__name__}: {exc}") from None
        self._messages[kind] = msg
        return msg


#: Name pycrate gives an optional parameter it does not know (``_unk_<code>``).
UNKNOWN_OPTION_PREFIX = "_unk_"
_PARSER = IsupParser()


def decode_isup(data: bytes, ts: float, opc: int, dpc: int, switch: str | None = None,
                parser: IsupParser = _PARSER) -> IsupMessage | None:
    """An :class:`IsupMessage` for the call messages, None for other ISUP messages."""
    msg = parser.parse(data)
    name = ISUP_TYPES.get(data[2])
    if name is None:
        return None
    cic = msg["CIC"].get_val()
    if name == IAM:
        called, called_nai = _number(msg["CalledPartyNum"]["CalledPartyNum"])
        calling_param = _optional(msg, "CallingPartyNum")
        calling, calling_nai = _number(calling_param) if calling_param is not None else (None, 0)
        return IsupMessage(ts=ts, msg=IAM, opc=opc, dpc=dpc, cic=cic, calling=calling or None,
                           called=called or None, calling_nai=calling_nai,
                           called_nai=called_nai, switch=switch)
    cause = None
    if name == REL:
        cause = _rel_cause(msg, data)
    elif name == RLC:
        param = _optional(msg, "CauseInd")
        cause = _opt_cause(param) if param is not None else None
    return IsupMessage(ts=ts, msg=name, opc=opc, dpc=dpc, cic=cic, cause=cause, switch=switch)

