"""The embedded broker's generated files and bookkeeping, without starting Java."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.broker import (LOG4J2_PROPERTIES, BrokerError, EmbeddedBroker, parse_properties,
                             server_properties)
from services.settings import Settings


def settings_for(home: Path, port: int = 19092, controller: int = 19093) -> Settings:
    return Settings.from_env({}, home=home, broker_port=port, controller_port=controller)


def test_server_properties_single_node_kraft_on_loopback(tmp_path: Path) -> None:
    props = parse_properties(server_properties(19092, 19093, tmp_path / "data"))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["log.cleaner.enable"] == "true"  # the control topics are compacted
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr"):
        assert props[key] == "1"  # one node: anything higher and groups never form


def test_default_layout_lives_under_the_kafka_home(tmp_path: Path) -> None:
    broker = EmbeddedBroker(settings_for(tmp_path))
    kafka = tmp_path / "kafka"
    assert broker.libs == kafka / "libs"
    assert broker.data == kafka / "data"
    assert broker.run_dir == kafka / "run-19092"
    assert broker.bootstrap == "127.0.0.1:19092"


def test_write_config_uses_the_settings_ports_and_data_dir(tmp_path: Path) -> None:
    broker = EmbeddedBroker(settings_for(tmp_path, 24001, 24002), data_dir=tmp_path / "d")
    broker.write_config()
    props = parse_properties(broker.config.read_text())
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:24001,CONTROLLER://127.0.0.1:24002"
    assert props["log.dirs"] == str(tmp_path / "d")
    assert broker.log4j.read_text() == LOG4J2_PROPERTIES
    log4j = parse_properties(LOG4J2_PROPERTIES)
    assert log4j["rootLogger.level"] == "INFO"
    assert log4j["logger.statechange.level"] == "WARN"


def test_brokers_on_different_ports_do_not_share_files(tmp_path: Path) -> None:
    a = EmbeddedBroker(settings_for(tmp_path, 1, 2), data_dir=tmp_path / "a")
    b = EmbeddedBroker(settings_for(tmp_path, 3, 4), data_dir=tmp_path / "b")
    assert a.pid_file != b.pid_file and a.log != b.log and a.config != b.config
    assert a.data != b.data
    assert not a.formatted() and a.pid() is None


def test_libs_dir_can_be_shared(tmp_path: Path) -> None:
    broker = EmbeddedBroker(settings_for(tmp_path), libs_dir=tmp_path / "shared")
    assert broker.libs == tmp_path / "shared" and not broker.has_jars()


def test_a_stale_pid_file_is_not_a_running_broker(tmp_path: Path) -> None:
    broker = EmbeddedBroker(settings_for(tmp_path))
    broker.run_dir.mkdir(parents=True)
    broker.pid_file.write_text(f"{os.getpid()}\n")  # alive, but this is pytest, not Kafka
    assert broker.pid() is None
    broker.stop()  # must not signal pytest
    assert not broker.pid_file.exists()
    assert broker.status()["running"] is False


def test_stop_and_wipe_without_a_broker_are_quiet(tmp_path: Path) -> None:
    broker = EmbeddedBroker(settings_for(tmp_path))
    broker.stop()
    broker.data.mkdir(parents=True)
    broker.wipe()
    assert not broker.data.exists()


def test_fetch_without_maven_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    broker = EmbeddedBroker(settings_for(tmp_path))
    with pytest.raises(BrokerError, match="mvn"):
        broker.fetch()


def test_fetch_is_a_no_op_when_jars_are_present(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    libs = tmp_path / "libs"
    libs.mkdir()
    for jar in ("kafka_2.13-4.1.1.jar", "log4j-slf4j-impl-2.24.3.jar", "log4j-core-2.24.3.jar"):
        (libs / jar).touch()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # mvn would be missing
    EmbeddedBroker(settings_for(tmp_path), libs_dir=libs).fetch()


def test_broker_folders_are_owner_only(tmp_path: Path) -> None:
    """The data folder holds phone numbers: 0700, also when an older version left it 0755."""
    import stat

    broker = EmbeddedBroker(settings_for(tmp_path), data_dir=tmp_path / "kafka" / "data")
    broker.data.mkdir(parents=True)
    os.chmod(broker.data, 0o755)
    broker.write_config()
    for folder in (broker.data, broker.run_dir):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
