"""A 3-node local KRaft cluster loses nothing acknowledged when a broker is killed (kill -9).

The production shape (docker-compose.yml) runs 3 brokers with topics of 3 copies and
``min.insync.replicas`` 2; this is that shape on loopback (``dialguard broker start --nodes 3``):
a record acknowledged with acks=all is on two brokers, so killing any one of them (here the
leader of a partition, the worst case) loses no acknowledged record, and producing goes on with
two of three.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, \
    Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from services.admin import ensure_topics
from services.broker import LocalCluster, free_ports
from services.settings import Settings
from streams.topics import CATALOG, SIGNALING_EVENTS, min_insync_replicas
from tests.integration.conftest import TEST_BROKER_HEAP, TEST_PARTITIONS, shared_libs_dir

pytestmark = pytest.mark.integration

NODES = 3
REPLICATION = 3
#: Records produced before and after the kill (keys spread over every partition).
RECORDS_PER_PHASE = 600
CLIENT_TIMEOUT_S = 10.0
#: Three JVMs starting on two shared cores: more than a single broker needs.
CLUSTER_START_TIMEOUT_S = 120.0
#: Producing right after the kill waits for the controller to fence the dead broker (its
#: session, 9 s by default) and move its leaderships; the producer retries meanwhile.
FLUSH_TIMEOUT_S = 90.0
READ_WAIT_S = 60.0
#: How long a new topic may stay unknown to the broker asked for its configs.
CONFIGS_WAIT_S = 30.0
POLL_S = 0.5


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Settings, LocalCluster]]:
    """A fresh 3-node cluster on free ports; every node stopped and wiped however the test
    ends (a node the test killed is simply already gone)."""
    ports = free_ports(2 * NODES)
    pairs = [(ports[i], ports[i + 1]) for i in range(0, 2 * NODES, 2)]
    settings = Settings.from_env(environ={}, home=tmp_path / "home", broker_heap=TEST_BROKER_HEAP,
                                 topic_partitions=TEST_PARTITIONS,
                                 topic_replication=REPLICATION, broker_nodes=NODES)
    local = LocalCluster(settings, ports=pairs, libs_dir=shared_libs_dir())
    settings = Settings.from_env(environ={}, home=settings.home, broker_heap=TEST_BROKER_HEAP,
                                 topic_partitions=TEST_PARTITIONS, topic_replication=REPLICATION,
                                 broker_nodes=NODES, kafka_bootstrap=local.bootstrap)
    try:
        local.start(timeout=CLUSTER_START_TIMEOUT_S)
        yield settings, local
    finally:
        local.wipe()


class Acks:
    """Delivery reports of one producer: what the cluster acknowledged, what it refused."""

    def __init__(self) -> None:
        self.acked: list[bytes] = []
        self.failed: list[str] = []

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.acked.append(msg.value())
        else:
            self.failed.append(err.str())


def produce(producer: Producer, acks: Acks, phase: str) -> list[bytes]:
    values = [f"{phase}-{i}".encode() for i in range(RECORDS_PER_PHASE)]
    for i, value in enumerate(values):
        producer.produce(SIGNALING_EVENTS.name, key=f"caller-{i}".encode(), value=value,
                         on_delivery=acks)
        producer.poll(0)
    assert producer.flush(FLUSH_TIMEOUT_S) == 0, "records still unacknowledged after the flush"
    return values


def read_all(settings: Settings, partitions: int, expected: int) -> list[bytes]:
    """Every record of ``signaling.events`` from the first offset (assign: no group)."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": uuid.uuid4().hex,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(SIGNALING_EVENTS.name, p, OFFSET_BEGINNING)
                     for p in range(partitions)])
    seen: list[bytes] = []
    try:
        for _ in range(int(READ_WAIT_S / POLL_S)):
            seen += [m.value() for m in consumer.consume(500, timeout=POLL_S)
                     if m.error() is None]
            if len(seen) >= expected:
                break
    finally:
        consumer.close()
    return seen


def topic_configs(admin: AdminClient, names: list[str]) -> dict[str, dict]:
    """The configs of ``names`` as the cluster reports them.

    Why the retry: each broker learns of a new topic from the controller on its own time, and
    DescribeConfigs may go to one that has not yet (UNKNOWN_TOPIC_OR_PART) although the broker
    that answered the metadata request already showed every leader.
    """
    found: dict[str, dict] = {}
    deadline = time.monotonic() + CONFIGS_WAIT_S
    while True:
        pending = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names if n not in found]
        for resource, future in admin.describe_configs(pending).items():
            try:
                found[resource.name] = future.result(timeout=CLIENT_TIMEOUT_S)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART \
                        or time.monotonic() >= deadline:
                    raise
        if len(found) == len(names):
            return found
        time.sleep(POLL_S)


def partition_leader(admin: AdminClient, partition: int) -> int:
    return admin.list_topics(SIGNALING_EVENTS.name, timeout=CLIENT_TIMEOUT_S) \
        .topics[SIGNALING_EVENTS.name].partitions[partition].leader


def test_killing_a_partition_leader_loses_nothing_acked(
        cluster: tuple[Settings, LocalCluster]) -> None:
    settings, local = cluster
    admin = AdminClient(settings.kafka_client_config())
    created = ensure_topics(settings)
    assert sorted(created) == sorted(s.name for s in CATALOG)

    # Every catalog topic: 3 copies of each partition, and min ISR 2 as the broker reports it.
    topics = admin.list_topics(timeout=CLIENT_TIMEOUT_S).topics
    for spec in CATALOG:
        assert all(len(p.replicas) == REPLICATION for p in topics[spec.name].partitions.values())
    for name, configs in topic_configs(admin, [s.name for s in CATALOG]).items():
        assert configs["min.insync.replicas"].value == str(min_insync_replicas(REPLICATION)) \
            == "2", name

    acks = Acks()
    producer = Producer({**settings.kafka_client_config(), "acks": "all",
                         "enable.idempotence": True})
    before = produce(producer, acks, "before")
    assert acks.failed == [] and sorted(acks.acked) == sorted(before)

    victim = partition_leader(admin, 0)
    assert local.node(victim).kill() is not None
    assert local.node(victim).pid() is None

    after = produce(producer, acks, "after")  # two of three brokers: acks=all still met
    assert acks.failed == [], acks.failed[:5]
    assert sorted(acks.acked) == sorted(before + after)

    read = read_all(settings, TEST_PARTITIONS, expected=len(acks.acked))
    print(f"acked {len(acks.acked)} records ({len(before)} before killing node {victim}, "
          f"{len(after)} after); read back {len(read)}")
    assert sorted(read) == sorted(acks.acked)  # nothing acked lost, nothing duplicated
    assert partition_leader(admin, 0) not in (victim, -1)  # leadership moved to a survivor
    assert len(admin.list_topics(timeout=CLIENT_TIMEOUT_S).brokers) == NODES - 1
