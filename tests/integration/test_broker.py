import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from services.admin import ensure_topics
from streams.topics import CATALOG
from tests.integration.conftest import TEST_PARTITIONS, broker_for

pytestmark = pytest.mark.integration


def test_catalog_topics_exist_with_partitions_and_cleanup(broker_settings):
    admin = AdminClient(broker_settings.kafka_client_config())
    topics = admin.list_topics(timeout=10).topics
    for spec in CATALOG:
        assert spec.name in topics
        assert len(topics[spec.name].partitions) == spec.partition_count(TEST_PARTITIONS)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in CATALOG]
    for res, fut in admin.describe_configs(resources).items():
        spec = next(s for s in CATALOG if s.name == res.name)
        assert fut.result()["cleanup.policy"].value == spec.cleanup_policy


def test_topic_creation_is_idempotent(broker_settings):
    assert ensure_topics(broker_settings) == []


def roundtrip(settings, topic, value):
    p = Producer(settings.kafka_client_config())
    p.produce(topic, value=value)
    assert p.flush(10) == 0
    return read_all(settings, topic)


def read_all(settings, topic):
    c = Consumer({**settings.kafka_client_config(), "group.id": uuid.uuid4().hex,
                  "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    seen = []
    for _ in range(40):
        seen += [m.value() for m in c.consume(100, timeout=0.5) if not m.error()]
        if seen:
            break
    c.close()
    return seen


def test_data_survives_stop_and_start_and_wipe_removes_it(tmp_path):
    settings, broker = broker_for(tmp_path / "home")
    broker.start()
    try:
        assert broker.status()["running"]
        assert roundtrip(settings, "survivor", b"still here") == [b"still here"]
        broker.stop()
        assert not broker.status()["running"]
        broker.start()
        assert read_all(settings, "survivor") == [b"still here"]
    finally:
        broker.wipe()
    assert not broker.data.exists()
