"""A real Kafka broker for the test session, on free loopback ports, beside any running one."""

from __future__ import annotations

import socket

import pytest

from services.admin import ensure_topics
from services.broker import EmbeddedBroker
from services.settings import Settings

TEST_PARTITIONS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broker_for(home, partitions: int = TEST_PARTITIONS) -> tuple[Settings, EmbeddedBroker]:
    """Settings and a broker in ``home`` on fresh ports; jars shared with the default home."""
    port, controller = free_port(), free_port()
    settings = Settings.from_env(environ={}, home=home, broker_port=port,
                                 controller_port=controller,
                                 kafka_bootstrap=f"127.0.0.1:{port}",
                                 topic_partitions=partitions, broker_heap="512m")
    return settings, EmbeddedBroker(settings, libs_dir=Settings().kafka_dir / "libs")


@pytest.fixture(scope="session")
def broker_settings(tmp_path_factory):
    settings, broker = broker_for(tmp_path_factory.mktemp("kafka-home"))
    broker.start()
    try:
        ensure_topics(settings)
        yield settings
    finally:
        broker.stop()
