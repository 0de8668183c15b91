"""How the API publishes records: with backpressure, bounded in time, and honest about the result.

librdkafka keeps produced messages in a local queue (``queue.buffering.max.messages``, 100,000
by default) until their delivery report has been *served* by ``poll``/``flush``. A batch larger
than that queue used to make ``produce`` raise ``BufferError`` half way: the request failed
with a 500 although much of the batch was on its way, nothing was audited, and since nobody
served the delivery reports any more, the queue stayed full and every later write failed as
well, for as long as the process lived.

:class:`Writer` therefore waits for deliveries when the queue is full (``poll``), gives up at a
deadline (``api_write_timeout_s``) instead of blocking forever, and returns a
:class:`WriteResult` that says which records were confirmed and which were not, so the caller
can audit what was published and tell the client exactly that. Its :meth:`Writer.health` is
what ``/healthz`` reports about writes.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

from confluent_kafka import KafkaException, Producer

from services.settings import Settings
from streams.sink import producer_config

log = logging.getLogger(__name__)

#: How long one wait for delivery reports lasts while the local queue is full.
BACKPRESSURE_POLL_S = 0.1
#: How long ``/healthz`` may spend asking the broker for metadata after failed writes.
HEALTH_PROBE_TIMEOUT_S = 2.0
#: Failures kept per result for the client's answer (the count is always complete).
MAX_REPORTED_FAILURES = 100


@dataclass(frozen=True)
class Record:
    topic: str
    key: str
    value: bytes | None


@dataclass
class WriteResult:
    """What became of a batch: each record's landing place, or why it has none."""

    records: list[Record]
    #: ``(topic, partition, offset)`` per record index that the broker confirmed.
    landed: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    #: Error text per record index that was refused, failed or not confirmed in time.
    failed: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and len(self.landed) == len(self.records)

    def published(self) -> list[Record]:
        return [self.records[i] for i in sorted(self.landed)]

    def first_error(self) -> str:
        return next(iter(self.failed.values()), "")

    def failures(self, limit: int = MAX_REPORTED_FAILURES) -> list[dict[str, str]]:
        """The first ``limit`` failures, as ``{"topic", "key", "error"}`` for an answer."""
        return [{"topic": self.records[i].topic, "key": self.records[i].key, "error": err}
                for i, err in sorted(self.failed.items())[:limit]]


class RecordWriter(Protocol):
    def write(self, records: Iterable[Record]) -> WriteResult: ...

    def health(self) -> dict[str, Any]: ...


class Writer:
    """Produces batches through one long-lived idempotent producer (see the module doc)."""

    def __init__(self, settings: Settings, extra_config: Mapping[str, Any] | None = None
                 ) -> None:
        self.producer = Producer({**producer_config(settings), **(extra_config or {})})
        self.timeout_s = settings.api_write_timeout_s
        self._lock = threading.Lock()
        #: The last write's trouble (None once a write went through completely).
        self._last_error: str | None = None
        self._last_error_at = 0.0

    def write(self, records: Iterable[Record]) -> WriteResult:
        """Publish ``records`` in order; never raises for Kafka trouble, reports it instead."""
        result = WriteResult(list(records))
        deadline = time.monotonic() + self.timeout_s
        with self._lock:
            stopped_at: int | None = None
            for i, rec in enumerate(result.records):
                if not self._produce(i, rec, result, deadline):
                    stopped_at = i
                    break
            if stopped_at is not None:
                why = (f"not sent: the producer's local queue stayed full for "
                       f"{self.timeout_s:.0f}s (the broker is not taking records fast enough)")
                for i in range(stopped_at, len(result.records)):
                    result.failed.setdefault(i, why)
            self.producer.flush(max(0.0, deadline - time.monotonic()))
            for i in range(len(result.records)):
                if i not in result.landed and i not in result.failed:
                    result.failed[i] = (f"no delivery confirmation within {self.timeout_s:.0f}s "
                                        "(it may still arrive)")
            self._note(result)
        return result

    def _produce(self, i: int, rec: Record, result: WriteResult, deadline: float) -> bool:
        """Hand one record to librdkafka, waiting for room while its queue is full; False
        when the deadline passed without room."""

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                result.failed[i] = f"delivery failed: {err}"
            else:
                result.landed[i] = (msg.topic(), msg.partition(), msg.offset())

        while True:
            try:
                self.producer.produce(rec.topic, key=rec.key.encode(), value=rec.value,
                                      on_delivery=on_delivery)
                return True
            except BufferError:
                if time.monotonic() >= deadline:
                    return False
                # Serve delivery reports: that is what frees room in the local queue.
                self.producer.poll(BACKPRESSURE_POLL_S)
            except KafkaException as exc:
                result.failed[i] = f"refused: {exc.args[0] if exc.args else exc}"
                return True

    def _note(self, result: WriteResult) -> None:
        if result.ok:
            self._last_error = None
            return
        self._last_error = (f"{len(result.failed)} of {len(result.records)} records not "
                            f"published: {result.first_error()}")
        self._last_error_at = time.time()
        log.error("write incomplete: %s", self._last_error)

    def health(self) -> dict[str, Any]:
        """Whether writes work, for ``/healthz``. After a failed write, a probe (serve pending
        delivery reports, ask the broker for metadata) decides whether they work again, so a
        health check that takes the API out of rotation does not keep it out for ever."""
        if not self._lock.acquire(blocking=False):
            # A write is under way: report what is known rather than wait for it.
            return self._status()
        try:
            if self._last_error is not None:
                self.producer.poll(0)
                try:
                    self.producer.list_topics(timeout=HEALTH_PROBE_TIMEOUT_S)
                    reachable = True
                except KafkaException:
                    reachable = False
                if reachable and len(self.producer) == 0:
                    log.info("writes recovered (broker reachable, producer queue empty)")
                    self._last_error = None
            return self._status()
        finally:
            self._lock.release()

    def _status(self) -> dict[str, Any]:
        return {"ok": self._last_error is None, "queued": len(self.producer),
                **({"error": self._last_error, "since": self._last_error_at}
                   if self._last_error else {})}


class MemoryWriter:
    """Applies records straight to the views (like the worker's MemorySink): for tests and
    tools that run the API logic without a broker."""

    def __init__(self, views: Any) -> None:
        self.views = views
        self.offsets: dict[str, int] = {}
        self.written: list[Record] = []

    def write(self, records: Iterable[Record]) -> WriteResult:
        result = WriteResult(list(records))
        for i, rec in enumerate(result.records):
            offset = self.offsets.get(rec.topic, -1) + 1
            self.offsets[rec.topic] = offset
            self.written.append(rec)
            self.views.apply(rec.topic, rec.key, rec.value, time.time(), 0, offset)
            result.landed[i] = (rec.topic, 0, offset)
        return result

    def health(self) -> dict[str, Any]:
        return {"ok": True, "queued": 0}


__all__ = ["Record", "WriteResult", "RecordWriter", "Writer", "MemoryWriter",
           "MAX_REPORTED_FAILURES"]
