"""The Faust worker: owns partitions of ``signaling.events`` and ``signaling.sources`` and runs
the two stages on them.

Layout follows faust-streaming's examples: the app, its topics and tables at module level, one
agent per stage, timers. The number stage (:class:`Detector`) folds events per caller and
re-keys each accepted event by its trunk and caller ranges onto ``signaling.sources``; the
source stage (:class:`SourceDetector`) owns those keys and decides on ranges and trunks. Both
stages run in every worker, each on the partitions Faust assigns it. Why the agent iterates ``stream.events()`` and writes the table itself:
Faust's RocksDB store routes a write to the partition of the *current event* (a ContextVar in
``faust/streams.py``), and on faust-streaming 0.15.3 ``take_events()`` never yields once the app
has a table (checked on this project's broker). So events are folded into memory one by one
(cheap: a dict update), and once per micro-batch each touched number's state is written once,
inside the context of the last event seen for that number, which lives in the same partition
because the topic is keyed by caller. One changelog record per number per batch, not per event.
"""

from __future__ import annotations

import logging
import ssl
import time
import weakref
from typing import Any

import faust
from faust.streams import _current_event  # see module docstring
from prometheus_client import start_http_server

from online_models.scorer import NuisanceScorer
from online_models.source_scorer import SourceScorer
from services.settings import Settings
from streams import metrics
from streams.control import ControlFeed, ControlState
from streams.detector import Detector, Origin
from streams.sink import KafkaSink
from streams.source_detector import SourceDetector
from streams.topics import SIGNALING_EVENTS, SOURCE_EVENTS

log = logging.getLogger("dialguard.worker")
CONTROL_CATCHUP_TIMEOUT_S = 15.0
TABLE_NAME = "caller-state"
SOURCE_TABLE_NAME = "source-state"
LAG_INTERVAL_S = 5.0

settings = Settings.from_env()


def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def _credentials(s: Settings) -> Any:
    """Faust (aiokafka) credentials mirroring ``Settings.kafka_client_config``."""
    if s.kafka_security_protocol == "PLAINTEXT":
        return None
    context = ssl.create_default_context(cafile=s.kafka_ssl_cafile or None) \
        if "SSL" in s.kafka_security_protocol else None
    if s.kafka_sasl_mechanism:
        return faust.SASLCredentials(username=s.kafka_sasl_username,
                                     password=s.kafka_sasl_password,
                                     mechanism=s.kafka_sasl_mechanism, ssl_context=context)
    return faust.SSLCredentials(context)


app = faust.App(
    settings.app_id,
    broker=_broker_url(settings.kafka_bootstrap),
    broker_credentials=_credentials(settings),
    store=settings.store,
    datadir=str(settings.worker_dir),
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.topic_replication,
    key_serializer="raw",
    value_serializer="raw",
    consumer_auto_offset_reset="earliest",
    web_host="127.0.0.1",
    web_port=settings.worker_web_port,
    web_in_thread=False,
)

events_topic = app.topic(SIGNALING_EVENTS.name, key_type=bytes, value_type=bytes,
                         partitions=settings.topic_partitions)
state_table = app.Table(TABLE_NAME, key_type=bytes, value_type=bytes, default=None,
                        partitions=settings.topic_partitions)
sources_topic = app.topic(SOURCE_EVENTS.name, key_type=bytes, value_type=bytes,
                          partitions=settings.topic_partitions)
source_table = app.Table(SOURCE_TABLE_NAME, key_type=bytes, value_type=bytes, default=None,
                         partitions=settings.topic_partitions)


class TableStore:
    """Adapter from a detector's store protocol to a Faust table."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: str) -> bytes | None:
        return self.table.get(key.encode())

    def put(self, key: str, value: bytes, ctx: Any) -> None:
        token = _current_event.set(weakref.ref(ctx)) if ctx is not None else None
        try:
            self.table[key.encode()] = value
        finally:
            if token is not None:
                _current_event.reset(token)


class Runtime:
    """Everything the agent needs, built once on first use (not at import, so --help is cheap)."""

    def __init__(self) -> None:
        self.control = ControlState(settings.policy_name)
        self.feed = ControlFeed(settings, self.control)
        self.feed.start()
        if not self.feed.caught_up.wait(CONTROL_CATCHUP_TIMEOUT_S):
            log.warning("control topics not read to the end within %ss; starting with what "
                        "was read (built-in defaults if nothing)", CONTROL_CATCHUP_TIMEOUT_S)
        in_force = self.control.policy  # built-in defaults until one is published
        metrics.init_policy_series(in_force.name)
        metrics.POLICY_VERSION.labels(in_force.name).set(in_force.version)
        self.scorer, restored = NuisanceScorer.load_or_new(
            settings.checkpoint_path, anomaly_weight=settings.anomaly_weight,
            classifier_min_labels=settings.classifier_min_labels)
        log.info("model %s from %s", "restored" if restored else "new (no checkpoint)",
                 settings.checkpoint_path)
        self.source_scorer, restored = SourceScorer.load_or_new(settings.source_checkpoint_path)
        log.info("source model %s from %s", "restored" if restored else "new (no checkpoint)",
                 settings.source_checkpoint_path)
        self.sink = KafkaSink(settings)
        self.detector = Detector(settings, self.scorer, self.control, self.sink,
                                 TableStore(state_table))
        self.sources = SourceDetector(settings, self.source_scorer, self.control, self.sink,
                                      TableStore(source_table))
        self.last_checkpoint = time.monotonic()
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
        shadow = self.control.shadow
        log.info("metrics on http://%s:%d/metrics; policy %s v%d; shadow %s; kill switch %s",
                 settings.metrics_host, settings.metrics_port,
                 self.control.policy.name, self.control.policy.version,
                 f"v{shadow.version}" if shadow else "none",
                 "ON" if self.control.dry_run_all else "off")

    def flush(self) -> None:
        for d in self.detector.flush() + self.sources.flush():
            log.info("DECISION %s %s%s ttl=%ss score=%.2f | %s", d.action, d.number,
                     " (dry-run)" if d.dry_run else "", d.ttl_s, d.score, "; ".join(d.reasons))
        self.sink.poll()
        if time.monotonic() - self.last_checkpoint >= settings.checkpoint_interval_s:
            self.checkpoint()

    def checkpoint(self) -> None:
        self.scorer.save(settings.checkpoint_path)
        self.source_scorer.save(settings.source_checkpoint_path)
        self.last_checkpoint = time.monotonic()

    def close(self) -> None:
        self.flush()
        self.checkpoint()
        self.feed.stop()
        self.sink.close()
        log.info("worker stopped: state flushed, model checkpointed to %s",
                 settings.checkpoint_path)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime()
    return _runtime


@app.agent(events_topic)
async def detect(stream: faust.StreamT) -> None:
    rt = runtime()
    detector = rt.detector
    flush_at = settings.flush_events
    async for event in stream.events():
        msg = event.message
        detector.ingest(msg.value, Origin(msg.topic, msg.partition, msg.offset), ctx=event)
        if detector.pending >= flush_at:
            rt.flush()


@app.agent(sources_topic)
async def detect_sources(stream: faust.StreamT) -> None:
    """The source stage: per-trunk and per-range state, scored, scoped decisions."""
    rt = runtime()
    sources = rt.sources
    flush_at = settings.flush_events
    async for event in stream.events():
        msg = event.message
        sources.ingest(msg.value, Origin(msg.topic, msg.partition, msg.offset), ctx=event)
        if sources.pending >= flush_at:
            rt.flush()


@app.timer(interval=settings.flush_interval_s)
async def periodic_flush() -> None:
    if _runtime is not None:
        _runtime.flush()


@app.timer(interval=LAG_INTERVAL_S)
async def report_lag() -> None:
    """Consumer lag per owned partition: highwater minus the last offset we folded."""
    if _runtime is None:
        return
    positions = _runtime.detector.positions
    for tp in app.consumer.assignment():
        if tp.topic != SIGNALING_EVENTS.name:
            continue
        highwater = app.consumer.highwater(tp)
        if highwater is None:
            continue
        done = positions.get(tp.partition, -1)
        metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(highwater - done - 1, 0))


@app.on_partitions_revoked.connect
async def on_revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:  # noqa: ARG001
    """Persist what is pending, then trust the table again: ownership may have moved."""
    if _runtime is not None:
        try:
            _runtime.flush()
        except Exception:  # noqa: BLE001 - the table may already have closed a partition
            log.exception("flush on rebalance failed; at most one micro-batch of counts is "
                          "recounted from the changelog")
        for stage in (_runtime.detector, _runtime.sources):
            stage.dirty.clear()
            stage.forget_cache()
    for tp in revoked:
        if tp.topic == SIGNALING_EVENTS.name:
            try:
                metrics.CONSUMER_LAG.remove(str(tp.partition))
            except KeyError:
                pass


@app.on_before_shutdown.connect
async def on_shutdown(app: faust.App, **kwargs: Any) -> None:  # noqa: ARG001
    if _runtime is not None:
        _runtime.close()


def main(argv: list[str] | None = None, loglevel: str = "info") -> None:
    """Run one worker (blocking). Scale out by starting more with distinct ports and datadirs."""
    settings.worker_dir.mkdir(parents=True, exist_ok=True)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
