"""Live, bounded, in-memory views of the topics the API answers from.

One background thread (confluent-kafka, not in a consumer group: it assigns itself every
partition, like the worker's ControlFeed) reads the control topics from the beginning and the
data topics (decisions, scores, labels, acks) as far back as they are useful, and folds every
record into :class:`Views`. Reads never touch Kafka, so a GET is a dictionary lookup; writes wait
until the view has seen the offset they produced (:meth:`Views.wait_for`), so a PUT followed by a
GET is consistent. Everything held per number is bounded: the oldest numbers are forgotten first.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Generic, Iterator, TypeVar

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from services.admin import watermarks
from services.settings import Settings
from streams.policy import (ENFORCING, SHADOW_SUFFIX, SWITCHES_KEY, AllowList, ControlSwitches,
                            Policy)
from streams.schema import Ack, AllowEntry, AuditRecord, Decision, Label, ScoreRecord
from streams.scope import SCOPE_PREFIX, SOURCE_SCOPES, decision_key
from streams.topics import (ACKS, ALLOWLIST, AUDIT, DECISIONS, FEEDBACK, POLICY, POLICY_HISTORY,
                            SCORES)

log = logging.getLogger(__name__)

#: Short: a write waits for the feed to see its record (read-your-writes), so this is latency.
POLL_TIMEOUT_S = 0.05
CONSUME_BATCH = 1000
METADATA_TIMEOUT_S = 10.0
#: Bounds of what is kept (beyond ``api_view_max_numbers`` numbers, the oldest go first).
DECISIONS_PER_NUMBER = 20
LABELS_PER_NUMBER = 20
ACKS_PER_NUMBER = 10
RECENT_DECISIONS = 2000
AUDIT_TAIL = 20_000
VERSIONS_PER_POLICY = 1000
MAX_LABEL_IDS = 2_000_000
MAX_APPEALS = 50_000
#: Policy versions whose enforced numbers the guard follows (older ones cannot be live).
ENFORCED_VERSIONS = 64
#: Subject prefix of appeal records on control.audit (appeals live in the audit log).
APPEAL_SUBJECT = "appeal/"
#: Topics read from the beginning (compacted, or needed whole for idempotency)...
FULL_TOPICS = (POLICY.name, POLICY_HISTORY.name, ALLOWLIST.name, AUDIT.name, DECISIONS.name,
               FEEDBACK.name)
#: ...and topics read from ``api_whatif_window_s`` ago (only recent records matter).
RECENT_TOPICS = (SCORES.name, ACKS.name)

K = TypeVar("K")
V = TypeVar("V")


class Bounded(Generic[K, V]):
    """An insertion-ordered map that forgets its least recently written keys beyond ``cap``."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data: OrderedDict[K, V] = OrderedDict()

    def put(self, key: K, value: V) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.cap:
            self.data.popitem(last=False)

    def get(self, key: K, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __len__(self) -> int:
        return len(self.data)

    def items(self) -> Iterator[tuple[K, V]]:
        return iter(list(self.data.items()))


@dataclass(frozen=True)
class SeenLabel:
    label: Label
    #: When the label reached Kafka (broker timestamp): "fresh" for the guard means after this.
    arrived: float


def _ts(msg: Any) -> float:
    kind, ms = msg.timestamp()
    return ms / 1000.0 if kind and ms > 0 else time.time()


class Views:
    """Everything the API reads. Fed by :meth:`apply` (the feed thread, or a test directly)."""

    def __init__(self, max_numbers: int = 200_000) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.max_numbers = max_numbers
        #: Last offset applied per (topic, partition).
        self.positions: dict[tuple[str, int], int] = {}
        self.live: dict[str, Policy] = {}
        #: When the current live version of each policy came in force (record timestamp).
        self.live_since: dict[str, float] = {}
        self.shadow: dict[str, Policy] = {}
        self.switches = ControlSwitches()
        self.history: dict[str, dict[int, Policy]] = {}
        self.allow = AllowList()
        self.decisions: Bounded[str, deque[Decision]] = Bounded(max_numbers)
        self.recent: deque[Decision] = deque(maxlen=RECENT_DECISIONS)
        #: Latest decision per range / trunk key (``prefix:...``, ``trunk:...``): campaigns.
        self.scoped: Bounded[str, Decision] = Bounded(max_numbers)
        #: Latest score record per number, with when it was published.
        self.scores: Bounded[str, tuple[float, ScoreRecord]] = Bounded(max_numbers)
        self.labels: Bounded[str, deque[SeenLabel]] = Bounded(max_numbers)
        self.label_ids: Bounded[str, None] = Bounded(MAX_LABEL_IDS)
        self.acks: Bounded[str, deque[Ack]] = Bounded(max_numbers)
        self.audit: deque[AuditRecord] = deque(maxlen=AUDIT_TAIL)
        self.appeals: Bounded[str, dict[str, Any]] = Bounded(MAX_APPEALS)
        #: (policy, version) -> numbers it enforced against (not dry-run) -> when.
        self.enforced: Bounded[tuple[str, int], Bounded[str, float]] = Bounded(ENFORCED_VERSIONS)
        self.rejected = 0

    # -- folding records -------------------------------------------------------------------
    def apply(self, topic: str, key: str, value: bytes | None, ts: float,
              partition: int = 0, offset: int = -1) -> None:
        with self.cond:
            try:
                self._apply(topic, key, value, ts)
            except (ValueError, TypeError, KeyError) as exc:
                self.rejected += 1
                log.warning("view ignored a bad record on %s key %r: %s", topic, key, exc)
            if offset >= 0:
                self.positions[(topic, partition)] = offset

    def _apply(self, topic: str, key: str, value: bytes | None, ts: float) -> None:
        if topic == POLICY.name:
            self._apply_policy(key, value, ts)
        elif topic == POLICY_HISTORY.name and value is not None:
            policy = Policy.decode(value)
            versions = self.history.setdefault(policy.name, {})
            versions[policy.version] = policy
            while len(versions) > VERSIONS_PER_POLICY:
                versions.pop(min(versions))
        elif topic == ALLOWLIST.name:
            self.allow.apply(key, None if value is None else AllowEntry.decode(value))
        elif value is None:
            return
        elif topic == DECISIONS.name:
            self._apply_decision(Decision.decode(value), ts)
        elif topic == SCORES.name:
            record = ScoreRecord.decode(value)
            self.scores.put(record.number, (ts, record))
        elif topic == FEEDBACK.name:
            label = Label.decode(value)
            if label.id:
                self.label_ids.put(label.id, None)
            seen = self.labels.get(label.number)
            if seen is None:
                seen = deque(maxlen=LABELS_PER_NUMBER)
            seen.append(SeenLabel(label, ts))
            self.labels.put(label.number, seen)
        elif topic == ACKS.name:
            ack = Ack(**orjson.loads(value))
            acks = self.acks.get(ack.number) or deque(maxlen=ACKS_PER_NUMBER)
            acks.append(ack)
            self.acks.put(ack.number, acks)
        elif topic == AUDIT.name:
            record = AuditRecord.decode(value)
            self.audit.append(record)
            if record.subject.startswith(APPEAL_SUBJECT) and isinstance(record.after, dict):
                self.appeals.put(record.subject[len(APPEAL_SUBJECT):], record.after)

    def _apply_policy(self, key: str, value: bytes | None, ts: float) -> None:
        if key == SWITCHES_KEY:
            self.switches = ControlSwitches() if value is None else ControlSwitches.decode(value)
            return
        if key.endswith(SHADOW_SUFFIX):
            name = key[:-len(SHADOW_SUFFIX)]
            if value is None:
                self.shadow.pop(name, None)
            else:
                self.shadow[name] = Policy.decode(value)
            return
        if value is None:
            self.live.pop(key, None)
            return
        policy = Policy.decode(value)
        if policy.name != key:
            raise ValueError(f"record key {key!r} differs from policy name {policy.name!r}")
        if self.live.get(key) is None or self.live[key].version != policy.version:
            self.live_since[key] = ts
        self.live[key] = policy

    def _apply_decision(self, decision: Decision, ts: float) -> None:
        per = self.decisions.get(decision.number) or deque(maxlen=DECISIONS_PER_NUMBER)
        per.append(decision)
        self.decisions.put(decision.number, per)
        self.recent.append(decision)
        if decision.scope in SOURCE_SCOPES:
            self.scoped.put(decision.number, decision)
        if decision.action in ENFORCING and not decision.dry_run:
            tag = (decision.policy, decision.policy_version)
            numbers = self.enforced.get(tag)
            if numbers is None:
                numbers = Bounded(self.max_numbers)
                self.enforced.put(tag, numbers)
            if decision.number not in numbers:
                numbers.put(decision.number, ts)

    # -- read-your-writes ------------------------------------------------------------------
    def wait_for(self, topic: str, partition: int, offset: int, timeout: float) -> bool:
        """Until the record at ``offset`` has been applied (False on timeout)."""
        with self.cond:
            return self.cond.wait_for(
                lambda: self.positions.get((topic, partition), -1) >= offset, timeout)

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    # -- queries (callers hold no lock; each takes it briefly) ----------------------------
    def next_version(self, name: str) -> int:
        with self.cond:
            candidates = [p.version for p in (self.live.get(name), self.shadow.get(name)) if p]
            candidates += list(self.history.get(name, {}))
            return max(candidates, default=0) + 1

    def versions(self, name: str) -> list[Policy]:
        with self.cond:
            found = dict(self.history.get(name, {}))
            for p in (self.live.get(name), self.shadow.get(name)):
                if p is not None:
                    found.setdefault(p.version, p)
            return [found[v] for v in sorted(found, reverse=True)]

    def policy_names(self) -> list[str]:
        with self.cond:
            return sorted(set(self.live) | set(self.shadow))

    def number_decisions(self, number: str) -> list[Decision]:
        with self.cond:
            return list(reversed(self.decisions.get(number) or ()))

    def covering_prefix_decisions(self, number: str) -> list[Decision]:
        """Latest decision of every range that holds ``number``, longest range first.

        Trunk decisions cannot be found from a number (the trunk is a property of a call), so
        they are not among these.
        """
        with self.cond:
            found = [self.scoped.get(decision_key(SCOPE_PREFIX, number[:n]))
                     for n in range(len(number), 0, -1)]
            return [d for d in found if d is not None]

    def live_scoped(self, now: float) -> list[Decision]:
        """Ranges and trunks whose latest decision is still in force (not an unblock, TTL
        not run out), dry-run ones included: the campaigns being acted on, newest first."""
        with self.cond:
            live = [d for _, d in self.scoped.items()
                    if d.action != "unblock" and d.decided_at + d.ttl_s > now]
        return sorted(live, key=lambda d: (-d.decided_at, d.number))

    def number_labels(self, number: str) -> list[SeenLabel]:
        with self.cond:
            return list(self.labels.get(number) or ())

    def number_acks(self, number: str) -> list[Ack]:
        with self.cond:
            return list(reversed(self.acks.get(number) or ()))

    def score_of(self, number: str) -> ScoreRecord | None:
        with self.cond:
            found = self.scores.get(number)
            return found[1] if found else None

    def recent_scores(self, since: float) -> list[ScoreRecord]:
        """Latest score of every number published at or after ``since`` (wall time)."""
        with self.cond:
            return [rec for _, (arrived, rec) in self.scores.items() if arrived >= since]

    def recent_decisions(self, limit: int) -> list[Decision]:
        with self.cond:
            return list(reversed(self.recent))[:limit]

    def audit_records(self, subject: str, limit: int) -> list[AuditRecord]:
        with self.cond:
            out: list[AuditRecord] = []
            for rec in reversed(self.audit):
                if not subject or rec.subject == subject or \
                        rec.subject.startswith(subject.rstrip("/") + "/"):
                    out.append(rec)
                    if len(out) >= limit:
                        break
            return out

    def has_label_id(self, label_id: str) -> bool:
        with self.cond:
            return label_id in self.label_ids

    def labels_by_number(self) -> dict[str, list[SeenLabel]]:
        with self.cond:
            return {n: list(seen) for n, seen in self.labels.items()}

    def enforced_by(self, name: str, version: int) -> dict[str, float]:
        with self.cond:
            numbers = self.enforced.get((name, version))
            return dict(numbers.items()) if numbers is not None else {}


class ViewFeed(threading.Thread):
    """Background reader that keeps :class:`Views` current."""

    def __init__(self, settings: Settings, views: Views) -> None:
        super().__init__(name="dialguard-api-views", daemon=True)
        self.settings = settings
        self.views = views
        self._halt = threading.Event()
        self.caught_up = threading.Event()
        self.failed: BaseException | None = None

    def stop(self) -> None:
        self._halt.set()

    def _partitions(self, consumer: Consumer) -> list[TopicPartition]:
        since_ms = int((time.time() - self.settings.api_whatif_window_s) * 1000)
        parts: list[TopicPartition] = []
        for topic in FULL_TOPICS + RECENT_TOPICS:
            md = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics[topic]
            if md.error is not None:
                raise RuntimeError(f"topic {topic} is not available: {md.error}")
            if topic in RECENT_TOPICS:
                wanted = [TopicPartition(topic, p, since_ms) for p in md.partitions]
                for tp in consumer.offsets_for_times(wanted, timeout=METADATA_TIMEOUT_S):
                    # -1: nothing that recent; start at the end (OFFSET_END).
                    parts.append(TopicPartition(topic, tp.partition,
                                                tp.offset if tp.offset >= 0 else -1))
            else:
                parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions]
        return parts

    def run(self) -> None:
        conf = {**self.settings.kafka_client_config(),
                "group.id": f"{self.settings.app_id}-api-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False, "auto.offset.reset": "earliest"}
        consumer = Consumer(conf)
        try:
            parts = self._partitions(consumer)
            consumer.assign(parts)
            while not self._halt.is_set():
                msgs = consumer.consume(CONSUME_BATCH, timeout=POLL_TIMEOUT_S)
                for msg in msgs:
                    if msg.error():
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("view feed error: %s", msg.error())
                        continue
                    self.views.apply(msg.topic(), (msg.key() or b"").decode("utf-8", "replace"),
                                     msg.value(), _ts(msg), msg.partition(), msg.offset())
                if msgs:
                    self.views.notify()
                elif not self.caught_up.is_set() and _at_end(consumer, parts):
                    self.caught_up.set()
        except BaseException as exc:  # noqa: BLE001 - a dead feed must say so loudly
            self.failed = exc
            log.exception("API view feed stopped; the API answers from stale views")
            raise
        finally:
            consumer.close()


def _at_end(consumer: Consumer, parts: list[TopicPartition]) -> bool:
    for tp in consumer.position(parts):
        low, high = watermarks(consumer, tp)
        if tp.offset < 0 and high > low and tp.topic in FULL_TOPICS:
            return False
        if 0 <= tp.offset < high:
            return False
    return True
