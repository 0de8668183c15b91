"""The bench's pure helpers: statistics, metrics parsing, traffic and the report. No timings."""

import argparse
import math
import random
import time

import orjson
import pytest

from services import bench
from services.bench import (FIGURE_LABELS, CompactStore, LiveTraffic, Results, SizeStats,
                            bucket_delta, fmt_ms, format_table, histogram_buckets,
                            histogram_quantile, metric_sum, parse_vmhwm, percentile,
                            progress_count, render, rss_caller_events, size_stats, state_sizes,
                            subscriber_number, throughput, verdict)
from streams.features import CallerState, FeatureConfig, fold
from streams.schema import EventValidator, SignalingEvent
from tests.unit.helpers import T0, call, ordered

METRICS = """\
# HELP dialguard_events_total Signaling events accepted by the worker
# TYPE dialguard_events_total counter
dialguard_events_total{kind="attempt",proto="sip"} 100.0
dialguard_events_total{kind="fail",proto="isup"} 50.0
# HELP dialguard_events_created Signaling events accepted by the worker
# TYPE dialguard_events_created gauge
dialguard_events_created{kind="attempt",proto="sip"} 1.7e+09
# HELP dialguard_dead_letters_total Records sent to the dead-letter topic, by reason
# TYPE dialguard_dead_letters_total counter
dialguard_dead_letters_total{reason="not_json"} 3.0
# HELP dialguard_decision_latency_seconds Wall time from event to decision
# TYPE dialguard_decision_latency_seconds histogram
dialguard_decision_latency_seconds_bucket{le="0.05"} 2.0
dialguard_decision_latency_seconds_bucket{le="0.1"} 6.0
dialguard_decision_latency_seconds_bucket{le="+Inf"} 10.0
dialguard_decision_latency_seconds_count 10.0
dialguard_decision_latency_seconds_sum 3.0
"""


# -- statistics -----------------------------------------------------------------------------
def test_percentile_interpolates_like_numpy():
    values = [4, 1, 3, 2]
    assert percentile(values, 0) == 1
    assert percentile(values, 100) == 4
    assert percentile(values, 50) == 2.5
    assert percentile(list(range(101)), 99) == 99
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_nan_and_bad_q_is_refused():
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_size_stats_summarise_a_small_sample():
    stats = size_stats([100, 200, 300, 400])
    assert stats == SizeStats(count=4, mean=250.0, p50=250.0, p99=pytest.approx(397.0),
                              max=400.0)
    assert size_stats([]).count == 0 and math.isnan(size_stats([]).mean)


def test_state_sizes_are_the_serialised_lengths():
    cfg = FeatureConfig()
    quiet = fold(call("8613800000001", "8613900000001", T0, answered=True, duration=60), cfg)
    busy = fold(ordered(sum((call("8617000000001", f"86139{i:08d}", T0 + 5 * i, answered=False)
                             for i in range(50)), [])), cfg)
    sizes = state_sizes([quiet, busy])
    assert sizes == [len(quiet.to_bytes()), len(busy.to_bytes())]
    assert sizes[0] < sizes[1]  # a robot remembers its callees
    assert CallerState.from_bytes(busy.to_bytes()).attempts_total == 50


# -- metrics parsing ------------------------------------------------------------------------
def test_metric_sum_adds_every_label_set_and_ignores_created():
    assert metric_sum(METRICS, "dialguard_events_total") == 150.0
    assert metric_sum(METRICS, "dialguard_missing_total") == 0.0
    assert progress_count(METRICS) == 153.0


def test_histogram_buckets_are_cumulative_and_sorted():
    buckets = histogram_buckets(METRICS, "dialguard_decision_latency_seconds")
    assert buckets == [(0.05, 2.0), (0.1, 6.0), (math.inf, 10.0)]


def test_histogram_quantile_interpolates_within_the_bucket():
    buckets = [(0.05, 2.0), (0.1, 6.0), (math.inf, 10.0)]
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.025)
    assert histogram_quantile(0.4, buckets) == pytest.approx(0.075)
    assert histogram_quantile(0.99, buckets) == 0.1  # in +Inf: the largest finite bound
    assert math.isnan(histogram_quantile(0.5, []))
    assert math.isnan(histogram_quantile(0.5, [(0.05, 0.0), (math.inf, 0.0)]))


def test_bucket_delta_keeps_only_the_phase_observations():
    before = [(0.05, 1.0), (math.inf, 5.0)]
    after = [(0.05, 4.0), (math.inf, 9.0)]
    assert bucket_delta(after, before) == [(0.05, 3.0), (math.inf, 4.0)]


def test_parse_vmhwm_reads_kib():
    assert parse_vmhwm("Name:\tpython\nVmHWM:\t   10832 kB\nVmRSS:\t 900 kB\n") == 10832 * 1024
    assert parse_vmhwm("Name:\tpython\n") is None


# -- rates and verdicts ---------------------------------------------------------------------
def test_throughput_starts_at_the_first_progress_poll():
    samples = [(0.0, 0.0), (1.0, 0.0), (2.0, 500.0), (3.0, 1500.0), (4.0, 2500.0)]
    assert throughput(samples) == pytest.approx(1000.0)


def test_throughput_needs_two_polls_with_progress():
    assert throughput([(0.0, 0.0), (1.0, 20_000.0)]) is None
    assert throughput([]) is None
    assert throughput([(1.0, 5.0), (2.0, 5.0)]) is None


def test_verdict_depends_on_direction():
    assert verdict(120_000, 100_000, True) == "ok"
    assert verdict(90_000, 100_000, True) == "MISS"
    assert verdict(0.05, 0.1, False) == "ok"
    assert verdict(0.2, 0.1, False) == "MISS"
    assert verdict(None, 1, True) == "" and verdict(math.nan, 1, True) == ""


# -- report ---------------------------------------------------------------------------------
def test_format_table_aligns_columns_under_a_rule():
    text = format_table([["a", "1"], ["longer", "22", "x"]], ("name", "value", "note"))
    lines = text.splitlines()
    assert lines[0].split() == ["name", "value", "note"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].index("1") == lines[3].index("22") == lines[0].index("value")


def test_render_has_every_label_even_without_figures():
    text = render(Results(events=10, partitions=8))
    for label in FIGURE_LABELS:
        assert label in text
    assert "n/a" in text


def test_catchup_says_whether_the_worker_kept_up():
    assert bench.catchup_text(Results(catchup_s=0.25)) == "0.2 s after the last event"
    assert bench.catchup_text(Results(behind=1234.0)).startswith("no: 1,234 events behind")
    assert bench.catchup_text(Results()) == "n/a"


def test_host_busy_seconds_leaves_idle_and_iowait_out():
    stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 50 2 25 500 10 0 1 1 0 0\n"
    assert bench.host_busy_seconds(stat, ticks=100) == pytest.approx((100 + 5 + 50 + 1 + 2 + 3)
                                                                    / 100)
    with pytest.raises(ValueError):
        bench.host_busy_seconds("intr 1 2 3\n")


def test_process_cpu_seconds_survive_spaces_in_the_command_name():
    fields = ["S"] + ["0"] * 10 + ["250", "50"] + ["0"] * 30
    stat = "1234 (python -m x) " + " ".join(fields)
    assert bench.process_cpu_seconds(stat, ticks=100) == pytest.approx(3.0)


def test_cpu_shares_attribute_the_rest_of_the_host_to_other():
    before = bench.CpuSnapshot(wall=10.0, host=100.0, processes={"worker": 5.0, "broker": 1.0})
    after = bench.CpuSnapshot(wall=20.0, host=118.0, processes={"worker": 14.0, "broker": 3.0})
    shares = bench.cpu_shares(before, after)
    assert shares == pytest.approx({"worker": 0.9, "broker": 0.2, "other": 0.7})
    assert bench.cpu_shares(after, after) == {}


def test_render_shows_figures_targets_and_verdicts():
    r = Results(events=1000, partitions=8, ceiling=300_000.0, worker=3_000.0,
                ceiling_single=150_000.0, faust=200_000.0, sources=5_000.0,
                latency_runs=[[0.01, 0.02, 0.5], [0.01, 0.02, 0.03], [0.02, 0.04, 0.06]],
                live_offered=1500.0, live_reached=1490.0,
                hist_p50=0.03, hist_p99=0.2, state=size_stats([200, 300, 500]),
                live_cpu={"worker": 0.93, "broker": 0.2, "bench": 0.1, "other": 0.05},
                heap_per_state=1500.0, worker_rss=300 * bench.MIB,
                rss={"callers": 1000, "events": 5000, "seconds": 1.0, "events_per_s": 5000.0,
                     "base_rss": 100 * bench.MIB, "peak_rss": 102 * bench.MIB,
                     "hot_cache": 1000, "store": 1000, "store_bytes": 270_000})
    text = render(r)
    assert "300,000 events/s" in text and "1.0 %" in text
    assert "MISS" in text and "ok" in text
    p99s = [fmt_ms(percentile(run, 99)) for run in r.latency_runs]
    assert " / ".join(p99s) in text  # one p99 per run; MISS since one run is over 100 ms
    assert "150,000 events/s" in text and "2.0 %" in text  # the single-record ceiling
    assert "1,000 distinct callers" in text and "102.0 MiB" in text
    assert "worker 0.93, broker 0.20, bench 0.10, other 0.05" in text


# -- traffic --------------------------------------------------------------------------------
def test_subscriber_numbers_are_distinct_e164_mobiles():
    numbers = [subscriber_number(i) for i in range(5000)]
    assert len(set(numbers)) == len(numbers)
    assert all(len(n) == 13 and n.startswith("861") for n in numbers)


def test_rss_callers_make_one_to_three_valid_calls_in_order():
    validator = EventValidator()
    rnd = random.Random(3)
    start = time.time() - 7200
    for index in range(50):
        raws = rss_caller_events(index, rnd, start)
        events = [validator.decode(raw) for raw in raws]
        attempts = [e for e in events if e.kind == "attempt"]
        assert 1 <= len(attempts) <= 3
        assert {e.caller for e in events} == {subscriber_number(index)}
        assert [e.ts for e in events] == sorted(e.ts for e in events)


def test_live_robots_pace_their_calls_and_stop():
    traffic = LiveTraffic(seed=1)
    traffic.spawn_robot(at=100.0)
    first = traffic.due_robot_calls(100.0)
    assert len(first) == 1
    later = traffic.due_robot_calls(100.0 + 3.5 * bench.ROBOT_CALL_GAP_S)
    assert len(later) == 3
    rest = traffic.due_robot_calls(10_000.0)
    assert len(first) + len(later) + len(rest) == bench.ROBOT_CALLS
    assert traffic.robots == [] and len(traffic.robot_numbers) == 1


def test_live_calls_are_valid_wire_events():
    traffic = LiveTraffic(seed=2)
    validator = EventValidator()
    traffic.spawn_robot(at=0.0)
    calls = traffic.due_robot_calls(0.0) + [traffic.human_call() for _ in range(20)]
    for events in calls:
        assert events[0]["kind"] == "attempt"
        for ev in events:
            ev["ts"] = time.time()
            validator.decode(orjson.dumps(ev))


def test_fold_states_keys_by_caller():
    events = call("8613800000001", "8613900000001", T0, answered=True, duration=30) + \
        call("8613800000002", "8613900000001", T0, answered=False)
    states = bench.fold_states([orjson.dumps(e) for e in events], FeatureConfig())
    assert set(states) == {"8613800000001", "8613800000002"}
    assert states["8613800000001"].window(60)[0] == 1


def test_compact_store_keeps_an_equal_copy():
    store = CompactStore()
    value = orjson.dumps([1, 2, 3])
    store.put("n", value, None)
    assert store.get("n") == value and store.get("n") is not value
    assert store.get("other") is None


def test_encode_matches_the_schema_encoding():
    ev = SignalingEvent(ts=T0, proto="sip", kind="attempt", call_id="c", caller="8613800000001",
                        callee="8613900000001", attest="A")
    assert orjson.loads(bench.encode(ev)) == orjson.loads(ev.encode())


def test_live_share_is_a_share_of_the_replay_rate():
    assert bench.live_share("0.25") == 0.25 and bench.live_share("1") == 1.0
    for bad in ("0", "1.5", "-0.1", "half"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.live_share(bad)
