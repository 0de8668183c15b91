import orjson
import pytest

from streams.features import (ATTEMPTS, DUR_SUM, POOL_CALLERS_CAP, CallerState, FeatureConfig,
                              PoolCounters, fail_class, features, fold, gap_cv, pool_features)
from streams.schema import SignalingEvent
from tests.unit.helpers import T0, call, ordered

CFG = FeatureConfig(short_call_s=10, sequential_max_step=3, distinct_callees_cap=50,
                    late_grace_s=60)
A = "8613800138000"


def test_counts_per_window():
    evs = []
    for i in range(30):  # one call every 30 s for 15 min
        evs += call(A, f"86139{i:08d}", T0 + 30 * i, answered=i % 3 == 0, duration=4)
    st = fold(ordered(evs), CFG)
    f = features(st)
    assert f["attempts_1h"] == 30
    assert f["attempts_10m"] < 30 and f["attempts_1m"] <= 3
    assert f["answered_1h"] == 10 and f["released_1h"] == 10
    assert f["short_ratio_1h"] == 1.0
    assert f["answer_ratio_1h"] == pytest.approx(10 / 30)
    assert f["distinct_1h"] == 30 and f["breadth_1h"] == 1.0


def test_unallocated_and_fail_classes():
    assert fail_class("sip", 404) == "unallocated" and fail_class("isup", 1) == "unallocated"
    assert fail_class("isup", 28) == "unallocated" and fail_class("sip", 486) == "busy_no_answer"
    assert fail_class("sip", 603) == "rejected" and fail_class("sip", 500) == "other"
    evs = []
    for i in range(10):
        evs += call(A, f"86139{i:08d}", T0 + 10 * i, answered=False, code=404 if i < 4 else 486)
    f = features(fold(ordered(evs), CFG))
    assert f["unallocated_ratio_1h"] == pytest.approx(0.4)
    assert f["busy_no_answer_ratio_1h"] == pytest.approx(0.6)
    assert f["other_fail_ratio_1h"] == 0.0
    assert f["fail_ratio_1h"] == 1.0


def test_sequential_dialing_detected():
    evs = []
    for i in range(20):
        evs += call(A, str(8613900000000 + i), T0 + 5 * i, answered=False)
    f = features(fold(ordered(evs), CFG))
    assert f["sequential_ratio_1h"] == 1.0


def test_regular_rhythm_has_low_cv():
    assert gap_cv(10, 100.0, 1000.0) == 0.0  # every gap 10 s
    assert gap_cv(1, 10.0, 100.0) == 1.0     # not enough gaps: neutral


def test_old_minutes_leave_the_window():
    st = CallerState()
    for ev in call(A, "8613900000001", T0, answered=False):
        st.add(ev, CFG)
    for ev in call(A, "8613900000002", T0 + 2 * 3600, answered=False):
        st.add(ev, CFG)
    f = features(st)
    assert f["attempts_1h"] == 1 and f["distinct_1h"] == 1


def test_late_events_within_grace_count_later_ones_dropped():
    st = CallerState()
    mk = lambda ts, callee: SignalingEvent(ts=ts, proto="sip", kind="attempt", call_id=str(ts),
                                           caller=A, callee=callee)
    assert st.add(mk(T0 + 100, "8613900000001"), CFG)
    assert st.add(mk(T0 + 50, "8613900000002"), CFG)       # 50 s late: within 60 s grace
    assert not st.add(mk(T0 + 10, "8613900000003"), CFG)   # 90 s late: dropped
    assert features(st)["attempts_1h"] == 2


def test_distinct_callees_bounded():
    st = CallerState()
    for i in range(200):
        st.add(SignalingEvent(ts=T0 + i, proto="sip", kind="attempt", call_id=str(i), caller=A,
                              callee=f"86139{i:08d}"), CFG)
    assert len(st.callees) == CFG.distinct_callees_cap


def test_state_roundtrip_preserves_features():
    evs = []
    for i in range(25):
        evs += call(A, f"86139{i:08d}", T0 + 20 * i, answered=i % 2 == 0, duration=30 + i,
                    attest="C")
    st = fold(ordered(evs), CFG)
    st.action, st.action_until, st.action_dry = "block", T0 + 999, True
    back = CallerState.from_bytes(st.to_bytes())
    assert features(back) == features(st)
    assert (back.action, back.action_until, back.action_dry) == ("block", T0 + 999, True)
    assert back.attempts_total == 25


def test_counts_are_stored_as_integers_and_states_with_float_counts_still_read():
    """Bucket counts stay ints (smaller records, CPython's shared small ints); states written
    when every slot was a float read back with the same features."""
    st = fold(ordered(call(A, "8613900000001", T0, answered=True, duration=30.5)), CFG)
    row = orjson.loads(st.to_bytes())
    minute, *slots = row[1][0]
    assert slots[ATTEMPTS] == 1 and type(slots[ATTEMPTS]) is int
    assert slots[DUR_SUM] == 30.5
    assert b"1.0" not in st.to_bytes()
    row[1] = [[minute, *map(float, slots)]]  # as written before counts were ints
    old = CallerState.from_bytes(orjson.dumps(row))
    assert features(old) == features(st)


def test_event_time_not_wall_time_decides_windows():
    """The same events folded at any wall time give the same features (replay == live)."""
    evs = ordered(sum((call(A, f"86139{i:08d}", T0 + 40 * i, answered=True, duration=60)
                       for i in range(40)), []))
    assert features(fold(evs, CFG)) == features(fold(list(evs), CFG))


def test_pool_counters_see_many_small_callers():
    pool = PoolCounters(POOL_CALLERS_CAP)
    for n in range(100):
        for ev in call(f"86170000{n:05d}", "8613900000001", T0 + n, answered=True, duration=3):
            pool.add(ev, 10)
    s = pool_features(pool.summary(int((T0 + 200) // 60)))
    assert s["pool_callers"] == 100 and s["pool_short_ratio"] == 1.0


def test_pool_forgets_callers_of_expired_minutes_in_any_arrival_order():
    """Callers arrive out of minute order (batch records of different partitions); the hour
    keeps exactly those seen in it, and past the cap the least recently seen leave first."""
    pool = PoolCounters(POOL_CALLERS_CAP)
    minutes = [5, 70, 3, 69, 71, 2]  # caller i last seen at minute minutes[i]
    for i, m in enumerate(minutes):
        for ev in call(f"86170000{i:05d}", "8613900000001", m * 60 + 1, answered=False):
            pool.add(ev, 10)
    pool.add(call("8617000000000", "8613900000001", 72 * 60 + 1, answered=False)[0], 10)
    assert pool_features(pool.summary(72))["pool_callers"] == 4  # minutes 72, 70, 69, 71
    assert set(pool.callers) == {f"86170000{i:05d}" for i in (0, 1, 3, 4)}

    capped = PoolCounters(3)
    for i, m in enumerate([10, 12, 11, 13]):
        capped.add(call(f"86171000{i:05d}", "8613900000001", m * 60, answered=False)[0], 10)
    assert set(capped.callers) == {f"86171000{i:05d}" for i in (1, 2, 3)}  # minute 10 left
