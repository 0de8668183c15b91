"""HEPv3 decode/encode against real Kamailio 5.6 siptrace output (tests/fixtures/sip/*.hep).

The fixture was recorded by ``tests/integration/kamailio_trace.py``: Debian's Kamailio proxying
five calls and an OPTIONS ping with siptrace mirroring every message as HEPv3 over UDP; the
datagrams are stored back to back exactly as received.
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest
from sipmessage import Message, Request

from services.ingest import hep

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sip" / "kamailio_calls.hep"
#: The capture id the recorder configured (modparam hep_capture_id).
KAMAILIO_CAPTURE_ID = 2024


@pytest.fixture(scope="module")
def kamailio_bytes() -> bytes:
    return FIXTURE.read_bytes()


@pytest.fixture(scope="module")
def packets(kamailio_bytes: bytes) -> list[hep.HepPacket]:
    items = list(hep.read_file(kamailio_bytes))
    assert all(isinstance(p, hep.HepPacket) for p in items), \
        [p for p in items if isinstance(p, hep.Rejected)]
    return items  # type: ignore[return-value]


def test_every_kamailio_packet_decodes_to_sip_with_capture_metadata(packets):
    assert len(packets) == 57
    for p in packets:
        assert p.proto_type == hep.PROTO_SIP
        assert p.ip_family == hep.AF_INET and p.ip_proto == hep.IPPROTO_UDP
        assert p.src_ip == "127.0.0.1" and p.dst_ip == "127.0.0.1"
        assert 0 < p.src_port < 65536 and 0 < p.dst_port < 65536
        assert p.capture_id == KAMAILIO_CAPTURE_ID
        assert 0 <= p.ts_usec < 1_000_000 and p.ts_sec > 1_700_000_000
        Message.parse(p.payload)  # sipmessage reads every payload
    first = Message.parse(packets[0].payload)
    assert isinstance(first, Request) and first.method == "INVITE"
    # Capture times never go back by more than scheduling noise, and span the held calls.
    assert packets[-1].ts - packets[0].ts > 1.5
    assert packets[0].ts == packets[0].ts_sec + packets[0].ts_usec / 1e6


def test_encode_reproduces_kamailio_bytes_exactly(packets):
    for p in packets:
        assert hep.encode(p) == p.raw


def test_encode_decode_round_trip_ipv6_with_extras():
    p = hep.HepPacket(payload=b"OPTIONS sip:x SIP/2.0\r\n\r\n", ts_sec=1_795_420_800,
                      ts_usec=250_000, ip_family=hep.AF_INET6, ip_proto=hep.IPPROTO_TCP,
                      src_ip="2001:db8::1", dst_ip="2001:db8::2", src_port=5060, dst_port=5061,
                      capture_id=7, correlation_id="abc@host", auth_key="secret",
                      vendor_chunks={(3, 99): b"\x01\x02"})
    q = hep.decode(hep.encode(p))
    for name in ("payload", "ts_sec", "ts_usec", "ip_family", "ip_proto", "src_ip", "dst_ip",
                 "src_port", "dst_port", "capture_id", "correlation_id", "auth_key",
                 "vendor_chunks"):
        assert getattr(q, name) == getattr(p, name), name
    assert q.ts == 1_795_420_800.25


def test_compressed_payload_chunk_is_inflated(packets):
    sip = packets[0].payload
    body = bytearray(hep.encode(hep.HepPacket(payload=b"x", ts_sec=1)))
    # Replace the plain payload chunk (type 15, last) with a compressed one (type 16).
    plain = hep.CHUNK_HEADER.pack(0, hep.CHUNK_PAYLOAD, 7) + b"x"
    assert body.endswith(plain)
    packed = zlib.compress(sip)
    body = body[:-len(plain)] + hep.CHUNK_HEADER.pack(0, hep.CHUNK_COMPRESSED_PAYLOAD,
                                                      6 + len(packed)) + packed
    body[4:6] = struct.pack("!H", len(body))
    assert hep.decode(bytes(body)).payload == sip


@pytest.mark.parametrize("mangle, reason", [
    (lambda b: b"HEP2" + b[4:], hep.REASON_BAD_MAGIC),
    (lambda b: b"GET / HTTP/1.1\r\n\r\n", hep.REASON_BAD_MAGIC),
    (lambda b: b[:3], hep.REASON_TRUNCATED),
    (lambda b: b[:len(b) // 2], hep.REASON_TRUNCATED),
    (lambda b: b + b"\x00\x00", hep.REASON_BAD_CHUNK),
    (lambda b: b[:4] + struct.pack("!H", 4) + b[6:], hep.REASON_BAD_CHUNK),
    # First chunk's length field set to 0 (Kamailio drops such a packet too).
    (lambda b: b[:10] + b"\x00\x00" + b[12:], hep.REASON_BAD_CHUNK),
    # First chunk claims to run past the end of the packet.
    (lambda b: b[:10] + b"\xff\xf0" + b[12:], hep.REASON_TRUNCATED),
    # IPv4 source chunk (third chunk, offset 20) with a 3-byte address.
    (lambda b: _resize_chunk(b, 20, 3), hep.REASON_BAD_CHUNK),
])
def test_bad_packets_raise_with_a_reason(packets, mangle, reason):
    with pytest.raises(hep.HepError) as err:
        hep.decode(mangle(packets[0].raw))
    assert err.value.reason == reason
    assert err.value.detail


def _resize_chunk(raw: bytes, offset: int, new_len: int) -> bytes:
    vendor, ctype, clen = hep.CHUNK_HEADER.unpack_from(raw, offset)
    chunk = hep.CHUNK_HEADER.pack(vendor, ctype, 6 + new_len) + raw[offset + 6:offset + 6 + new_len]
    body = raw[:offset] + chunk + raw[offset + clen:]
    return body[:4] + struct.pack("!H", len(body)) + body[6:]


def test_packet_without_payload_is_rejected():
    raw = hep.encode(hep.HepPacket(payload=b"", ts_sec=1))
    # Drop the (empty) payload chunk entirely.
    raw = raw[:-6]
    raw = raw[:4] + struct.pack("!H", len(raw)) + raw[6:]
    with pytest.raises(hep.HepError) as err:
        hep.decode(raw)
    assert err.value.reason == hep.REASON_NO_PAYLOAD


def test_stream_frames_packets_split_at_any_byte(kamailio_bytes, packets):
    rng = random.Random(4)
    stream = hep.HepStream()
    got = []
    pos = 0
    while pos < len(kamailio_bytes):
        step = rng.randint(1, 700)
        got += list(stream.feed(kamailio_bytes[pos:pos + step]))
        pos += step
    assert stream.close() is None and stream.pending == 0
    assert [p.raw for p in got] == [p.raw for p in packets]


def test_stream_rejects_garbage_and_resynchronises(packets):
    a, b, c = (p.raw for p in packets[:3])
    junk = b"\x00\x01garbage bytes\r\n"
    truncated = b[:40]  # a packet cut short, then the next packet follows
    items = list(hep.read_file(a + junk + truncated + c + b"HEP3\x00"))
    kinds = [(type(i).__name__, getattr(i, "reason", None)) for i in items]
    assert kinds == [("HepPacket", None), ("Rejected", hep.REASON_BAD_MAGIC),
                     ("Rejected", hep.REASON_TRUNCATED), ("HepPacket", None),
                     ("Rejected", hep.REASON_TRUNCATED)]
    assert items[1].raw == junk
    assert items[2].raw == truncated
    assert items[3].raw == c
    # Nothing is lost: every input byte is in a packet or a rejected span.
    assert sum(len(i.raw) for i in items) == len(a + junk + truncated + c) + 5


def test_stream_holds_a_partial_packet_until_the_rest_arrives(packets):
    raw = packets[5].raw
    stream = hep.HepStream()
    assert list(stream.feed(raw[:100])) == []
    assert stream.pending == 100
    [p] = list(stream.feed(raw[100:]))
    assert p.payload == packets[5].payload


def test_mangled_packets_fail_only_with_a_reason(packets):
    """Random byte flips, cuts and insertions into real packets: decoding and SIP parsing may
    reject them, but only with HepError/SipError (a reason for the DLQ), never anything else."""
    from services.ingest.sip_dialogs import DialogTracker, SipError, parse_sip

    rng = random.Random(1)
    tracker = DialogTracker(max_dialogs=10)
    outcomes: dict[str, int] = {}
    for _ in range(3000):
        b = bytearray(rng.choice(packets).raw)
        for _ in range(rng.randint(1, 5)):
            pos, op = rng.randrange(len(b)), rng.random()
            if op < 0.5:
                b[pos] = rng.randrange(256)
            elif op < 0.75:
                del b[pos:pos + rng.randint(1, 50)]
            else:
                b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 10)))
        try:
            p = hep.decode(bytes(b))
            tracker.feed(parse_sip(p.payload, p.ts))
            outcome = "ok"
        except (hep.HepError, SipError) as exc:
            outcome = exc.reason
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(outcomes)
    assert {"ok", "truncated", "bad_chunk", "sip_parse_error"} <= set(outcomes)
    assert len(tracker) <= 10


def _with_compressed_payload(packed: bytes) -> bytes:
    """A HEPv3 packet whose payload chunk is the compressed (type 16) ``packed``."""
    body = bytearray(hep.encode(hep.HepPacket(payload=b"x", ts_sec=1)))
    plain = hep.CHUNK_HEADER.pack(0, hep.CHUNK_PAYLOAD, 7) + b"x"
    body = body[:-len(plain)] + hep.CHUNK_HEADER.pack(0, hep.CHUNK_COMPRESSED_PAYLOAD,
                                                      6 + len(packed)) + packed
    body[4:6] = struct.pack("!H", len(body))
    return bytes(body)


def test_compressed_payload_inflating_past_the_cap_is_rejected_without_inflating_it():
    """A 60 KB datagram of zeros deflated 1000:1 used to inflate whole (62 MB); the decoder
    stops at the cap and rejects it with its own reason, holding little memory meanwhile."""
    import tracemalloc

    packed = zlib.compress(b"\x00" * 62_000_000, 9)
    raw = _with_compressed_payload(packed)
    assert len(raw) < 65_535
    tracemalloc.start()
    try:
        with pytest.raises(hep.HepError) as err:
            hep.decode(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == hep.REASON_INFLATE_TOO_LARGE
    assert str(hep.MAX_INFLATED) in err.value.detail
    assert hep.REASON_INFLATE_TOO_LARGE in hep.HEP_REASONS
    print(f"\n{len(raw)}-byte packet: peak {peak / 1e6:.2f} MB traced while decoding")
    assert peak < 4 * hep.MAX_INFLATED


def test_compressed_payload_up_to_the_cap_is_inflated_and_a_cut_stream_is_bad_chunk():
    payload = b"INVITE sip:1@x SIP/2.0\r\n" + b"a" * (hep.MAX_INFLATED - 24)
    assert len(payload) == hep.MAX_INFLATED
    assert hep.decode(_with_compressed_payload(zlib.compress(payload))).payload == payload
    with pytest.raises(hep.HepError) as err:
        hep.decode(_with_compressed_payload(zlib.compress(payload)[:-10]))
    assert err.value.reason == hep.REASON_BAD_CHUNK


@pytest.mark.parametrize("bad_length", [0xFFFF, 3])
def test_stream_skips_a_frame_with_a_bad_length_to_the_next_packet(packets, bad_length):
    """A garbage length field (past the frame cap, or shorter than the header) must not hold
    the good packets behind it until 64 KiB more arrive: the bytes up to the next ``HEP3`` are
    rejected (dead-lettered by the collector) and framing resumes there."""
    a, b, c = (p.raw for p in packets[:3])
    bad = b"HEP3" + struct.pack("!H", bad_length) + b"\x00\x01junk"
    stream = hep.HepStream(max_frame=4096)
    items = list(stream.feed(a + bad + b + c))
    assert [type(i).__name__ for i in items] == ["HepPacket", "Rejected", "HepPacket",
                                                 "HepPacket"]
    assert items[1].reason == hep.REASON_BAD_LENGTH and items[1].raw == bad
    assert str(bad_length) in items[1].detail
    assert [items[2].raw, items[3].raw] == [b, c]
    assert stream.pending == 0


def test_stream_frame_cap_keeps_real_packets(kamailio_bytes, packets):
    """The default cap is far above any real packet: the Kamailio capture frames as before."""
    assert max(len(p.raw) for p in packets) < hep.DEFAULT_MAX_FRAME
    assert [p.raw for p in hep.read_file(kamailio_bytes)] == [p.raw for p in packets]
