"""The topic catalog: the only place a topic name, its partitioning and its retention are spelled.

Probes, switches and other teams' consumers depend on these names; change them only with a
migration note in the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from aiokafka.partitioner import murmur2

DAY_MS = 24 * 3600 * 1000
#: Highest ``min.insync.replicas`` given to a topic: with acks=all a write then survives the
#: loss of any one broker, while one broker of a 3-node cluster may be down (maintenance, crash)
#: without producers failing. More would stop writes whenever two brokers are out.
MAX_MIN_INSYNC_REPLICAS = 2


def min_insync_replicas(replication: int) -> int:
    """The ``min.insync.replicas`` of a topic with ``replication`` copies: one less than the
    copies, at most :data:`MAX_MIN_INSYNC_REPLICAS`, at least 1.

    Why set it per topic: acks=all only waits for the replicas *in sync*, and a cluster left at
    Kafka's default (1) acknowledges a write held by the leader alone, which a crash of that
    leader then loses. One less than the copies keeps producing possible with one broker down.

    >>> [min_insync_replicas(r) for r in (1, 2, 3, 5)]
    [1, 1, 2, 2]
    """
    if replication < 1:
        raise ValueError(f"replication factor must be at least 1, got {replication}")
    return max(1, min(replication - 1, MAX_MIN_INSYNC_REPLICAS))


@dataclass(frozen=True)
class TopicSpec:
    name: str
    #: None: the settings' ``topic_partitions`` (keyed topics that workers split among them).
    partitions: int | None
    cleanup_policy: str
    retention_ms: int
    key: str
    value: str

    def configs(self, replication: int = 1) -> dict[str, str]:
        """Topic configs for a topic created with ``replication`` copies (min ISR follows it)."""
        conf = {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms),
                "min.insync.replicas": str(min_insync_replicas(replication))}
        if "compact" in self.cleanup_policy:
            # Compact promptly so a restarting switch or worker reads a short log.
            conf["min.cleanable.dirty.ratio"] = "0.1"
            conf["segment.ms"] = str(3600 * 1000)
        return conf

    def partition_count(self, default: int) -> int:
        return self.partitions if self.partitions is not None else default


SIGNALING_EVENTS = TopicSpec(
    "signaling.events", None, "delete", 3 * DAY_MS, "caller number", "SignalingEvent")
SIGNALING_DLQ = TopicSpec(
    "signaling.events.dlq", 1, "delete", 14 * DAY_MS, "none",
    "original bytes; headers dlq.reason, dlq.source, dlq.topic, dlq.partition, dlq.offset")
#: Accepted events re-keyed by where they came from (``trunk:<switch>/<trunk>``, and
#: ``prefix:<digits>`` per configured range length), written by the per-number stage for the
#: source stage. Internal: a day is enough to replay an outage of the source stage.
SOURCE_EVENTS = TopicSpec(
    "signaling.sources", None, "delete", 1 * DAY_MS, "source key (trunk:<switch>/<trunk>, "
    "prefix:<digits>)", "SourceEvent")
DECISIONS = TopicSpec(
    "switch.control.decisions", None, "compact,delete", 30 * DAY_MS,
    "number; prefix:<digits>, trunk:<switch>/<trunk> for scoped decisions", "Decision")
ACKS = TopicSpec("switch.control.acks", None, "delete", 7 * DAY_MS, "number", "Ack")
POLICY = TopicSpec("control.policy", 1, "compact", -1, "policy name", "Policy")
ALLOWLIST = TopicSpec("control.allowlist", 1, "compact", -1,
                      "number, prefix, or trunk:<switch>/<trunk>", "AllowEntry")
FEEDBACK = TopicSpec("feedback.labels", None, "delete", 90 * DAY_MS, "number", "Label")
SCORES = TopicSpec("scores", None, "delete", 7 * DAY_MS, "number", "ScoreRecord")
#: Every write made through the control API or CLI (who, when, what, before/after); kept forever.
AUDIT = TopicSpec("control.audit", 1, "delete", -1, "subject (e.g. policy/default)", "AuditRecord")
#: Every policy version ever published, so any of them can be rolled back to (control.policy
#: keeps only the newest per name once compacted).
POLICY_HISTORY = TopicSpec("control.policy.history", 1, "compact", -1, "name:version", "Policy")
#: What a policy in shadow rollout would have decided; never consumed by switches.
SHADOW_DECISIONS = TopicSpec(
    "decisions.shadow", None, "delete", 7 * DAY_MS, "number", "Decision (shadow policy)")

CATALOG: tuple[TopicSpec, ...] = (
    SIGNALING_EVENTS, SIGNALING_DLQ, SOURCE_EVENTS, DECISIONS, ACKS, POLICY, ALLOWLIST,
    FEEDBACK, SCORES,
    AUDIT, POLICY_HISTORY, SHADOW_DECISIONS)


def by_name(name: str) -> TopicSpec:
    for spec in CATALOG:
        if spec.name == name:
            return spec
    raise KeyError(f"{name!r} is not in the topic catalog")


#: Keys whose partition is remembered (a pure-Python murmur2 costs a few microseconds).
PARTITION_CACHE = 1 << 18


@lru_cache(maxsize=PARTITION_CACHE)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's Java client, aiokafka and librdkafka's ``murmur2_random`` give a
    keyed record. Batch records name their partition explicitly; computing it with the same
    hash keeps a caller's (or a source's) events on one partition whether they arrive one per
    record from another producer or in batches from dialguard's own."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
