"""What the micro-batch waits for (streams/sink.py epochs), with stub producers: every record
counts in the epoch it was produced in, on either producer, until its delivery report; and
decisions go out on a producer of their own (the real broker is in the integration tests)."""

from __future__ import annotations

from typing import Any

from services.settings import Settings
from streams.schema import Decision, ScoreRecord
from streams.sink import KafkaSink
from streams.topics import DECISIONS, SCORES


class Delivered:
    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic


class StubProducer:
    def __init__(self) -> None:
        self.produced: list[dict[str, Any]] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.produced.append({"topic": topic, **kwargs})

    def poll(self, timeout: float = 0) -> int:
        return 0

    def report(self, error: Any = None) -> None:
        """librdkafka's delivery reports, served at the next poll."""
        for record in self.produced:
            record["on_delivery"](error, Delivered(record["topic"]))
        self.produced = []


def sink() -> tuple[KafkaSink, StubProducer, StubProducer]:
    s = KafkaSink(Settings.from_env(environ={}, kafka_bootstrap="127.0.0.1:1"))
    s.producer, s.urgent = StubProducer(), StubProducer()  # type: ignore[assignment]
    return s, s.producer, s.urgent  # type: ignore[return-value]


def decision() -> Decision:
    return Decision(number="8613800138000", action="block", ttl_s=60, score=0.9, reasons=[],
                    policy="default", policy_version=1, decided_at=1.0, trigger_ts=1.0)


def test_decisions_go_out_on_their_own_producer_and_count_in_the_epoch():
    s, bulk, urgent = sink()
    s.decision(decision())
    s.score(ScoreRecord(number="8613800138000", ts=1.0, score=0.5, anomaly=0.5, prior=0.5,
                        classifier=None, features={}, action="", policy="default",
                        policy_version=1))
    assert [r["topic"] for r in urgent.produced] == [DECISIONS.name]
    assert [r["topic"] for r in bulk.produced] == [SCORES.name]
    first = s.mark()
    s.decision(decision())  # the next epoch's
    assert not s.delivered(first)
    bulk.report()
    assert not s.delivered(first)  # the decision of the first epoch is still out
    urgent.report()
    assert s.delivered(first) and s.mark().pending == 0


def test_a_failed_delivery_is_counted_and_leaves_its_epoch():
    s, bulk, _ = sink()
    s.source_batch(3, b"[]")
    epoch = s.mark()
    bulk.report(error="broker refused")
    assert s.delivered(epoch) and s.failures == 1
