"""HEPv3 (HEP/EEP, the Homer Encapsulation Protocol) decode and encode.

Kamailio/OpenSIPS ``siptrace``, FreeSWITCH and the HOMER capture agents mirror every SIP message
they see as one HEPv3 packet: the magic ``HEP3``, a u16 total length (header included), then
chunks of ``vendor u16 | type u16 | length u16`` (length counts the 6-byte chunk header) and the
value, all in network byte order. Nothing on PyPI decodes it and tshark 4.0 has no dissector, so
this module does, after Kamailio's own reader (``sipcapture/hep.c``): generic chunks (vendor 0)
are decoded by type, vendor chunks are skipped, a zero chunk length or a chunk running past the
packet is an error.

Over UDP one datagram carries one packet; over TCP packets follow each other back to back and
the length field frames them (:class:`HepStream`). Every failure is a :class:`HepError` with a
short machine reason (a DLQ header and metric label) and a human detail.

The encoder exists for the tests and for replaying captured traffic to a collector
(:func:`encode`), so both directions are checked against each other and against real Kamailio
output (``tests/fixtures/sip/*.hep``).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterator

from streams.schema import InvalidEvent

MAGIC = b"HEP3"
HEADER = struct.Struct("!4sH")
CHUNK_HEADER = struct.Struct("!HHH")
#: The u16 length field caps a packet at this many bytes.
MAX_PACKET = 0xFFFF
#: Most bytes a compressed payload (chunk 16) may inflate to: far above any SIP message (a
#: few KiB; one over UDP is at most 64 KiB), far below what hurts. Why a cap: zlib inflates
#: about 1000:1, so one 60 KB datagram inflated whole to 62 MB (+290 MB RSS in the collector);
#: past the cap it is a bomb, not a message, and is rejected without inflating the rest.
MAX_INFLATED = 256 * 1024
#: Default cap on the length field of a packet framed from a stream (TCP, ``.hep`` files;
#: ``DIALGUARD_HEP_TCP_MAX_FRAME_BYTES`` for the collector). Why below :data:`MAX_PACKET`: a
#: garbage length field near 64 KiB would hold every good packet behind it until that many
#: more bytes arrived; a length past the cap is known bad at once and framing resyncs. Real
#: siptrace packets (SIP + about 100 bytes of chunks) are a few KiB.
DEFAULT_MAX_FRAME = 16 * 1024

# Generic chunk types (vendor 0), from the HEP/EEP proposal as Kamailio reads it.
CHUNK_IP_FAMILY = 1
CHUNK_IP_PROTO = 2
CHUNK_IPV4_SRC = 3
CHUNK_IPV4_DST = 4
CHUNK_IPV6_SRC = 5
CHUNK_IPV6_DST = 6
CHUNK_SRC_PORT = 7
CHUNK_DST_PORT = 8
CHUNK_TS_SEC = 9
CHUNK_TS_USEC = 10
CHUNK_PROTO_TYPE = 11
CHUNK_CAPTURE_ID = 12
CHUNK_KEEPALIVE = 13
CHUNK_AUTH_KEY = 14
CHUNK_PAYLOAD = 15
CHUNK_COMPRESSED_PAYLOAD = 16
CHUNK_CORRELATION_ID = 17

#: ``proto_type`` (chunk 11) of a SIP payload; others are RTCP reports, logs, DNS, ...
PROTO_SIP = 1
AF_INET = 2
AF_INET6 = 10
IPPROTO_TCP = 6
IPPROTO_UDP = 17

# Reasons (bounded set: metric label and DLQ header).
REASON_BAD_MAGIC = "bad_magic"
REASON_TRUNCATED = "truncated"
REASON_BAD_CHUNK = "bad_chunk"
REASON_NO_PAYLOAD = "no_payload"
#: A compressed payload inflating past :data:`MAX_INFLATED`.
REASON_INFLATE_TOO_LARGE = "hep_inflate_too_large"
#: A framed packet's length field shorter than the header or past the stream's frame cap.
REASON_BAD_LENGTH = "bad_length"
HEP_REASONS: tuple[str, ...] = (REASON_BAD_MAGIC, REASON_TRUNCATED, REASON_BAD_CHUNK,
                                REASON_NO_PAYLOAD, REASON_INFLATE_TOO_LARGE, REASON_BAD_LENGTH)


class HepError(InvalidEvent):
    """The bytes are not a well-formed HEPv3 packet."""


@dataclass(slots=True)
class HepPacket:
    """What a capture agent told us about one captured message."""

    payload: bytes
    ts_sec: int = 0
    ts_usec: int = 0
    proto_type: int = PROTO_SIP
    ip_family: int = AF_INET
    ip_proto: int = IPPROTO_UDP
    src_ip: str = ""
    dst_ip: str = ""
    src_port: int = 0
    dst_port: int = 0
    capture_id: int | None = None
    correlation_id: str | None = None
    auth_key: str | None = None
    #: Vendor-specific chunks kept as (vendor, type) -> value, untouched.
    vendor_chunks: dict[tuple[int, int], bytes] = field(default_factory=dict)
    #: The packet's bytes as received (what goes to the dead-letter topic if the payload is
    #: unusable); set by :func:`decode`, ignored by :func:`encode`.
    raw: bytes = b""

    @property
    def ts(self) -> float:
        """Capture time, epoch seconds: the event time of whatever the payload says."""
        return self.ts_sec + self.ts_usec / 1_000_000


def _uint(value: bytes, ctype: int) -> int:
    if len(value) not in (1, 2, 4):
        raise HepError(REASON_BAD_CHUNK, f"chunk type {ctype}: {len(value)}-byte integer")
    return int.from_bytes(value, "big")


def _ip(value: bytes, ctype: int, size: int) -> str:
    if len(value) != size:
        raise HepError(REASON_BAD_CHUNK, f"chunk type {ctype}: {len(value)}-byte address, "
                                         f"expected {size}")
    return socket.inet_ntop(socket.AF_INET6 if size == 16 else socket.AF_INET, value)


def _inflate(value: bytes) -> bytes:
    """A compressed payload (zlib or gzip), inflated to at most :data:`MAX_INFLATED` bytes."""
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # zlib or gzip header
    try:
        out = inflater.decompress(value, MAX_INFLATED + 1)
    except zlib.error as exc:
        raise HepError(REASON_BAD_CHUNK, f"compressed payload: {exc}") from None
    if len(out) > MAX_INFLATED:
        raise HepError(REASON_INFLATE_TOO_LARGE,
                       f"compressed payload of {len(value)} bytes inflates past "
                       f"{MAX_INFLATED} bytes (the cap); not inflated further")
    if not inflater.eof:
        raise HepError(REASON_BAD_CHUNK, "compressed payload: incomplete or truncated stream")
    return out


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00").decode("utf-8", "replace")


def decode(data: bytes) -> HepPacket:
    """One whole packet (exactly ``length`` bytes, e.g. one UDP datagram) -> :class:`HepPacket`."""
    if len(data) < HEADER.size:
        raise HepError(REASON_TRUNCATED, f"{len(data)} bytes, shorter than the 6-byte header")
    magic, total = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise HepError(REASON_BAD_MAGIC, f"starts with {data[:4]!r}, not {MAGIC!r}")
    if total < HEADER.size:
        raise HepError(REASON_BAD_CHUNK, f"length field {total} is shorter than the header")
    if len(data) < total:
        raise HepError(REASON_TRUNCATED, f"length field says {total} bytes, got {len(data)}")
    if len(data) > total:
        raise HepError(REASON_BAD_CHUNK, f"{len(data) - total} bytes after the {total}-byte packet")
    packet = HepPacket(payload=b"", raw=data)
    payload: bytes | None = None
    pos = HEADER.size
    while pos < total:
        if total - pos < CHUNK_HEADER.size:
            raise HepError(REASON_TRUNCATED, f"{total - pos} bytes left at offset {pos}, "
                                             "shorter than a chunk header")
        vendor, ctype, clen = CHUNK_HEADER.unpack_from(data, pos)
        if clen < CHUNK_HEADER.size:
            raise HepError(REASON_BAD_CHUNK, f"chunk {vendor}/{ctype} at offset {pos} has "
                                             f"length {clen}")
        if pos + clen > total:
            raise HepError(REASON_TRUNCATED, f"chunk {vendor}/{ctype} at offset {pos} needs "
                                             f"{clen} bytes, {total - pos} left")
        value = data[pos + CHUNK_HEADER.size:pos + clen]
        pos += clen
        if vendor != 0:
            packet.vendor_chunks[(vendor, ctype)] = value
            continue
        if ctype == CHUNK_IP_FAMILY:
            packet.ip_family = _uint(value, ctype)
        elif ctype == CHUNK_IP_PROTO:
            packet.ip_proto = _uint(value, ctype)
        elif ctype == CHUNK_IPV4_SRC:
            packet.src_ip = _ip(value, ctype, 4)
        elif ctype == CHUNK_IPV4_DST:
            packet.dst_ip = _ip(value, ctype, 4)
        elif ctype == CHUNK_IPV6_SRC:
            packet.src_ip = _ip(value, ctype, 16)
        elif ctype == CHUNK_IPV6_DST:
            packet.dst_ip = _ip(value, ctype, 16)
        elif ctype == CHUNK_SRC_PORT:
            packet.src_port = _uint(value, ctype)
        elif ctype == CHUNK_DST_PORT:
            packet.dst_port = _uint(value, ctype)
        elif ctype == CHUNK_TS_SEC:
            packet.ts_sec = _uint(value, ctype)
        elif ctype == CHUNK_TS_USEC:
            packet.ts_usec = _uint(value, ctype)
        elif ctype == CHUNK_PROTO_TYPE:
            packet.proto_type = _uint(value, ctype)
        elif ctype == CHUNK_CAPTURE_ID:
            packet.capture_id = _uint(value, ctype)
        elif ctype == CHUNK_AUTH_KEY:
            packet.auth_key = _text(value)
        elif ctype == CHUNK_PAYLOAD:
            payload = value
        elif ctype == CHUNK_COMPRESSED_PAYLOAD:
            payload = _inflate(value)
        elif ctype == CHUNK_CORRELATION_ID:
            packet.correlation_id = _text(value)
        # Other generic types (keepalive timer, VLAN, MAC addresses, ...) carry nothing we use.
    if payload is None:
        raise HepError(REASON_NO_PAYLOAD, "no payload chunk (type 15 or 16)")
    if packet.ts_usec >= 1_000_000:
        raise HepError(REASON_BAD_CHUNK, f"timestamp microseconds {packet.ts_usec} >= 1e6")
    packet.payload = payload
    return packet


def encode(packet: HepPacket) -> bytes:
    """The inverse of :func:`decode` (generic chunks in Kamailio's order, then vendor chunks)."""
    v6 = packet.ip_family == AF_INET6
    chunks: list[bytes] = [
        _chunk(CHUNK_IP_FAMILY, bytes([packet.ip_family])),
        _chunk(CHUNK_IP_PROTO, bytes([packet.ip_proto])),
        _chunk(CHUNK_IPV6_SRC if v6 else CHUNK_IPV4_SRC,
               ipaddress.ip_address(packet.src_ip or ("::" if v6 else "0.0.0.0")).packed),
        _chunk(CHUNK_IPV6_DST if v6 else CHUNK_IPV4_DST,
               ipaddress.ip_address(packet.dst_ip or ("::" if v6 else "0.0.0.0")).packed),
        _chunk(CHUNK_SRC_PORT, struct.pack("!H", packet.src_port)),
        _chunk(CHUNK_DST_PORT, struct.pack("!H", packet.dst_port)),
        _chunk(CHUNK_TS_SEC, struct.pack("!I", packet.ts_sec)),
        _chunk(CHUNK_TS_USEC, struct.pack("!I", packet.ts_usec)),
        _chunk(CHUNK_PROTO_TYPE, bytes([packet.proto_type])),
    ]
    if packet.capture_id is not None:
        chunks.append(_chunk(CHUNK_CAPTURE_ID, struct.pack("!I", packet.capture_id)))
    if packet.auth_key is not None:
        chunks.append(_chunk(CHUNK_AUTH_KEY, packet.auth_key.encode()))
    chunks.append(_chunk(CHUNK_PAYLOAD, packet.payload))
    if packet.correlation_id is not None:
        chunks.append(_chunk(CHUNK_CORRELATION_ID, packet.correlation_id.encode()))
    for (vendor, ctype), value in packet.vendor_chunks.items():
        chunks.append(_chunk(ctype, value, vendor))
    body = b"".join(chunks)
    total = HEADER.size + len(body)
    if total > MAX_PACKET:
        raise ValueError(f"a HEPv3 packet holds at most {MAX_PACKET} bytes, this one {total}")
    return HEADER.pack(MAGIC, total) + body


def _chunk(ctype: int, value: bytes, vendor: int = 0) -> bytes:
    return CHUNK_HEADER.pack(vendor, ctype, CHUNK_HEADER.size + len(value)) + value


@dataclass(slots=True)
class Rejected:
    """Bytes that could not be decoded, kept whole for the dead-letter topic."""

    raw: bytes
    reason: str
    detail: str


class HepStream:
    """Frames back-to-back HEPv3 packets from a byte stream (a TCP connection, a .hep file).

    Resynchronisation: when the bytes at the head of the buffer do not start with ``HEP3``, or a
    framed packet does not decode, the bytes up to the next ``HEP3`` are rejected as one dead
    letter and framing resumes there. A capture agent keeps one long-lived connection, so
    closing it on the first bad byte would throw away every good packet queued behind it; a
    false ``HEP3`` inside a payload only costs one more rejected span, never a wrong event.

    A length field shorter than the header or longer than ``max_frame`` is a bad frame: the
    bytes up to the next ``HEP3`` are rejected (``bad_length``) at once, instead of waiting for
    up to 64 KiB that would never make a packet while the good packets behind them wait.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not HEADER.size <= max_frame <= MAX_PACKET:
            raise ValueError(f"a HEPv3 frame cap must be within {HEADER.size}..{MAX_PACKET} "
                             f"bytes, not {max_frame}")
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held while waiting for the rest of a packet."""
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[HepPacket | Rejected]:
        """Append ``data``; yield every packet (or rejected span) now complete."""
        self._buf += data
        buf = self._buf
        while len(buf) >= HEADER.size:
            if buf[:4] != MAGIC:
                cut = buf.find(MAGIC, 1)
                if cut < 0:
                    # Keep the last 3 bytes: they may be the start of a magic split by a read.
                    cut = len(buf) - (len(MAGIC) - 1)
                raw = bytes(buf[:cut])
                del buf[:cut]
                yield Rejected(raw, REASON_BAD_MAGIC,
                               f"{len(raw)} bytes before the next {MAGIC!r}: {raw[:16]!r}")
                continue
            total = HEADER.unpack_from(buf)[1]
            if not HEADER.size <= total <= self.max_frame:
                cut = buf.find(MAGIC, 4)
                if cut < 0:
                    # Keep the last 3 bytes: they may be the start of a magic split by a read.
                    cut = max(len(MAGIC), len(buf) - (len(MAGIC) - 1))
                raw = bytes(buf[:cut])
                del buf[:cut]
                yield Rejected(raw, REASON_BAD_LENGTH,
                               f"length field {total} is outside {HEADER.size}..{self.max_frame} "
                               f"bytes; {len(raw)} bytes skipped to the next {MAGIC!r}")
                continue
            if len(buf) < total:
                break
            frame = bytes(buf[:total])
            try:
                packet = decode(frame)
            except HepError as exc:
                nxt = frame.find(MAGIC, 4)
                cut = total if nxt < 0 else nxt
                del buf[:cut]
                yield Rejected(frame[:cut], exc.reason, exc.detail)
                continue
            del buf[:total]
            yield packet

    def close(self) -> Rejected | None:
        """End of stream: whatever is left is a truncated packet (or garbage)."""
        if not self._buf:
            return None
        raw = bytes(self._buf)
        self._buf.clear()
        if raw.startswith(MAGIC) and len(raw) >= HEADER.size:
            total = HEADER.unpack_from(raw)[1]
            return Rejected(raw, REASON_TRUNCATED, f"stream ended {total - len(raw)} bytes "
                                                   f"short of a {total}-byte packet")
        if MAGIC.startswith(raw[:4]):
            return Rejected(raw, REASON_TRUNCATED, f"stream ended inside a packet header "
                                                   f"({len(raw)} bytes)")
        return Rejected(raw, REASON_BAD_MAGIC, f"{len(raw)} trailing bytes: {raw[:16]!r}")


def read_file(data: bytes) -> Iterator[HepPacket | Rejected]:
    """Packets of a ``.hep`` file (packets back to back, as on a TCP connection)."""
    stream = HepStream()
    yield from stream.feed(data)
    tail = stream.close()
    if tail is not None:
        yield tail
