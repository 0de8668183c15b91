import pytest

from services.cli import build_parser, main
from services.watch import format_decision
from streams.schema import Decision

SUBCOMMANDS = ["broker", "topics", "worker", "simulate", "eval", "bench", "watch", "policy", "run", "stop",
               "api", "switches", "allow", "feedback", "appeal", "number", "source", "campaigns",
               "whatif", "audit",
               "token", "switch-adapter"]


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


def test_token_create_works_locally_without_an_api(tmp_path, monkeypatch, capsys):
    from services.api.auth import TokenStore

    monkeypatch.setenv("DIALGUARD_HOME", str(tmp_path))
    monkeypatch.delenv("DIALGUARD_API_TOKEN", raising=False)  # no API token: local by default
    assert main(["token", "create", "first-admin", "--role", "admin"]) == 0
    token = capsys.readouterr().out.strip()
    store = TokenStore(tmp_path / "api" / "tokens.json")
    assert store.authenticate(token).role == "admin"
    assert main(["token", "revoke", "first-admin", "--local"]) == 0
    assert store.authenticate(token) is None


def test_client_commands_say_clearly_when_no_token_is_set(monkeypatch, capsys):
    monkeypatch.delenv("DIALGUARD_API_TOKEN", raising=False)
    assert main(["policy", "show"]) == 1
    assert "no API token" in capsys.readouterr().err


def test_the_token_can_come_from_a_file_or_the_environment_not_only_argv(tmp_path, monkeypatch,
                                                                         capsys):
    """--token is visible to every local user in ps; --token-file / DIALGUARD_API_TOKEN_FILE
    and DIALGUARD_API_TOKEN are not, and --help says so."""
    import os

    from services.control_cli import _client
    from services.settings import Settings

    secret = tmp_path / "token"
    secret.write_text("tok-from-file-0123456789\n")
    os.chmod(secret, 0o600)
    monkeypatch.delenv("DIALGUARD_API_TOKEN", raising=False)
    args = build_parser().parse_args(["policy", "show", "--token-file", str(secret)])
    assert _client(args, Settings.from_env(environ={})).token == "tok-from-file-0123456789"
    args = build_parser().parse_args(["policy", "show"])
    settings = Settings.from_env(environ={"DIALGUARD_API_TOKEN_FILE": str(secret)})
    assert _client(args, settings).token == "tok-from-file-0123456789"
    settings = Settings.from_env(environ={"DIALGUARD_API_TOKEN": "tok-env"})
    assert _client(args, settings).token == "tok-env"
    os.chmod(secret, 0o644)
    assert main(["policy", "show", "--token-file", str(secret)]) != 0
    assert "readable by other users" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["policy", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--token-file" in help_text and "Visible to every user of this machine in ps" in \
        help_text
