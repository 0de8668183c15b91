"""MTP3 message signal units and M3UA messages -> (OPC, DPC, service indicator, user data).

Whatever link an SS7 capture was taken on, the ISUP message travels in one of two wrappers:

* an MTP3 MSU (M2PA, M2UA, MTP2, and the M3UA drafts): the service information octet, then
  the routing label, then the user part's message. The label's layout depends on the network's
  standard and cannot be told from the bytes: ITU-T (Q.704) packs DPC (14 bits), OPC (14 bits)
  and SLS (4 bits) into 4 octets, little-endian; ANSI (T1.111) has 3-octet point codes
  (member, cluster, network) and an SLS octet. The operator says which (``--standard``).
* M3UA's Protocol Data parameter (RFC 4666, tag 0x0210), which carries OPC, DPC and SI as
  fields of their own. Captures from older SIGTRAN stacks still use the draft encodings, whose
  DATA message holds a plain MSU instead: draft 5 under tag 3, drafts 6 under tag 2 ("Protocol
  Data 1"), draft 7 under tag 0x81 (and "Protocol Data 2", 0x82, the MSU after a length
  indicator octet). The message header (version 1, class 1, type 1) is the same in all.

Written here rather than taken from pycrate because pycrate only knows RFC 4666's tags (a draft
DATA message is an error there) and has no MTP3 label decoder; tshark's M3UA dissector needs
the draft version as a preference, per capture, which an operator cannot know.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from streams.schema import InvalidEvent

ITU, ANSI = "itu", "ansi"
STANDARDS: tuple[str, ...] = (ITU, ANSI)

REASON_BAD_M3UA = "bad_m3ua"
REASON_BAD_MTP3 = "bad_mtp3"

#: Service information octet: the service indicator is its low nibble (Q.704 14.2.1).
SI_MASK = 0x0F
ITU_LABEL_OCTETS = 4
ANSI_LABEL_OCTETS = 7
ITU_PC_BITS = 14
ITU_PC_MASK = (1 << ITU_PC_BITS) - 1
ANSI_PC_OCTETS = 3

M3UA_VERSION = 1
M3UA_HEADER = struct.Struct("!BBBBI")
M3UA_PARAM = struct.Struct("!HH")
M3UA_CLASS_TRANSFER, M3UA_TYPE_DATA = 1, 1
#: RFC 4666 Protocol Data: OPC (4), DPC (4), SI, NI, MP, SLS, then the user part's message.
TAG_PROTOCOL_DATA = 0x0210
PROTOCOL_DATA_FIXED = struct.Struct("!IIBBBB")
#: Draft encodings whose value is a whole MSU, and those with a length indicator first.
DRAFT_MSU_TAGS = frozenset({0x0003, 0x0002, 0x0081})
DRAFT_LI_MSU_TAGS = frozenset({0x0082})


class DecodeError(InvalidEvent):
    """Bytes that do not hold what their carrier says they hold; ``reason`` for the DLQ."""


@dataclass(frozen=True, slots=True)
class Transfer:
    """One MTP3 user message: who sent it to whom, which user part, its bytes."""

    opc: int
    dpc: int
    si: int
    data: bytes


def decode_msu(msu: bytes, standard: str = ITU) -> Transfer:
    """SIO + routing label + user data of an MTP3 MSU in the given standard's layout."""
    label = ANSI_LABEL_OCTETS if standard == ANSI else ITU_LABEL_OCTETS
    if len(msu) < 1 + label:
        raise DecodeError(REASON_BAD_MTP3, f"{len(msu)} octets: no room for the SIO and an "
                                           f"{standard.upper()} routing label")
    si = msu[0] & SI_MASK
    if standard == ANSI:
        dpc = int.from_bytes(msu[1:1 + ANSI_PC_OCTETS], "little")
        opc = int.from_bytes(msu[1 + ANSI_PC_OCTETS:1 + 2 * ANSI_PC_OCTETS], "little")
    else:
        word = int.from_bytes(msu[1:1 + ITU_LABEL_OCTETS], "little")
        dpc, opc = word & ITU_PC_MASK, (word >> ITU_PC_BITS) & ITU_PC_MASK
    return Transfer(opc, dpc, si, msu[1 + label:])


def m3ua_parameters(payload: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
    """(class, type, [(tag, value)]) of an M3UA message, draft or RFC; DecodeError if the
    header or the parameter lengths do not add up."""
    if len(payload) < M3UA_HEADER.size:
        raise DecodeError(REASON_BAD_M3UA, f"{len(payload)} bytes, shorter than the header")
    version, _, cls, kind, length = M3UA_HEADER.unpack_from(payload)
    if version != M3UA_VERSION:
        raise DecodeError(REASON_BAD_M3UA, f"version {version}, not M3UA ({len(payload)} "
                                           "bytes)")
    if length != len(payload):
        raise DecodeError(REASON_BAD_M3UA, f"length field {length} but {len(payload)} bytes")
    params = []
    pos = M3UA_HEADER.size
    while pos + M3UA_PARAM.size <= length:
        tag, plen = M3UA_PARAM.unpack_from(payload, pos)
        if plen < M3UA_PARAM.size or pos + plen > length:
            raise DecodeError(REASON_BAD_M3UA, f"parameter 0x{tag:04x} of length {plen} at "
                                               f"{pos} does not fit in {length} bytes")
        params.append((tag, payload[pos + M3UA_PARAM.size:pos + plen]))
        pos += plen + (-plen % 4)
    return cls, kind, params


def decode_m3ua(payload: bytes, standard: str = ITU) -> Transfer | None:
    """The MTP3 user message of an M3UA DATA message in any encoding; None for the other
    classes (ASP management, state maintenance, SSNM, heartbeats)."""
    cls, kind, params = m3ua_parameters(payload)
    if (cls, kind) != (M3UA_CLASS_TRANSFER, M3UA_TYPE_DATA):
        return None
    for tag, value in params:
        if tag == TAG_PROTOCOL_DATA:
            if len(value) < PROTOCOL_DATA_FIXED.size:
                raise DecodeError(REASON_BAD_M3UA, f"Protocol Data of {len(value)} bytes")
            opc, dpc, si, _ni, _mp, _sls = PROTOCOL_DATA_FIXED.unpack_from(value)
            return Transfer(opc, dpc, si, value[PROTOCOL_DATA_FIXED.size:])
        if tag in DRAFT_MSU_TAGS or tag in DRAFT_LI_MSU_TAGS:
            msu = value[1:] if tag in DRAFT_LI_MSU_TAGS else value
            try:
                return decode_msu(msu, standard)
            except DecodeError as exc:
                raise DecodeError(REASON_BAD_M3UA, f"draft Protocol Data (tag 0x{tag:04x}): "
                                                   f"{exc.detail}") from None
    raise DecodeError(REASON_BAD_M3UA, "DATA message without a Protocol Data parameter "
                                       f"(tags {', '.join(f'0x{t:04x}' for t, _ in params)})")
