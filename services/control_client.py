"""Reads and writes the control topics (policies, allowlist, labels) from tools and tests.

Writers go through here so every record is validated before it reaches the compacted topics
that every worker trusts.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from services.admin import watermarks
from services.settings import Settings
from streams.policy import Policy, PolicyError, shadow_key
from streams.schema import AllowEntry, AuditRecord, Label
from streams.scope import SCOPE_TRUNK, decision_key
from streams.sink import producer_config
from streams.topics import ALLOWLIST, AUDIT, FEEDBACK, POLICY, POLICY_HISTORY

READ_TIMEOUT_S = 10.0
FLUSH_TIMEOUT_S = 15.0
WRITE_ATTEMPTS = 3
RETRY_BACKOFF_S = 1.0


def _read_compacted(settings: Settings, topic: str) -> dict[str, bytes | None]:
    """Latest value per key of a compacted topic, read from the beginning to the end."""
    consumer = Consumer({**settings.kafka_client_config(),
                         "group.id": f"dialguard-reader-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    try:
        md = consumer.list_topics(topic, timeout=READ_TIMEOUT_S).topics[topic]
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions]
        ends = {p.partition: watermarks(consumer, p)[1]
                for p in parts}
        consumer.assign(parts)
        latest: dict[str, bytes | None] = {}
        remaining = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + READ_TIMEOUT_S
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error():
                    continue
                latest[(msg.key() or b"").decode()] = msg.value()
                if msg.offset() + 1 >= ends[msg.partition()]:
                    remaining.discard(msg.partition())
        return latest
    finally:
        consumer.close()


def read_policies(settings: Settings) -> dict[str, Policy]:
    """Live policies by name (shadow candidates and the switches record are not policies)."""
    return {k: Policy.decode(v) for k, v in _read_compacted(settings, POLICY.name).items()
            if v is not None and "#" not in k}


def _produce(settings: Settings, topic: str, key: bytes, value: bytes | None) -> None:
    """Write one control record, retrying the transient errors of a freshly created topic
    (its leader may not be known yet)."""
    producer = Producer(producer_config(settings))
    errors: list[Any] = []
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        errors.clear()
        producer.produce(topic, key=key, value=value,
                         on_delivery=lambda err, _msg: errors.append(err) if err else None)
        if producer.flush(FLUSH_TIMEOUT_S) == 0 and not errors:
            return
        if attempt < WRITE_ATTEMPTS and all(e.retriable() for e in errors):
            time.sleep(RETRY_BACKOFF_S * attempt)
            continue
        break
    raise RuntimeError(f"could not write to {topic}: {errors or 'timeout'}")


def publish_policy(settings: Settings, raw: str | bytes | dict[str, Any], author: str,
                   reason: str = "") -> Policy:
    """Validate and publish a policy as the next version of its name."""
    obj = orjson.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw)
    if not isinstance(obj, dict):
        raise PolicyError("a policy must be a JSON object")
    name = obj.get("name", settings.policy_name)
    obj.update(name=name, version=next_version(settings, name), author=author,
               reason=reason or obj.get("reason", ""))
    policy = Policy.from_dict(obj)
    before = read_policies(settings).get(name)
    _produce(settings, POLICY.name, name.encode(), policy.encode())
    # Like the control API: every version is kept for rollback, and every write is audited.
    _produce(settings, POLICY_HISTORY.name, f"{name}:{policy.version}".encode(), policy.encode())
    audit = AuditRecord(id=uuid.uuid4().hex, at=time.time(), actor=author, role="direct",
                        action="policy.live", subject=f"policy/{name}", reason=policy.reason,
                        before=before.to_dict() if before else None, after=policy.to_dict())
    _produce(settings, AUDIT.name, audit.subject.encode(), audit.encode())
    return policy


def next_version(settings: Settings, name: str) -> int:
    """One more than any version of ``name`` live, in shadow or in the history."""
    versions = [0]
    for key, raw in _read_compacted(settings, POLICY.name).items():
        if raw is not None and key in (name, shadow_key(name)):
            versions.append(Policy.decode(raw).version)
    for key in _read_compacted(settings, POLICY_HISTORY.name):
        prefix, _, version = key.rpartition(":")
        if prefix == name and version.isdigit():
            versions.append(int(version))
    return max(versions) + 1


def publish_control_record(settings: Settings, key: str, value: bytes | None) -> None:
    """Write one raw ``control.policy`` record: a shadow candidate (``<name>#shadow``), the
    switches (``#switches``) or a tombstone (``None``). The caller encodes and validates it
    (``Policy.encode``, ``ControlSwitches.encode``); versions are not assigned here."""
    _produce(settings, POLICY.name, key.encode(), value)


def allow_key(entry: AllowEntry) -> str:
    """Topic key of an allowlist entry: the number or prefix, ``trunk:<switch>/<trunk>`` for a
    trunk (the key workers look trunks up by, :meth:`streams.policy.AllowList.protects_source`)."""
    return decision_key(SCOPE_TRUNK, entry.number) if entry.trunk else entry.number


def publish_allow(settings: Settings, entry: AllowEntry) -> None:
    _produce(settings, ALLOWLIST.name, allow_key(entry).encode(), entry.encode())


def publish_label(settings: Settings, label: Label) -> None:
    _produce(settings, FEEDBACK.name, label.number.encode(), label.encode())
