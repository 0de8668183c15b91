"""The embedded broker's generated files and bookkeeping, without starting Java."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.broker import (LOG4J2_PROPERTIES, META_FILE, BrokerError, EmbeddedBroker,
                             LocalCluster, node_ports, parse_properties, quorum_voters,
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


def test_a_cluster_node_names_the_shared_quorum_and_replicates_internal_topics(
        tmp_path: Path) -> None:
    voters = quorum_voters([19093, 19103, 19113])
    assert voters == "1@127.0.0.1:19093,2@127.0.0.1:19103,3@127.0.0.1:19113"
    props = parse_properties(server_properties(19102, 19103, tmp_path / "d", node_id=2,
                                               voters=voters, cluster_size=3))
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == voters
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19102,CONTROLLER://127.0.0.1:19103"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.replication.factor"] == "3"
    # Topics created without their own (Faust's changelogs) still need two copies per ack.
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["transaction.state.log.min.isr"] == "2"


def test_single_node_config_has_no_cluster_defaults(tmp_path: Path) -> None:
    props = parse_properties(server_properties(19092, 19093, tmp_path / "data"))
    assert "default.replication.factor" not in props and "min.insync.replicas" not in props


def test_one_node_cluster_is_the_embedded_broker_unchanged(tmp_path: Path) -> None:
    """The default (`make run`, DIALGUARD_BROKER_NODES=1) keeps its folders, ports and config."""
    settings = settings_for(tmp_path)
    [node] = LocalCluster(settings).nodes
    single = EmbeddedBroker(settings)
    assert (node.data, node.run_dir, node.bootstrap) == (single.data, single.run_dir,
                                                         single.bootstrap)
    node.write_config()
    config = node.config.read_text()
    single.write_config()
    assert single.config.read_text() == config


def test_cluster_nodes_have_own_folders_and_ports_from_the_settings(tmp_path: Path) -> None:
    settings = Settings.from_env({"DIALGUARD_BROKER_NODES": "3"}, home=tmp_path,
                                 broker_port=19092, controller_port=19093)
    cluster = LocalCluster(settings)
    assert [n.node_id for n in cluster.nodes] == [1, 2, 3]
    assert cluster.bootstrap == "127.0.0.1:19092,127.0.0.1:19102,127.0.0.1:19112"
    assert [n.data for n in cluster.nodes] == [
        tmp_path / "kafka" / "cluster-3" / f"node-{k}" / "data" for k in (1, 2, 3)]
    assert len({n.pid_file for n in cluster.nodes}) == 3
    for node in cluster.nodes:
        node.write_config()
        props = parse_properties(node.config.read_text())
        assert props["controller.quorum.voters"] == \
            "1@127.0.0.1:19093,2@127.0.0.1:19103,3@127.0.0.1:19113"
    assert cluster.status() and all(not s["running"] for s in cluster.status())
    cluster.stop()  # nothing running: quiet


def test_overlapping_node_ports_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="overlapping"):
        node_ports(settings_for(tmp_path, 19092, 19102), 3)


def test_explicit_ports_must_match_the_node_count(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="3 nodes need 3"):
        LocalCluster(settings_for(tmp_path), 3, ports=[(1, 2)])
    with pytest.raises(BrokerError, match="at least one"):
        LocalCluster(settings_for(tmp_path), 0)


def test_cluster_id_is_read_from_the_formatted_storage(tmp_path: Path) -> None:
    broker = EmbeddedBroker(settings_for(tmp_path))
    assert broker.cluster_id() is None
    broker.data.mkdir(parents=True)
    (broker.data / META_FILE).write_text("#\nnode.id=1\ncluster.id=abcDEF\nversion=1\n")
    assert broker.cluster_id() == "abcDEF"


def test_broker_command_takes_a_node_count() -> None:
    from services.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["broker", "start", "--nodes", "3"]).nodes == 3
    assert parser.parse_args(["broker", "stop"]).nodes is None  # DIALGUARD_BROKER_NODES
