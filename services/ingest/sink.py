"""The one way ingest paths publish: events to ``signaling.events``, rejects to the DLQ.

Why one class: every source (HEP collector, pcap replay, ISUP probe records, CDR files) must
produce the same way (in batch records of up to ``DIALGUARD_INGEST_BATCH_EVENTS`` events of
one partition, placed where the caller's key hashes so the caller's owner worker sees it,
murmur2 like the Java client; acks=all and idempotent so a broker failover neither loses nor
doubles a record) and must account for every input record: published, dead-lettered with a reason, or
ignored on purpose (e.g. a SIP retransmission, an OPTIONS ping). The counts feed the progress
line, the closing summary and the ``dialguard_ingest_*`` metrics.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter as Tally
from typing import Any, TextIO

from confluent_kafka import KafkaException, Producer
from prometheus_client import Counter

from services.settings import Settings
from streams.schema import (DLQ_HEADER_DETAIL, DLQ_HEADER_REASON, DLQ_HEADER_SOURCE,
                            DLQ_HEADER_TOPIC, REASON_NUMBER, EventValidator, InvalidEvent,
                            SignalingEvent, encode_batch)
from services.ingest.replay_guard import DB_NAME, WHY_REPLAYED, PublishedEvents
from streams.batches import PartitionBatches
from streams.numbers import CALLER_TEXT_MAX, caller_class
from streams.sink import DLQ_MAX_DETAIL_BYTES, dlq_copy, partition_count, producer_config
from streams.topics import SIGNALING_DLQ, SIGNALING_EVENTS

log = logging.getLogger("dialguard.ingest")

FLUSH_TIMEOUT_S = 30.0
#: A progress line at most this often (wall seconds) while records flow.
PROGRESS_EVERY_S = 5.0

INGEST_EVENTS = Counter("dialguard_ingest_events_total",
                        "Signaling events published to signaling.events by ingest",
                        ["source", "kind"])
INGEST_DEAD = Counter("dialguard_ingest_dead_letters_total",
                      "Input records sent to the dead-letter topic by ingest, by reason",
                      ["source", "reason"])
INGEST_IGNORED = Counter("dialguard_ingest_ignored_total",
                         "Input records that carry no call event on purpose (retransmissions, "
                         "in-dialog requests, OPTIONS...), by why", ["source", "why"])
INGEST_DELIVERY_FAILED = Counter("dialguard_ingest_delivery_failures_total",
                                 "Records the broker did not acknowledge", ["source"])


def replay_sink(settings: Settings, source: str, again: bool = False) -> EventSink:
    """The sink of a file replay: events this host already published are skipped unless
    ``again`` (``--again``)."""
    published = None if again else PublishedEvents(settings.home / "ingest" / DB_NAME)
    return EventSink(settings, source, published=published)


class EventSink:
    """Publishes events and dead letters for one ingest ``source`` (e.g. ``hep``, ``cdr``).

    ``progress`` (a text stream, e.g. stderr) gets a one-line status every few seconds and a
    summary from :meth:`close`; pass None to keep quiet.
    """

    def __init__(self, settings: Settings, source: str, progress: TextIO | None = sys.stderr,
                 producer: Any | None = None, partitions: int | None = None,
                 published: PublishedEvents | None = None) -> None:
        self.source = source
        #: Events this host already published (file replays): skipped (replay_guard.py).
        self.published = published
        self.producer = producer if producer is not None else Producer(
            producer_config(settings), logger=log)
        #: Events per batch record (1: one event per record, for consumers that want that).
        self.batch_events = settings.ingest_batch_events
        self.batch_linger_s = settings.ingest_batch_linger_s
        self._partitions = partitions
        self.batches: PartitionBatches | None = None
        self._opened = 0.0
        self.progress = progress
        self.events: Tally[str] = Tally()
        self.dead: Tally[str] = Tally()
        self.ignored: Tally[str] = Tally()
        self.delivery_failures = 0
        self.started = time.monotonic()
        self._last_progress = self.started

    # -- outputs --------------------------------------------------------------------------
    def event(self, ev: SignalingEvent) -> None:
        """Publish one event: into the open batch record of its caller's partition, sent when
        full, after ``batch_linger_s``, or on :meth:`send_batches` / :meth:`flush`."""
        if self.published is not None and not self.published.first_time(ev):
            self.ignore(WHY_REPLAYED)
            return
        if self.batch_events <= 1:
            self._produce(SIGNALING_EVENTS.name, ev.key, ev.encode(), None)
        else:
            if self.batches is None:
                if self._partitions is None:
                    self._partitions = partition_count(self.producer, SIGNALING_EVENTS.name)
                self.batches = PartitionBatches(self._partitions, self.batch_events)
            full = self.batches.add(ev.key, ev)
            if full is not None:
                self._produce_batch(*full)
            elif self.batches.pending == 1:
                self._opened = time.monotonic()
            elif time.monotonic() - self._opened >= self.batch_linger_s:
                self.send_batches()
        self.events[ev.kind] += 1
        INGEST_EVENTS.labels(self.source, ev.kind).inc()
        self._maybe_progress()

    def checked_event(self, ev: SignalingEvent, validator: EventValidator, raw: bytes,
                      context: str) -> None:
        """Publish ``ev`` if the worker's own checks accept it, else dead-letter ``raw`` (the
        input it was made from) with ``context``: an odd input never reaches the worker as an
        event it would refuse."""
        try:
            validator.decode(ev.encode())
        except InvalidEvent as exc:
            if not (exc.reason == REASON_NUMBER and exc.detail.startswith("caller:")
                    and ev.caller_class is None):
                self.dead_letter(raw, exc.reason, f"{context}: {exc.detail}")
                return
            # A caller that is not a number (withheld, letters, too long) keeps its call:
            # the event goes out with a caller class, counted for its trunk only.
            ev.caller_class = caller_class(ev.caller)
            ev.caller = ev.caller[:CALLER_TEXT_MAX]
            self.checked_event(ev, validator, raw, context)
            return
        self.event(ev)

    def dead_letter(self, raw: bytes, reason: str, detail: str) -> None:
        """The original bytes, untouched, with why they could not become an event."""
        value, cut = dlq_copy(raw)  # an oversized input is cut, its size and digest kept
        headers = [(DLQ_HEADER_REASON, reason.encode()),
                   (DLQ_HEADER_DETAIL, detail.encode()[:DLQ_MAX_DETAIL_BYTES]),
                   (DLQ_HEADER_SOURCE, self.source.encode()),
                   (DLQ_HEADER_TOPIC, b"")] + cut
        self._produce(SIGNALING_DLQ.name, None, value, headers)
        self.dead[reason] += 1
        INGEST_DEAD.labels(self.source, reason).inc()
        log.debug("dead letter from %s: %s (%s)", self.source, reason, detail)
        self._maybe_progress()

    def ignore(self, why: str) -> None:
        """Count an input record that carries no call event by design."""
        self.ignored[why] += 1
        INGEST_IGNORED.labels(self.source, why).inc()

    def send_batches(self) -> None:
        """Send every open batch now (live collectors call it from their housekeeping, so
        a quiet minute never holds events back longer than the linger)."""
        if self.batches is not None:
            for partition, events in self.batches.drain():
                self._produce_batch(partition, events)

    def tick(self) -> None:
        """Housekeeping for live sources: send batches past their linger, serve delivery
        reports."""
        if self.batches is not None and self.batches.pending and \
                time.monotonic() - self._opened >= self.batch_linger_s:
            self.send_batches()
        self.producer.poll(0)

    # -- plumbing -------------------------------------------------------------------------
    def _produce_batch(self, partition: int, events: list[SignalingEvent]) -> None:
        self._produce(SIGNALING_EVENTS.name, None, encode_batch(events), None, partition)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.delivery_failures += 1
            INGEST_DELIVERY_FAILED.labels(self.source).inc()
            log.error("delivery to %s failed: %s", msg.topic(), err)

    def _produce(self, topic: str, key: bytes | None, value: bytes,
                 headers: list[tuple[str, bytes]] | None, partition: int = -1) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers,
                                      partition=partition, on_delivery=self._on_delivery)
                break
            except BufferError:
                self.producer.poll(0.1)  # local queue full: let librdkafka drain it
            except KafkaException as exc:
                log.error("cannot produce to %s: %s", topic, exc)
                raise
        self.producer.poll(0)

    def summary(self) -> str:
        took = time.monotonic() - self.started
        events = sum(self.events.values())
        parts = [f"{self.source}: {events} events published "
                 f"({', '.join(f'{k} {v}' for k, v in sorted(self.events.items())) or 'none'})",
                 f"{sum(self.dead.values())} dead-lettered"
                 + (f" ({', '.join(f'{k} {v}' for k, v in sorted(self.dead.items()))})"
                    if self.dead else ""),
                 f"{sum(self.ignored.values())} ignored"
                 + (f" ({', '.join(f'{k} {v}' for k, v in sorted(self.ignored.items()))})"
                    if self.ignored else ""),
                 f"in {took:.1f} s"]
        if self.delivery_failures:
            parts.append(f"{self.delivery_failures} NOT DELIVERED (see log)")
        return "; ".join(parts)

    def _maybe_progress(self) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            print(f"[ingest] {self.summary()}", file=self.progress, flush=True)

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> int:
        """Send open batches and wait for the broker's acks; returns how many records are
        still not acknowledged."""
        self.send_batches()
        return self.producer.flush(timeout)

    def close(self) -> str:
        """Flush and return (and print) the summary; raises if records were not delivered."""
        left = self.flush()
        if self.published is not None:
            if left or self.delivery_failures:
                self.published.forget()
            else:
                self.published.commit()
            self.published = None
        text = self.summary()
        if self.progress is not None:
            print(f"[ingest] done. {text}", file=self.progress, flush=True)
        if left or self.delivery_failures:
            raise RuntimeError(f"{left} records not flushed and {self.delivery_failures} "
                               f"delivery failures: {text}")
        return text
