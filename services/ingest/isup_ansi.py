"""ANSI ISUP (T1.113) call messages -> :class:`IsupMessage`.

pycrate decodes ITU-T ISUP only, and ANSI's messages are laid out differently: the IAM has
four fixed octets (no transmission medium requirement) and two mandatory variable parameters
(user service information, then the called number), the CIC has 14 bits, and there is no CON.
The parameters the call tracker needs (called and calling number, cause indicators) are coded
as in ITU-T, so the same BCD and Q.850 readers serve both. Only the six call messages are read;
any other message type is None (counted as another ISUP message).
"""

from __future__ import annotations

from services.ingest.isup_calls import ACM, ANM, IAM, REL, RLC, IsupMessage
from services.ingest.isup_codec import (REASON_BAD_ISUP, DecodeError, address_signals,
                                        q850_cause)

#: Message type -> (name, fixed part octets, mandatory variable parameters); all have an
#: optional part.
LAYOUT: dict[int, tuple[str, int, int]] = {0x01: (IAM, 4, 2), 0x06: (ACM, 2, 0),
                                           0x09: (ANM, 0, 0), 0x0C: (REL, 0, 1),
                                           0x10: (RLC, 0, 0)}
CIC_MASK = 0x3FFF
HEADER_OCTETS = 3  # CIC (2), message type
#: Index of the called party number among the IAM's mandatory variable parameters.
IAM_CALLED = 1
PARAM_CALLING = 0x0A
PARAM_CAUSE = 0x12
END_OF_OPTIONS = 0x00
ODD_BIT, NAI_MASK = 0x80, 0x7F
NUMBER_HEADER_OCTETS = 2


def _at(data: bytes, pos: int, what: str) -> int:
    if pos >= len(data):
        raise DecodeError(REASON_BAD_ISUP, f"ANSI ISUP cut short: no {what} at octet {pos} of "
                                           f"{len(data)}")
    return data[pos]


def _variable(data: bytes, pointer_at: int, what: str) -> bytes:
    start = pointer_at + _at(data, pointer_at, f"pointer to {what}")
    length = _at(data, start, f"length of {what}")
    if start + 1 + length > len(data):
        raise DecodeError(REASON_BAD_ISUP, f"ANSI ISUP {what} of {length} octets overruns the "
                                           "message")
    return data[start + 1:start + 1 + length]


def _optional(data: bytes, pointer_at: int) -> dict[int, bytes]:
    pointer = _at(data, pointer_at, "optional part pointer")
    out: dict[int, bytes] = {}
    if pointer == 0:
        return out
    pos = pointer_at + pointer
    while pos < len(data) and data[pos] != END_OF_OPTIONS:
        code, length = data[pos], _at(data, pos + 1, "optional parameter length")
        out.setdefault(code, data[pos + 2:pos + 2 + length])
        pos += 2 + length
    return out


def _number(octets: bytes) -> tuple[str, int]:
    if len(octets) < NUMBER_HEADER_OCTETS:
        raise DecodeError(REASON_BAD_ISUP, f"number parameter of {len(octets)} octets")
    return (address_signals(octets[NUMBER_HEADER_OCTETS:], bool(octets[0] & ODD_BIT)),
            octets[0] & NAI_MASK)


def decode_ansi_isup(data: bytes, ts: float, opc: int, dpc: int,
                     switch: str | None = None) -> IsupMessage | None:
    """The call message in ``data`` (CIC onwards), None for other types, DecodeError if cut."""
    kind = _at(data, 2, "message type")
    layout = LAYOUT.get(kind)
    if layout is None:
        return None
    name, fixed, n_var = layout
    cic = int.from_bytes(data[:2], "little") & CIC_MASK
    pointers = HEADER_OCTETS + fixed
    _at(data, pointers + n_var, "optional part pointer")
    options = _optional(data, pointers + n_var)
    if name == IAM:
        called, called_nai = _number(_variable(data, pointers + IAM_CALLED, "called number"))
        calling, calling_nai = (_number(options[PARAM_CALLING]) if PARAM_CALLING in options
                                else ("", 0))
        return IsupMessage(ts=ts, msg=IAM, opc=opc, dpc=dpc, cic=cic, calling=calling or None,
                           called=called or None, calling_nai=calling_nai,
                           called_nai=called_nai, switch=switch)
    cause = None
    if name == REL:
        cause = q850_cause(_variable(data, pointers, "cause indicators"))
    elif name == RLC and PARAM_CAUSE in options:
        cause = q850_cause(options[PARAM_CAUSE])
    return IsupMessage(ts=ts, msg=name, opc=opc, dpc=dpc, cic=cic, cause=cause, switch=switch)
