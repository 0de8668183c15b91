"""An in-memory stand-in for confluent-kafka's Producer, for unit tests of ingest parsing.

Unit tests check what an ingest path would publish without a broker; the integration tests
(tests/integration/test_isup_cdr_ingest.py) check the same paths against a real one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from services.ingest.sink import EventSink
from services.settings import Settings
from streams.schema import DLQ_HEADER_DETAIL, DLQ_HEADER_REASON, SignalingEvent
from streams.topics import SIGNALING_DLQ, SIGNALING_EVENTS

#: The events topic's partitions as the recording sink assumes them (no broker to ask).
PARTITIONS = 8


@dataclass
class RecordingProducer:
    records: list[tuple[str, bytes | None, bytes, dict[str, bytes]]] = field(default_factory=list)
    sink: EventSink | None = None

    def produce(self, topic: str, value: bytes, key: bytes | None = None,
                headers: list[tuple[str, bytes]] | None = None, on_delivery: Any = None,
                partition: int = -1) -> None:
        self.records.append((topic, key, value, dict(headers or [])))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def events(self) -> list[SignalingEvent]:
        """Every event published so far, whether one per record or in batch records (the
        sink's open batches are sent first, as a worker would eventually read them)."""
        if self.sink is not None:
            self.sink.send_batches()
        out = []
        for t, _, v, _ in self.records:
            if t == SIGNALING_EVENTS.name:
                value = orjson.loads(v)
                out += [SignalingEvent(**e) for e in (value if isinstance(value, list)
                                                      else [value])]
        return out

    def dead(self) -> list[tuple[bytes, str, str]]:
        """(original bytes, reason, detail) of each dead letter."""
        return [(v, h[DLQ_HEADER_REASON].decode(), h[DLQ_HEADER_DETAIL].decode())
                for t, _, v, h in self.records if t == SIGNALING_DLQ.name]


def recording_sink(source: str, settings: Settings | None = None
                   ) -> tuple[EventSink, RecordingProducer]:
    producer = RecordingProducer()
    sink = EventSink(settings or Settings.from_env(environ={}), source, progress=None,
                     producer=producer, partitions=PARTITIONS)
    producer.sink = sink
    return sink, producer
