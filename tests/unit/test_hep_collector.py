"""The HEP collector's own guards (no broker: a producer stub that refuses like librdkafka)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.ingest.hep_collector import HepCollector
from services.ingest.sink import INGEST_DELIVERY_FAILED, EventSink
from services.settings import Settings


class RefusingProducer:
    def produce(self, topic: str, **kwargs: Any) -> None:
        raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))

    def poll(self, timeout: float = 0) -> int:
        return 0


def test_a_dead_letter_the_producer_refuses_is_counted_not_raised():
    settings = Settings.from_env(environ={})
    sink = EventSink(settings, "hep", progress=None, producer=RefusingProducer())
    collector = HepCollector(settings, sink)
    before = INGEST_DELIVERY_FAILED.labels("hep")._value.get()
    collector.datagram(b"GARBAGE, not HEP")  # would be dead-lettered: the producer refuses
    assert INGEST_DELIVERY_FAILED.labels("hep")._value.get() == before + 1


@pytest.mark.parametrize("name, value", [("DIALGUARD_HEP_TCP_MAX_FRAME_BYTES", "70000"),
                                         ("DIALGUARD_HEP_TCP_MAX_FRAME_BYTES", "5"),
                                         ("DIALGUARD_HEP_TCP_MAX_CONNECTIONS", "0")])
def test_settings_out_of_range_fail_clearly_at_start(name, value):
    sink = EventSink(Settings.from_env(environ={}), "hep", progress=None,
                     producer=RefusingProducer())
    with pytest.raises(ValueError, match=name):
        HepCollector(Settings.from_env(environ={name: value}), sink)
