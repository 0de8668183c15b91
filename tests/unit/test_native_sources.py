"""The compiled source stage (streams._native.SourceFold, SourceState) against the Python it
must agree with: slot layout, row decoding, what it leaves to the Python check, the state's
wire form. Its counting and deciding rules are pinned by test_source_detector.py."""

import orjson
import pytest

from online_models.source_scorer import SourceScorer
from services.settings import Settings
from streams import _native, source_features
from streams.control import ControlState
from streams.detector import DictStore, MemorySink, Origin
from streams.schema import SourceEvent
from streams.source_detector import SourceDetector
from streams.source_features import SourceConfig, SourceState, features
from tests.unit.helpers import T0

SETTINGS = Settings.from_env({})


def stage() -> tuple[SourceDetector, MemorySink]:
    sink = MemorySink()
    return SourceDetector(SETTINGS, SourceScorer(), ControlState(), sink, DictStore()), sink


def row(key="trunk:sw/tk", ts=T0, kind="attempt", call_id="c1", caller="8613800000001",
        callee="8613900000002", **extra) -> list:
    ev = SourceEvent(key, ts, kind, "sip", call_id, caller, callee, **extra)
    return [getattr(ev, f) for f in SourceEvent.__slots__]


def test_slot_order_is_the_one_streams_source_features_names():
    names = _native.SOURCE_SLOT_NAMES
    assert [getattr(source_features, n) for n in names] == list(range(len(names)))
    assert source_features.N_SLOTS == len(names)


def test_rows_and_objects_fold_alike_and_odd_items_go_to_the_python_check():
    """A batch of rows is read natively; an object, a short row or a field of the wrong type
    goes to SourceEvent.from_value, which folds it or dead-letters it alone."""
    s, sink = stage()
    short = row(call_id="c2")[:7]  # the fields after callee take their defaults
    odd = row(call_id="c3")
    odd[13] = "two"               # caller_trunks must be a number: dead-lettered
    obj = orjson.loads(SourceEvent("trunk:sw/tk", T0, "attempt", "sip", "c4", "8613800000004",
                                   "8613900000004").encode())
    raw = orjson.dumps([row(), short, odd, obj, ["trunk:sw/tk", "bad ts", "attempt"]])
    assert s.ingest(raw, Origin("signaling.sources", 0, 1)) == 3
    s.flush()
    assert [(r, o.index) for _, r, _, o in sink.dead] == [("bad_value", 2), ("missing_field", 4)]
    assert s.native.cached("trunk:sw/tk").attempts_total == 3


def test_a_replayed_row_is_skipped_by_its_origin_position():
    s, _ = stage()
    raw = orjson.dumps([row(origin_partition=3, origin_offset=40, origin_index=2)])
    s.ingest(raw, Origin("signaling.sources", 0, 1))
    s.ingest(raw, Origin("signaling.sources", 0, 2))  # the same event again
    later = orjson.dumps([row(call_id="c9", origin_partition=3, origin_offset=41)])
    s.ingest(later, Origin("signaling.sources", 0, 3))
    state = s.native.cached("trunk:sw/tk")
    assert state.attempts_total == 2 and state.origins == [(3, 41, 0)]


def test_source_states_of_version_one_and_two_read_and_round_trip():
    s, _ = stage()
    s.ingest(orjson.dumps([row(attest="C", caller_new=True, caller_trunks=2,
                               callee="8613800005678", origin_partition=1, origin_offset=7)]),
             Origin("signaling.sources", 0, 1))
    st = s.native.cached("trunk:sw/tk")
    st.action_match = {"attest": ["B", "C", "none"]}
    row2 = orjson.loads(st.to_bytes())
    assert row2[0] == 2 and row2[15] == {"attest": ["B", "C", "none"]} and row2[16] == [[1, 7, 0]]
    back = SourceState.from_bytes(st.to_bytes())
    assert features(back) == features(st) and back.action_match == st.action_match
    v1 = SourceState.from_bytes(orjson.dumps([1, *row2[1:16]]))  # before origin positions
    assert v1.origins == [] and features(v1) == features(st)
    with pytest.raises(ValueError, match="unknown version"):
        SourceState.from_bytes(orjson.dumps([3, *row2[1:]]))


def test_calls_in_progress_past_their_cap_forget_the_oldest_call_first():
    """An answer learns its segment from its attempt; past ``open_calls_cap`` attempts the
    oldest call's is forgotten, and its outcome falls back to what the event shows."""
    cfg = SourceConfig(open_calls_cap=2)
    st = SourceState(3)
    for i in (1, 2, 3):  # unattested attempts: in the unverified segment
        st.add(SourceEvent("trunk:sw/tk", T0 + i, "attempt", "sip", f"c{i}",
                           f"861380000000{i}", "8613900000002"), cfg)
    for i in (1, 3):
        st.add(SourceEvent("trunk:sw/tk", T0 + 10 + i, "answer", "sip", f"c{i}",
                           f"861380000000{i}", "8613900000002"), cfg)
    f = features(st)
    assert f["answered_1h"] == 2 and f["uv_answered_1h"] == 1  # c1's attempt was forgotten


def test_caller_summary_sums_the_callers_as_the_features_read_them():
    """``SourceState.caller_summary`` against the sums over the caller table it is made of:
    callers after the window start, those with one call, and per segment the callers, the
    calls of heavy callers and the callers with a conversation."""
    import random

    rnd = random.Random(7)
    cfg = SourceConfig()
    st = SourceState(source_features.TRUNK_SEGMENTS)
    for n in range(3000):
        caller = f"86138{rnd.randrange(400) + (n >= 1500) * 400:08d}"  # others after 75 min
        callee = caller[:-4] + f"{rnd.randrange(10_000):04d}" if rnd.random() < 0.3 \
            else f"86139{rnd.randrange(10**8):08d}"
        ts = T0 + n * 3.0
        attempt = SourceEvent("trunk:sw/tk", ts, "attempt", "sip", f"c{n}", caller, callee,
                              attest=rnd.choice(("A", "C", None)))
        st.add(attempt, cfg)
        if rnd.random() < 0.4:
            st.add(SourceEvent("trunk:sw/tk", ts + 1, "answer", "sip", f"c{n}", caller, callee,
                               code=200), cfg)
            st.add(SourceEvent("trunk:sw/tk", ts + 2, "release", "sip", f"c{n}", caller,
                               callee, duration_s=rnd.choice((5.0, 90.0))), cfg)
    cut = st.hwm_bucket - source_features.WINDOWS["10m"]
    assert 0 < sum(1 for e in st.callers.values() if e[0] > cut) < len(st.callers)
    for start in (st.hwm_bucket - source_features.WINDOWS["1h"], cut, st.hwm_bucket):
        entries = [e for e in st.callers.values() if e[0] > start]
        for heavy in (1, 3, 12, 10_000):
            total, once, per = st.caller_summary(start, heavy)
            assert (total, once) == (len(entries), sum(1 for e in entries if e[1] == 1))
            for seg in range(source_features.TRUNK_SEGMENTS):
                mine = [e for e in entries if e[2] >> seg & 1]
                assert per[seg] == [len(mine), sum(e[1] for e in mine if e[1] >= heavy),
                                    sum(1 for e in mine if e[3] > 0)]
    start = st.hwm_bucket - source_features.WINDOWS["1h"]
    assert st.caller_summary(start, 1)[2][1][0] > 0  # neighbour callers among them


def test_a_record_without_a_value_is_dead_lettered_and_the_stage_goes_on():
    s, sink = stage()
    assert s.ingest(None, Origin("signaling.sources", 4, 9)) == 0
    assert s.ingest(orjson.dumps([row()]), Origin("signaling.sources", 4, 10)) == 1
    assert [(r, o.partition, o.offset) for _, r, _, o in sink.dead] == [("missing_field", 4, 9)]
