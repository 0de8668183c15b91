"""CDR replay without a broker: times, rows -> events, both dialects, the fixtures."""

from __future__ import annotations

import io
from datetime import timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.ingest import cdr
from services.ingest.cdr import Cdr, CdrError, cdr_from_asterisk, cdr_from_row, events_of
from services.settings import Settings
from streams.numbers import NumberPlan
from streams.schema import EventValidator
from tests.unit.ingest_recorder import recording_sink

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cdr"
T0 = 1_795_420_800.0  # 2026-11-23T08:00:00Z
UTC = timezone.utc
PLAN = NumberPlan()


@pytest.mark.parametrize("text,tz,expected", [
    ("2026-11-23T08:00:00Z", UTC, T0),
    ("2026-11-23T16:00:00+08:00", UTC, T0),
    ("2026-11-23 16:00:00", ZoneInfo("Asia/Shanghai"), T0),  # no zone: --timezone
    ("2026-11-23 08:00:00.250", UTC, T0 + 0.25),
    ("1795420800", UTC, T0),
    ("1795420800.5", UTC, T0 + 0.5),
])
def test_times_are_iso_8601_or_epoch(text, tz, expected):
    assert cdr.parse_time(text, tz) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterday", "42", "nan", "2026-13-01T00:00:00"])
def test_bad_times_are_rejected_with_a_reason(text):
    with pytest.raises(CdrError) as err:
        cdr.parse_time(text, UTC)
    assert err.value.reason == "bad_value"


def test_answered_cdr_is_attempt_answer_release():
    evs = events_of(Cdr(start=T0, caller="+8613800138000", callee="013900139000",
                        answer=T0 + 6, end=T0 + 66, trunk="tk"), PLAN, "c1")
    assert [(e.kind, e.ts, e.duration_s) for e in evs] == [
        ("attempt", T0, None), ("answer", T0 + 6, None), ("release", T0 + 66, 60.0)]
    assert {(e.caller, e.callee, e.proto, e.call_id, e.trunk) for e in evs} == {
        ("8613800138000", "8613900139000", "isup", "c1", "tk")}


def test_answered_times_derived_from_duration():
    # end given, no answer time: answer = end - billed seconds
    evs = events_of(Cdr(start=T0, caller="8613800138000", callee="8613900139000",
                        end=T0 + 30, duration=20, disposition="ANSWERED"), PLAN, "c")
    assert [(e.kind, e.ts) for e in evs][1:] == [("answer", T0 + 10), ("release", T0 + 30)]
    # answer given, no end: end = answer + duration
    evs = events_of(Cdr(start=T0, caller="8613800138000", callee="8613900139000",
                        answer=T0 + 3, duration=4), PLAN, "c")
    assert evs[-1].ts == T0 + 7 and evs[-1].duration_s == 4


@pytest.mark.parametrize("disposition,cause,sip,expected", [
    ("BUSY", None, None, ("isup", 17)),
    ("NO ANSWER", None, None, ("isup", 19)),
    ("UNALLOCATED", None, None, ("isup", 1)),
    ("FAILED", 28, None, ("isup", 28)),      # the row's own cause wins
    ("FAILED", None, None, ("isup", None)),
    ("", None, 404, ("sip", 404)),
])
def test_unanswered_cdr_is_attempt_fail_with_its_cause(disposition, cause, sip, expected):
    evs = events_of(Cdr(start=T0, caller="8613800138000", callee="8613900139000", end=T0 + 9,
                        disposition=disposition, cause=cause, sip_code=sip), PLAN, "c")
    assert [e.kind for e in evs] == ["attempt", "fail"]
    assert (evs[1].proto, evs[1].code) == expected and evs[1].ts == T0 + 9


@pytest.mark.parametrize("record,reason", [
    (Cdr(start=T0, caller="8613800138000", callee="+86139", end=T0), "bad_number"),
    (Cdr(start=T0, caller="8613800138000", callee="8613900139000", answer=T0 + 9,
         end=T0 + 5), "bad_value"),
    (Cdr(start=T0, caller="8613800138000", callee="8613900139000", end=T0 - 5), "bad_value"),
    (Cdr(start=T0, caller="8613800138000", callee="8613900139000", disposition="ANSWERED"),
     "missing_field"),
    (Cdr(start=T0, caller="8613800138000", callee="8613900139000", sip_code=200),
     "bad_value"),
])
def test_inconsistent_cdrs_are_rejected(record, reason):
    with pytest.raises(CdrError) as err:
        events_of(record, PLAN, "c")
    assert err.value.reason == reason


def test_rows_need_their_required_columns_and_known_dispositions():
    with pytest.raises(CdrError) as err:
        cdr_from_row({"start_time": "1795420800", "caller": "8613800138000"}, UTC)
    assert err.value.reason == "missing_field"
    with pytest.raises(CdrError) as err:
        cdr_from_row({"start_time": "1795420800", "caller": "8613800138000",
                      "callee": "8613900139000", "disposition": "HUNG UP"}, UTC)
    assert err.value.reason == "bad_value"


def test_asterisk_master_csv_line():
    fields = ["", "+8613800138000", "013900139020", "from-trunk", '"Robo" <13800138000>',
              "SIP/carrier-a-00000001", "SIP/100-00000002", "Dial", "SIP/100,30",
              "2026-11-23 16:00:00", "2026-11-23 16:00:04", "2026-11-23 16:00:07", "7", "3",
              "ANSWERED", "DOCUMENTATION", "1763884800.1", ""]
    record = cdr_from_asterisk(fields, ZoneInfo("Asia/Shanghai"))
    assert (record.start, record.answer, record.end) == (T0, T0 + 4, T0 + 7)
    assert (record.trunk, record.call_id, record.disposition) == ("SIP/carrier-a",
                                                                   "1763884800.1", "ANSWERED")
    with pytest.raises(CdrError):
        cdr_from_asterisk(fields[:10], UTC)


def _ingest(path: Path, dialect: str, tz=UTC):
    settings = Settings.from_env(environ={})
    sink, producer = recording_sink(cdr.SOURCE)
    with path.open(newline="") as stream:
        cdr.ingest_rows(stream, dialect, sink, NumberPlan.of(settings), EventValidator.of(settings), tz,
                        path.name)
    return sink, producer


def test_dialguard_fixture_every_row_is_events_or_a_dead_letter():
    sink, producer = _ingest(FIXTURES / "calls.csv", "dialguard")
    by_call: dict[str, list] = {}
    for e in producer.events():
        by_call.setdefault(e.call_id, []).append((e.kind, e.code, e.proto))
    assert by_call["c-ok"] == [("attempt", None, "isup"), ("answer", None, "isup"),
                               ("release", None, "isup")]
    assert by_call["c-busy"][-1] == ("fail", 17, "isup")
    assert by_call["c-unalloc"][-1] == ("fail", 1, "isup")
    assert by_call["c-sip404"][-1] == ("fail", 404, "sip")
    assert by_call["c-noanswer-nocause"][-1] == ("fail", 19, "isup")
    assert [k for k, _, _ in by_call["c-quoted"]] == ["attempt", "answer", "release"]
    dead = producer.dead()
    assert sorted(r for _, r, _ in dead) == ["bad_number", "bad_value", "bad_value", "bad_value",
                                             "bad_value", "bad_value", "missing_field"]
    assert any(raw.startswith(b"c-badtime,yesterday noon") for raw, _, _ in dead)
    assert all(d.startswith("calls.csv line ") for _, _, d in dead)
    assert sink.ignored == {"cdr_header": 1}
    rows = 13
    assert len(by_call) + len(dead) == rows


def test_call_ids_without_a_column_are_stable_across_replays():
    text = "start_time,caller,callee,end_time\n1795420800,8613800138000,8613900139000,1795420801\n"
    ids = []
    for _ in range(2):
        sink, producer = recording_sink(cdr.SOURCE)
        cdr.ingest_rows(io.StringIO(text), "dialguard", sink, PLAN,
                        EventValidator.of(Settings.from_env(environ={})), UTC, "x")
        ids.append({e.call_id for e in producer.events()})
    assert ids[0] == ids[1] and len(ids[0]) == 1 and next(iter(ids[0])).startswith("cdr-")


def test_header_without_required_columns_stops_with_a_clear_error():
    sink, _ = recording_sink(cdr.SOURCE)
    with pytest.raises(SystemExit, match="lacks the column"):
        cdr.ingest_rows(io.StringIO("when,who\n1,2\n"), "dialguard", sink, PLAN,
                        EventValidator.of(Settings.from_env(environ={})), UTC, "x.csv")


def test_asterisk_fixture():
    sink, producer = _ingest(FIXTURES / "Master.csv", "asterisk", ZoneInfo("Asia/Shanghai"))
    kinds = [(e.kind, e.code) for e in producer.events()]
    assert kinds == [("attempt", None), ("answer", None), ("release", None),
                     ("attempt", None), ("fail", 19), ("attempt", None), ("fail", 17)]
    assert producer.events()[0].ts == T0
    assert sorted(r for _, r, _ in producer.dead()) == ["bad_number", "missing_field"]


def test_cli_help_documents_columns_and_dialects(capsys):
    from services.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "cdr", "--help"])
    text = capsys.readouterr().out
    assert "answer_time" in text and "asterisk" in text and "--timezone" in text
