import argparse

from services.evaluate import add_arguments, run, run_one, summarise
from services.settings import Settings


def test_eval_scores_decisions_against_truth():
    result = run_one("small", seed=11, hours=3, settings=Settings.from_env({}))
    outcomes = list(result.outcomes.values())
    s = summarise("small", outcomes)
    assert s.robots > 0 and s.legit > 0
    assert s.robots_blocked >= 1 and s.legit_enforced == 0
    blocked = [o for o in outcomes if o.first_block is not None]
    assert all(o.robot for o in blocked)
    assert all(0 < o.attempts_before_block <= o.attempts for o in blocked)


def test_eval_command_prints_table_and_writes_plot(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--scenarios", "small", "--seeds", "5", "--hours", "2",
                              "--plot", str(tmp_path / "eval.png")])
    assert run(args, Settings.from_env({})) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "robocaller" in out and "small seed 5" in out
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"
