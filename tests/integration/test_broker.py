"""The embedded broker and topic creation against a real Kafka (no mocks)."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from services.admin import ensure_topics
from services.broker import META_FILE, EmbeddedBroker
from services.settings import Settings
from streams.topics import CATALOG, DAY_MS, TopicSpec
from tests.integration.conftest import TEST_PARTITIONS

pytestmark = pytest.mark.integration

CLIENT_TIMEOUT_S = 10.0
#: How long a reader keeps polling for records it expects (a fresh consumer needs a moment).
READ_WAIT_S = 20.0
POLL_S = 0.5


def scratch_topic() -> TopicSpec:
    """A topic of the test's own, so records never reach the worker tests' catalog topics."""
    return TopicSpec(f"test.scratch.{uuid.uuid4().hex[:8]}", 1, "delete", DAY_MS, "test", "bytes")


def produce(settings: Settings, topic: str, key: bytes, value: bytes) -> None:
    producer = Producer({**settings.kafka_client_config(), "acks": "all"})
    producer.produce(topic, key=key, value=value)
    assert producer.flush(CLIENT_TIMEOUT_S) == 0, "record not acknowledged"


def read_from_start(settings: Settings, topic: str, expected: int = 1) -> list[Message]:
    """Partition 0 of ``topic`` from its first offset (assign: no group rebalance to wait for)."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": uuid.uuid4().hex,
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    seen: list[Message] = []
    try:
        for _ in range(int(READ_WAIT_S / POLL_S)):
            seen += [m for m in consumer.consume(100, timeout=POLL_S) if m.error() is None]
            if len(seen) >= expected:
                break
    finally:
        consumer.close()
    return seen


def test_catalog_topics_exist_with_partitions_and_configs(broker_settings: Settings) -> None:
    admin = AdminClient(broker_settings.kafka_client_config())
    topics = admin.list_topics(timeout=CLIENT_TIMEOUT_S).topics
    for spec in CATALOG:
        assert spec.name in topics, spec.name
        assert len(topics[spec.name].partitions) == spec.partition_count(TEST_PARTITIONS)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in CATALOG]
    for resource, future in admin.describe_configs(resources).items():
        spec = next(s for s in CATALOG if s.name == resource.name)
        actual = future.result(timeout=CLIENT_TIMEOUT_S)
        for key, value in spec.configs().items():
            assert actual[key].value == value, (spec.name, key)


def test_ensure_topics_is_idempotent(broker_settings: Settings) -> None:
    assert ensure_topics(broker_settings) == []
    assert ensure_topics(broker_settings, CATALOG[:2]) == []


def test_ensure_topics_creates_only_the_missing(broker_settings: Settings) -> None:
    extra = scratch_topic()
    assert ensure_topics(broker_settings, [CATALOG[0], extra]) == [extra.name]


def test_produce_and_consume_round_trip(broker_settings: Settings) -> None:
    topic = scratch_topic()
    ensure_topics(broker_settings, [topic])
    produce(broker_settings, topic.name, b"caller", b"hello")
    [message] = read_from_start(broker_settings, topic.name)
    assert (message.key(), message.value()) == (b"caller", b"hello")


def test_data_survives_stop_and_start_and_wipe_removes_it(
        spare_broker: tuple[Settings, EmbeddedBroker], broker_settings: Settings,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings, broker = spare_broker
    assert settings.broker_port != broker_settings.broker_port  # beside the session broker
    broker.start()
    assert broker.status()["running"] and (broker.data / META_FILE).exists()
    topic = scratch_topic()
    assert ensure_topics(settings, [topic]) == [topic.name]
    produce(settings, topic.name, b"k", b"still here")

    broker.stop()
    assert not broker.status()["running"] and broker.pid() is None
    assert not broker.pid_file.exists()

    broker.start()
    assert [m.value() for m in read_from_start(settings, topic.name)] == [b"still here"]
    assert ensure_topics(settings, [topic]) == []  # the topic survived too
    capsys.readouterr()
    broker.start()  # second start: a no-op that says so
    assert "already running" in capsys.readouterr().out

    broker.wipe()
    assert not broker.data.exists()
    assert not broker.status()["running"]
