"""The worker's dead-letter path never raises into the agent (streams/sink.py dead_letter).

The producer here is a stub that fails the way librdkafka does (a full local queue raises
BufferError, a refused record KafkaException); the real broker's refusals are in
tests/integration/test_dead_letter_sink.py.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.settings import Settings
from streams import metrics
from streams.detector import Origin
from streams.schema import DLQ_HEADER_DETAIL, DLQ_HEADER_ORIGINAL_SIZE, DLQ_HEADER_SHA256
from streams.sink import DLQ_MAX_DETAIL_BYTES, DLQ_MAX_VALUE_BYTES, KafkaSink, dlq_copy

ORIGIN = Origin("signaling.events", 1, 42)


class FailingProducer:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.produced: list[dict[str, Any]] = []
        self.polls = 0

    def produce(self, topic: str, **kwargs: Any) -> None:
        if self.error is not None:
            raise self.error
        self.produced.append({"topic": topic, **kwargs})

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        return 0


def sink_with(producer: FailingProducer) -> KafkaSink:
    sink = KafkaSink(Settings.from_env(environ={}, kafka_bootstrap="127.0.0.1:1"))
    sink.producer = producer  # type: ignore[assignment]
    return sink


def failures(why: str) -> float:
    return metrics.DEAD_LETTER_FAILURES.labels(why)._value.get()


@pytest.mark.parametrize("error, why", [
    (BufferError("Local: Queue full"), metrics.DLQ_FAIL_BUFFER_FULL),
    (KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)), metrics.DLQ_FAIL_PRODUCE),
])
def test_a_dead_letter_that_cannot_be_produced_is_counted_not_raised(error, why):
    producer = FailingProducer(error)
    sink = sink_with(producer)
    before = failures(why)
    for _ in range(3):
        sink.dead_letter(b"x" * 10, "not_json", "bad", ORIGIN)
    assert failures(why) == before + 3


def test_a_long_value_is_cut_with_its_size_and_digest_and_a_short_one_is_untouched():
    raw = bytes(range(256)) * 1000
    value, headers = dlq_copy(raw)
    assert value == raw[:DLQ_MAX_VALUE_BYTES]
    assert dict(headers) == {DLQ_HEADER_ORIGINAL_SIZE: str(len(raw)).encode(),
                             DLQ_HEADER_SHA256: hashlib.sha256(raw).hexdigest().encode()}
    assert dlq_copy(b"short") == (b"short", [])

    producer = FailingProducer(None)
    sink_with(producer).dead_letter(raw, "not_json", "d" * 5000, ORIGIN)
    [record] = producer.produced
    assert record["value"] == value
    assert len(dict(record["headers"])[DLQ_HEADER_DETAIL]) == DLQ_MAX_DETAIL_BYTES
