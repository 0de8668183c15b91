"""Creates the catalog's topics idempotently (confluent-kafka admin client).

Run before every worker start (``make run``, ``dialguard topics``, the test session): creating
what exists is a no-op, so there is no "first run" special case. Existing topics are never
altered; a partition count that differs from the catalog is reported, not "fixed", because
repartitioning a keyed topic moves keys between workers.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from services.settings import Settings
from streams.topics import CATALOG, TopicSpec, min_insync_replicas

log = logging.getLogger("dialguard.admin")

DEFAULT_WAIT_S = 60.0
DEFAULT_ENSURE_TIMEOUT_S = 30.0
POLL_S = 0.5
#: One metadata request while waiting; short so the overall deadline is honoured.
PROBE_TIMEOUT_S = 2.0


#: How long :func:`watermarks` keeps asking while a partition's leadership settles.
WATERMARK_TIMEOUT_S = 15.0
#: Offset-query errors of a partition whose leader is being elected or has just moved.
_LEADERSHIP_ERRORS = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION,
                                KafkaError.LEADER_NOT_AVAILABLE,
                                KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT,
                                KafkaError.REQUEST_TIMED_OUT})


class BrokerUnavailable(RuntimeError):
    """No broker answered at the configured bootstrap servers in time."""


def _admin(settings: Settings) -> AdminClient:
    """An admin client whose librdkafka log lines go to Python logging, not raw stderr."""
    conf: dict[str, Any] = {**settings.kafka_client_config(),
                            "logger": logging.getLogger("dialguard.kafka")}
    return AdminClient(conf)


def _metadata(admin: AdminClient, timeout: float) -> ClusterMetadata:
    return admin.list_topics(timeout=timeout)


def wait_for_broker(settings: Settings, timeout: float = DEFAULT_WAIT_S) -> None:
    """Block until the cluster serves metadata; raise ``BrokerUnavailable`` after ``timeout``.

    Workers and tools start beside the broker, so a few seconds of "connection refused" are
    normal and not worth failing on.
    """
    admin = _admin(settings)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            _metadata(admin, timeout=max(min(PROBE_TIMEOUT_S, remaining), POLL_S))
            return
        except KafkaException as exc:
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(f"no Kafka broker answers at {settings.kafka_bootstrap} "
                                        f"after {timeout:.0f}s: {exc}") from None
            time.sleep(POLL_S)


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec] = CATALOG,
                  timeout: float = DEFAULT_ENSURE_TIMEOUT_S) -> list[str]:
    """Create the topics that do not exist yet and return their names (``[]`` if none).

    Each topic gets ``settings.topic_replication`` copies and the ``min.insync.replicas`` the
    catalog derives from it (``streams.topics.min_insync_replicas``), so acks=all means "held by
    two brokers" on a 3-node cluster. Returns only once the new topics have a leader for every
    partition, so a producer that starts right after does not race the controller. A topic created concurrently by someone
    else (TOPIC_ALREADY_EXISTS) counts as existing.
    """
    specs = list(specs)
    wait_for_broker(settings, timeout)
    admin = _admin(settings)
    existing = _metadata(admin, timeout).topics
    _report_partition_mismatches(settings, specs, existing)
    wanted = [NewTopic(s.name, s.partition_count(settings.topic_partitions),
                       settings.topic_replication,
                       config=s.configs(settings.topic_replication))
              for s in specs if s.name not in existing]
    if not wanted:
        return []
    created: list[str] = []
    futures = admin.create_topics(wanted, request_timeout=timeout, operation_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _wait_for_leaders(admin, {t.topic: t.num_partitions for t in wanted}, timeout)
    log.info("created topics on %s (replication %d, min.insync.replicas %d): %s",
             settings.kafka_bootstrap, settings.topic_replication,
             min_insync_replicas(settings.topic_replication), ", ".join(sorted(created)))
    return created


def watermarks(consumer: Consumer, tp: TopicPartition,
               timeout: float = WATERMARK_TIMEOUT_S) -> tuple[int, int]:
    """Low and high watermark of ``tp``, asked of the partition's leader (not cached).

    Why not ``get_watermark_offsets`` alone: right after a topic is created or a broker
    (re)starts, metadata may already name a leader that still answers NOT_LEADER_FOR_PARTITION
    for a moment; a control feed or ``make run`` must wait that out rather than die of it.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            marks = consumer.get_watermark_offsets(tp, timeout=PROBE_TIMEOUT_S, cached=False)
            if marks is not None:
                return marks
            error = f"no answer within {PROBE_TIMEOUT_S:.0f}s"
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() not in _LEADERSHIP_ERRORS and not err.retriable():
                raise
            error = err.str()
        if time.monotonic() >= deadline:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT,
                                            f"watermarks of {tp.topic}[{tp.partition}] not "
                                            f"known after {timeout:.0f}s: {error}"))
        time.sleep(POLL_S / 2)


def _report_partition_mismatches(settings: Settings, specs: list[TopicSpec],
                                 existing: dict[str, Any]) -> None:
    for spec in specs:
        if spec.name not in existing:
            continue
        want = spec.partition_count(settings.topic_partitions)
        have = len(existing[spec.name].partitions)
        if have != want:
            log.warning("topic %s has %d partitions, the catalog/settings say %d; left as it "
                        "is (repartitioning moves keys between workers)", spec.name, have, want)


def _wait_for_leaders(admin: AdminClient, partitions: dict[str, int], timeout: float) -> None:
    """Wait until each topic shows all its partitions with a leader in the metadata."""
    deadline = time.monotonic() + timeout
    while True:
        topics = _metadata(admin, PROBE_TIMEOUT_S).topics
        pending = [name for name, count in partitions.items()
                   if name not in topics or topics[name].error is not None
                   or len(topics[name].partitions) < count
                   or any(p.leader < 0 for p in topics[name].partitions.values())]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise BrokerUnavailable(f"topics without leaders after {timeout:.0f}s: "
                                    f"{', '.join(sorted(pending))}")
        time.sleep(POLL_S)
