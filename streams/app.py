"""The Faust worker: owns partitions of ``signaling.events`` and ``signaling.sources`` and runs
the two stages on them.

Layout follows faust-streaming's examples: the app, its topics and tables at module level, one
agent per stage, timers. The number stage (:class:`Detector`) folds events per caller and
re-keys each accepted event by its trunk and caller ranges onto ``signaling.sources``; the
source stage (:class:`SourceDetector`) owns those keys and decides on ranges and trunks. A
worker runs both stages by default, each on the partitions Faust assigns it;
``DIALGUARD_WORKER_STAGES`` names one of them to run it alone, so a deployment can give each
stage processes (and cores) of its own in one app id. Faust's assignor gives each member only
partitions of the topics it subscribes to, so number-only and source-only workers share one
consumer group and the tables' changelogs as a both-stages worker would.

Why the agents look the way they do:

* Records are batches: dialguard's producers write up to hundreds of events of one partition
  per record (:mod:`streams.batches`), so Faust's per-record cost (an Event, several loop turns;
  about 6k records/s here) is paid once per batch. Single-event records stay valid.
* Acks are manual (``stream.noack()``): each record is held by the :class:`MicroBatch` and
  released only after what it caused is durable (see :mod:`streams.microbatch` for the order).
* The table is written by the stages themselves, once per touched state per commit. Faust's
  RocksDB store and changelog route a write to the partition of the *current event*, a
  ContextVar in ``faust/streams.py`` (``_current_event``) that is only set while an agent
  handles that event; :class:`TableStore` sets it to the record the state's newest event came
  from, which lives in the state's partition because topics are keyed by caller and by source.
  That name is private: ``tests/unit/test_faust_contract.py`` fails loudly if it changes. On
  faust-streaming 0.15.3 ``take_events()`` never yields once the app has a table, so batching
  happens in the records, not in Faust.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import logging
import ssl
import time
import weakref
from typing import Any, Callable

import faust
from faust.streams import _current_event  # see module docstring
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from prometheus_client import start_http_server
from rocksdict import WriteBatch

from online_models.scorer import NuisanceScorer
from online_models.source_scorer import SourceScorer
from services.settings import STAGE_NUMBER, STAGE_SOURCE, Settings
from streams import metrics
from streams.control import ControlFeed, ControlState
from streams.detector import Detector, Origin
from streams.microbatch import AckGate, MicroBatch
from streams.sink import DELIVER_TIMEOUT_S, KafkaSink
from streams.source_detector import SourceDetector
from streams.topics import SIGNALING_EVENTS, SOURCE_EVENTS, TopicSpec

log = logging.getLogger("dialguard.worker")
CONTROL_CATCHUP_TIMEOUT_S = 15.0
TABLE_NAME = "caller-state"
SOURCE_TABLE_NAME = "source-state"
LAG_INTERVAL_S = 5.0
DATA_LOCK_NAME = ".worker.lock"
#: FAIR_TURNS: an agent whose queue holds records never waits on it, so without a yield one
#: stage would run through its whole backlog while the other stage, the timers and the
#: metrics endpoint starve (seen in ``make bench``: the source stage idle for seconds). Each
#: agent yields to the loop once per record; a batch record holds hundreds of events.

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
    # web_host only names the URL; without web_bind Faust listens on every interface.
    web_bind="127.0.0.1",
    web_port=settings.worker_web_port,
    web_in_thread=False,
    # Held records are released by our commit, not by the agent moving on; Faust must not
    # wait for them on a rebalance (on_revoked commits what it can first).
    stream_wait_empty=False,
    broker_session_timeout=settings.worker_session_timeout_s,
    broker_heartbeat_interval=settings.worker_heartbeat_s,
)

STAGES = settings.stages


def bound_fetch(max_wait_ms: int, min_bytes: int) -> None:
    """Make Faust build the worker's aiokafka consumer with ``max_wait_ms`` as its fetch wait
    and ``min_bytes`` as the bytes a fetch waits for (``DIALGUARD_WORKER_FETCH_MAX_WAIT_S``
    and ``DIALGUARD_WORKER_FETCH_MIN_BYTES``, which say why).

    Faust's driver passes ``fetch_max_wait_ms=1500`` and aiokafka's default of 1 byte, with
    no setting to change them; aiokafka reads the consumer's values when it starts its
    fetcher, so they are set on the consumer Faust has just built, before it starts. The
    names are private: ``tests/unit/test_faust_contract.py`` fails loudly if one changes.
    """
    build = AIOKafkaConsumerThread._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = build(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms
        consumer._fetch_min_bytes = min_bytes
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer


bound_fetch(settings.fetch_max_wait_ms, settings.fetch_min_bytes)
events_topic = app.topic(SIGNALING_EVENTS.name, key_type=bytes, value_type=bytes,
                         partitions=settings.topic_partitions)
sources_topic = app.topic(SOURCE_EVENTS.name, key_type=bytes, value_type=bytes,
                          partitions=settings.topic_partitions)
# A table is declared only where its stage runs: Faust recovers (and assigns the changelog of)
# every table an app declares, which a worker without the stage would do for nothing.
state_table = app.Table(TABLE_NAME, key_type=bytes, value_type=bytes, default=None,
                        partitions=settings.topic_partitions) \
    if STAGE_NUMBER in STAGES else None
source_table = app.Table(SOURCE_TABLE_NAME, key_type=bytes, value_type=bytes, default=None,
                         partitions=settings.topic_partitions) \
    if STAGE_SOURCE in STAGES else None


def _rocksdb_store(table: Any) -> bool:
    from faust.stores.rocksdb import Store as RocksDBStore

    return isinstance(getattr(table, "data", None), RocksDBStore)


class TableStore:
    """A stage's state in a Faust table: the table's local store (RocksDB) plus its changelog
    topic, written by the worker's own producer.

    Why not ``table[key] = value``: that sends each changelog record through Faust's Python
    producer buffer, about 3,000 records/s here (measured by ``make bench``: a commit of 5,000
    touched numbers stalled the loop for 1.5 s). Writing the store directly and producing the
    record with confluent-kafka keeps what Faust does with it: the same topic, key, value and
    partition (the partition of the record the state's newest event came from), so Faust's
    recovery and standby replicas read it back as if Faust had written it; the micro-batch
    waits for its delivery before releasing records (streams.microbatch).
    """

    def __init__(self, table: Any, sink: KafkaSink) -> None:
        self.table = table
        self.sink = sink
        #: RocksDB's database of a partition (``Store._db_for_partition``, private: pinned by
        #: tests/unit/test_faust_contract.py), or None for another store (``DIALGUARD_STORE``).
        self.partition_db: Callable[[int], Any] | None = getattr(
            table.data, "_db_for_partition", None) if _rocksdb_store(table) else None

    def get(self, key: str, ctx: Any = None) -> bytes | None:
        """The stored state of ``key``, read from the store of ``ctx``'s partition (the record
        its event came from, which lives in the key's partition). Inside an agent Faust has
        that record as its current event already; from a timer or another task it has none
        and would probe every partition's store for the key. ``table.data`` answers in one
        lookup, where ``table.get`` asks the store whether it holds the key and then for its
        value (two RocksDB reads per state, measured with py-spy on live traffic). A RocksDB
        store is read straight from that partition's database, the one Faust's own ``_get``
        reads for the record: its path (mapping ``get``, ``__getitem__``, the current-event
        lookup, the key index) was half the cost of a new caller's read on live traffic."""
        if ctx is None:
            return self.table.data.get(key.encode())
        if self.partition_db is not None:
            return self.partition_db(ctx.message.partition).get(key.encode())
        token = _current_event.set(weakref.ref(ctx))
        try:
            return self.table.data.get(key.encode())
        finally:
            _current_event.reset(token)

    def put_many(self, entries: list[tuple[str, bytes, Any]]) -> None:
        """Write states, each to the store of its record's partition, and their changelog
        records. A RocksDB store takes each partition's states in one write batch: Faust's
        path (``table.data[key] = value``: its current-event lookup, codecs and a locked key
        index per state, then one RocksDB write each) cost 8-15 us a state in a live worker,
        and a commit writes one state per new caller."""
        partition_db = self.partition_db
        if partition_db is None:
            for key, value, ctx in entries:
                self.put(key, value, ctx)
            return
        batches: dict[int, Any] = {}
        state = self.sink.state
        topic = self.table.changelog_topic_name
        for key, value, ctx in entries:
            partition = ctx.message.partition
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = WriteBatch(raw_mode=True)
            raw = key.encode()
            batch.put(raw, value)
            state(topic, partition, raw, value)
        for partition, batch in batches.items():
            partition_db(partition).write(batch)

    def put(self, key: str, value: bytes, ctx: Any) -> None:
        raw = key.encode()
        token = _current_event.set(weakref.ref(ctx))
        try:
            self.table.data[raw] = value  # the local store only; no changelog send
        finally:
            _current_event.reset(token)
        self.sink.state(self.table.changelog_topic_name, ctx.message.partition, raw, value)


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
                                 TableStore(state_table, self.sink)) \
            if state_table is not None else None
        self.sources = SourceDetector(settings, self.source_scorer, self.control, self.sink,
                                      TableStore(source_table, self.sink)) \
            if source_table is not None else None
        #: The stages this worker runs (DIALGUARD_WORKER_STAGES), in data-flow order.
        self.stages: list[Detector | SourceDetector] = [
            stage for stage in (self.detector, self.sources) if stage is not None]
        #: Only the micro-batch acknowledges records (streams.microbatch, step 4).
        self.gate = AckGate(app.consumer)
        self.batch = MicroBatch(self.stages, self.sink, settings.commit_interval_s,
                                settings.commit_max_states, DELIVER_TIMEOUT_S, gate=self.gate)
        self.last_checkpoint = time.monotonic()
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
        shadow = self.control.shadow
        log.info("metrics on http://%s:%d/metrics; stages %s; policy %s v%d; shadow %s; "
                 "kill switch %s", settings.metrics_host, settings.metrics_port,
                 ",".join(s for s in (STAGE_NUMBER, STAGE_SOURCE) if s in STAGES),
                 self.control.policy.name, self.control.policy.version,
                 f"v{shadow.version}" if shadow else "none",
                 "ON" if self.control.dry_run_all else "off")

    def flush(self) -> None:
        """Publish: labels learned, counters out, re-keyed events sent (not a commit)."""
        for d in [d for stage in self.stages for d in stage.publish()]:
            log.info("DECISION %s %s%s ttl=%ss score=%.2f | %s", d.action, d.number,
                     " (dry-run)" if d.dry_run else "", d.ttl_s, d.score, "; ".join(d.reasons))
        self.sink.poll()
        if time.monotonic() - self.last_checkpoint >= settings.checkpoint_interval_s:
            self.checkpoint()

    def tick(self) -> None:
        """Take the commit in flight a step further, or start one when it is due: the fold
        goes on while the broker acknowledges (streams.microbatch)."""
        batch = self.batch
        if batch.inflight is not None:
            batch.advance()
        elif batch.due():
            self.flush()  # every output of the held records to the producer first
            batch.start()
            batch.advance()

    def commit(self) -> None:
        """Everything folded so far made durable, waiting for the broker (rebalance,
        shutdown)."""
        self.flush()
        self.batch.commit()

    def checkpoint(self) -> None:
        self.scorer.save(settings.checkpoint_path)
        self.source_scorer.save(settings.source_checkpoint_path)
        self.last_checkpoint = time.monotonic()

    def close(self) -> None:
        self.commit()
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
        # What the worker built to run (Faust, aiokafka, River's trees, the metrics: about
        # 150k objects) lives as long as the process: moved out of the collector's reach, a
        # full collection walks what the fold made since. Before, full collections took
        # 85-190 ms every ~4 s of live traffic, each a stall every decision waited out.
        gc.freeze()
    return _runtime


def owned(tp: Any) -> bool:
    """Whether this worker still owns the record's partition.

    A record taken from the agent's buffer just before a rebalance would otherwise be folded
    after the commit on revocation, by a worker that no longer owns it: its re-keyed events
    could then reach a source after the new owner's replay of earlier ones, and the source,
    which skips anything at or before the newest position it folded from that partition
    (streams.position), would drop the replay. Skipped records are read again by whoever owns
    the partition, from the last committed offset. The assignment is the one the last
    rebalance handed out, kept here: asking the consumer for it built a set of every
    partition per record (12% of the worker's time on live traffic, py-spy).
    """
    return _accepting and tp in _assigned


#: False from the start of a revocation until the next assignment: records dequeued in between
#: are left for whoever owns their partition after the rebalance (see owned()).
_accepting = True
#: This worker's partitions (all topics) as of the last assignment.
_assigned: frozenset[Any] = frozenset()


@app.on_partitions_assigned.connect
async def on_assigned(app: faust.App, assigned: Any, **kwargs: Any) -> None:  # noqa: ARG001
    """Faust hands over the whole new assignment (not a delta)."""
    global _accepting, _assigned
    _assigned = frozenset(assigned)
    _accepting = True


async def detect(stream: faust.StreamT) -> None:
    """The number stage: per-caller state, scored, number decisions, events re-keyed."""
    rt = runtime()
    detector, batch = rt.detector, rt.batch
    assert detector is not None  # the agent exists only where the stage runs
    flush_at = settings.flush_events
    async for event in stream.noack().events():
        msg = event.message
        if not owned(msg.tp):
            continue  # see owned()
        detector.ingest(msg.value, Origin(msg.topic, msg.partition, msg.offset), ctx=event)
        batch.hold(event)
        if detector.pending >= flush_at:
            rt.flush()
        rt.tick()
        await asyncio.sleep(0)  # see FAIR_TURNS


async def detect_sources(stream: faust.StreamT) -> None:
    """The source stage: per-trunk and per-range state, scored, scoped decisions."""
    rt = runtime()
    sources, batch = rt.sources, rt.batch
    assert sources is not None  # the agent exists only where the stage runs
    flush_at = settings.flush_events
    async for event in stream.noack().events():
        msg = event.message
        if not owned(msg.tp):
            continue  # see owned()
        sources.ingest(msg.value, Origin(msg.topic, msg.partition, msg.offset), ctx=event)
        batch.hold(event)
        if sources.pending >= flush_at:
            rt.flush()
        rt.tick()
        await asyncio.sleep(0)  # see FAIR_TURNS


# Agents of the stages this worker runs (DIALGUARD_WORKER_STAGES); their names stay those of
# the functions, as if decorated.
if STAGE_NUMBER in STAGES:
    app.agent(events_topic, name=f"{__name__}.detect")(detect)
if STAGE_SOURCE in STAGES:
    app.agent(sources_topic, name=f"{__name__}.detect_sources")(detect_sources)


@app.timer(interval=settings.flush_interval_s)
async def periodic_flush() -> None:
    # Nothing between a revocation and the next assignment (see owned()): the commit on
    # revocation has written what this worker held, and the stores are being handed over.
    if _runtime is not None and _accepting:
        _runtime.flush()
        _runtime.tick()


@app.timer(interval=LAG_INTERVAL_S)
async def report_lag() -> None:
    """Consumer lag per owned partition: highwater minus the last offset we folded."""
    if _runtime is None or _runtime.detector is None:
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
    """Commit what is held, then trust the table again: ownership may have moved."""
    global _accepting
    _accepting = False
    if _runtime is not None:
        try:
            _runtime.commit()
        except Exception:  # noqa: BLE001 - the table may already have closed a partition
            log.exception("commit on rebalance failed; the new owners read the held records "
                          "again and skip what their states already hold")
        dropped = _runtime.batch.forget()
        if dropped:
            log.info("rebalance: %d records left unacknowledged for their new owners", dropped)
        for stage in _runtime.stages:
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


def ensure_changelogs() -> None:
    """Create the tables' changelog topics before Faust starts: Faust creates them itself,
    but on a fresh app id with many partitions its agents could start before the topic's
    metadata showed the partitions, and crash on a mismatch (seen with 32 partitions)."""
    from services.admin import ensure_topics

    ensure_topics(settings, [
        TopicSpec(table.changelog_topic_name, settings.topic_partitions, "compact", -1,
                  "table key", "state bytes") for table in (state_table, source_table)
        if table is not None])


class DataFolderInUse(RuntimeError):
    """Another worker holds this data folder (RocksDB allows one process per folder)."""


def lock_data_folder() -> Any:
    """Hold an exclusive lock on the worker's data folder for the life of the process.

    Two workers on one folder failed deep inside RocksDB with a raw ``LOCK`` error; this says
    which folder and what to set instead, before anything starts.
    """
    settings.worker_dir.mkdir(parents=True, exist_ok=True)
    handle = (settings.worker_dir / DATA_LOCK_NAME).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataFolderInUse(
            f"another worker is running on {settings.worker_dir}; give each worker its own "
            "DIALGUARD_HOME (the folder is per host name inside it), and its own "
            "DIALGUARD_WORKER_WEB_PORT and DIALGUARD_METRICS_PORT") from None
    return handle


def main(argv: list[str] | None = None, loglevel: str = "info") -> None:
    """Run one worker (blocking). Scale out by starting more with distinct ports and datadirs."""
    lock = lock_data_folder()
    ensure_changelogs()
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        lock.close()  # held for the whole run; released here (or by the kernel on a crash)
