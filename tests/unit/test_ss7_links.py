"""ISUP from every SS7 link type through the real tshark: M2PA, M2UA (pcapng), the M3UA
drafts, MTP2, SCTP-fragmented M3UA, ANSI ISUP, and captures that hold SS7 nobody can read;
plus the per-file account of a multi-file run (tests/fixtures/ss7/make_ss7_links.py)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from services.ingest import isup_pcap
from services.ingest.capture_files import clean_tshark_errors
from services.ingest.isup_calls import IsupCallTracker, IsupFeed
from services.ingest.mtp3 import ANSI, ITU, DecodeError, Transfer, decode_m3ua, decode_msu
from services.ingest.ss7_links import read_payloads
from services.settings import Settings
from streams.numbers import NumberPlan
from streams.schema import EventValidator
from tests.unit.ingest_recorder import recording_sink

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ss7"
T0 = 1_795_500_000.0
A, B = 1001, 2002
ANSI_A, ANSI_B = 0x010203, 0x040506


def _generator():
    spec = importlib.util.spec_from_file_location("make_ss7_links",
                                                  FIXTURES / "make_ss7_links.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def ingest(name: str, standard: str = ITU, switch: str | None = None):
    settings = Settings.from_env(environ={})
    sink, producer = recording_sink(isup_pcap.SOURCE)
    feed = IsupFeed(IsupCallTracker(NumberPlan.of(settings)), sink, EventValidator.of(settings))
    isup_pcap.ingest_payloads(read_payloads(str(FIXTURES / name)), feed, name, switch, standard)
    return sink, producer


def facts(events):
    return [(e.kind, e.ts, e.call_id, e.caller, e.callee, e.code, e.duration_s, e.trunk,
             e.switch, e.proto) for e in events]


def test_fixtures_are_what_their_script_builds(tmp_path):
    GEN.main(["make_ss7_links.py", str(tmp_path)])
    for name in GEN.CAPTURES:
        assert (tmp_path / name).read_bytes() == (FIXTURES / name).read_bytes(), name


def test_m2pa_call_and_link_status():
    sink, producer = ingest("m2pa.pcap")
    cid = f"{A}-{B}-11-{T0 + 10:.3f}"
    call = (cid, "8613800138000", "862112345678")
    assert facts(producer.events()) == [
        ("attempt", T0 + 10, *call, None, None, f"{A}-{B}", f"pc-{B}", "isup"),
        ("answer", T0 + 14, *call, None, None, f"{A}-{B}", f"pc-{B}", "isup"),
        ("release", T0 + 44, *call, None, 30.0, f"{A}-{B}", f"pc-{B}", "isup")]
    assert dict(sink.ignored) == {"ss7_link_status": 1, "isup_acm": 1, "isup_rlc": 1}
    assert producer.dead() == []


def test_m2ua_in_pcapng():
    sink, producer = ingest("m2ua.pcapng", switch="stp-1")
    cid = f"{A}-{B}-12-{T0 + 20:.3f}"
    assert facts(producer.events()) == [
        ("attempt", T0 + 20, cid, "8613800138000", "862112345678", None, None, f"{A}-{B}",
         "stp-1", "isup"),
        ("fail", T0 + 23, cid, "8613800138000", "862112345678", 17, None, f"{A}-{B}",
         "stp-1", "isup")]
    assert dict(sink.ignored) == {"isup_rlc": 1}


def test_m3ua_draft_5_6_and_7_encodings():
    sink, producer = ingest("m3ua_drafts.pcap")
    by_cic = {}
    for e in producer.events():
        by_cic.setdefault(int(e.call_id.split("-")[2]), []).append((e.kind, e.code,
                                                                     e.duration_s))
    assert by_cic == {13: [("attempt", None, None), ("fail", 17, None)],
                      14: [("attempt", None, None), ("answer", None, None),
                           ("release", None, 10.0)],
                      15: [("attempt", None, None), ("fail", 19, None)]}
    assert {(e.caller, e.callee) for e in producer.events()} == {("8613800138000",
                                                                  "862112345678")}
    assert producer.dead() == [] and dict(sink.ignored) == {"isup_rlc": 3}


def test_mtp2_link_capture():
    sink, producer = ingest("mtp2.pcap")
    assert [(e.kind, e.ts, e.duration_s) for e in producer.events()] == [
        ("attempt", T0 + 130, None), ("answer", T0 + 132, None), ("release", T0 + 152, 20.0)]
    assert {e.call_id for e in producer.events()} == {f"{A}-{B}-16-{T0 + 130:.3f}"}
    assert dict(sink.ignored) == {"ss7_link_status": 1, "isup_rlc": 1}  # the FISU


def test_iam_fragmented_over_two_sctp_chunks_is_reassembled():
    sink, producer = ingest("sctp_fragmented.pcap")
    events = producer.events()
    assert [(e.kind, e.ts, e.code) for e in events] == [("attempt", T0 + 160.001, None),
                                                         ("fail", T0 + 163, 17)]
    assert events[0].callee == "862112345678" and events[0].caller == "8613800138000"
    assert dict(sink.ignored) == {"sctp_fragment": 1, "isup_rlc": 1}


def test_ansi_isup_with_24_bit_point_codes():
    sink, producer = ingest("ansi.pcap", standard=ANSI)
    cid = f"{ANSI_A}-{ANSI_B}-18-{T0 + 200:.3f}"
    call = (cid, "862125550123", "863105550199")
    trunk, switch = f"{ANSI_A}-{ANSI_B}", f"pc-{ANSI_B}"
    assert facts(producer.events()) == [
        ("attempt", T0 + 200, *call, None, None, trunk, switch, "isup"),
        ("answer", T0 + 205, *call, None, None, trunk, switch, "isup"),
        ("release", T0 + 220, *call, None, 15.0, trunk, switch, "isup")]


def test_ansi_capture_read_as_itu_is_dead_lettered_not_silent():
    sink, producer = ingest("ansi.pcap", standard=ITU)
    assert sum(sink.events.values()) == 0
    assert sum(sink.dead.values()) + sum(sink.ignored.values()) == 4


def test_ss7_that_cannot_be_read_is_counted_with_why():
    sink, producer = ingest("undecodable.pcap")
    assert producer.events() == []
    dead = producer.dead()
    assert [(r, d.split(":")[0]) for _, r, d in dead] == [
        ("bad_isup", "undecodable.pcap frame 2 (m2pa)"),
        ("bad_m3ua", "undecodable.pcap frame 3 (m3ua)")]
    assert dict(sink.ignored) == {"sua_not_isup": 1}


def test_mtp3_routing_labels_and_m3ua_encodings():
    itu = GEN.itu_msu(A, B, b"\x0b\x00\x01", sls=9)
    assert decode_msu(itu, ITU) == Transfer(A, B, 5, b"\x0b\x00\x01")
    ansi = GEN.ansi_msu(ANSI_A, ANSI_B, b"\x12\x00\x09")
    assert decode_msu(ansi, ANSI) == Transfer(ANSI_A, ANSI_B, 5, b"\x12\x00\x09")
    with pytest.raises(DecodeError):
        decode_msu(b"\x85\x01\x02", ITU)
    for tag in (0x0003, 0x0002, 0x0081):
        assert decode_m3ua(GEN.m3ua_draft_data(tag, itu)) == Transfer(A, B, 5, b"\x0b\x00\x01")
    assert decode_m3ua(GEN.m3ua_draft_data(0x0082, b"\x08" + itu)).opc == A
    with pytest.raises(DecodeError, match="without a Protocol Data"):
        decode_m3ua(GEN.ua_message(1, 1, GEN.tlv(0x0006, b"\x00\x00\x00\x01")))


def test_tshark_root_warning_is_not_part_of_an_error():
    err = ('Running as user "root" and group "root". This could be dangerous.\n'
           'tshark: The file "x.pcap" appears to have been cut short in the middle of a '
           'packet.\n')
    assert clean_tshark_errors(err) == ('tshark: The file "x.pcap" appears to have been cut '
                                        'short in the middle of a packet.')


def test_multi_file_run_reads_every_file_and_reports_each(monkeypatch, tmp_path, capsys):
    """A bad file, an empty file, a missing one and a folder: every good file is still read,
    each file gets its line, and the exit status says a file could not be read."""
    sink, producer = recording_sink(isup_pcap.SOURCE)
    monkeypatch.setattr(isup_pcap, "replay_sink", lambda settings, source, again: sink)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all\n")
    empty = tmp_path / "empty.pcap"
    empty.touch()
    folder = tmp_path / "probe"
    folder.mkdir()
    (folder / "b.pcap").write_bytes((FIXTURES / "mtp2.pcap").read_bytes())
    (folder / "a.pcapng").write_bytes((FIXTURES / "m2ua.pcapng").read_bytes())
    (folder / "notes.txt").write_text("not a capture")
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    args = argparse.Namespace(files=[str(bad), str(FIXTURES / "m2pa.pcap"), str(empty),
                                     str(tmp_path / "missing.pcap"), str(folder), str(nothing)],
                              switch=None, standard=ITU, again=False)
    assert isup_pcap.run(args, Settings.from_env(environ={})) == 1
    err = capsys.readouterr().err
    assert f"ERROR {bad}: NOT READ: tshark could not read all of {bad}" in err
    assert "Running as user" not in err
    assert "m2pa.pcap: 6 SS7 frames, 3 events published (answer 1, attempt 1, release 1)" in err
    assert f"ERROR {empty}: NOT READ: {empty} is empty (0 bytes)" in err
    assert f"no such capture file: {tmp_path / 'missing.pcap'}" in err
    assert f"{folder / 'a.pcapng'}: 3 SS7 frames, 2 events published" in err
    assert f"{folder / 'b.pcap'}: 5 SS7 frames, 3 events published" in err
    assert f"folder {nothing} holds no capture files" in err
    assert err.index("a.pcapng") < err.index("b.pcap")  # a folder is read in name order
    assert sum(sink.events.values()) == 8


def test_a_capture_without_ss7_says_so(monkeypatch, capsys):
    sink, _ = recording_sink(isup_pcap.SOURCE)
    monkeypatch.setattr(isup_pcap, "replay_sink", lambda settings, source, again: sink)
    sip = FIXTURES.parent / "sip" / "kamailio_calls.pcap"
    args = argparse.Namespace(files=[str(sip)], switch=None, standard=ITU, again=False)
    assert isup_pcap.run(args, Settings.from_env(environ={})) == 0
    assert "0 SS7 frames" in capsys.readouterr().err
