"""Publishes the worker's outputs (decisions, shadow decisions, score records, dead letters,
batch records of events re-keyed for the source stage, table changelogs) with confluent-kafka.

librdkafka batches and retries in its own threads, so producing from the event loop costs a
dictionary copy, not a round trip; the worker calls ``poll(0)`` once per micro-batch to serve
delivery reports and ``flush`` on shutdown so nothing buffered is lost.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from confluent_kafka import KafkaException, Producer

from services.log_limit import LogLimiter
from services.settings import Settings
from streams import metrics
from streams.detector import Origin
from streams.schema import (DLQ_HEADER_DETAIL, DLQ_HEADER_INDEX, DLQ_HEADER_OFFSET,
                            DLQ_HEADER_ORIGINAL_SIZE, DLQ_HEADER_PARTITION, DLQ_HEADER_REASON,
                            DLQ_HEADER_SHA256, DLQ_HEADER_SOURCE, DLQ_HEADER_TOPIC, Decision,
                            BATCH_MAX_EVENTS, ScoreRecord)
from streams.topics import DECISIONS, SCORES, SHADOW_DECISIONS, SIGNALING_DLQ, SOURCE_EVENTS

log = logging.getLogger(__name__)
FLUSH_TIMEOUT_S = 30.0
#: How long a commit waits for the broker to acknowledge outputs before giving up this time.
DELIVER_TIMEOUT_S = 10.0
METADATA_TIMEOUT_S = 10.0

#: Most bytes of a record's value the DLQ gets; a longer value is cut to this, with its
#: original size and SHA-256 in headers. Why: a record that passed the broker compressed can
#: be larger than the DLQ (or librdkafka's own message.max.bytes check, 1 MB, made before
#: compression) accepts; dead-lettering it whole failed with MSG_SIZE_TOO_LARGE and crashed the
#: agent on every retry. 64 KiB is well under the DLQ's max.message.bytes (1 MiB by default)
#: and keeps any plausible bad event whole.
DLQ_MAX_VALUE_BYTES = 64 * 1024
#: Most bytes of the ``dlq.detail`` header (a reason's text may quote the bad input).
DLQ_MAX_DETAIL_BYTES = 1024
#: A full local queue is waited on this long (seconds), this many times, before a dead letter
#: is given up (counted): the agent must not stall on a dead letter.
DLQ_BUFFER_WAIT_S = 0.1
DLQ_BUFFER_TRIES = 3
#: One log line per failure kind per this many seconds (the metric counts each one).
DLQ_LOG_EVERY_S = 60.0
_dlq_log = LogLimiter(log, DLQ_LOG_EVERY_S)


def dlq_copy(raw: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value the DLQ gets for ``raw`` and the headers that say what was cut: ``raw`` itself
    when it fits :data:`DLQ_MAX_VALUE_BYTES`, else its head, with the original size and digest
    (``dlq.original_size``, ``dlq.sha256``)."""
    if len(raw) <= DLQ_MAX_VALUE_BYTES:
        return raw, []
    return raw[:DLQ_MAX_VALUE_BYTES], [
        (DLQ_HEADER_ORIGINAL_SIZE, str(len(raw)).encode()),
        (DLQ_HEADER_SHA256, hashlib.sha256(raw).hexdigest().encode())]


def _dlq_failed(why: str, reason: str, error: object) -> None:
    """Count a dead letter that did not reach the DLQ and say so, once per kind a minute."""
    metrics.DEAD_LETTER_FAILURES.labels(why).inc()
    _dlq_log.error(why, "dead letter (%s) not written to %s: %s: %s", reason,
                   SIGNALING_DLQ.name, why, error)


def _on_dlq_delivery(err: Any, msg: Any) -> None:
    if err is not None:
        headers = dict(msg.headers() or [])
        _dlq_failed(metrics.DLQ_FAIL_DELIVERY,
                    headers.get(DLQ_HEADER_REASON, b"?").decode(errors="replace"), err)


def partition_count(producer: Any, topic: str) -> int:
    """The topic's partition count as the broker knows it: batch records must land on the
    partition their keys hash to there, whatever the settings say."""
    meta = producer.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise KafkaException(f"topic {topic} has no partitions on the broker "
                             f"({None if meta is None else meta.error}); create the topics "
                             "first (dialguard topics)")
    return len(meta.partitions)


def producer_config(settings: Settings) -> dict[str, Any]:
    """Durable, ordered per key, and partitioned like Java/aiokafka clients (murmur2)."""
    return {**settings.kafka_client_config(), "acks": "all", "enable.idempotence": True,
            "linger.ms": 5, "compression.type": "lz4", "partitioner": "murmur2_random"}


class Epoch:
    """Records handed to the producer between two marks (:meth:`KafkaSink.mark`): the
    micro-batch waits for the broker to acknowledge an epoch without stopping the producer
    (``streams.microbatch``), which a flush would."""

    __slots__ = ("sink", "pending")

    def __init__(self, sink: "KafkaSink") -> None:
        self.sink = sink
        self.pending = 0

    def delivery(self, err: Any, msg: Any) -> None:
        self.pending -= 1
        if err is not None:
            self.sink.failures += 1
            log.error("delivery to %s failed: %s", msg.topic(), err)

    def dead_letter_delivery(self, err: Any, msg: Any) -> None:
        self.pending -= 1
        _on_dlq_delivery(err, msg)


#: Decisions are what a switch waits for: they go out at once (no linger) on a producer of
#: their own, so they never queue behind the bulk of re-keyed batches, score records and
#: changelog records on the same broker connection.
DECISIONS_LINGER_MS = 0


class KafkaSink:
    def __init__(self, settings: Settings, source: str = "worker") -> None:
        self.producer = Producer(producer_config(settings), logger=log)
        self.urgent = Producer({**producer_config(settings), "linger.ms": DECISIONS_LINGER_MS},
                               logger=log)
        self.source = source
        self.failures = 0
        self.epoch = Epoch(self)

    def mark(self) -> Epoch:
        """Close the current epoch (every record produced so far) and return it."""
        epoch, self.epoch = self.epoch, Epoch(self)
        return epoch

    def delivered(self, epoch: Epoch) -> bool:
        """Whether the broker acknowledged every record of ``epoch`` (serves delivery reports,
        never waits)."""
        self.poll()
        return epoch.pending <= 0

    def _produce(self, topic: str, key: bytes | None, value: bytes,
                 headers: list[tuple[str, bytes]] | None = None, partition: int = -1,
                 producer: Producer | None = None) -> None:
        producer = producer or self.producer
        while True:
            try:
                epoch = self.epoch
                producer.produce(topic, value=value, key=key, headers=headers,
                                 partition=partition, on_delivery=epoch.delivery)
                epoch.pending += 1
                return
            except BufferError:
                producer.poll(0.1)  # local queue full: let librdkafka drain it
            except KafkaException as exc:
                log.error("cannot produce to %s: %s", topic, exc)
                raise

    def decision(self, decision: Decision) -> None:
        self._produce(DECISIONS.name, decision.number.encode(), decision.encode(),
                      producer=self.urgent)

    def shadow_decision(self, decision: Decision) -> None:
        """What a shadow candidate would decide: its own topic, so no switch can act on it."""
        self._produce(SHADOW_DECISIONS.name, decision.number.encode(), decision.encode())

    def source_layout(self) -> tuple[int, int]:
        """Re-keyed events go out in batch records of up to ``BATCH_MAX_EVENTS`` per partition
        of ``signaling.sources``, as many partitions as the broker says it has."""
        return partition_count(self.producer, SOURCE_EVENTS.name), BATCH_MAX_EVENTS

    def source_batch(self, partition: int, raw: bytes) -> None:
        """A batch record of events re-keyed by trunk and caller range, for the source stage
        (the number stage grouped them by the partition their keys hash to)."""
        self._produce(SOURCE_EVENTS.name, None, raw, partition=partition)

    def state(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        """A state written to a table's changelog topic (see ``streams.app.TableStore``)."""
        self._produce(topic, key, value, partition=partition)

    def deliver(self, timeout: float = DELIVER_TIMEOUT_S) -> bool:
        """Wait until the broker has every record produced so far (acks=all). False if some
        were still pending at ``timeout``: the caller must not treat them as durable."""
        started = time.monotonic()
        if self.urgent.flush(timeout) != 0:
            return False
        return self.producer.flush(max(timeout - (time.monotonic() - started), 0.0)) == 0

    def score(self, record: ScoreRecord) -> None:
        self._produce(SCORES.name, record.number.encode(), record.encode())

    def dead_letter(self, raw: bytes, reason: str, detail: str, origin: Origin) -> None:
        """Send ``raw`` (cut to :data:`DLQ_MAX_VALUE_BYTES`, see :func:`dlq_copy`) to the DLQ.

        Never raises: bad input must not stop the agent, and a dead letter that cannot be
        written (local queue full, refused by the client, or by the broker later) is counted
        in ``dialguard_dead_letter_failures_total{reason}`` and logged once per kind a minute.
        """
        value, cut = dlq_copy(raw)
        headers = [(DLQ_HEADER_REASON, reason.encode()),
                   (DLQ_HEADER_DETAIL, detail.encode()[:DLQ_MAX_DETAIL_BYTES]),
                   (DLQ_HEADER_SOURCE, self.source.encode()),
                   (DLQ_HEADER_TOPIC, origin.topic.encode()),
                   (DLQ_HEADER_PARTITION, str(origin.partition).encode()),
                   (DLQ_HEADER_OFFSET, str(origin.offset).encode()),
                   (DLQ_HEADER_INDEX, str(origin.index).encode())] + cut
        for attempt in range(DLQ_BUFFER_TRIES):
            try:
                epoch = self.epoch
                self.producer.produce(SIGNALING_DLQ.name, value=value, key=None, headers=headers,
                                      on_delivery=epoch.dead_letter_delivery)
                epoch.pending += 1
                return
            except BufferError as exc:
                if attempt + 1 == DLQ_BUFFER_TRIES:
                    _dlq_failed(metrics.DLQ_FAIL_BUFFER_FULL, reason, exc)
                    return
                self.producer.poll(DLQ_BUFFER_WAIT_S)  # local queue full: let it drain
            except KafkaException as exc:
                _dlq_failed(metrics.DLQ_FAIL_PRODUCE, reason, exc)
                return

    def poll(self) -> None:
        self.producer.poll(0)
        self.urgent.poll(0)

    def close(self) -> None:
        left = self.urgent.flush(FLUSH_TIMEOUT_S) + self.producer.flush(FLUSH_TIMEOUT_S)
        if left:
            log.error("%d records could not be delivered before shutdown", left)
