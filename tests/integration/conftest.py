"""A real Kafka broker for the test session, on free loopback ports, beside any running one.

Each test broker has its own home in pytest's tmp folder (data, config, log), so it never
touches the ``make run`` broker; the jars are shared with the default home so they are
downloaded once (``fetch`` runs Maven only if they are missing).
"""

from __future__ import annotations


from pathlib import Path
from typing import Iterator

import pytest

from services.admin import ensure_topics
from services.broker import EmbeddedBroker, free_ports
from services.settings import Settings

#: Fewer than the production default: fewer partitions, faster topic creation and rebalances.
TEST_PARTITIONS = 4
#: Test brokers hold little data; keep several of them affordable on a laptop.
TEST_BROKER_HEAP = "512m"


def shared_libs_dir() -> Path:
    """The default home's jar folder (where ``make jars`` / ``dialguard broker fetch`` put them)."""
    return Settings.from_env().kafka_dir / "libs"


def make_broker(home: Path, partitions: int = TEST_PARTITIONS) -> tuple[Settings, EmbeddedBroker]:
    """Settings and a (not yet started) broker with its home in ``home`` on fresh ports."""
    port, controller = free_ports(2)
    settings = Settings.from_env(environ={}, home=home, broker_port=port,
                                 controller_port=controller, kafka_bootstrap=f"127.0.0.1:{port}",
                                 topic_partitions=partitions, broker_heap=TEST_BROKER_HEAP)
    return settings, EmbeddedBroker(settings, libs_dir=shared_libs_dir())


@pytest.fixture(scope="session")
def broker_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a session broker that has every catalog topic."""
    settings, broker = make_broker(tmp_path_factory.mktemp("kafka-home"))
    try:
        broker.start()
        ensure_topics(settings)
        yield settings
    finally:
        broker.stop()


@pytest.fixture
def spare_broker(tmp_path: Path) -> Iterator[tuple[Settings, EmbeddedBroker]]:
    """A second, not yet started broker of the test's own; stopped and wiped afterwards."""
    settings, broker = make_broker(tmp_path / "home")
    try:
        yield settings, broker
    finally:
        broker.wipe()


@pytest.fixture(scope="module")
def model_broker_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A broker of the test module's own, for tests whose assertions depend on the scores the
    online model gives. A worker reads ``signaling.events`` from the beginning, and the
    session broker holds every earlier test's robots: after hundreds of them a robot no longer
    looks anomalous, so scores (and what they cross) would depend on which tests ran first."""
    settings, broker = make_broker(tmp_path_factory.mktemp("model-kafka-home"))
    try:
        broker.start()
        ensure_topics(settings)
        yield settings
    finally:
        broker.wipe()
