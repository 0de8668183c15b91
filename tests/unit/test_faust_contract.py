"""What streams/app.py relies on in faust-streaming beyond its documented API.

The worker writes its tables itself, from a timer or another agent's turn, by setting Faust's
private ``_current_event`` ContextVar (the RocksDB store and the changelog route a write to the
current event's partition). If an upgrade renames or changes it, this fails here, loudly,
instead of the worker writing state to the wrong partition or crashing at its first commit.
"""

import weakref
from contextvars import ContextVar

import faust
import faust.streams
from faust.events import Event


def test_the_private_current_event_contextvar_is_still_what_current_event_reads():
    from streams.app import _current_event

    assert _current_event is faust.streams._current_event
    assert isinstance(_current_event, ContextVar)

    class Marker:
        pass

    marker = Marker()
    token = _current_event.set(weakref.ref(marker))
    try:
        assert faust.streams.current_event() is marker
    finally:
        _current_event.reset(token)
    assert faust.streams.current_event() is None


def test_manual_acks_and_the_rebalance_setting_exist():
    assert callable(getattr(faust.Stream, "noack"))
    assert callable(getattr(Event, "ack"))
    from streams.app import app

    assert app.conf.stream_wait_empty is False


def test_tables_expose_their_store_and_changelog_topic_name():
    """TableStore writes ``table.data`` (the local store, no changelog send) and produces the
    changelog record itself to ``table.changelog_topic_name``."""
    from streams.app import SOURCE_TABLE_NAME, TABLE_NAME, settings, source_table, state_table

    for table, name in ((state_table, TABLE_NAME), (source_table, SOURCE_TABLE_NAME)):
        assert table.changelog_topic_name == f"{settings.app_id}-{name}-changelog"
        assert hasattr(type(table), "data") or "data" in vars(table)


def test_table_reads_with_a_record_are_routed_to_its_partition():
    """``TableStore.get(key, ctx)`` reads with the record as Faust's current event, so the
    RocksDB store reads that partition only (without one it probes every partition)."""
    from streams.app import TableStore

    class Record:
        pass

    seen: list[object] = []

    class Store:
        def get(self, key: bytes) -> bytes | None:
            seen.append(faust.streams.current_event())
            return b"state" if key == b"known" else None

    class Table:
        data = Store()

    record = Record()
    store = TableStore(Table(), sink=None)
    assert store.get("known", record) == b"state"
    assert store.get("unknown") is None
    assert seen == [record, None]
    assert faust.streams.current_event() is None


def test_rocksdb_reads_with_a_record_go_to_its_partition_database():
    """With a RocksDB store, ``TableStore.get(key, ctx)`` reads ``_db_for_partition`` of the
    record's partition, the database Faust's ``_get`` reads (pinned by the test below); without
    a record it asks the store, which probes every partition."""
    from streams.app import TableStore

    class Record:
        def __init__(self, partition: int) -> None:
            self.message = type("Message", (), {"partition": partition})()

    class Table:
        data = {b"known": b"from the store"}

    store = TableStore(Table(), sink=None)
    store.partition_db = {2: {b"known": b"partition 2"}, 7: {}}.__getitem__
    assert store.get("known", Record(2)) == b"partition 2"
    assert store.get("known", Record(7)) is None
    assert store.get("known") == b"from the store"


def test_every_record_acknowledgement_goes_through_the_consumer_instance():
    """streams.microbatch.AckGate replaces ``consumer.ack`` on the instance; Faust's final
    ack of a consumed record (``ConsumerMessage.on_final_ack``) must still call it there."""
    from faust.types.tuples import ConsumerMessage

    seen = []

    class Consumer:
        def ack(self, message):  # pragma: no cover - replaced below
            raise AssertionError("the class method must not be used")

    consumer = Consumer()
    consumer.ack = lambda message: seen.append(message) or True
    message = ConsumerMessage("signaling.sources", 3, 47, 0.0, 0, [], b"k", b"v", None)
    message.refcount = 1
    assert message.ack(consumer) is True
    assert seen == [message]


def test_the_worker_consumer_is_built_with_the_configured_fetch_wait_and_size():
    """streams.app.bound_fetch wraps Faust's private ``_create_worker_consumer`` and sets
    aiokafka's private ``_fetch_max_wait_ms`` and ``_fetch_min_bytes`` on the consumer it
    returns; aiokafka must still hand those attributes to its fetcher when the consumer
    starts."""
    import asyncio
    import inspect

    import aiokafka
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from streams.app import app, settings

    start = inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in start
    assert "fetch_min_bytes=self._fetch_min_bytes" in start

    async def build() -> aiokafka.AIOKafkaConsumer:
        thread = app.consumer._thread
        assert isinstance(thread, AIOKafkaConsumerThread)
        return thread._create_worker_consumer(app.transport)

    consumer = asyncio.run(build())
    assert consumer._fetch_max_wait_ms == settings.fetch_max_wait_ms == 25
    assert consumer._fetch_min_bytes == settings.fetch_min_bytes == 16_384


def test_state_writes_go_to_the_partition_database_faust_itself_writes_and_reads(tmp_path):
    """streams.app.TableStore.put_many writes a RocksDB write batch to
    ``Store._db_for_partition(partition)`` (private): the database Faust's own ``_set`` puts
    to and its ``_get`` reads for an event of that partition, opened in raw mode."""
    import inspect

    from faust.stores.rocksdb import RocksDBOptions, Store
    from rocksdict import WriteBatch

    assert callable(Store._db_for_partition)
    for method, call in ((Store._set, "db.put(key, value)"), (Store._get, "db.get(key)")):
        source = inspect.getsource(method)
        assert "partition = event.message.partition" in source
        assert "db = self._db_for_partition(partition)" in source and call in source
    db = RocksDBOptions().open(tmp_path / "p0")
    batch = WriteBatch(raw_mode=True)
    batch.put(b"8613800138000", b"state")
    db.write(batch)
    assert db.get(b"8613800138000") == b"state"


def test_table_store_writes_a_batch_per_partition_and_a_changelog_record_per_state():
    from streams.app import TableStore

    class Record:
        def __init__(self, partition: int) -> None:
            self.message = type("Message", (), {"partition": partition})()

    class Database:
        def __init__(self) -> None:
            self.batches = 0

        def write(self, batch) -> None:
            self.batches += 1
            self.count = len(batch)

    dbs = {3: Database(), 5: Database()}

    class Table:
        data = None
        changelog_topic_name = "app-caller-state-changelog"

    class Sink:
        sent: list[tuple] = []

        def state(self, *args) -> None:
            self.sent.append(args)

    store = TableStore(Table(), Sink())
    store.partition_db = dbs.__getitem__
    store.put_many([("a", b"A", Record(3)), ("b", b"B", Record(5)), ("c", b"C", Record(3))])
    assert (dbs[3].batches, dbs[3].count, dbs[5].batches, dbs[5].count) == (1, 2, 1, 1)
    assert Sink.sent == [("app-caller-state-changelog", 3, b"a", b"A"),
                         ("app-caller-state-changelog", 5, b"b", b"B"),
                         ("app-caller-state-changelog", 3, b"c", b"C")]
