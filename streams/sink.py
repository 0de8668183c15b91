"""Publishes the worker's outputs (decisions, shadow decisions, score records, dead letters,
events re-keyed for the source stage) with confluent-kafka.

librdkafka batches and retries in its own threads, so producing from the event loop costs a
dictionary copy, not a round trip; the worker calls ``poll(0)`` once per micro-batch to serve
delivery reports and ``flush`` on shutdown so nothing buffered is lost.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaException, Producer

from services.settings import Settings
from streams.batches import PartitionBatches
from streams.detector import Origin
from streams.schema import (DLQ_HEADER_DETAIL, DLQ_HEADER_INDEX, DLQ_HEADER_OFFSET, DLQ_HEADER_PARTITION,
                            DLQ_HEADER_REASON, DLQ_HEADER_SOURCE, DLQ_HEADER_TOPIC, Decision,
                            ScoreRecord, SourceEvent, encode_batch)
from streams.topics import DECISIONS, SCORES, SHADOW_DECISIONS, SIGNALING_DLQ, SOURCE_EVENTS

log = logging.getLogger(__name__)
FLUSH_TIMEOUT_S = 30.0
#: How long a commit waits for the broker to acknowledge outputs before giving up this time.
DELIVER_TIMEOUT_S = 10.0
METADATA_TIMEOUT_S = 10.0


def producer_config(settings: Settings) -> dict[str, Any]:
    """Durable, ordered per key, and partitioned like Java/aiokafka clients (murmur2)."""
    return {**settings.kafka_client_config(), "acks": "all", "enable.idempotence": True,
            "linger.ms": 5, "compression.type": "lz4", "partitioner": "murmur2_random"}


class KafkaSink:
    def __init__(self, settings: Settings, source: str = "worker") -> None:
        self.producer = Producer(producer_config(settings), logger=log)
        self.source = source
        self.failures = 0
        self.sources: PartitionBatches | None = None

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures += 1
            log.error("delivery to %s failed: %s", msg.topic(), err)

    def _produce(self, topic: str, key: bytes | None, value: bytes,
                 headers: list[tuple[str, bytes]] | None = None, partition: int = -1) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers,
                                      partition=partition, on_delivery=self._on_delivery)
                return
            except BufferError:
                self.producer.poll(0.1)  # local queue full: let librdkafka drain it
            except KafkaException as exc:
                log.error("cannot produce to %s: %s", topic, exc)
                raise

    def decision(self, decision: Decision) -> None:
        self._produce(DECISIONS.name, decision.number.encode(), decision.encode())

    def shadow_decision(self, decision: Decision) -> None:
        """What a shadow candidate would decide: its own topic, so no switch can act on it."""
        self._produce(SHADOW_DECISIONS.name, decision.number.encode(), decision.encode())

    def source_event(self, event: SourceEvent) -> None:
        """An accepted event re-keyed by its trunk or caller range, for the source stage:
        gathered into batch records per partition (sent when full or on ``flush_sources``)."""
        if self.sources is None:
            self.sources = PartitionBatches(self._partitions(SOURCE_EVENTS.name))
        full = self.sources.add(event.key.encode(), event.row())
        if full is not None:
            self._produce_batch(SOURCE_EVENTS.name, *full)

    def state(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        """A state written to a table's changelog topic (see ``streams.app.TableStore``)."""
        self._produce(topic, key, value, partition=partition)

    def flush_sources(self) -> int:
        """Send every open batch of re-keyed events. Returns how many events they held."""
        sent = 0
        if self.sources is not None:
            for partition, rows in self.sources.drain():
                self._produce_batch(SOURCE_EVENTS.name, partition, rows)
                sent += len(rows)
        return sent

    def deliver(self, timeout: float = DELIVER_TIMEOUT_S) -> bool:
        """Wait until the broker has every record produced so far (acks=all). False if some
        were still pending at ``timeout``: the caller must not treat them as durable."""
        self.flush_sources()
        return self.producer.flush(timeout) == 0

    def _produce_batch(self, topic: str, partition: int, rows: list[Any]) -> None:
        while True:
            try:
                self.producer.produce(topic, value=encode_batch(rows), partition=partition,
                                      on_delivery=self._on_delivery)
                return
            except BufferError:
                self.producer.poll(0.1)

    def _partitions(self, topic: str) -> int:
        """The topic's partition count as the broker knows it (what the agents consume)."""
        meta = self.producer.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise KafkaException(f"topic {topic} has no partitions on the broker "
                                 f"({None if meta is None else meta.error})")
        return len(meta.partitions)

    def score(self, record: ScoreRecord) -> None:
        self._produce(SCORES.name, record.number.encode(), record.encode())

    def dead_letter(self, raw: bytes, reason: str, detail: str, origin: Origin) -> None:
        headers = [(DLQ_HEADER_REASON, reason.encode()), (DLQ_HEADER_DETAIL, detail.encode()),
                   (DLQ_HEADER_SOURCE, self.source.encode()),
                   (DLQ_HEADER_TOPIC, origin.topic.encode()),
                   (DLQ_HEADER_PARTITION, str(origin.partition).encode()),
                   (DLQ_HEADER_OFFSET, str(origin.offset).encode()),
                   (DLQ_HEADER_INDEX, str(origin.index).encode())]
        self._produce(SIGNALING_DLQ.name, None, raw, headers)

    def poll(self) -> None:
        self.producer.poll(0)

    def close(self) -> None:
        left = self.producer.flush(FLUSH_TIMEOUT_S)
        if left:
            log.error("%d records could not be delivered before shutdown", left)
