"""The framework's own ceiling for ``dialguard bench``: a plain Faust agent that does nothing.

It reads ``signaling.events`` like the worker (same broker settings, raw values, earliest
offset, a fresh app id) and only counts what it reads: records, and the events they carry
(``orjson.loads`` of each value, an array for a batch record). Its rate beside the worker's
shows how much of the worker's time is the framework's and how much is dialguard's.

Run by the bench as ``python -m services.bench_faust worker``; its counters are served on
``DIALGUARD_METRICS_PORT`` like a worker's, so the bench polls both the same way.
"""

from __future__ import annotations

import time

import faust
import orjson
from prometheus_client import Counter, Gauge, start_http_server

from services.settings import Settings
from streams.topics import SIGNALING_EVENTS

RECORDS = Counter("bench_faust_records_total", "Records a plain Faust agent read")
EVENTS = Counter("bench_faust_events_total", "Events in the records a plain Faust agent read")
FIRST = Gauge("bench_faust_first_record_seconds", "Wall time the agent got its first record")
LAST = Gauge("bench_faust_last_record_seconds", "Wall time the agent finished its last record")

settings = Settings.from_env()
settings.worker_dir.mkdir(parents=True, exist_ok=True)
app = faust.App(settings.app_id, broker=f"kafka://{settings.kafka_bootstrap}",
                store="memory://", key_serializer="raw", value_serializer="raw",
                consumer_auto_offset_reset="earliest", web_enabled=False,
                datadir=str(settings.worker_dir), topic_partitions=settings.topic_partitions)
topic = app.topic(SIGNALING_EVENTS.name, key_type=bytes, value_type=bytes)


@app.agent(topic)
async def count(stream: faust.StreamT) -> None:
    first = True
    async for value in stream:
        if first:
            FIRST.set(time.time())
            first = False
        decoded = orjson.loads(value)
        RECORDS.inc()
        EVENTS.inc(len(decoded) if isinstance(decoded, list) else 1)
        LAST.set(time.time())


@app.task
async def serve_metrics() -> None:
    start_http_server(settings.metrics_port, addr="127.0.0.1")
    print("metrics on", settings.metrics_port, flush=True)


if __name__ == "__main__":
    app.main()
