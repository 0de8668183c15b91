"""Live control state: the policy, the allowlist and feedback labels, read from Kafka.

Every worker must see every policy change, whatever partitions it owns, so this reader is not
part of the consumer group: it assigns itself all partitions of the control topics from the
beginning (they are compacted) and keeps reading. It runs in a thread so a slow control topic
never stalls the event stream; it only swaps whole objects (atomic under the GIL) and hands
labels over through a queue, so the worker never sees a half-applied change.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from services.settings import Settings
from streams import metrics
from streams.policy import AllowList, Policy, PolicyError
from streams.schema import AllowEntry, Label
from streams.topics import ALLOWLIST, FEEDBACK, POLICY

log = logging.getLogger(__name__)
POLL_TIMEOUT_S = 0.2
#: Labels waiting for the worker beyond this are dropped (and counted) rather than hoarded.
MAX_PENDING_LABELS = 100_000


class ControlState:
    """What the worker reads on every decision. Plain object: tests drive it directly."""

    def __init__(self, policy_name: str = "default") -> None:
        self.policy_name = policy_name
        self.policies: dict[str, Policy] = {}
        self.allowlist = AllowList()
        self.labels: queue.Queue[Label] = queue.Queue(maxsize=MAX_PENDING_LABELS)
        self.updated = threading.Event()

    @property
    def policy(self) -> Policy:
        return self.policies.get(self.policy_name) or Policy(name=self.policy_name)

    def apply_policy(self, key: str, raw: bytes | None) -> None:
        if raw is None:
            self.policies.pop(key, None)
            return
        policy = Policy.decode(raw)
        if policy.name != key:
            raise PolicyError(f"record key {key!r} differs from policy name {policy.name!r}")
        self.policies[key] = policy
        metrics.init_policy_series(key)
        if key == self.policy_name:
            metrics.POLICY_VERSION.labels(key).set(policy.version)
            log.info("policy %s v%d in force (author %s: %s)", key, policy.version,
                     policy.author, policy.reason)

    def apply_allow(self, key: str, raw: bytes | None) -> None:
        self.allowlist.apply(key, None if raw is None else AllowEntry.decode(raw))

    def add_label(self, raw: bytes) -> None:
        try:
            self.labels.put_nowait(Label.decode(raw))
        except queue.Full:
            metrics.CONTROL_RECORDS.labels(FEEDBACK.name, "dropped_full").inc()

    def drain_labels(self) -> list[Label]:
        out: list[Label] = []
        while True:
            try:
                out.append(self.labels.get_nowait())
            except queue.Empty:
                return out


class ControlFeed(threading.Thread):
    """Background reader of control.policy, control.allowlist and feedback.labels."""

    def __init__(self, settings: Settings, state: ControlState) -> None:
        super().__init__(name="dialguard-control", daemon=True)
        self.settings = settings
        self.state = state
        self._stop = threading.Event()
        self.caught_up = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        conf = {**self.settings.kafka_client_config(),
                "group.id": f"{self.settings.app_id}-control-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False, "auto.offset.reset": "earliest"}
        consumer = Consumer(conf)
        try:
            parts = []
            for spec in (POLICY, ALLOWLIST, FEEDBACK):
                md = consumer.list_topics(spec.name, timeout=10).topics[spec.name]
                parts += [TopicPartition(spec.name, p, OFFSET_BEGINNING) for p in md.partitions]
            consumer.assign(parts)
            while not self._stop.is_set():
                msgs = consumer.consume(500, timeout=POLL_TIMEOUT_S)
                if not msgs and not self.caught_up.is_set() and self._at_end(consumer, parts):
                    self.caught_up.set()
                for msg in msgs:
                    self._handle(msg)
        except Exception:  # noqa: BLE001 - a dead feed must say so loudly, not vanish
            log.exception("control feed stopped; policy changes will not be applied")
            raise
        finally:
            consumer.close()

    @staticmethod
    def _at_end(consumer: Consumer, parts: list[TopicPartition]) -> bool:
        positions = consumer.position(parts)
        for tp in positions:
            low, high = consumer.get_watermark_offsets(tp, timeout=2, cached=False)
            if tp.offset < 0 and high > low:
                return False
            if tp.offset >= 0 and tp.offset < high:
                return False
        return True

    def _handle(self, msg) -> None:  # type: ignore[no-untyped-def]
        if msg.error():
            if msg.error().code() != KafkaError._PARTITION_EOF:
                log.warning("control feed error: %s", msg.error())
            return
        topic = msg.topic()
        key = (msg.key() or b"").decode("utf-8", "replace")
        try:
            if topic == POLICY.name:
                self.state.apply_policy(key, msg.value())
            elif topic == ALLOWLIST.name:
                self.state.apply_allow(key, msg.value())
            elif msg.value() is not None:
                self.state.add_label(msg.value())
            metrics.CONTROL_RECORDS.labels(topic, "applied").inc()
            self.state.updated.set()
        except (ValueError, TypeError, KeyError) as exc:
            metrics.CONTROL_RECORDS.labels(topic, "rejected").inc()
            log.warning("ignored bad record on %s key %r: %s", topic, key, exc)
