"""The worker's dead-letter path (streams/sink.py) against the session's real broker.

A record far over the DLQ's max message size that compressed well enough to pass the broker
once used to crash the agent when dead-lettered (``MSG_SIZE_TOO_LARGE``, restart after 5 s,
150 of them stalled processing ~12 minutes and none reached the DLQ). Now a truncated copy
arrives with the original size and digest in its headers, and a dead letter the broker refuses
is counted, never raised.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Iterator

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from services.settings import Settings
from streams import metrics
from streams.detector import Origin
from streams.schema import DLQ_HEADER_ORIGINAL_SIZE, DLQ_HEADER_REASON, DLQ_HEADER_SHA256
from streams.sink import DLQ_MAX_VALUE_BYTES, KafkaSink
from streams.topics import SIGNALING_DLQ
from tests.integration.worker_harness import TopicReader

pytestmark = pytest.mark.integration

READ_TIMEOUT_S = 60.0
#: The DLQ's max.message.bytes in these tests: small next to the 1 MiB default, still well
#: above the truncated copy.
SMALL_DLQ_MAX_BYTES = 200_000
#: Records of the stall that issue 12 reported.
HUGE_RECORDS = 150
HUGE_RECORD_BYTES = 5_000_000


def set_dlq_max_bytes(settings: Settings, value: int | None) -> None:
    """Set (or, with None, reset to the broker default) the DLQ topic's max.message.bytes."""
    admin = AdminClient(settings.kafka_client_config())
    resource = ConfigResource("TOPIC", SIGNALING_DLQ.name)
    op = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    resource.add_incremental_config(ConfigEntry("max.message.bytes",
                                                str(value) if value is not None else None,
                                                incremental_operation=op))
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


@pytest.fixture
def small_dlq(broker_settings: Settings) -> Iterator[Settings]:
    set_dlq_max_bytes(broker_settings, SMALL_DLQ_MAX_BYTES)
    try:
        yield broker_settings
    finally:
        set_dlq_max_bytes(broker_settings, None)


def failures(why: str) -> float:
    return metrics.DEAD_LETTER_FAILURES.labels(why)._value.get()


def test_huge_compressible_records_are_dead_lettered_truncated_with_size_and_digest(small_dlq):
    marker = uuid.uuid4().hex.encode()
    sink = KafkaSink(small_dlq)
    reader = TopicReader(small_dlq, SIGNALING_DLQ.name)
    raws = [(marker + b" %05d " % i).ljust(HUGE_RECORD_BYTES, b"0")
            for i in range(HUGE_RECORDS)]
    try:
        for i, raw in enumerate(raws):
            sink.dead_letter(raw, "not_json", f"record {i}: not JSON",
                             Origin("signaling.events", 3, 1000 + i))  # never raises
        assert sink.producer.flush(30) == 0

        def mine(messages) -> list:
            return [m for m in messages if (m.value() or b"").startswith(marker)]

        reader.poll_until(lambda m: len(mine(m)) >= HUGE_RECORDS, READ_TIMEOUT_S)
        letters = mine(reader.messages)
        assert len(letters) == HUGE_RECORDS
        for msg in letters:
            headers = dict(msg.headers())
            i = int(msg.value()[len(marker) + 1:len(marker) + 6])
            assert msg.value() == raws[i][:DLQ_MAX_VALUE_BYTES]
            assert headers[DLQ_HEADER_REASON] == b"not_json"
            assert headers[DLQ_HEADER_ORIGINAL_SIZE] == str(HUGE_RECORD_BYTES).encode()
            assert headers[DLQ_HEADER_SHA256] == hashlib.sha256(raws[i]).hexdigest().encode()
        print(f"\n{HUGE_RECORDS} records of {HUGE_RECORD_BYTES} bytes: all in the DLQ as "
              f"{DLQ_MAX_VALUE_BYTES}-byte copies")
    finally:
        reader.close()
        sink.close()


def test_a_small_dead_letter_is_untouched(small_dlq):
    marker = uuid.uuid4().hex.encode()
    sink = KafkaSink(small_dlq)
    reader = TopicReader(small_dlq, SIGNALING_DLQ.name)
    try:
        sink.dead_letter(b"not json " + marker, "not_json", "x", Origin("signaling.events", 0, 1))
        assert sink.producer.flush(30) == 0
        assert reader.poll_until(
            lambda m: any(marker in (x.value() or b"") for x in m), READ_TIMEOUT_S)
        [msg] = [x for x in reader.messages if marker in (x.value() or b"")]
        assert msg.value() == b"not json " + marker
        assert DLQ_HEADER_ORIGINAL_SIZE not in dict(msg.headers())
    finally:
        reader.close()
        sink.close()


def test_a_dead_letter_the_broker_refuses_is_counted_not_raised(broker_settings):
    """A DLQ whose max.message.bytes is under even the truncated copy: the broker refuses it,
    the delivery error is counted and the caller carries on."""
    set_dlq_max_bytes(broker_settings, 1_000)
    sink = KafkaSink(broker_settings)
    try:
        before = failures("delivery_error")
        sink.dead_letter(os.urandom(20_000), "not_json", "x", Origin("signaling.events", 0, 1))
        sink.producer.flush(30)  # serves the delivery report
        assert failures("delivery_error") == before + 1
    finally:
        set_dlq_max_bytes(broker_settings, None)
        sink.close()
