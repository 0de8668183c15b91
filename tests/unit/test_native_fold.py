"""The compiled fold (streams._native) against the Python it must agree with: the event check,
the partitioner, the slot layout, the state's wire form. Its counting rules are pinned by
test_features.py and test_detector.py, which run against it."""

import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from online_models.scorer import NuisanceScorer
from services.settings import Settings
from streams import _native, features
from streams.control import ControlState
from streams.detector import Detector, DictStore, MemorySink, Origin
from streams.features import CallerState, FeatureConfig
from streams.schema import EventValidator, InvalidEvent, SignalingEvent
from streams.topics import partition_for
from tests.unit.helpers import T0

NOW = T0 + 3600
SETTINGS = Settings.from_env({})
SCORER = NuisanceScorer()
VALID = {"v": 1, "ts": T0, "proto": "sip", "kind": "attempt", "call_id": "c1",
         "caller": "8613800138000", "callee": "8613900139000", "code": None,
         "duration_s": None, "trunk": "tk-1", "switch": "sw-1", "attest": "A"}
#: Values a probe might send for any field: right, wrong and odd ones.
ODD_VALUES = [
    None, 0, 1, 2, -1, 1.0, 404, 404.0, 999, 1000, True, False, "", " ", "sip", "isup", "SIP",
    "attempt", "answer", "release", "fail", "A", "B", "C", "D", "withheld", "invalid",
    "anonymous", "8613800138000", "+8613800138000", "008613800138000", "013800138000",
    "861380013800012345", "110", "12", "86-138-0013-8000", "tel:+8613800138000", "١٢٣٤٥٦٧٨",
    T0, T0 + 1e6, float("1e308"), -T0, 2 ** 63, 3.5, 86_401.0, [], {}, "x" * 70, 'q"u\\o\n',
]
ODD = st.sampled_from(ODD_VALUES)
FIELDS = [*VALID, "caller_class", "extra"]


def detector(sink: MemorySink) -> Detector:
    return Detector(SETTINGS, SCORER, ControlState(), sink, DictStore())


def row_fields(ev: object) -> tuple:
    """The event fields a re-keyed row carries (a SourceEvent has them under the same names)."""
    return tuple(getattr(ev, f) for f in ("ts", "kind", "proto", "call_id", "caller", "callee",
                                          "code", "duration_s", "trunk", "switch", "attest",
                                          "caller_class"))


def test_slot_order_is_the_one_streams_features_names():
    assert [getattr(features, name) for name in _native.SLOT_NAMES] == list(range(15))
    assert features.N_SLOTS == len(_native.SLOT_NAMES)


@given(st.binary(max_size=40), st.integers(min_value=1, max_value=500))
def test_partitions_are_kafkas_murmur2_as_the_python_partitioner_computes_them(key, n):
    assert _native.partition_for(key, n) == partition_for(key, n)


def judge_both_ways(obj: dict, in_batch: bool) -> None:
    """Whatever the fast path takes, the reference check takes unchanged; whatever it refuses
    reaches the DLQ with the reference check's reason and detail, alone in its batch."""
    try:
        expected = EventValidator.of(SETTINGS).check(orjson.loads(orjson.dumps(obj)), NOW)
    except InvalidEvent as exc:
        expected = exc
    neighbour = {**VALID, "call_id": "n1", "caller": "8613700137000"}
    raw = orjson.dumps([neighbour, obj, neighbour] if in_batch else obj)
    sink = MemorySink()
    det = detector(sink)
    det.ingest(raw, Origin("signaling.events", 0, 1), now=NOW)
    det.publish()
    mine = [e for e in sink.source_events if e.call_id != "n1"]
    if isinstance(expected, InvalidEvent):
        assert mine == [] and [(r, d) for _, r, d, _ in sink.dead] == [
            (expected.reason, expected.detail)], obj
        if in_batch:
            assert sink.dead[0][3].index == 1 and orjson.loads(sink.dead[0][0]) == obj
    else:
        assert sink.dead == [], obj
        assert {row_fields(e) for e in mine} == {row_fields(expected)}, obj
    assert len([e for e in sink.source_events if e.call_id == "n1"]) == (
        2 * (len(SETTINGS.range_strip_digits) + 1) if in_batch else 0)


@pytest.mark.parametrize("in_batch", [False, True])
def test_every_single_change_to_an_event_is_judged_as_the_python_check_judges_it(in_batch):
    for name in FIELDS:
        judge_both_ways({k: v for k, v in VALID.items() if k != name}, in_batch)
        for value in ODD_VALUES:
            judge_both_ways({**VALID, name: value}, in_batch)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), ODD, min_size=2, max_size=4),
       st.sets(st.sampled_from(FIELDS), max_size=2), st.booleans())
def test_events_with_several_changes_are_judged_as_the_python_check_judges_them(
        changes, dropped, in_batch):
    obj = {**VALID, **changes}
    for name in dropped:
        obj.pop(name, None)
    judge_both_ways(obj, in_batch)


def test_a_record_the_fast_path_cannot_parse_is_judged_whole_by_the_python_check():
    sink = MemorySink()
    det = detector(sink)
    for raw in (b"\xff not json", b"42", b"[1, 2", orjson.dumps([VALID] * 1001)):
        det.ingest(raw, Origin("signaling.events", 0, 1), now=NOW)
    det.publish()
    assert [r for _, r, _, _ in sink.dead] == ["not_json", "not_object", "not_json",
                                               "bad_value"]
    assert sink.source_events == []


@pytest.mark.parametrize("name", ['tk "q"', "back\\slash", "tab\tnew\nline\x01", "été",
                                  "📞-trunk", "s/w"])
def test_names_with_escapes_reach_the_source_stage_and_the_state_unchanged(name):
    sink = MemorySink()
    det = detector(sink)
    ev = SignalingEvent(ts=T0, proto="sip", kind="attempt", call_id="c9",
                        caller="8613800138000", callee="8613900139000", trunk=name,
                        switch=name)
    det.ingest(ev.encode(), Origin("signaling.events", 0, 7), now=NOW)
    det.flush()
    (trunk_row, *_) = sink.source_events
    assert trunk_row.trunk == name and trunk_row.switch == name
    assert trunk_row.key == "trunk:" + f"{name.replace('/', '_')}/{name}"
    state = CallerState.from_bytes(det.store.get("8613800138000"))
    assert state.last_trunk == f"{name.replace('/', '_')}/{name}"


@given(st.floats(min_value=1.0, max_value=4e9, allow_nan=False))
def test_times_are_written_so_that_they_read_back_exactly(ts):
    st_ = CallerState()
    st_.add(SignalingEvent(ts=ts, proto="sip", kind="attempt", call_id="c", caller="86138001",
                           callee="86139001"), FeatureConfig())
    row = orjson.loads(st_.to_bytes())
    assert row[0] == ts and row[3] == ts and CallerState.from_bytes(st_.to_bytes()).hwm_ts == ts


def test_states_of_every_earlier_layout_read():
    """11 fields (before the source view), 14 (before exact recovery), 15 (now)."""
    bucket = [[int(T0 // 60), 1, 0, 0, 0, 0.0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0, 0]]
    head = [T0, bucket, [[123, int(T0 // 60)]], T0, 8613900139000, 1, 0, "", 0.0, 0.0, False]
    old = CallerState.from_bytes(orjson.dumps(head))
    assert old.first_ts == T0 and old.trunks == {} and old.folded is None
    mid = CallerState.from_bytes(orjson.dumps(head + [T0 - 5, [["sw/tk", 1, 2, 0]], "sw/tk"]))
    assert mid.first_ts == T0 - 5 and mid.trunks == {"sw/tk": [1, 2, 0]} and mid.folded is None
    now = CallerState.from_bytes(orjson.dumps(head + [T0, [], "", [3, 41, 2]]))
    assert now.folded == (3, 41, 2) and now.attempts(60) == 1
    with pytest.raises(ValueError, match="bad state"):
        CallerState.from_bytes(b"[1, 2]")


def test_window_sums_keep_fractions_and_counts_stay_integers_on_the_wire():
    st_ = CallerState()
    cfg = FeatureConfig()
    for i, d in enumerate((0.1, 0.2, 0.7)):
        for kind, extra in (("attempt", {}), ("answer", {"code": 200}),
                            ("release", {"duration_s": d})):
            st_.add(SignalingEvent(ts=T0 + 30 * i + len(kind), proto="sip", kind=kind,
                                   call_id=f"c{i}", caller="8613800138000",
                                   callee=f"86139001390{i:02d}", **extra), cfg)
    assert st_.window(60)[features.DUR_SUM] == 0.1 + 0.2 + 0.7
    assert math.isclose(features.features(st_)["mean_duration_1h"], 1.0 / 3)
    assert b"3.0" not in st_.to_bytes() and orjson.loads(st_.to_bytes())[5] == 3


def test_a_snapshot_keeps_each_state_as_it_was_at_the_snapshot(monkeypatch):
    """The number stage's snapshot serialises a state only when it writes it, so the fold
    changing the state meanwhile must not change what is written (the commit covers only
    the records held at its start); a state pushed out of memory is read back from it."""
    import streams.detector

    monkeypatch.setattr(streams.detector, "HOT_CACHE", 1)  # every other number leaves memory
    store = DictStore()
    det = Detector(SETTINGS, SCORER, ControlState(), MemorySink(), store)

    def attempt(caller: str, offset: int) -> None:
        ev = SignalingEvent(ts=T0 + offset, proto="sip", kind="attempt", call_id=f"c{offset}",
                            caller=caller, callee="8613900139000")
        det.ingest(ev.encode(), Origin("signaling.events", 0, offset), now=NOW)

    a, b, c = "8613800000001", "8613800000002", "8613800000003"
    attempt(a, 1)
    attempt(b, 2)
    snap = det.snapshot()
    assert len(snap) == 2 and not snap.done and det.touched() == 0
    attempt(a, 3)   # a changes after the snapshot (it is read back from the snapshot first)
    attempt(c, 4)   # c pushes b out of memory
    attempt(b, 5)   # b read back as the snapshot holds it
    assert snap.write() == 2 and snap.done
    assert CallerState.from_bytes(store.data[a]).attempts_total == 1
    assert CallerState.from_bytes(store.data[b]).attempts_total == 1
    assert det.touched() == 3 and det.persist() == 3
    assert {n: CallerState.from_bytes(store.data[n]).attempts_total for n in (a, b, c)} == {
        a: 2, b: 2, c: 1}
