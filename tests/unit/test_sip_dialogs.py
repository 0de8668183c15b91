"""Dialog tracker: SIP messages + capture times -> attempt/answer/release/fail, counted once."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from services.ingest import hep
from services.ingest.sink import EventSink
from services.ingest.sip_dialogs import (REASON_NO_CALLER, REASON_SIP_PARSE, DialogTracker,
                                        SipError, SipMessage, parse_sip, passport_attest)
from services.ingest.sip_feed import SipFeed
from services.ingest.sip_pcap import split_messages
from services.settings import Settings
from streams.schema import DLQ_HEADER_REASON, EventValidator

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sip" / "kamailio_calls.hep"
T0 = 1_795_420_800.0


def passport(claims: dict) -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()
    return (f"{b64({'alg': 'ES256', 'ppt': 'shaken', 'typ': 'passport'})}.{b64(claims)}.c2ln"
            ";info=<https://cert.example/x.pem>;alg=ES256;ppt=shaken")


def request(method: str, call_id: str = "c1", cseq: int = 1, ruri: str = "sip:+8613900139000@sw",
            frm: str = "<sip:+8613800138000@a.example>", to_tag: str | None = None,
            extra: str = "") -> bytes:
    to = "<sip:+8613900139000@sw>" + (f";tag={to_tag}" if to_tag else "")
    return (f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{cseq}{method}\r\n"
            f"From: {frm};tag=f1\r\nTo: {to}\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n").encode()


def response(code: int, call_id: str = "c1", cseq: int = 1, method: str = "INVITE",
             reason: str = "Whatever") -> bytes:
    return (f"SIP/2.0 {code} {reason}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n"
            f"From: <sip:+8613800138000@a.example>;tag=f1\r\n"
            f"To: <sip:+8613900139000@sw>;tag=t1\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n").encode()


class Run:
    """Feeds messages at given times and keeps every event and every why."""

    def __init__(self, **kw) -> None:
        self.tracker = DialogTracker(**kw)
        self.events = []
        self.whys = []

    def __call__(self, raw: bytes, ts: float) -> None:
        fed = self.tracker.feed(parse_sip(raw, T0 + ts, trunk="10.0.0.1", switch="sw1"))
        self.events += fed.events
        if fed.why:
            self.whys.append(fed.why)
        assert bool(fed.events) != bool(fed.why), "a message yields events or a why, not both"

    def kinds(self) -> list[tuple]:
        return [(e.kind, e.code, e.duration_s) for e in self.events]


def test_real_kamailio_trace_gives_each_call_once():
    tracker = DialogTracker()
    events, whys = [], []
    for p in hep.read_file(FIXTURE.read_bytes()):
        fed = tracker.feed(parse_sip(p.payload, p.ts, trunk=p.src_ip, switch="hep-2024"))
        events += fed.events
        whys += [fed.why] if fed.why else []
    by_callee: dict[str, list] = {}
    for e in events:
        by_callee.setdefault(e.callee, []).append(e)
    assert {k: [e.kind for e in v] for k, v in by_callee.items()} == {
        "+8613900139001": ["attempt", "answer", "release"],
        "+8613900139002": ["attempt", "fail"],
        "+8613900139003": ["attempt", "fail"],
        "+8613900139004": ["attempt", "fail"],
        "+8613900139005": ["attempt", "answer", "release"],
    }
    first = by_callee["+8613900139001"]
    assert {e.caller for e in first} == {"+8613800138099"}  # P-Asserted-Identity, not From
    assert {e.attest for e in first} == {"A"}
    assert {e.caller for e in by_callee["+8613900139002"]} == {"+8613800138000"}  # From
    assert [e.code for e in by_callee["+8613900139002"]] == [None, 486]
    assert [e.code for e in by_callee["+8613900139003"]] == [None, 487]  # CANCEL
    assert [e.code for e in by_callee["+8613900139004"]] == [None, 404]
    # The recorder held the calls 1.2 s and 0.6 s; durations come from capture times.
    assert first[2].duration_s == pytest.approx(first[2].ts - first[1].ts)
    assert 1.15 < first[2].duration_s < 2.0
    assert 0.55 < by_callee["+8613900139005"][2].duration_s < 1.4
    # Kamailio mirrors each message received and relayed: the copies are retransmissions.
    assert whys.count("retransmission") >= 10
    assert "not_a_call" in whys  # the OPTIONS ping
    assert all(e.switch == "hep-2024" and e.trunk == "127.0.0.1" for e in events)


def test_answered_call_released_by_either_side_with_duration():
    for bye_from_callee in (False, True):
        run = Run()
        run(request("INVITE"), 0.0)
        run(response(180), 0.5)
        run(response(200), 3.0)
        run(request("ACK", to_tag="t1"), 3.1)
        run(request("BYE", cseq=1 if bye_from_callee else 2, to_tag="t1"), 45.25)
        run(response(200, method="BYE", cseq=1 if bye_from_callee else 2), 45.3)
        assert run.kinds() == [("attempt", None, None), ("answer", 200, None),
                               ("release", None, 42.25)]
        assert [e.ts - T0 for e in run.events] == pytest.approx([0.0, 3.0, 45.25])
        assert run.whys == ["provisional", "ack", "non_invite_response"]


def test_retransmissions_count_once():
    run = Run()
    for t in (0.0, 0.5, 1.5):
        run(request("INVITE"), t)
    run(response(200), 2.0)
    run(response(200), 2.5)
    run(request("BYE", cseq=2, to_tag="t1"), 10.0)
    run(request("BYE", cseq=2, to_tag="t1"), 10.5)
    assert [e.kind for e in run.events] == ["attempt", "answer", "release"]
    assert run.whys.count("retransmission") == 4


def test_failure_codes_and_cancel_counted_once():
    run = Run()
    run(request("INVITE", call_id="busy"), 0)
    run(response(486, call_id="busy"), 2)
    run(response(486, call_id="busy"), 2.1)
    run(request("INVITE", call_id="gone"), 3)
    run(response(404, call_id="gone"), 3.2)
    run(request("INVITE", call_id="cx"), 4)
    run(response(180, call_id="cx"), 4.5)
    run(request("CANCEL", call_id="cx"), 9)
    run(response(200, call_id="cx", method="CANCEL"), 9.01)
    run(response(487, call_id="cx"), 9.02)
    assert [(e.call_id, e.kind, e.code) for e in run.events] == [
        ("busy", "attempt", None), ("busy", "fail", 486),
        ("gone", "attempt", None), ("gone", "fail", 404),
        ("cx", "attempt", None), ("cx", "fail", 487)]
    assert run.events[-1].ts == T0 + 9  # at the CANCEL, not at the 487
    assert run.whys == ["retransmission", "provisional", "non_invite_response", "after_end"]


def test_auth_challenge_and_reinvite_are_not_new_calls():
    run = Run()
    run(request("INVITE"), 0)
    run(response(407), 0.1)
    run(request("INVITE", cseq=2, extra="Proxy-Authorization: Digest x\r\n"), 0.3)
    run(response(200, cseq=2), 2)
    run(request("INVITE", cseq=3, to_tag="t1"), 30)  # re-INVITE (hold)
    run(response(200, cseq=3), 30.1)
    run(request("BYE", cseq=4, to_tag="t1"), 62)
    assert run.kinds() == [("attempt", None, None), ("answer", 200, None),
                           ("release", None, 60.0)]
    assert run.whys == ["auth_challenge", "auth_challenge", "reinvite", "reinvite"]


def test_requests_and_responses_outside_calls_say_why():
    run = Run()
    run(request("OPTIONS"), 0)
    run(request("REGISTER"), 0)
    run(response(200, method="OPTIONS"), 0)
    run(request("BYE", call_id="never-seen", to_tag="x"), 1)
    run(response(200, call_id="never-seen"), 1)
    run(request("INVITE", call_id="mid-call", to_tag="x"), 1)
    run(request("INFO", to_tag="x"), 1)
    assert run.events == []
    assert run.whys == ["not_a_call", "not_a_call", "non_invite_response", "unknown_dialog",
                        "unknown_dialog", "unknown_dialog", "in_dialog_request"]


def test_caller_callee_and_attestation_extraction():
    raw = request("INVITE", ruri="tel:+86-139-0013-9000;phone-context=x",
                  frm="\"Robot\" <sip:0013800138000@a.example;user=phone>",
                  extra="P-Asserted-Identity: <sip:+8613800138111;cpc=x@a.example>, "
                        "<tel:+8613800138111>\r\n"
                        f"Identity: {passport({'attest': 'B', 'orig': {'tn': '1'}})}\r\n")
    m = parse_sip(raw, T0)
    assert (m.caller, m.callee, m.attest) == ("+8613800138111", "+86-139-0013-9000", "B")
    m = parse_sip(request("INVITE", frm="<sip:013800138000@a.example>"), T0)
    assert (m.caller, m.attest) == ("013800138000", None)
    assert passport_attest(passport({"attest": "Z"})) is None
    assert passport_attest("not-a-jwt;ppt=shaken") is None
    assert passport_attest("a.!!!.c") is None
    assert passport_attest(passport({"attest": "C"}).split(";")[0]) == "C"


@pytest.mark.parametrize("raw, reason", [
    (b"\x16\x03\x01\x02\x00 TLS handshake", REASON_SIP_PARSE),
    (b"INVITE sip:x SIP/2.0\r\nCall-ID: a\r\n", REASON_SIP_PARSE),  # no blank line
    (request("INVITE").replace(b"Call-ID: c1\r\n", b""), REASON_SIP_PARSE),
    (request("INVITE").replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"), REASON_SIP_PARSE),
    (request("INVITE", frm="<sip:a.example>"), REASON_NO_CALLER),
    (b"SIP/2.0 200 OK\r\nbroken header line\r\n\r\n", REASON_SIP_PARSE),
])
def test_unusable_sip_raises_with_reason(raw, reason):
    with pytest.raises(SipError) as err:
        parse_sip(raw, T0)
    assert err.value.reason == reason and err.value.detail


def test_expiry_of_unanswered_answered_and_ended_dialogs():
    run = Run(unanswered_timeout_s=300, max_call_s=3600, linger_s=32)
    run(request("INVITE", call_id="ringing"), 0)
    run(request("INVITE", call_id="talking"), 0)
    run(response(200, call_id="talking"), 5)
    run(request("INVITE", call_id="done"), 0)
    run(response(486, call_id="done"), 1)
    assert run.tracker.expire(T0 + 20) == []
    run(response(486, call_id="done"), 20)  # late retransmission: still recognised
    assert run.whys[-1] == "retransmission"
    assert len(run.tracker) == 3
    assert run.tracker.expire(T0 + 60) == []  # "done" stops lingering
    assert len(run.tracker) == 2
    assert run.tracker.expire(T0 + 301) == []  # "ringing" forgotten without an event
    assert run.tracker.stats.expired_unanswered == 1 and len(run.tracker) == 1
    [release] = run.tracker.expire(T0 + 3606)
    assert (release.call_id, release.kind, release.duration_s) == ("talking", "release", 3600)
    assert release.ts == T0 + 5 + 3600
    assert run.tracker.stats.expired_answered == 1 and len(run.tracker) == 0


def test_open_dialogs_are_bounded_least_recently_active_first():
    run = Run(max_dialogs=2)
    run(request("INVITE", call_id="a"), 0)
    run(request("INVITE", call_id="b"), 1)
    run(response(180, call_id="a"), 2)  # "a" is now the more recently active
    run(request("INVITE", call_id="c"), 3)
    assert run.tracker.stats.evicted == 1
    assert set(run.tracker.dialogs) == {"a", "c"}
    run(response(486, call_id="b"), 4)
    assert run.whys[-1] == "unknown_dialog"


def test_split_messages_frames_a_tcp_segment_by_content_length():
    body = b"v=0\r\n"
    one = request("INVITE").replace(b"Content-Length: 0", b"Content-Length: 5") + body
    two = response(200)
    assert split_messages(one + b"\r\n" + two + b"\r\n\r\n") == [one, two, b"\r\n\r\n"]
    assert split_messages(b"garbage without end") == [b"garbage without end"]


class RecordingProducer:
    """Stands in for confluent-kafka in unit tests (the integration test uses the broker)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes, dict]] = []

    def produce(self, topic, value, key, headers, on_delivery, partition=-1) -> None:
        self.records.append((topic, key, value, dict(headers or [])))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def test_feed_accounts_for_every_message_and_dead_letters_unusable_ones():
    # One event per record, so the order of events and dead letters shows.
    settings = Settings.from_env(environ={}, ingest_batch_events=1)
    producer = RecordingProducer()
    sink = EventSink(settings, "test", progress=None, producer=producer)
    feed = SipFeed(DialogTracker(), sink, EventValidator.of(settings))
    feed.payload(request("INVITE"), T0, b"hep-bytes-1", trunk="10.0.0.1", switch="sw1")
    feed.payload(b"\r\n\r\n", T0, b"hep-bytes-2")
    feed.payload(b"not sip at all", T0, b"hep-bytes-3", origin="f.pcap frame 3")
    feed.payload(request("INVITE", call_id="anon", frm="<sip:anonymous@anonymous.invalid>"),
                 T0, b"hep-bytes-4")
    feed.payload(response(200), T0 + 2, b"hep-bytes-5")
    topics = [(t, v if t.endswith("dlq") else orjson.loads(v)["kind"], h.get(DLQ_HEADER_REASON))
              for t, _, v, h in producer.records]
    # The anonymous INVITE keeps its call: an event with a caller class (issue 13), no DLQ.
    assert topics == [("signaling.events", "attempt", None),
                      ("signaling.events.dlq", b"hep-bytes-3", b"sip_parse_error"),
                      ("signaling.events", "attempt", None),
                      ("signaling.events", "answer", None)]
    withheld = orjson.loads(producer.records[2][2])
    assert (withheld["caller_class"], withheld["caller"]) == ("withheld", "anonymous")
    assert producer.records[2][1] == b"anon"  # keyed by its call id, not by "anonymous"
    assert producer.records[0][1] == b"+8613800138000"  # keyed by caller
    assert sink.ignored == {"keepalive": 1}
    assert "f.pcap frame 3" in producer.records[1][3]["dlq.detail"].decode()


def test_sip_message_is_what_the_tracker_needs():
    m = parse_sip(response(486, cseq=7), T0 + 1.5, trunk="t", switch="s")
    assert m == SipMessage(ts=T0 + 1.5, call_id="c1", cseq=7, cseq_method="INVITE", status=486,
                           to_tag="t1", trunk="t", switch="s")


def test_pcap_replay_of_the_same_calls_matches_the_hep_trace():
    """The recorder captured the calls with dumpcap while Kamailio traced them over HEP: both
    paths (tshark fields -> tracker, HEP -> tracker) must tell the same story."""
    from services.ingest.sip_pcap import ingest_file

    def facts(events):
        return sorted((e.callee, e.kind, e.caller, e.code, e.attest) for e in events)

    from tests.unit.ingest_recorder import recording_sink

    settings = Settings.from_env(environ={})
    sink, producer = recording_sink("sip-pcap", settings)
    feed = SipFeed(DialogTracker(), sink, EventValidator.of(settings))
    frames = ingest_file(FIXTURE.with_suffix(".pcap"), feed, switch="pcap")
    from_pcap = producer.events()
    tracker = DialogTracker()
    from_hep = [e for p in hep.read_file(FIXTURE.read_bytes())
                for e in tracker.feed(parse_sip(p.payload, p.ts)).events]
    assert frames == 57 and not sink.dead
    assert facts(from_pcap) == facts(from_hep) and len(from_hep) == 12
    for a, b in zip(sorted(from_pcap, key=lambda e: e.ts), sorted(from_hep, key=lambda e: e.ts)):
        assert (a.kind, a.call_id) == (b.kind, b.call_id)
        if b.duration_s is not None:
            assert a.duration_s == pytest.approx(b.duration_s, abs=0.01)
        assert abs(a.ts - b.ts) < 0.05  # kernel capture time vs Kamailio's trace time


def test_ingest_subcommands_explain_themselves(capsys):
    from services.cli import build_parser

    for sub in ("hep", "sip-pcap"):
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args(["ingest", sub, "--help"])
        assert done.value.code == 0
        assert "signaling.events" in capsys.readouterr().out
