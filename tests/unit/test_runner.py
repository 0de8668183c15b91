"""``dialguard run`` without a switch: everything else starts, the adapter goes log-only and the
banner says so (the real start with Kamailio is tests/integration/test_run.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services import runner
from services.kamailio_process import KamailioProcess
from services.settings import Settings
from services.system import ToolMissing


class _Proc:
    pid = 0


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(environ={}, home=tmp_path)


def test_kamailio_that_cannot_start_is_reported_not_raised(settings: Settings,
                                                           monkeypatch, capsys) -> None:
    def missing(self: KamailioProcess, timeout: float = 0.0) -> None:
        raise ToolMissing("`kamailio` is not installed and could not be installed")

    monkeypatch.setattr(KamailioProcess, "start", missing)
    proc, why = runner._start_kamailio(settings)
    assert proc is None
    assert why.startswith("`kamailio` is not installed")
    assert "kamailio not started" in capsys.readouterr().out
    assert not (settings.run_dir / "kamailio.pid").exists()


def test_without_a_switch_the_adapter_runs_log_only(settings: Settings, monkeypatch,
                                                    capsys) -> None:
    spawned: list[tuple[str, list[str]]] = []

    def spawn(_settings: Settings, name: str, args: list[str], to_terminal: bool) -> _Proc:
        spawned.append((name, args))
        return _Proc()

    monkeypatch.setattr(runner, "_spawn", spawn)
    monkeypatch.setattr(runner, "_start_kamailio", lambda _s: (None, "port 5060 taken"))
    procs: dict = {}
    runner._start_children(settings, procs, simulate=False, seed=1, scenario="default",
                           token="tok", token_path=settings.run_dir / "admin.token",
                           broker_log="broker.log")
    assert ("switch-adapter", ["switch-adapter", "--log-only"]) in spawned
    assert [name for name, _ in spawned] == ["worker", "api", "hep-collector", "switch-adapter"]
    assert list(procs) == ["worker", "api", "hep-collector", "switch-adapter"]
    banner = capsys.readouterr().out
    assert "LOG ONLY, no switch attached (port 5060 taken)" in banner
    assert "simulator   off" in banner


def test_with_a_switch_the_adapter_drives_it(settings: Settings, monkeypatch, capsys) -> None:
    spawned: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(runner, "_spawn",
                        lambda _s, name, args, to_terminal: spawned.append((name, args)) or _Proc())
    monkeypatch.setattr(runner, "_start_kamailio", lambda _s: (_Proc(), ""))
    procs: dict = {}
    runner._start_children(settings, procs, simulate=True, seed=1, scenario="default",
                           token="tok", token_path=settings.run_dir / "admin.token",
                           broker_log="broker.log")
    assert ("switch-adapter", ["switch-adapter"]) in spawned
    # Events from the embedded switch name the switch its adapter drives (trunk decisions).
    assert ("hep-collector", ["ingest", "hep", "--switch", settings.switch_name]) in spawned
    assert list(procs) == ["worker", "api", "hep-collector", "kamailio", "switch-adapter",
                           "simulator"]
    assert list(procs) == list(runner.CHILDREN)
    assert f"kamailio sip:127.0.0.1:{settings.kamailio_sip_port}" in capsys.readouterr().out
