"""Prints decisions as switches will see them: one readable line per decision."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

from confluent_kafka import Consumer

from services.settings import Settings
from streams.schema import Decision
from streams.topics import DECISIONS

POLL_S = 0.5


def format_decision(d: Decision) -> str:
    when = datetime.fromtimestamp(d.trigger_ts, tz=timezone.utc).strftime("%H:%M:%S")
    dry = " DRY-RUN" if d.dry_run else ""
    return (f"[{when} event time] {d.action.upper():<10}{dry} {d.number:<16} "
            f"score {d.score:.2f} ttl {d.ttl_s}s | {'; '.join(d.reasons)}")


def watch(settings: Settings, from_beginning: bool = False, limit: int = 0,
          stop_after_s: float = 0.0) -> int:
    consumer = Consumer({**settings.kafka_client_config(),
                         "group.id": f"dialguard-watch-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest" if from_beginning else "latest",
                         "enable.auto.commit": False})
    consumer.subscribe([DECISIONS.name])
    seen = 0
    started = time.monotonic()
    try:
        while not limit or seen < limit:
            if stop_after_s and time.monotonic() - started > stop_after_s:
                break
            msg = consumer.poll(POLL_S)
            if msg is None or msg.error() or msg.value() is None:
                continue
            print(format_decision(Decision.decode(msg.value())), flush=True)
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
