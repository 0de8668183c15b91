"""Live control state: the policy, its shadow, the kill switch, the allowlist and feedback labels.

Every worker must see every policy change, whatever partitions it owns, so this reader is not
part of the consumer group: it assigns itself all partitions of the control topics from the
beginning (they are compacted) and keeps reading. It runs in a thread so a slow control topic
never stalls the event stream; it only swaps whole objects (atomic under the GIL) and hands
labels over through a queue, so the worker never sees a half-applied change.

``control.policy`` carries three kinds of keys: ``<name>`` (a live policy), ``<name>#shadow``
(a candidate version evaluated beside it, whose decisions go to ``decisions.shadow`` only) and
``#switches`` (:class:`ControlSwitches`, the global kill switch). A tombstone removes a shadow
or a policy, or resets the switches to their defaults.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from services.admin import watermarks
from services.settings import Settings
from streams import metrics
from streams.policy import (SHADOW_SUFFIX, SWITCHES_KEY, AllowList, ControlSwitches, Policy,
                            PolicyError, shadow_key)
from streams.schema import AllowEntry, Label
from streams.topics import ALLOWLIST, FEEDBACK, POLICY

log = logging.getLogger(__name__)
POLL_TIMEOUT_S = 0.2
#: Labels waiting for the worker beyond this are dropped (and counted) rather than hoarded.
MAX_PENDING_LABELS = 100_000


def _kill_switched(policy: Policy, switches: ControlSwitches) -> Policy:
    """``policy`` as the worker must apply it: a dry-run copy while the kill switch is on.

    Why a copy of the policy and not a flag checked in ``decide``: ``decide`` and its
    ``same_mode`` logic already know dry-run, so a decision made under the switch is a dry-run
    decision in every respect (metrics, limiter accounting), and lifting the switch re-issues
    the numbers' actions for real on their next score.
    """
    if switches.dry_run_all and not policy.dry_run:
        return dataclasses.replace(policy, dry_run=True)
    return policy


class ControlState:
    """What the worker reads on every decision. Plain object: tests drive it directly.

    ``policies`` (live, by name), ``shadows`` (candidates, by policy name) and ``switches``
    are replaced whole by the feed thread; the effective policies derived from them are cached
    against the identity of their inputs, so they are recomputed when a record changes them,
    not once per event.
    """

    def __init__(self, policy_name: str = "default") -> None:
        self.policy_name = policy_name
        self.policies: dict[str, Policy] = {}
        self.shadows: dict[str, Policy] = {}
        self.switches = ControlSwitches()
        self.allowlist = AllowList()
        self.labels: queue.Queue[Label] = queue.Queue(maxsize=MAX_PENDING_LABELS)
        #: Further readers of every label (the source stage), each with its own queue.
        self.label_queues: list[queue.Queue[Label]] = []
        self.updated = threading.Event()
        self._effective: tuple[Policy | None, ControlSwitches, Policy] | None = None
        self._effective_shadow: tuple[Policy | None, Policy | None, ControlSwitches,
                                     Policy | None] | None = None

    @property
    def live_policy(self) -> Policy:
        """The live policy as published (built-in defaults until one is), kill switch ignored."""
        return self.policies.get(self.policy_name) or Policy(name=self.policy_name)

    @property
    def policy(self) -> Policy:
        """The live policy as the worker applies it: dry-run while the kill switch is on."""
        live, switches = self.policies.get(self.policy_name), self.switches
        cached = self._effective
        if cached is not None and cached[0] is live and cached[1] is switches:
            return cached[2]
        effective = _kill_switched(live or Policy(name=self.policy_name), switches)
        self._effective = (live, switches, effective)
        return effective

    @property
    def shadow(self) -> Policy | None:
        """The shadow candidate of the worker's policy as the worker evaluates it, or None.

        A candidate whose version is not above the live one is stale (promoted, with its
        tombstone still on the way, or overtaken by a newer live version) and is not evaluated:
        it would only duplicate the live decisions. The kill switch applies to a candidate too
        ("every decision of every policy is dry-run"), so it is judged as it would behave if it
        were promoted now.
        """
        live = self.policies.get(self.policy_name)
        candidate, switches = self.shadows.get(self.policy_name), self.switches
        cached = self._effective_shadow
        if cached is not None and cached[0] is live and cached[1] is candidate \
                and cached[2] is switches:
            return cached[3]
        live_version = live.version if live is not None else 0
        effective = None if candidate is None or candidate.version <= live_version \
            else _kill_switched(candidate, switches)
        self._effective_shadow = (live, candidate, switches, effective)
        return effective

    @property
    def dry_run_all(self) -> bool:
        return self.switches.dry_run_all

    def apply_policy(self, key: str, raw: bytes | None) -> None:
        """Apply one ``control.policy`` record; raises PolicyError (the feed counts it) if bad."""
        if key == SWITCHES_KEY:
            self._apply_switches(raw)
        elif key.endswith(SHADOW_SUFFIX):
            self._apply_shadow(key[:-len(SHADOW_SUFFIX)], raw)
        else:
            self._apply_live(key, raw)

    def _apply_live(self, key: str, raw: bytes | None) -> None:
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
            self._report_shadow()

    def _apply_shadow(self, name: str, raw: bytes | None) -> None:
        if not name:
            raise PolicyError(f"shadow key {shadow_key(name)!r} names no policy")
        if raw is None:
            removed = self.shadows.pop(name, None)
            if name == self.policy_name:
                self._report_shadow()
                if removed is not None:
                    log.info("shadow of policy %s removed (was v%d)", name, removed.version)
            return
        policy = Policy.decode(raw)
        if policy.name != name:
            raise PolicyError(f"shadow key {shadow_key(name)!r} holds policy "
                              f"{policy.name!r}; a shadow must carry its live policy's name")
        self.shadows[name] = policy
        metrics.init_shadow_series(name)
        if name == self.policy_name:
            self._report_shadow()
            log.info("shadow of policy %s: v%d%s (author %s: %s)", name, policy.version,
                     " evaluated beside the live version, decisions to decisions.shadow"
                     if self.shadow is not None else " not above the live version: ignored",
                     policy.author, policy.reason)

    def _report_shadow(self) -> None:
        """The gauge shows the candidate actually evaluated: 0 for none or a stale one."""
        shadow = self.shadow
        metrics.SHADOW_POLICY_VERSION.labels(self.policy_name).set(
            shadow.version if shadow is not None else 0)

    def _apply_switches(self, raw: bytes | None) -> None:
        switches = ControlSwitches() if raw is None else ControlSwitches.decode(raw)
        was = self.switches.dry_run_all
        self.switches = switches
        metrics.DRY_RUN_ALL.set(1 if switches.dry_run_all else 0)
        if switches.dry_run_all != was:
            log.warning("kill switch %s (author %s: %s): every decision is %s",
                        "ON" if switches.dry_run_all else "off", switches.author,
                        switches.reason, "dry-run" if switches.dry_run_all else "live again")

    def apply_allow(self, key: str, raw: bytes | None) -> None:
        self.allowlist.apply(key, None if raw is None else AllowEntry.decode(raw))

    def label_queue(self) -> "queue.Queue[Label]":
        """A queue of its own that receives every label from now on (for a second stage)."""
        q: queue.Queue[Label] = queue.Queue(maxsize=MAX_PENDING_LABELS)
        self.label_queues.append(q)
        return q

    def add_label(self, raw: bytes) -> None:
        label = Label.decode(raw)
        for q in (self.labels, *self.label_queues):
            try:
                q.put_nowait(label)
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
            low, high = watermarks(consumer, tp)
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
