"""Starts a real worker process against the test broker and reads what it publishes."""

from __future__ import annotations

import time
import uuid

import orjson
from pathlib import Path
from typing import Iterable

from confluent_kafka import Consumer, Producer

from services.broker import free_ports
from services.settings import Settings
from services.worker_process import WorkerProcess
from streams.schema import Decision, ScoreRecord, SignalingEvent
from streams.sink import producer_config
from streams.topics import DECISIONS, SCORES, SIGNALING_DLQ, SIGNALING_EVENTS, partition_for

START_TIMEOUT_S = 90.0
TEST_ENV = {"DIALGUARD_FLUSH_INTERVAL_S": "0.2", "DIALGUARD_CHECKPOINT_INTERVAL_S": "2",
            "DIALGUARD_WORKER_SESSION_TIMEOUT_S": "6", "DIALGUARD_WORKER_HEARTBEAT_S": "1"}


def free_port() -> int:
    return free_ports(1)[0]


class HarnessWorker(WorkerProcess):
    """A worker tuned for tests (short flush and checkpoint intervals) whose ``start`` returns
    only once it owns its partitions and serves metrics."""

    def __init__(self, settings: Settings, home: Path, app_id: str) -> None:
        super().__init__(settings, home, app_id, extra_env=TEST_ENV)

    def start(self) -> None:
        super().start()
        self.wait_ready(START_TIMEOUT_S)


def produce_events(settings: Settings, events: Iterable[SignalingEvent]) -> int:
    producer = Producer(producer_config(settings))
    n = 0
    for ev in events:
        while True:
            try:
                producer.produce(SIGNALING_EVENTS.name, key=ev.key, value=ev.encode())
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    return n


def produce_raw(settings: Settings, records: Iterable[tuple[bytes | None, bytes]]) -> None:
    producer = Producer(producer_config(settings))
    for key, value in records:
        producer.produce(SIGNALING_EVENTS.name, key=key, value=value)
    assert producer.flush(30) == 0


def events_in(message, partitions: int) -> list[dict]:
    """The events one record of ``signaling.events`` carries (one object, or a batch record),
    each checked to sit in the partition its caller's key hashes to (where its state lives)."""
    value = orjson.loads(message.value())
    events = value if isinstance(value, list) else [value]
    for ev in events:
        want = partition_for(ev["caller"].encode(), partitions)
        assert message.partition() == want, (ev["caller"], message.partition(), want)
    return events


class TopicReader:
    """Reads a topic from the beginning and keeps everything it saw."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = Consumer({**settings.kafka_client_config(),
                                  "group.id": f"test-{uuid.uuid4().hex[:8]}",
                                  "auto.offset.reset": "earliest",
                                  "enable.auto.commit": False})
        self.consumer.subscribe([topic])
        self.messages: list = []

    def poll_until(self, predicate, timeout: float, quiet_s: float = 0.0) -> bool:
        """Read until predicate(messages) holds (and nothing new came for quiet_s)."""
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            msgs = self.consumer.consume(1000, timeout=0.5)
            fresh = [m for m in msgs if not m.error()]
            if fresh:
                self.messages.extend(fresh)
                last_new = time.monotonic()
            if predicate(self.messages) and time.monotonic() - last_new >= quiet_s:
                return True
        return predicate(self.messages)

    def close(self) -> None:
        self.consumer.close()


def decisions_of(messages) -> list[Decision]:
    return [Decision.decode(m.value()) for m in messages if m.value() is not None]


def scores_of(messages) -> list[ScoreRecord]:
    return [ScoreRecord.decode(m.value()) for m in messages if m.value() is not None]


__all__ = ["HarnessWorker", "TopicReader", "events_in", "produce_events", "produce_raw", "decisions_of",
           "scores_of", "free_port", "DECISIONS", "SCORES", "SIGNALING_DLQ"]
