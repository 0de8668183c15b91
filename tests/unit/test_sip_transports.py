"""SIP from captures on any port and transport, and untidy SIP that still makes events:
tests/fixtures/sip/sip_transports.pcap through the real tshark, the repairs of
services/ingest/sip_text.py, and the per-file account of a multi-file sip-pcap run."""

from __future__ import annotations

import argparse
import importlib.util
from collections import Counter
from pathlib import Path

from services.ingest import sip_pcap
from services.ingest.sip_dialogs import parse_sip
from services.ingest.sip_feed import SipFeed
from services.ingest.sip_text import bracket_ipv6_hosts, tolerant_sip
from services.settings import Settings
from tests.unit.ingest_recorder import recording_sink

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sip"
CAPTURE = FIXTURES / "sip_transports.pcap"
T0 = 1_795_600_000.0


def _generator():
    spec = importlib.util.spec_from_file_location("make_sip_transports",
                                                  FIXTURES / "make_sip_transports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def test_fixture_is_what_its_script_builds(tmp_path):
    GEN.main(["make_sip_transports.py", str(tmp_path / "again.pcap")])
    assert (tmp_path / "again.pcap").read_bytes() == CAPTURE.read_bytes()


def test_every_transport_and_untidy_call_becomes_its_events():
    sink, producer = recording_sink(sip_pcap.SOURCE)
    feed = SipFeed.for_settings(Settings.from_env(environ={}), sink)
    assert sip_pcap.ingest_file(CAPTURE, feed, "sw-cap") == 10
    # Batch records group events by partition: order by time, as across partitions.
    got = [(e.call_id, e.kind, e.ts, e.caller, e.callee, e.code, e.duration_s, e.trunk,
            e.switch) for e in sorted(producer.events(), key=lambda e: e.ts)]
    tcp = ("+8613800138001", "+8613900139001")
    ws = ("+8613800138002", "+8613900139002")
    sctp = ("+8613800138003", "+8613900139003")
    untidy = ("+8613800138004", "+8613900139004")
    assert got == [
        ("tcp6060@dialguard", "attempt", T0 + 10, *tcp, None, None, "10.2.0.1", "sw-cap"),
        ("tcp6060@dialguard", "answer", T0 + 12, *tcp, 200, None, "10.2.0.1", "sw-cap"),
        ("tcp6060@dialguard", "release", T0 + 22, *tcp, None, 10.0, "10.2.0.1", "sw-cap"),
        ("ws@dialguard", "attempt", T0 + 31, *ws, None, None, "10.2.0.1", "sw-cap"),
        ("ws@dialguard", "fail", T0 + 32, *ws, 486, None, "10.2.0.1", "sw-cap"),
        ("sctp@dialguard", "attempt", T0 + 40, *sctp, None, None, "10.2.0.1", "sw-cap"),
        ("sctp@dialguard", "fail", T0 + 41, *sctp, 503, None, "10.2.0.1", "sw-cap"),
        ("untidy@dialguard", "attempt", T0 + 50, *untidy, None, None, "2001:db8::1", "sw-cap"),
        ("untidy@dialguard", "answer", T0 + 51, *untidy, 200, None, "2001:db8::1", "sw-cap"),
        ("untidy@dialguard", "release", T0 + 81, *untidy, None, 30.0, "2001:db8::1", "sw-cap")]
    assert producer.dead() == []


def test_bare_lf_non_utf8_and_bare_ipv6_are_repaired_not_dead_lettered():
    raw = (b"INVITE sip:+8613900139000@2001:db8::2 SIP/2.0\n"
           b'From: "Jos\xe9" <sip:+8613800138000@2001:db8::1:5060>;tag=a\xff\n'
           b"To: <sip:+8613900139000@2001:db8::2>\n"
           b"Call-ID: x1\nCSeq: 1 INVITE\nSubject: folded\n  on two lines\n"
           b"Content-Length: 4\n\nbody")
    fixed = tolerant_sip(raw)
    assert fixed.endswith(b"\r\n\r\nbody") and b"\n" not in fixed.replace(b"\r\n", b"")
    assert b"Subject: folded on two lines\r\n" in fixed
    m = parse_sip(raw, T0)
    assert (m.method, m.caller, m.callee, m.call_id, m.cseq) == (
        "INVITE", "+8613800138000", "+8613900139000", "x1", 1)
    well_formed = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: y\r\nCSeq: 1 OPTIONS\r\n\r\n"
    assert tolerant_sip(well_formed) == well_formed


def test_ipv6_hosts_get_brackets_and_nothing_else_changes():
    assert bracket_ipv6_hosts("<sip:123@2001:db8::1>") == "<sip:123@[2001:db8::1]>"
    assert bracket_ipv6_hosts("sip:123@2001:db8::1;user=phone") == \
        "sip:123@[2001:db8::1];user=phone"
    assert bracket_ipv6_hosts("sip:123@2001:db8:0:0:0:0:1:5060") == \
        "sip:123@[2001:db8:0:0:0:0:1:5060]"
    assert bracket_ipv6_hosts("sip:1@[2001:db8::1]:5060") == "sip:1@[2001:db8::1]:5060"
    for same in ("sip:alice@example.com:5060", "Via: SIP/2.0/UDP 2001:db8::1:5060",
                 "sip:1@10.0.0.1:5060"):
        assert bracket_ipv6_hosts(same) == same


def test_websocket_frames_are_unmasked_joined_and_control_frames_left_out():
    masked = GEN.ws_frame(b"INVITE sip:1@h SIP/2.0\r\n\r\n", masked=True)
    ping = bytes([0x89, 0x00])
    first = bytes([0x01, 0x03]) + b"SIP"  # text, not final
    last = bytes([0x80, 0x04]) + b"/2.0"  # continuation, final
    assert sip_pcap.websocket_messages(masked + ping + first + last) == [
        b"INVITE sip:1@h SIP/2.0\r\n\r\n", b"SIP/2.0"]
    assert sip_pcap.websocket_messages(masked[:-3]) == []  # cut short: nothing made up


def test_sip_looking_payload_tshark_did_not_decode_is_counted_with_its_port():
    def line(payload: bytes) -> str:
        return "\t".join(["5", "1.0", "10.0.0.1", "", "", "", payload.hex(), "eth:ip:tcp:x11",
                          "6060", "", ""]) + "\n"

    assert sip_pcap.parse_line(line(b"SIP/2.0 200 OK\r\n")) == sip_pcap.NotSip(
        5, "sip_like_not_decoded", "tcp", 6060)
    assert sip_pcap.parse_line(line(b"GET /SIP/2.0 HTTP/1.1\r\n")) == sip_pcap.NotSip(
        5, "not_sip")
    hint = sip_pcap.port_hint(Counter({("tcp", 6060): 3, ("udp", 7070): 1}))
    assert hint == ("SIP-like payloads not decoded as SIP: 3 on tcp port 6060, 1 on udp port "
                    "7070; to read them add --sip-port 6060 --sip-port 7070")
    assert sip_pcap.looks_like_sip(b"SIP/2.0 200 OK\r\n")
    assert not sip_pcap.looks_like_sip(b"HTTP/1.1 200 OK\r\n")


def test_a_bad_file_does_not_stop_the_good_one_after_it(monkeypatch, tmp_path, capsys):
    sink, producer = recording_sink(sip_pcap.SOURCE)
    monkeypatch.setattr(sip_pcap, "replay_sink", lambda settings, source, again: sink)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\xd4\xc3\xb2\xa1 truncated header")
    empty = tmp_path / "empty.pcapng"
    empty.touch()
    args = argparse.Namespace(files=[str(bad), str(CAPTURE), str(empty), str(tmp_path)],
                              switch="sw", sip_port=None, again=False)
    assert sip_pcap.run(args, Settings.from_env(environ={})) == 1
    err = capsys.readouterr().err
    assert f"ERROR {bad}: NOT READ: tshark could not read {bad}" in err
    assert "Running as user" not in err
    assert (f"{CAPTURE}: 10 SIP frames, 10 events published (answer 2, attempt 4, fail 2, "
            "release 2), 0 dead-lettered") in err
    assert f"{empty} is empty (0 bytes)" in err
    # the folder holds bad.pcap (read again, fails again) and empty.pcapng: both reported
    assert err.count("NOT READ") == 4, err
    assert len(producer.events()) == 10


def test_sip_in_bundled_sctp_chunks_is_every_chunk_and_other_chunks_are_counted():
    one, two = b"SIP/2.0 180 Ringing\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n"

    def line(*chunks: bytes) -> str:
        return "\t".join(["9", "2.5", "10.0.0.2", "", "", "", "", "eth:ip:sctp:data:data", "",
                          "", ",".join(c.hex() for c in chunks)]) + "\n"

    frame = sip_pcap.parse_line(line(one, two))
    assert (frame.number, frame.ts, frame.src, frame.messages) == (9, 2.5, "10.0.0.2",
                                                                   [one, two])
    assert sip_pcap.parse_line(line(b"\x01\x00\x03\x01")) == sip_pcap.NotSip(9, "sctp_not_sip",
                                                                            "sctp")


def test_hep_from_a_hepgen_style_agent_with_bare_lf_makes_the_call():
    """The HEP collector parses with the same repairs: a bare-LF INVITE/200/BYE over IPv6
    becomes attempt, answer, release, nothing dead-lettered."""
    from services.ingest import hep
    from services.ingest.hep_collector import HepCollector

    sink, producer = recording_sink("hep")
    collector = HepCollector(Settings.from_env(environ={}), sink, switch="sw-hep")
    m = GEN.call_messages("hepgen", 5, eol=b"\n", host="2001:db8::2")
    for dt, name in ((0, "INVITE"), (2, "200"), (9, "BYE")):
        packet = hep.HepPacket(payload=m[name], ts_sec=int(T0) + dt, ip_family=hep.AF_INET6,
                               src_ip="2001:db8::1", dst_ip="2001:db8::2", src_port=5060,
                               dst_port=5060, capture_id=2001)
        collector.datagram(hep.encode(packet))
    assert [(e.kind, e.ts, e.caller, e.callee, e.duration_s, e.trunk, e.switch)
            for e in producer.events()] == [
        ("attempt", T0, "+8613800138005", "+8613900139005", None, "2001:db8::1", "sw-hep"),
        ("answer", T0 + 2, "+8613800138005", "+8613900139005", None, "2001:db8::1", "sw-hep"),
        ("release", T0 + 9, "+8613800138005", "+8613900139005", 7.0, "2001:db8::1", "sw-hep")]
    assert producer.dead() == []
