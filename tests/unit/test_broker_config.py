from pathlib import Path

from services.broker import EmbeddedBroker, server_properties
from services.settings import Settings


def test_server_properties_single_node_kraft_on_loopback(tmp_path: Path):
    text = server_properties(19092, 19093, tmp_path / "data")
    props = dict(line.split("=", 1) for line in text.splitlines() if line)
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path / "data")


def test_brokers_on_different_ports_do_not_share_files(tmp_path: Path):
    a = EmbeddedBroker(Settings.from_env({}, home=tmp_path, broker_port=1, controller_port=2),
                       data_dir=tmp_path / "a")
    b = EmbeddedBroker(Settings.from_env({}, home=tmp_path, broker_port=3, controller_port=4),
                       data_dir=tmp_path / "b")
    assert a.pid_file != b.pid_file and a.log != b.log and a.data != b.data
    assert not a.formatted() and a.pid() is None
