"""The simulator's populations behave as described, deterministically, and it tells the truth.

One small run (4 simulated hours from 10:00 local time, so offices are open) is shared by the
module; every property is computed from the generated events, not from the parameters.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from dataclasses import replace

import confluent_kafka
import pytest

from services import simulator
from services.settings import Settings
from services.simulator import (EMERGENCY_NUMBERS, PSAP_NUMBERS, POPULATIONS,
                                ROBOT_POPULATIONS, Pacer, Scenario, Simulation, TruthWriter,
                                read_truth, write_truth)
from streams.schema import (ISUP_BUSY_OR_NO_ANSWER, ISUP_UNALLOCATED, SIP_BUSY_OR_NO_ANSWER,
                            SIP_UNALLOCATED, EventValidator)
from streams.topics import SIGNALING_EVENTS

#: 02:00 UTC = 10:00 in the simulated network's local time (UTC+8).
START = 1_799_978_400.0
HOURS = 4
SEED = 3
#: The per-number hourly volume snowshoe numbers must stay under.
SNOWSHOE_HOURLY_CAP = 60


def simulate(seed: int = SEED, hours: float = HOURS, scenario: Scenario | None = None,
             start: float = START) -> tuple[Simulation, list]:
    sim = Simulation(scenario or Scenario.small(), seed=seed, start_ts=start)
    return sim, list(sim.events(hours * 3600))


@pytest.fixture(scope="module")
def run():
    sim, events = simulate()
    return sim, events, {t.number: t for t in sim.truth()}


def attempts_by_population(events, truth) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for ev in events:
        if ev.kind == "attempt":
            out[truth[ev.caller].population].append(ev)
    return out


def calls_of(events) -> dict[str, list]:
    calls: dict[str, list] = defaultdict(list)
    for ev in events:
        calls[ev.call_id].append(ev)
    return calls


def numbers_of(truth, population: str) -> list[str]:
    return [n for n, t in truth.items() if t.population == population]


# --- determinism, order, wire --------------------------------------------------------------
def test_same_seed_same_events_and_truth_other_seed_other_events(run):
    sim, events, _ = run
    again_sim, again = simulate()
    _, other = simulate(seed=SEED + 1)
    assert again == events and again_sim.truth() == sim.truth()
    assert other != events


def test_events_are_in_event_time_order_within_the_run(run):
    _, events, _ = run
    assert len(events) > 1000
    assert all(a.ts <= b.ts for a, b in zip(events, events[1:]))
    assert START <= events[0].ts and events[-1].ts < START + HOURS * 3600


def test_every_event_decodes_through_the_validator(run):
    _, events, _ = run
    validator = EventValidator()
    now = events[-1].ts + 86_400
    for ev in events:
        assert validator.decode(ev.encode(), now=now) == ev


def test_calls_are_well_formed_with_unique_ids(run):
    _, events, _ = run
    for call in calls_of(events).values():
        kinds = [ev.kind for ev in call]
        assert kinds in (["attempt"], ["attempt", "fail"], ["attempt", "answer"],
                         ["attempt", "answer", "release"])
        assert len({(ev.caller, ev.callee, ev.proto, ev.trunk) for ev in call}) == 1
        if kinds[-1] == "release":
            answer, release = call[1], call[2]
            assert release.duration_s is not None and release.duration_s > 0
            assert release.ts - answer.ts == pytest.approx(release.duration_s, abs=1e-3)
    assert all(ev.duration_s is None for ev in events if ev.kind != "release")


def test_codes_follow_the_protocol(run):
    _, events, _ = run
    protos = Counter(ev.proto for ev in events)
    assert protos["sip"] and protos["isup"]
    for ev in events:
        sip = ev.proto == "sip"
        if ev.kind == "attempt":
            assert ev.code is None
        elif ev.kind == "answer":
            assert ev.code == (200 if sip else None)
        elif ev.kind == "release":
            assert ev.code == (None if sip else 16)
        else:
            allowed = SIP_UNALLOCATED | SIP_BUSY_OR_NO_ANSWER if sip else \
                ISUP_UNALLOCATED | ISUP_BUSY_OR_NO_ANSWER
            assert ev.code in allowed
        if not sip:
            assert ev.attest is None  # no STIR/SHAKEN on ISUP


def test_unallocated_means_outside_the_number_space(run):
    sim, events, _ = run
    for ev in events:
        unallocated = ev.kind == "fail" and ev.code in SIP_UNALLOCATED | ISUP_UNALLOCATED
        if unallocated:
            assert not sim.space.is_allocated(ev.callee)
        elif ev.kind == "answer":
            assert sim.space.is_allocated(ev.callee)


# --- truth -----------------------------------------------------------------------------------
def test_truth_covers_every_caller_and_only_callers(run):
    sim, events, truth = run
    callers = {ev.caller for ev in events}
    assert set(truth) == callers
    assert len(sim.truth()) == len(truth)  # one entry per number


def test_every_population_appears_with_the_right_robot_flag(run):
    _, events, truth = run
    assert set(attempts_by_population(events, truth)) == set(POPULATIONS)
    assert {t.population for t in truth.values() if t.robot} == set(ROBOT_POPULATIONS)


def test_truth_file_roundtrip_and_incremental_writer(run, tmp_path):
    sim, _, _ = run
    path = tmp_path / "truth.jsonl"
    write_truth(path, sim.truth())
    assert read_truth(path) == sim.truth()
    fresh = Simulation(Scenario.small(), seed=SEED, start_ts=START)
    writer = TruthWriter(tmp_path / "inc.jsonl")
    for i, _ in enumerate(fresh.events(HOURS * 3600)):
        if i % 1000 == 0:
            writer.update(fresh)
    writer.close(fresh)
    assert read_truth(tmp_path / "inc.jsonl") == sim.truth()


# --- populations -----------------------------------------------------------------------------
def ratios(events, number: str) -> tuple[int, float, float]:
    """(attempts, answered share, mean talk time) of a number, from its events."""
    mine = [ev for ev in events if ev.caller == number]
    attempts = sum(1 for ev in mine if ev.kind == "attempt")
    answers = sum(1 for ev in mine if ev.kind == "answer")
    durations = [ev.duration_s for ev in mine if ev.kind == "release"]
    return attempts, answers / attempts, sum(durations) / max(len(durations), 1)


def test_robocallers_are_unanswered_and_short_call_centers_answered_and_long(run):
    _, events, truth = run
    robots, centers = numbers_of(truth, "robocaller"), numbers_of(truth, "call_center")
    assert robots and centers
    for number in robots:
        attempts, answered, mean_s = ratios(events, number)
        assert attempts >= 100 and answered < 0.25 and mean_s < 15
    for number in centers:
        attempts, answered, mean_s = ratios(events, number)
        assert attempts >= 100 and 0.45 < answered < 0.85 and 60 <= mean_s <= 360


def test_robot_callees_are_many_and_partly_dead(run):
    sim, events, truth = run
    for number in numbers_of(truth, "robocaller"):
        callees = [ev.callee for ev in events if ev.caller == number and ev.kind == "attempt"]
        dead = sum(1 for c in callees if not sim.space.is_allocated(c)) / len(callees)
        assert len(set(callees)) > 0.95 * len(callees)
        assert 0.03 < dead < 0.6


def test_some_robots_are_attested_a_and_most_are_not(run):
    _, events, truth = run
    attests = Counter(ev.attest for ev in events
                      if ev.kind == "attempt" and truth[ev.caller].robot)
    assert attests["A"] > 0
    assert attests["C"] + attests[None] > attests["A"]


def test_scanners_dial_upwards_in_small_steps_into_dead_numbers(run):
    sim, events, truth = run
    for number in numbers_of(truth, "scanner"):
        callees = [int(ev.callee) for ev in events
                   if ev.caller == number and ev.kind == "attempt"]
        steps = [b - a for a, b in zip(callees, callees[1:])]
        assert len(callees) > 50 and all(1 <= s <= 3 for s in steps)
        dead = sum(1 for c in callees if not sim.space.is_allocated(str(c))) / len(callees)
        assert dead > 0.3


def test_snowshoe_numbers_each_stay_quiet_but_share_block_trunk_and_campaign(run):
    _, events, truth = run
    pool = numbers_of(truth, "snowshoe")
    attempts: dict[str, list[float]] = defaultdict(list)
    trunks = set()
    for ev in events:
        if ev.caller in truth and truth[ev.caller].population == "snowshoe":
            trunks.add(ev.trunk)
            if ev.kind == "attempt":
                attempts[ev.caller].append(ev.ts)
    assert len(pool) >= 20 and len(trunks) == 1
    assert len({n[:7] for n in pool}) == 1
    assert len({truth[n].campaign for n in pool}) == 1
    for times in attempts.values():
        lo = 0
        for hi, ts in enumerate(times):  # sliding one-hour window
            while ts - times[lo] >= 3600:
                lo += 1
            assert hi - lo + 1 < SNOWSHOE_HOURLY_CAP


def test_spoofed_caller_ids_never_repeat_and_share_one_trunk(run):
    _, events, truth = run
    spoofed = [ev for ev in events if ev.kind == "attempt"
               and truth[ev.caller].population == "spoofed"]
    assert len(spoofed) > 20
    assert len({ev.caller for ev in spoofed}) == len(spoofed)
    assert len({ev.trunk for ev in spoofed}) == 1
    assert len({truth[ev.caller].campaign for ev in spoofed}) == 1


def test_customers_call_call_centers_back(run):
    _, events, truth = run
    for center in numbers_of(truth, "call_center"):
        called = {ev.callee for ev in events if ev.caller == center and ev.kind == "attempt"}
        inbound = {ev.caller for ev in events if ev.callee == center and ev.kind == "attempt"}
        assert len(called) > 100 and len(inbound & called) > 5
        assert all(not truth[n].robot for n in inbound)


def test_subscribers_call_each_other_both_ways(run):
    _, events, truth = run
    pairs = {(ev.caller, ev.callee) for ev in events if ev.kind == "attempt"
             and truth[ev.caller].population == "subscriber"}
    assert any((b, a) in pairs for a, b in pairs)


def test_emergency_numbers_are_called_and_psaps_call_back(run):
    _, events, truth = run
    emergency = [ev for ev in events if ev.kind == "attempt" and ev.callee in EMERGENCY_NUMBERS]
    callbacks = [ev for ev in events if ev.kind == "attempt" and ev.caller in PSAP_NUMBERS]
    assert emergency and all(truth[ev.caller].population == "subscriber" for ev in emergency)
    assert callbacks and {ev.callee for ev in callbacks} & {ev.caller for ev in emergency}
    assert all(truth[ev.caller].population == "emergency" for ev in callbacks)


def test_country_code_comes_from_the_scenario():
    scenario = Scenario.small().with_country_code("44")
    sim, events = simulate(hours=0.5, scenario=scenario)
    foreign = {t.number for t in sim.truth() if t.population == "interconnect"}
    long_numbers = {n for ev in events for n in (ev.caller, ev.callee) if len(n) > 6} - foreign
    assert long_numbers and all(n.startswith("44") for n in long_numbers)


def test_named_scenarios_build():
    for name in simulator.SCENARIOS:
        assert isinstance(Scenario.named(name), Scenario)
    with pytest.raises(ValueError):
        Scenario.named("nope")


# --- pacing ----------------------------------------------------------------------------------
class FakeClock:
    def __init__(self, wall: float) -> None:
        self.wall_t, self.mono_t = wall, 0.0

    def wall(self) -> float:
        return self.wall_t

    def mono(self) -> float:
        return self.mono_t

    def sleep(self, seconds: float) -> None:
        self.wall_t += seconds
        self.mono_t += seconds


def pacer(clock: FakeClock, sim_start: float, speed: float = 10.0, rate: float = 0.0,
          fast: bool = False) -> Pacer:
    return Pacer(sim_start, speed, rate, fast, wall=clock.wall, mono=clock.mono,
                 idle=clock.sleep)


def test_pacer_replays_history_at_speed():
    clock = FakeClock(wall=START)
    p = pacer(clock, sim_start=START - 3600, speed=10.0)
    p.wait(START - 3600 + 100)  # 100 simulated seconds = 10 wall seconds at 10x
    assert clock.mono_t == pytest.approx(10.0, abs=1e-6)


def test_pacer_never_lets_an_event_into_the_future_even_when_fast():
    clock = FakeClock(wall=START)
    p = pacer(clock, sim_start=START - 60, fast=True)
    p.wait(START - 1)
    assert clock.mono_t == 0.0
    p.wait(START + 5)
    assert clock.wall_t >= START + 5 and clock.mono_t == pytest.approx(5.0, abs=1e-6)


def test_pacer_caps_the_event_rate():
    clock = FakeClock(wall=START)
    p = pacer(clock, sim_start=START - 3600, rate=100.0, fast=True)
    for i in range(51):
        p.wait(START - 3600 + i)
    assert clock.mono_t == pytest.approx(0.5, abs=1e-6)


# --- the CLI command, against a fake producer ------------------------------------------------
class FakeProducer:
    instances: list["FakeProducer"] = []

    def __init__(self, config: dict) -> None:
        self.config = config
        self.messages: list[tuple[str, bytes, bytes]] = []
        self.flushed = False
        self.full_every = 97  # now and then the local queue is full
        self.calls = 0
        self.interrupt_after: int | None = None
        FakeProducer.instances.append(self)

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery=None) -> None:
        self.calls += 1
        if self.calls % self.full_every == 0:
            raise BufferError("queue full")
        if self.interrupt_after is not None and len(self.messages) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.messages.append((topic, key, value))

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def flush(self, timeout: float = 0.0) -> int:
        self.flushed = True
        return 0

    def __len__(self) -> int:
        return 0


def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    simulator.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def fake_producer(monkeypatch):
    FakeProducer.instances.clear()
    monkeypatch.setattr(confluent_kafka, "Producer", FakeProducer)
    return FakeProducer


def test_cli_defaults_come_from_settings():
    args = cli_args()
    assert args.speed is None and args.history_hours is None and args.duration == 0
    assert args.topic == SIGNALING_EVENTS.name and not args.fast and args.rate == 0


def test_run_produces_keyed_valid_events_and_writes_truth(fake_producer, tmp_path, capsys):
    settings = Settings(home=tmp_path)
    args = cli_args("--scenario", "small", "--seed", "5", "--fast", "--duration", "1800",
                    "--history-hours", "2", "--topic", "sim-test", "--quiet")
    assert simulator.run(args, settings) == 0
    producer = fake_producer.instances[0]
    assert producer.flushed
    assert {k: producer.config[k] for k in ("partitioner", "linger.ms", "enable.idempotence",
                                            "compression.type")} == {
        "partitioner": "murmur2_random", "linger.ms": 20, "enable.idempotence": True,
        "compression.type": "lz4"}
    validator = EventValidator()
    events = [validator.decode(value) for _, _, value in producer.messages]
    assert len(events) > 100
    assert all(topic == "sim-test" and key == ev.caller.encode()
               for (topic, key, _), ev in zip(producer.messages, events))
    truth = read_truth(settings.data_dir / "simulation-truth.jsonl")
    assert {t.number for t in truth} == {ev.caller for ev in events}
    assert f"simulator done: {len(events):,} events produced" in capsys.readouterr().err


def test_ctrl_c_flushes_and_leaves_truth(fake_producer, tmp_path, monkeypatch):
    original = FakeProducer.__init__

    def interrupting(self, config):
        original(self, config)
        self.interrupt_after = 300

    monkeypatch.setattr(FakeProducer, "__init__", interrupting)
    path = tmp_path / "truth.jsonl"
    args = cli_args("--scenario", "small", "--fast", "--duration", "3600", "--history-hours",
                    "2", "--truth", str(path), "--quiet")
    assert simulator.run(args, Settings(home=tmp_path)) == 0
    producer = fake_producer.instances[0]
    assert producer.flushed and len(producer.messages) == 300
    callers = {EventValidator().decode(v).caller for _, _, v in producer.messages}
    assert callers <= {t.number for t in read_truth(path)}


def test_run_rejects_a_zero_speed(fake_producer, tmp_path):
    settings = replace(Settings(home=tmp_path), simulate_speed=0.0)
    assert simulator.run(cli_args("--quiet"), settings) == 2
