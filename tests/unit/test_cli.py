import pytest

from services.cli import build_parser, main
from services.watch import format_decision
from streams.schema import Decision

SUBCOMMANDS = ["broker", "topics", "worker", "simulate", "eval", "bench", "watch", "policy", "run", "stop"]


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_every_subcommand_explains_itself(sub, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([sub, "--help"])
    assert done.value.code == 0
    assert len(capsys.readouterr().out) > 60


def test_unknown_setting_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("DIALGUARD_BOOTSTRAP", "oops")
    assert main(["topics", "list"]) == 2
    assert "unknown setting DIALGUARD_BOOTSTRAP" in capsys.readouterr().err


def test_topics_list_prints_the_catalog(capsys):
    assert main(["topics", "list"]) == 0
    out = capsys.readouterr().out
    assert "signaling.events " in out and "control.policy" in out


def test_decision_line_is_readable():
    d = Decision(number="8617000000001", action="block", ttl_s=3600, score=0.93,
                 reasons=["41 attempts in 10 min", "score 0.93 >= block 0.85"], policy="default",
                 policy_version=2, decided_at=1.8e9, trigger_ts=1.8e9 - 5, dry_run=True)
    line = format_decision(d)
    assert "BLOCK" in line and "DRY-RUN" in line and "8617000000001" in line
    assert "score 0.93 >= block 0.85" in line
