"""Creates the catalog's topics idempotently (confluent-kafka admin client)."""

from __future__ import annotations

import time
from typing import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from services.settings import Settings
from streams.topics import CATALOG, TopicSpec

POLL_S = 0.5


def wait_for_broker(settings: Settings, timeout: float = 60.0) -> None:
    admin = AdminClient(settings.kafka_client_config())
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=2)
            return
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no Kafka broker answers at {settings.kafka_bootstrap}: "
                                   f"{exc}") from None
            time.sleep(POLL_S)


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec] = CATALOG,
                  timeout: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    wait_for_broker(settings, timeout)
    admin = AdminClient(settings.kafka_client_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [NewTopic(s.name, s.partition_count(settings.topic_partitions),
                       settings.topic_replication, config=s.configs())
              for s in specs if s.name not in existing]
    if not wanted:
        return []
    created: list[str] = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created
