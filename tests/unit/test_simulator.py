"""The simulator's populations behave as described, deterministically."""

from collections import defaultdict

import pytest

from services.simulator import (EMERGENCY_NUMBERS, Scenario, Simulation, read_truth,
                                write_truth)
from streams.features import FeatureConfig, fold, features
from streams.schema import EventValidator

START = 1_800_000_000.0
HOURS = 4


@pytest.fixture(scope="module")
def run():
    sim = Simulation(Scenario.small(), seed=3, start_ts=START)
    events = list(sim.events(HOURS * 3600))
    return sim, events, {t.number: t for t in sim.truth()}


def by_population(events, truth):
    out = defaultdict(list)
    for ev in events:
        t = truth.get(ev.caller)
        out[t.population if t else "customer"].append(ev)
    return out


def test_same_seed_same_events_other_seed_other_events(run):
    _, events, _ = run
    again = list(Simulation(Scenario.small(), seed=3, start_ts=START).events(HOURS * 3600))
    other = list(Simulation(Scenario.small(), seed=4, start_ts=START).events(HOURS * 3600))
    assert again == events
    assert other != events


def test_events_are_in_event_time_order_and_valid(run):
    _, events, _ = run
    assert all(a.ts <= b.ts for a, b in zip(events, events[1:]))
    validator = EventValidator()
    for ev in events[:: max(len(events) // 2000, 1)]:
        assert validator.decode(ev.encode(), now=START + 10 * 86400) == ev


def test_every_population_appears(run):
    _, events, truth = run
    pops = set(by_population(events, truth))
    assert {"subscriber", "robocaller", "scanner", "snowshoe", "spoofed", "call_center",
            "emergency", "customer"} <= pops
    assert {t.population for t in truth.values() if t.robot} == {
        "robocaller", "scanner", "snowshoe", "spoofed"}


def test_robots_and_call_centers_differ_where_it_matters(run):
    _, events, truth = run
    cfg = FeatureConfig()
    per_caller = defaultdict(list)
    for ev in events:
        per_caller[ev.caller].append(ev)
    for number, t in truth.items():
        if t.population not in ("robocaller", "call_center") or len(per_caller[number]) < 100:
            continue
        f = features(fold(per_caller[number], cfg))
        if t.population == "robocaller":
            assert f["answer_ratio_1h"] < 0.3 and f["short_ratio_1h"] > 0.5
        else:
            assert f["answer_ratio_1h"] > 0.4 and f["mean_duration_1h"] > 60


def test_calls_are_well_formed(run):
    _, events, _ = run
    calls = defaultdict(list)
    for ev in events:
        calls[ev.call_id].append(ev.kind)
    for kinds in calls.values():
        assert kinds[0] == "attempt"
        assert kinds[1:] in ([], ["fail"], ["answer"], ["answer", "release"])
    assert all(ev.duration_s is not None for ev in events if ev.kind == "release")


def test_scanners_dial_in_order(run):
    _, events, truth = run
    scanner = next(n for n, t in truth.items() if t.population == "scanner")
    callees = [int(e.callee) for e in events if e.caller == scanner and e.kind == "attempt"]
    assert len(callees) > 10 and callees == sorted(callees)


def test_snowshoe_numbers_stay_under_per_number_thresholds(run):
    _, events, truth = run
    hourly = defaultdict(int)
    for ev in events:
        t = truth.get(ev.caller)
        if t and t.population == "snowshoe" and ev.kind == "attempt":
            hourly[(ev.caller, int(ev.ts // 3600))] += 1
    assert hourly and max(hourly.values()) < 30


def test_emergency_numbers_called_and_calling(run):
    sim, _, _ = run
    events = list(Simulation(Scenario.small(), seed=3, start_ts=START).events(24 * 3600))
    assert any(ev.callee in EMERGENCY_NUMBERS for ev in events)
    assert any(ev.caller in EMERGENCY_NUMBERS for ev in events)


def test_truth_file_roundtrip(run, tmp_path):
    sim, _, _ = run
    path = tmp_path / "truth.jsonl"
    write_truth(path, sim.truth())
    assert read_truth(path) == sim.truth()
