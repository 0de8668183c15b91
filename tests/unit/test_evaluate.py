import argparse

import pytest

from services import evaluate
from services.evaluate import (CAMPAIGN_SETTLE_S, CampaignCalls, add_arguments, run, run_one,
                               summarise)
from services.settings import Settings
from services.simulator import SPOOFING_POPULATIONS, Scenario, Simulation
from streams.schema import Decision
from streams.scope import decision_key

SMALL_RUN_HOURS = 3


@pytest.fixture(scope="module")
def small_run():
    return run_one("small", seed=11, hours=SMALL_RUN_HOURS, settings=Settings.from_env({}))


def test_eval_scores_decisions_against_truth(small_run):
    outcomes = list(small_run.outcomes.values())
    s = summarise("small", outcomes)
    assert s.robots > 0 and s.legit > 0
    assert s.robots_blocked >= 1 and s.legit_enforced == 0
    blocked = [o for o in outcomes if o.first_block is not None]
    assert all(o.robot for o in blocked)
    assert all(0 < o.attempts_before_block <= o.attempts for o in blocked)


def test_per_number_table_leaves_out_spoofing_campaigns_and_borrowed_numbers(small_run):
    sim = Simulation(Scenario.small(), 11, evaluate.EPOCH)
    placed: dict[str, set] = {}
    for ev, who in sim.labelled_events(SMALL_RUN_HOURS * 3600):
        if ev.kind == "attempt":
            placed.setdefault(ev.caller, set()).add((who.population, who.campaign))
    shared = {n for n, actors in placed.items() if len(actors) > 1}
    assert shared  # rotating campaigns showed subscribers' numbers
    assert not shared & set(small_run.outcomes)
    assert not {o.population for o in small_run.outcomes.values()} & set(SPOOFING_POPULATIONS)
    assert small_run.numbers_left_out >= len(shared)


def test_every_call_is_scored_once_by_who_placed_it(small_run):
    groups = small_run.calls
    assert ("rotating", "rotating-0") in groups and groups[("rotating", "rotating-0")].robot
    assert not groups[("subscriber", "-")].robot
    robocalls = [g for (pop, _), g in groups.items() if pop == "robocaller"]
    assert sum(g.stopped for g in robocalls) > 0  # number blocks stop the robocallers' calls
    assert all(g.stopped == 0 for g in groups.values() if not g.robot)
    assert small_run.emergency_calls > 0 and small_run.emergency_stopped == 0
    assert small_run.decisions[("number", "block", False)] >= 1


def test_campaign_calls_count_late_calls_and_time_to_first_stop():
    d = Decision("x", "block", 600, 0.9, [], "p", 1, 0.0, 0.0)
    g = CampaignCalls("rotating", "rotating-0", True)
    g.add(100.0, None)
    g.add(100.0 + CAMPAIGN_SETTLE_S, d)  # not yet "after" the first ten minutes
    g.add(101.0 + CAMPAIGN_SETTLE_S, d)
    g.add(102.0 + CAMPAIGN_SETTLE_S, None)
    assert (g.calls, g.stopped, g.late_calls, g.late_stopped) == (4, 2, 2, 1)
    assert g.time_to_first_stop == CAMPAIGN_SETTLE_S and g.by_scope == {"number": 2}


def test_decisions_of_any_stage_and_scope_stop_calls_from_the_next_attempt(monkeypatch):
    """A stand-in for the source stage (the real one switched off): it publishes a trunk
    decision into the sink on the rotating campaign's first call; every later call of the
    campaign is stopped, that one not."""
    fold = evaluate.Detector.fold
    trunk = "tk-gw-rot-0"

    def fold_with_source_stage(self, ev, ctx=None):
        fold(self, ev, ctx)
        published = any(d.scope == "trunk" for d in self.sink.decisions)
        if ev.kind == "attempt" and ev.trunk == trunk and not published:
            target = f"{ev.switch}/{ev.trunk}"
            self.sink.decisions.append(Decision(
                decision_key("trunk", target), "block", 86_400, 0.99, ["test"], "default", 1,
                0.0, ev.ts, scope="trunk", target=target, switch=ev.switch))

    monkeypatch.setattr(evaluate.Detector, "fold", fold_with_source_stage)
    # The real source stage would publish its own decisions on the same trunk key.
    monkeypatch.setattr(evaluate.SourceDetector, "fold", lambda self, ev, ctx=None: None)
    result = run_one("small", seed=11, hours=1, settings=Settings.from_env({}))
    g = result.calls[("rotating", "rotating-0")]
    assert g.calls > 10 and g.stopped == g.calls - 1
    assert g.by_scope == {"trunk": g.calls - 1} and g.time_to_first_stop > 0
    assert result.decisions[("trunk", "block", False)] == 1
    assert all(x.stopped == 0 for x in result.calls.values() if not x.robot)


def test_eval_command_prints_tables_and_writes_plot(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--scenarios", "small", "--seeds", "5", "--hours", "2",
                              "--plot", str(tmp_path / "eval.png")])
    assert run(args, Settings.from_env({})) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "robocaller" in out and "small seed 5" in out
    for text in ("Per call, per population", "Per campaign", "rotating-0", "neighbour", "otp",
                 "pbx", "interconnect", "legitimate calls stopped: 0 of",
                 "emergency calls stopped: 0", "Decisions published, by scope", "trunk"):
        assert text in out, text
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"


def test_default_eval_set_includes_campaigns():
    assert "campaigns" in evaluate.DEFAULT_SCENARIOS
