"""ISUP ingest without a broker: call tracker, BCD numbers, M3UA/ISUP decode, probe records,
and the committed pcap read through the real tshark."""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path

import pytest
from pycrate_mobile.ISUP import InitialAddress, ReleaseComplete, parse_ISUP

from services.ingest import isup_pcap, isup_probe
from services.ingest.isup_calls import (ACM, ANM, CON, IAM, NAI_INTERNATIONAL, NAI_NATIONAL,
                                        NAI_UNKNOWN, REL, RLC, RLC_WAIT_S, WHY_DUPLICATE,
                                        WHY_NO_CALL, WHY_RINGING, WHY_RLC, IsupCallTracker,
                                        IsupFeed, IsupMessage, address_string)
from services.ingest.isup_pcap import DecodeError, address_signals, decode_isup, decode_m3ua
from services.ingest.ss7_links import Payload, Skip, payloads_from_fields, read_payloads
from services.settings import Settings
from streams.numbers import NumberPlan
from streams.schema import REASON_MISSING, REASON_NUMBER, EventValidator
from tests.unit.ingest_recorder import recording_sink

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "isup"
PCAP = FIXTURES / "isup_calls.pcap"
PROBE = FIXTURES / "probe.jsonl"
A, B = 1001, 2002
T0 = 1_795_420_800.0
PLAN = NumberPlan()


def tracker(**kw) -> IsupCallTracker:
    return IsupCallTracker(PLAN, **kw)


def iam(cic: int, ts: float, calling: str = "13800138000", called: str = "2112345678",
        opc: int = A, dpc: int = B) -> IsupMessage:
    return IsupMessage(ts=ts, msg=IAM, opc=opc, dpc=dpc, cic=cic, calling=calling,
                       called=called, calling_nai=NAI_NATIONAL, called_nai=NAI_NATIONAL)


def msg(name: str, cic: int, ts: float, opc: int = B, dpc: int = A,
        cause: int | None = None) -> IsupMessage:
    return IsupMessage(ts=ts, msg=name, opc=opc, dpc=dpc, cic=cic, cause=cause)


def run(t: IsupCallTracker, messages: list[IsupMessage]):
    steps = [t.feed(m) for m in messages]
    return [e for s in steps for e in s.events], steps


# -- call tracker ---------------------------------------------------------------------------
def test_normal_call_is_attempt_answer_release_with_duration_from_anm_to_rel():
    t = tracker()
    events, steps = run(t, [iam(1, T0), msg(ACM, 1, T0 + 2), msg(ANM, 1, T0 + 5),
                            msg(REL, 1, T0 + 65, opc=A, dpc=B, cause=16),
                            msg(RLC, 1, T0 + 65.1, opc=B, dpc=A)])
    assert [e.kind for e in events] == ["attempt", "answer", "release"]
    assert [e.ts for e in events] == [T0, T0 + 5, T0 + 65]
    assert events[2].duration_s == pytest.approx(60.0)
    assert {e.call_id for e in events} == {f"{A}-{B}-1-{T0:.3f}"}
    assert {(e.caller, e.callee, e.proto, e.trunk) for e in events} == {
        ("8613800138000", "862112345678", "isup", f"{A}-{B}")}
    assert steps[1].ignored == WHY_RINGING and steps[4].ignored == WHY_RLC
    assert t.calls == {} and t.counts["closed"] == 1


@pytest.mark.parametrize("cause", [17, 1, 28, 19, 21])
def test_rel_before_answer_is_a_fail_with_the_isup_cause(cause):
    events, _ = run(tracker(), [iam(2, T0), msg(REL, 2, T0 + 3, cause=cause)])
    assert [(e.kind, e.code, e.duration_s) for e in events] == [("attempt", None, None),
                                                               ("fail", cause, None)]


def test_caller_abandoning_before_answer_is_a_fail_from_the_calling_side():
    events, _ = run(tracker(), [iam(3, T0), msg(ACM, 3, T0 + 1),
                                msg(REL, 3, T0 + 9, opc=A, dpc=B, cause=16)])
    assert [(e.kind, e.code) for e in events][-1] == ("fail", 16)


def test_release_from_the_called_side_and_rlc_from_the_calling_side():
    t = tracker()
    events, _ = run(t, [iam(4, T0), msg(ANM, 4, T0 + 5), msg(REL, 4, T0 + 30, cause=16),
                        msg(RLC, 4, T0 + 30.05, opc=A, dpc=B)])
    assert [e.kind for e in events] == ["attempt", "answer", "release"]
    assert events[-1].duration_s == pytest.approx(25.0)
    assert t.calls == {}


def test_con_answers_like_anm():
    events, _ = run(tracker(), [iam(5, T0), msg(CON, 5, T0 + 4), msg(REL, 5, T0 + 7, cause=16)])
    assert [e.kind for e in events] == ["attempt", "answer", "release"]


def test_duplicate_messages_make_one_event_each():
    t = tracker()
    seq = [iam(6, T0), iam(6, T0 + 0.01), msg(ACM, 6, T0 + 1), msg(ACM, 6, T0 + 1.01),
           msg(ANM, 6, T0 + 4), msg(ANM, 6, T0 + 4.01), msg(REL, 6, T0 + 16, opc=A, dpc=B,
                                                             cause=16),
           msg(REL, 6, T0 + 16.01, cause=16), msg(RLC, 6, T0 + 16.05), msg(RLC, 6, T0 + 16.06)]
    events, steps = run(t, seq)
    assert [e.kind for e in events] == ["attempt", "answer", "release"]
    assert [s.ignored for s in steps] == [None, WHY_DUPLICATE, WHY_RINGING, WHY_DUPLICATE, None,
                                         WHY_DUPLICATE, None, WHY_DUPLICATE, WHY_RLC,
                                         WHY_NO_CALL]


def test_rlc_without_captured_rel_closes_the_call_as_rel_would():
    t = tracker()
    events, _ = run(t, [iam(7, T0), msg(ANM, 7, T0 + 2), msg(RLC, 7, T0 + 12)])
    assert events[-1].kind == "release" and events[-1].duration_s == pytest.approx(10.0)
    events, _ = run(t, [iam(8, T0), msg(RLC, 8, T0 + 3, cause=34)])
    assert (events[-1].kind, events[-1].code) == ("fail", 34)
    assert t.counts["rlc_without_rel"] == 2 and t.calls == {}


def test_messages_for_a_circuit_without_a_call_are_ignored():
    events, steps = run(tracker(), [msg(ANM, 9, T0), msg(REL, 9, T0, cause=16)])
    assert events == [] and [s.ignored for s in steps] == [WHY_NO_CALL, WHY_NO_CALL]


def test_same_cic_between_other_point_codes_is_another_call():
    t = tracker()
    events, _ = run(t, [iam(1, T0), iam(1, T0 + 1, opc=3003, dpc=B),
                        msg(REL, 1, T0 + 2, opc=B, dpc=3003, cause=17)])
    assert [e.kind for e in events] == ["attempt", "attempt", "fail"]
    assert events[2].call_id == events[1].call_id != events[0].call_id
    assert len(t.calls) == 2


def test_new_iam_on_a_busy_circuit_supersedes_the_call_whose_release_was_lost():
    t = tracker()
    events, _ = run(t, [iam(1, T0), msg(ANM, 1, T0 + 2), iam(1, T0 + 100, called="2112345679"),
                        msg(REL, 1, T0 + 103, cause=17)])
    assert [e.kind for e in events] == ["attempt", "answer", "attempt", "fail"]
    assert events[3].callee == "862112345679" and t.counts["superseded"] == 1


def test_calls_that_never_release_expire_on_event_time():
    t = tracker(setup_timeout_s=300, max_duration_s=3600)
    run(t, [iam(1, T0), iam(2, T0), msg(ANM, 2, T0 + 5), iam(3, T0), msg(REL, 3, T0 + 1,
                                                                          cause=16)])
    assert t.expire(T0 + RLC_WAIT_S) == 0
    assert t.expire(T0 + 1 + RLC_WAIT_S + 1) == 1 and t.counts["closed_without_rlc"] == 1
    assert t.expire(T0 + 299) == 0
    assert t.expire(T0 + 301) == 1 and t.counts["expired_unanswered"] == 1
    assert t.expire(T0 + 5 + 3599) == 0
    assert t.expire(T0 + 5 + 3601) == 1 and t.counts["expired_answered"] == 1
    assert t.calls == {}
    # the default "now" is the newest message seen, never the wall clock
    run(t, [iam(4, T0 + 10_000), iam(5, T0 + 20_000)])
    assert t.expire() == 1 and list(t.calls) == [(A, B, 5)]


def test_memory_is_bounded_by_forgetting_the_least_recently_active_call():
    t = tracker(max_calls=2)
    run(t, [iam(1, T0), iam(2, T0 + 1), msg(ACM, 1, T0 + 2), iam(3, T0 + 3)])
    assert sorted(k[2] for k in t.calls) == [1, 3] and t.counts["evicted"] == 1


def test_iam_without_numbers_or_with_a_bad_number_is_rejected_and_starts_no_call():
    t = tracker()
    no_calling = IsupMessage(ts=T0, msg=IAM, opc=A, dpc=B, cic=1, called="2112345678")
    assert t.feed(no_calling).reject[0] == REASON_MISSING
    bad = IsupMessage(ts=T0, msg=IAM, opc=A, dpc=B, cic=1, calling="12", called="2112345678",
                      calling_nai=NAI_UNKNOWN)
    assert t.feed(bad).reject[0] == REASON_NUMBER
    assert t.calls == {} and t.feed(msg(ANM, 1, T0 + 1)).ignored == WHY_NO_CALL


@pytest.mark.parametrize("digits,nai,expected", [
    ("13800138000", NAI_NATIONAL, "8613800138000"),        # national significant: + country
    ("8613800138000", NAI_INTERNATIONAL, "8613800138000"),
    ("4420794600000", NAI_INTERNATIONAL, "4420794600000"),
    ("110", NAI_NATIONAL, "110"),                          # short codes stay short codes
    ("013800138000", NAI_UNKNOWN, "8613800138000"),        # unknown: read as dialled
    ("004420794600000", NAI_UNKNOWN, "4420794600000"),
])
def test_nature_of_address_decides_how_digits_become_e164(digits, nai, expected):
    assert PLAN.normalise(address_string(digits, nai, PLAN)) == expected


# -- BCD address signals (the odd-digit filler) ---------------------------------------------
def _pycrate_called(number: str) -> tuple[bytes, int, str]:
    m = InitialAddress()
    m["CalledPartyNum"]["CalledPartyNum"].set_num(number)
    parsed, err = parse_ISUP(m.to_bytes())
    assert err == 0
    cd = parsed["CalledPartyNum"]["CalledPartyNum"]
    return cd["Num"].get_val(), cd["OE"].get_val(), cd.get_num()


@pytest.mark.parametrize("number", ["13800138000", "2112345678", "110", "95588", "12"])
def test_filler_of_an_odd_number_of_signals_is_not_a_digit(number):
    octets, odd, pycrate_num = _pycrate_called(number)
    assert odd == len(number) % 2
    assert address_signals(octets, bool(odd)) == number == pycrate_num
    # without the indicator the filler would become a trailing 0
    if odd:
        assert address_signals(octets, False) == number + "0"


def test_nonzero_filler_and_st_end_of_pulsing():
    # 21123456 + ST = 9 signals, filler 0xF: pycrate's get_num loses a digit here
    assert address_signals(bytes.fromhex("12214365ff"), odd=True) == "21123456"
    assert address_signals(bytes.fromhex("3108f0"), odd=True) == "13800"   # filler 0xF
    assert address_signals(bytes.fromhex("3108f1"), odd=False) == "13801"  # ST last
    with pytest.raises(DecodeError) as err:
        address_signals(bytes.fromhex("21b3"), odd=False)  # code 11 is not a digit
    assert err.value.reason == REASON_NUMBER


# -- M3UA / ISUP decode ---------------------------------------------------------------------
def _load_generator():
    spec = importlib.util.spec_from_file_location("make_isup_pcap",
                                                  FIXTURES / "make_isup_pcap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()


def test_decode_of_pycrate_encoded_messages():
    opc, dpc, si, data = decode_m3ua(GEN.m3ua_data(A, B, GEN.iam(9, "13800138000", "110")))
    assert (opc, dpc, si) == (A, B, 5)
    m = decode_isup(data, T0, opc, dpc, switch="sw")
    assert (m.msg, m.cic, m.calling, m.called, m.calling_nai, m.switch) == (
        IAM, 9, "13800138000", "110", NAI_NATIONAL, "sw")
    rel = decode_isup(decode_m3ua(GEN.m3ua_data(B, A, GEN.rel(9, 28)))[3], T0, B, A)
    assert (rel.msg, rel.cause) == (REL, 28)
    rlc = decode_isup(GEN.simple(ReleaseComplete, 9), T0, A, B)
    assert (rlc.msg, rlc.cause) == (RLC, None)


def test_m3ua_management_is_none_and_broken_m3ua_or_isup_raise():
    from pycrate_mobile.M3UA import M3UA_BEAT

    assert decode_m3ua(M3UA_BEAT().to_bytes()) is None
    full = GEN.m3ua_data(A, B, GEN.iam(9, "13800138000", "110"))
    for broken in (b"not m3ua", full[:20], full[:8]):
        with pytest.raises(DecodeError) as err:
            decode_m3ua(broken)
        assert err.value.reason == isup_pcap.REASON_BAD_M3UA
    with pytest.raises(DecodeError) as err:
        decode_isup(bytes.fromhex("0700ee00"), T0, A, B)
    assert err.value.reason == isup_pcap.REASON_BAD_ISUP


def test_reused_parser_never_shows_a_previous_messages_optional_parameters():
    parser = isup_pcap.IsupParser()
    with_calling = GEN.iam(1, "13800138000", "2112345678")
    bare = InitialAddress()
    bare["CIC"].set_val(2)
    bare["CalledPartyNum"]["CalledPartyNum"].set_num("2112345678")
    without_calling = bare.to_bytes()
    # an optional parameter pycrate does not know (code 0xFE), before the end of options
    unknown = bytearray(with_calling)
    assert unknown[-1] == 0  # end of optional parameters
    unknown[-1:] = b"\xfe\x01\x07\x00"
    for data, calling in ((with_calling, "13800138000"), (without_calling, None),
                          (bytes(unknown), "13800138000"), (without_calling, None),
                          (with_calling, "13800138000")):
        m = decode_isup(data, T0, A, B, parser=parser)
        assert (m.called, m.calling) == ("2112345678", calling)
    # a message that does not parse is an error, and the next one parses cleanly
    with pytest.raises(DecodeError):
        decode_isup(with_calling[:12], T0, A, B, parser=parser)
    assert decode_isup(with_calling, T0, A, B, parser=parser).calling == "13800138000"


@pytest.mark.parametrize("rel_hex,cause", [
    ("05000c0200028191", 17),        # octet 3 (ext set) + cause
    ("05000c020003018091", 17),      # ext clear: recommendation octet 3a, then the cause
    ("05000c0200048291aabb", 17),    # with diagnostics
    ("05000c020002019c", 28),        # ext clear but only two octets (pycrate's default)
])
def test_rel_cause_is_read_by_q850_extension_bits(rel_hex, cause):
    assert decode_isup(bytes.fromhex(rel_hex), T0, A, B).cause == cause


def test_tshark_field_line_names_each_payloads_carrier_or_why_the_frame_has_none():
    """The protocol before each ``data`` in frame.protocols is the payload's carrier."""
    line = "7\t1795420800.5\teth:ethertype:ip:sctp:data:data\t1\t3,3\t1,1\taabb,ddee\n"
    assert payloads_from_fields(line) == [Payload(7, 1795420800.5, "m3ua", b"\xaa\xbb"),
                                          Payload(7, 1795420800.5, "m3ua", b"\xdd\xee")]
    m2pa = "8\t1.0\teth:ethertype:ip:sctp:m2pa:data\t1\t5\t1\t85aa\n"
    assert payloads_from_fields(m2pa) == [Payload(8, 1.0, "m2pa", b"\x85\xaa")]
    assert payloads_from_fields("9\t1\tmtp2:data\t42\t\t\t85\n")[0].carrier == "mtp2"
    assert payloads_from_fields("9\t1\tdata\t43\t\t\t85\n")[0].carrier == "mtp3"
    assert payloads_from_fields("9\t1\t\t43\t\t\t\n") == [Skip(9, "mtp3_linktype_unread")]
    cases = {"eth:ethertype:ip:sctp\t1\t3\t0\t": "sctp_fragment",
             "eth:ethertype:ip:sctp:m2pa\t1\t5\t1\t": "ss7_link_status",
             "mtp2\t42\t\t\t": "ss7_link_status",
             "eth:ethertype:ip:sctp:sua\t1\t4\t1\t": "sua_not_isup",
             "eth:ethertype:ip:sctp:diameter\t1\t46\t1\t": "sctp_not_ss7",
             "eth:ethertype:ip:sctp:data\t1\t0\t1\taa": "sctp_not_ss7"}
    for tail, why in cases.items():
        assert payloads_from_fields(f"3\t1.5\t{tail}\n") == [Skip(3, why)], tail


# -- the committed capture, through tshark ----------------------------------------------------
def test_fixture_pcap_is_what_its_script_builds(tmp_path):
    out = tmp_path / "again.pcap"
    GEN.main(["make_isup_pcap.py", str(out)])
    assert out.read_bytes() == PCAP.read_bytes()


def _ingest_pcap(path: Path):
    sink, producer = recording_sink(isup_pcap.SOURCE)
    settings = Settings.from_env(environ={})
    feed = IsupFeed(IsupCallTracker(NumberPlan.of(settings)), sink, EventValidator.of(settings))
    isup_pcap.ingest_payloads(read_payloads(str(path)), feed, path.name, "sw-x")
    return sink, producer, feed


def _by_cic(events):
    calls = defaultdict(list)
    for e in events:
        calls[int(e.call_id.split("-")[2])].append(e)
    return calls


def test_fixture_pcap_becomes_the_calls_it_holds():
    sink, producer, feed = _ingest_pcap(PCAP)
    calls = _by_cic(producer.events())
    kinds = {cic: [(e.kind, e.code, e.duration_s) for e in evs] for cic, evs in calls.items()}
    assert kinds == {
        1: [("attempt", None, None), ("answer", None, None), ("release", None, 60.0)],
        2: [("attempt", None, None), ("fail", 17, None)],
        3: [("attempt", None, None), ("fail", 1, None)],
        4: [("attempt", None, None), ("answer", None, None), ("release", None, 25.0)],
        5: [("attempt", None, None), ("answer", None, None), ("release", None, 12.0)],
        6: [("attempt", None, None), ("fail", 19, None)],
    }
    assert calls[1][0].ts == T0 + 10 and calls[1][0].callee == "862112345678"
    assert calls[2][0].caller == "8613800138000"  # international NAI
    assert calls[6][0].callee == "8621123456"     # ST and 0xF filler dropped, national
    assert {e.switch for e in producer.events()} == {"sw-x"}
    reasons = sorted(r for _, r, _ in producer.dead())
    assert reasons == ["bad_isup", "bad_m3ua", "bad_m3ua", "bad_number"]
    assert all(" frame " in d for _, _, d in producer.dead())
    assert sink.ignored["m3ua_management"] == 1 and sink.ignored["mtp3_not_isup"] == 1
    assert sink.ignored["isup_other"] == 1 and sink.ignored[WHY_DUPLICATE] == 3
    assert feed.tracker.calls == {}


def test_truncated_capture_is_read_up_to_the_cut_and_then_reported(tmp_path):
    cut = tmp_path / "cut.pcap"
    data = PCAP.read_bytes()
    cut.write_bytes(data[: len(data) - 30])
    seen = []
    with pytest.raises(RuntimeError, match="tshark could not read all"):
        for item in read_payloads(str(cut)):
            seen.append(item)
    assert len(seen) >= 30


# -- probe records --------------------------------------------------------------------------
def test_probe_record_parse_and_validation():
    m = isup_probe.parse_record(b'{"ts":1.5e9,"msg":"IAM","opc":1,"dpc":2,"cic":3,'
                                b'"calling":"13800138000","called":"110",'
                                b'"calling_nai":"international","called_nai":3}', "sw")
    assert (m.msg, m.calling_nai, m.called_nai, m.switch) == (IAM, NAI_INTERNATIONAL,
                                                             NAI_NATIONAL, "sw")
    cases = {b'{"ts":1.5e9,"msg":"REL","opc":1,"dpc":2,"cic":3}': "missing_field",
             b'{"ts":1.5e9,"msg":"ANM","opc":1,"dpc":2,"cic":70000}': "bad_value",
             b'{"ts":-1,"msg":"ANM","opc":1,"dpc":2,"cic":7}': "bad_value",
             b'{"ts":1.5e9,"msg":"ANM","opc":true,"dpc":2,"cic":7}': "wrong_type",
             b'{"ts":1.5e9,"msg":"IAM","opc":1,"dpc":2,"cic":7,"called":"12#"}': "bad_number",
             b'{"ts":1.5e9,"msg":"IAM","opc":1,"dpc":2,"cic":7,"called_nai":"weird"}':
                 "bad_value",
             b'{"ts":1.5e9,"msg":"iam","opc":1,"dpc":2,"cic":7}': "bad_value",
             b'[]': "not_object", b'{"ts":': "not_json"}
    for raw, reason in cases.items():
        with pytest.raises(isup_probe.InvalidEvent) as err:
            isup_probe.parse_record(raw)
        assert err.value.reason == reason, raw


def test_probe_fixture_every_line_is_an_event_source_a_dead_letter_or_counted():
    settings = Settings.from_env(environ={})
    sink, producer = recording_sink(isup_probe.SOURCE)
    feed = IsupFeed(IsupCallTracker(NumberPlan.of(settings)), sink, EventValidator.of(settings))
    lines = PROBE.read_bytes().splitlines(keepends=True)
    isup_probe.ingest_lines(lines, feed, PROBE.name)
    calls = _by_cic(producer.events())
    assert [e.kind for e in calls[1]] == ["attempt", "answer", "release"]
    assert [(e.kind, e.code) for e in calls[2]] == [("attempt", None), ("fail", 17)]
    assert [(e.kind, e.code) for e in calls[3]] == [("attempt", None), ("fail", 1)]
    assert {e.switch for e in calls[1]} == {"sw-tdm-1"}
    dead = producer.dead()
    assert sorted(r for _, r, _ in dead) == ["bad_number", "bad_value", "missing_field",
                                             "missing_field", "not_json", "not_object",
                                             "wrong_type"]
    assert {raw for raw, _, _ in dead} <= {ln.rstrip(b"\n") for ln in lines}
    assert all(d.startswith("probe.jsonl line ") for _, _, d in dead)
    lines_with_events = 7  # 3 IAM, ANM, 3 REL
    assert (lines_with_events + len(dead) + sum(sink.ignored.values())) == len(lines)


def test_cli_help_explains_the_record_format(capsys):
    from services.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "isup-json", "--help"])
    text = capsys.readouterr().out
    assert "calling_nai" in text and "REL after answer" in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "isup-pcap", "--help"])
    assert "M3UA" in capsys.readouterr().out


def test_trunk_and_switch_are_never_null_so_trunk_decisions_can_name_them():
    """No probe trunk / --switch: trunk = OPC-DPC (the circuits the call came in on), switch =
    the receiving exchange's point code; a probe's own names win."""
    events, _ = run(tracker(), [iam(7, T0)])
    assert (events[0].trunk, events[0].switch) == (f"{A}-{B}", f"pc-{B}")
    named = IsupMessage(ts=T0, msg=IAM, opc=A, dpc=B, cic=8, calling="13800138000",
                        called="2112345678", trunk="cg-17", switch="tdm-3")
    events, _ = run(tracker(), [named])
    assert (events[0].trunk, events[0].switch) == ("cg-17", "tdm-3")
