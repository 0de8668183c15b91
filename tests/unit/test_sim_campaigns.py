"""Issue 10's robots and their legitimate look-alikes (services.sim_campaigns), and per-call truth.

One small run (4 simulated hours from 10:00 local time, offices open) is shared by the module;
properties are computed from the generated events and the per-call truth, not the parameters.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter, defaultdict
from dataclasses import replace

import confluent_kafka
import pytest

from services import simulator
from services.settings import Settings
from services.sim_campaigns import (NeighbourCampaign, PoolCampaign, RotatingCampaign,
                                    block_numbers, line_digits)
from services.simulator import (INTERCONNECT, NEIGHBOUR, OTP, PBX, POOL, ROBOT_POPULATIONS,
                                ROTATING, SUBSCRIBER, NumberPools, Scenario, Simulation,
                                read_call_truth, read_truth)

START = 1_799_978_400.0  # 10:00 local
HOURS = 4
SEED = 5


def labelled(seed: int = SEED, hours: float = HOURS, scenario: Scenario | None = None):
    sim = Simulation(scenario or Scenario.small(), seed=seed, start_ts=START)
    return sim, list(sim.labelled_events(hours * 3600))


@pytest.fixture(scope="module")
def run():
    sim, pairs = labelled()
    return sim, pairs, {t.number: t for t in sim.truth()}


def attempts_of(pairs, population: str) -> list:
    return [(ev, who) for ev, who in pairs if ev.kind == "attempt" and who.population == population]


def outcome_stats(pairs, population: str) -> tuple[int, float, list[float]]:
    """(attempts, answered share, talk times) of a population's calls, by per-call truth."""
    calls = [ev for ev, who in pairs if who.population == population]
    attempts = sum(1 for ev in calls if ev.kind == "attempt")
    answers = sum(1 for ev in calls if ev.kind == "answer")
    return attempts, answers / max(attempts, 1), [ev.duration_s for ev in calls
                                                  if ev.kind == "release"]


# --- per-call truth --------------------------------------------------------------------------
def test_labelled_events_are_deterministic_per_seed(run):
    _, pairs, _ = run
    _, again = labelled()
    _, other = labelled(seed=SEED + 1)
    assert again == pairs
    assert [ev for ev, _ in other] != [ev for ev, _ in pairs]


def test_every_event_of_a_call_carries_the_same_truth(run):
    _, pairs, _ = run
    by_call: dict[str, set] = defaultdict(set)
    for ev, who in pairs:
        by_call[ev.call_id].add(who)
        assert who.number == ev.caller
    assert all(len(whos) == 1 for whos in by_call.values())


def test_new_populations_appear_with_their_robot_flag(run):
    _, pairs, _ = run
    seen = {who.population: who.robot for ev, who in pairs if ev.kind == "attempt"}
    for population in (ROTATING, NEIGHBOUR, POOL):
        assert seen[population] is True and population in ROBOT_POPULATIONS
    for population in (PBX, OTP, INTERCONNECT):
        assert seen[population] is False


def test_spoofed_calls_show_real_subscribers_numbers_truth_keeps_the_subscriber(run):
    sim, pairs, truth = run
    subscribers = {s.phone.number for s in sim.subscribers}
    spoofed = [(ev, who) for ev, who in attempts_of(pairs, ROTATING) if ev.caller in subscribers]
    assert len(spoofed) >= 5
    for ev, who in spoofed:
        assert who.robot and sim.spoofed(who)
        assert truth[ev.caller].population == SUBSCRIBER and not truth[ev.caller].robot
    own = [who for ev, who in pairs if ev.kind == "attempt" and who.population == SUBSCRIBER]
    assert own and not any(sim.spoofed(who) for who in own)


# --- robots ----------------------------------------------------------------------------------
def test_rotating_never_repeats_a_caller_and_uses_one_trunk_per_campaign(run):
    _, pairs, _ = run
    calls = attempts_of(pairs, ROTATING)
    assert len(calls) > 100
    by_campaign: dict[str, list] = defaultdict(list)
    for ev, who in calls:
        by_campaign[who.campaign].append(ev)
    for evs in by_campaign.values():
        assert len({ev.caller for ev in evs}) == len(evs)
        assert len({(ev.switch, ev.trunk) for ev in evs}) == 1


def test_rotating_callers_look_like_mobile_numbers(run):
    sim, pairs, _ = run
    cc = sim.scenario.network.country_code
    for ev, _ in attempts_of(pairs, ROTATING):
        assert ev.caller.startswith(cc) and len(ev.caller) == len(cc) + 11


def test_neighbour_callers_copy_all_but_the_last_four_digits_of_the_callee(run):
    _, pairs, _ = run
    calls = attempts_of(pairs, NEIGHBOUR)
    assert len(calls) > 50
    for ev, _ in calls:
        assert ev.caller != ev.callee and ev.caller[:-4] == ev.callee[:-4]


def test_interconnect_trunk_carries_people_and_the_neighbour_campaign(run):
    _, pairs, _ = run
    people = {(ev.switch, ev.trunk) for ev, _ in attempts_of(pairs, INTERCONNECT)}
    robots = {(ev.switch, ev.trunk) for ev, _ in attempts_of(pairs, NEIGHBOUR)}
    assert len(people) == 1 and robots == people
    callers = [ev.caller for ev, _ in attempts_of(pairs, INTERCONNECT)]
    assert len(set(callers)) > 30 and len({c[:5] for c in callers}) > 5  # diverse ranges


def test_pool_numbers_sit_in_one_block_on_one_trunk_a_handful_of_calls_each(run):
    _, pairs, _ = run
    calls = attempts_of(pairs, POOL)
    per_number = Counter(ev.caller for ev, _ in calls)
    assert len(per_number) > 20
    assert len({n[:-4] for n in per_number}) == 1
    assert len({(ev.switch, ev.trunk) for ev, _ in calls}) == 1
    assert max(per_number.values()) <= 8


def test_pool_block_size_is_a_parameter():
    scenario = replace(Scenario.small(), pools=NumberPools(numbers=50, block_size=1000))
    sim = Simulation(scenario, seed=SEED, start_ts=START)
    pool = next(d for d in sim.dialers if isinstance(d, PoolCampaign))
    numbers = [p.number for p in pool.phones]
    assert len(set(numbers)) == 50 and len({n[:-3] for n in numbers}) == 1
    with pytest.raises(ValueError):
        line_digits(5000)
    assert len(set(block_numbers("86171123", 100, 30, random.Random(1)))) == 30


def test_new_robots_are_unanswered_short_and_dial_dead_numbers(run):
    sim, pairs, _ = run
    for population in (ROTATING, NEIGHBOUR, POOL):
        attempts, answered, talk = outcome_stats(pairs, population)
        dead = sum(1 for ev, _ in attempts_of(pairs, population)
                   if not sim.space.is_allocated(ev.callee)) / attempts
        assert attempts > 50 and answered < 0.35, population
        assert sorted(talk)[len(talk) // 2] < 15, population
        assert dead > 0.02, population


def test_robot_campaigns_vary_their_attestation():
    sim = Simulation(Scenario.campaigns(), seed=SEED, start_ts=START)
    attests = {d.attest for d in sim.dialers if isinstance(d, (RotatingCampaign,
                                                                 NeighbourCampaign))}
    attests |= {d.phones[0].attest for d in sim.dialers if isinstance(d, PoolCampaign)}
    assert len(attests) >= 3 and attests != {"C"}


# --- legitimate look-alikes ------------------------------------------------------------------
def test_otp_calls_are_short_but_answered_and_each_customer_called_once(run):
    _, pairs, _ = run
    attempts, answered, talk = outcome_stats(pairs, OTP)
    assert attempts > 50 and answered > 0.8
    assert talk and all(15 <= t <= 40 for t in talk)
    callees = [ev.callee for ev, _ in attempts_of(pairs, OTP)]
    assert len(set(callees)) == len(callees)
    callers = {ev.caller for ev, _ in attempts_of(pairs, OTP)}
    assert len(callers) > 1 and len({c[:-4] for c in callers}) == 1


def test_pbx_dids_share_one_block_and_trunk_and_talk_like_people(run):
    _, pairs, _ = run
    calls = attempts_of(pairs, PBX)
    dids = {ev.caller for ev, _ in calls}
    assert len(dids) > 30 and len({n[:-4] for n in dids}) == 1
    assert len({(ev.switch, ev.trunk) for ev, _ in calls}) == 1
    assert all(ev.trunk.startswith("tk-ent-") for ev, _ in calls)
    attempts, answered, talk = outcome_stats(pairs, PBX)
    assert answered > 0.55 and sorted(talk)[len(talk) // 2] > 60
    pairs_called = Counter((ev.caller, ev.callee) for ev, _ in calls)
    assert any(n > 1 for n in pairs_called.values())  # repeat callees


def test_a_call_center_shares_an_enterprise_trunk(run):
    _, pairs, _ = run
    bank = [ev for ev, who in pairs if ev.kind == "attempt" and who.population == "call_center"
            and who.campaign == "bank"]
    assert len({ev.caller for ev in bank}) >= 2
    assert len({ev.trunk for ev in bank}) == 1 and bank[0].trunk.startswith("tk-ent-")


def test_campaigns_scenario_has_several_of_each_robot_and_every_look_alike():
    sim, pairs = labelled(scenario=Scenario.campaigns(), hours=1)
    campaigns = defaultdict(set)
    for ev, who in pairs:
        if ev.kind == "attempt":
            campaigns[who.population].add(who.campaign)
    assert len(campaigns[ROTATING]) >= 2 and len(campaigns[NEIGHBOUR]) >= 2
    assert len(campaigns[POOL]) >= 2
    for population in (PBX, OTP, INTERCONNECT, "call_center"):
        assert campaigns[population], population
    assert "campaigns" in simulator.SCENARIOS
    trunks = defaultdict(set)
    for ev, who in pairs:
        trunks[who.population].add(ev.trunk)
    assert trunks[ROTATING] & trunks[INTERCONNECT]  # one campaign hides among people
    assert {ev.proto for ev, who in pairs if who.population == NEIGHBOUR} == {"sip", "isup"}


# --- the CLI's per-call truth file -----------------------------------------------------------
class FakeProducer:
    def __init__(self, config: dict) -> None:
        self.messages: list[bytes] = []

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery=None) -> None:
        self.messages.append(value)

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def flush(self, timeout: float = 0.0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


def test_simulate_writes_per_call_truth_when_asked(monkeypatch, tmp_path):
    monkeypatch.setattr(confluent_kafka, "Producer", FakeProducer)
    parser = argparse.ArgumentParser()
    simulator.add_arguments(parser)
    calls, numbers = tmp_path / "calls.jsonl", tmp_path / "truth.jsonl"
    args = parser.parse_args(["--scenario", "small", "--fast", "--duration", "3600",
                              "--history-hours", "2", "--truth", str(numbers),
                              "--call-truth", str(calls), "--quiet"])
    assert simulator.run(args, Settings(home=tmp_path)) == 0
    per_call = read_call_truth(calls)
    owners = {t.number: t for t in read_truth(numbers)}
    assert per_call and len({c.call_id for c in per_call}) == len(per_call)
    assert {c.caller for c in per_call} == set(owners)
    for c in per_call:
        assert c.spoofed == (owners[c.caller].population != c.population
                             or owners[c.caller].campaign != c.campaign)
