"""``dialguard switch-adapter``: applies decisions to a Kamailio switch and acknowledges them.

Decisions on ``switch.control.decisions`` become entries of Kamailio's htables (see
``services/kamailio/dialguard.cfg``) over its JSON-RPC HTTP interface:

========== ===================================================================================
block      ``blocked[number]`` set with the decision's remaining TTL as its own expiry
           (``htable.setxs``); any rate-limit entry of the number is removed
rate_limit ``ratelimit[number] = adapter_rate_limit_calls`` INVITEs per window, same expiry
           (``htable.setxi``); any block entry is removed
unblock    both entries removed (``htable.delete``; a missing entry is not an error)
label      nothing: a label annotates a number, it does not act on traffic (ack "skipped")
dry run    nothing, whatever the action: dry-run decisions are never applied (ack "skipped")
========== ===================================================================================

Range (``prefix``) and ``trunk`` decisions land in htables ``prefix`` and ``trunk``, one entry
per range or trunk whose value says block or rate limit and which part of the calls
(:mod:`services.switch_entries` holds that contract with ``dialguard.cfg``); a newer decision
on the same key overwrites the entry, an unblock deletes it. A trunk decision for another
switch is acked "skipped" (``other_switch``); a decision this switch cannot apply exactly (a
match it does not understand, a range too short, a key that does not fit its scope) is acked
"skipped" with why, never applied wider than it was decided.

With ``--log-only`` (``make run`` on a machine without Kamailio) no switch is attached: every
decision that would change one is logged with what would have been done and acked "skipped"
(``log_only``), so nobody mistakes the embedded default for an enforcing network.

Why these rules:

* **Never older over newer.** The adapter remembers the version ``(decided_at, trigger_ts)`` of
  the decision it last applied per number and skips anything not newer, so a replayed or
  reordered decision cannot resurrect a block that was lifted.
* **Converge after a restart.** On start the adapter reads the compacted decisions topic from
  the beginning to its end, keeps the newest applicable decision per number (skipping expired
  ones), applies those, and consumes on from the offsets where the rebuild stopped, so
  nothing falls between rebuild and live consumption.
* **Heal a restarted switch.** A Kamailio restarted under a running adapter has empty htables.
  The adapter asks it every ``adapter_switch_check_s`` for ``core.uptime``; when ``up_since``
  changed or the uptime went back, it re-applies the decisions in force from its own view
  (the newest applied block or rate limit per key, with their remaining TTL), acked
  ``applied`` with ``resync:`` and counted in ``dialguard_switch_resyncs_total``. Its own view,
  not the topic: it is exactly what the switch held, and needs no re-read of the topic.
* **Never lose a decision.** A JSON-RPC failure is retried with exponential backoff up to a cap;
  then the decision is acked ``failed`` with the error and kept pending (the newest per
  number), retried every ``adapter_pending_retry_s`` until Kamailio takes it. While Kamailio is
  known down, new decisions join the pending set instead of each waiting out its own backoff.

Every applied decision gets an ack on ``switch.control.acks`` with its latency (``applied_at -
decided_at``); metrics: ``dialguard_switch_acks_total{status}``, ``dialguard_switch_apply_seconds``
and ``dialguard_switch_blocked_entries``.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TextIO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from services.admin import watermarks
from services.kamailio_process import RpcError, rpc_call
from services.log_limit import LogLimiter
from services.settings import Settings
from services.switch_entries import Tables, Target, Unsupported, entry_value, target_of
from streams.schema import Ack, Decision
from streams.scope import SCOPE_NUMBER, SCOPE_PREFIX, SCOPE_TRUNK, parse_key, split_trunk_id
from streams.sink import producer_config
from streams.topics import ACKS, DECISIONS

log = logging.getLogger("dialguard.switch")

Version = tuple[float, float]

#: Consumer group of the adapter of switch ``name`` (offsets only: it assigns all partitions).
GROUP_PREFIX = "dialguard-switch-"
POLL_S = 0.5
FETCH_WAIT_MS = 100
METADATA_TIMEOUT_S = 10.0
#: The rebuild gives up waiting for the end of the topic after this long (then consumes on).
REBUILD_TIMEOUT_S = 60.0
FLUSH_TIMEOUT_S = 15.0
#: A status line at most this often while something changes.
PROGRESS_EVERY_S = 30.0
#: Value stored in the blocked htable (the cfg only tests for presence).
BLOCKED_VALUE = "1"
#: What the adapter logs once it has rebuilt and consumes live (tests and ``make run`` wait on it).
READY_MARK = "switch adapter ready"

ACKS_TOTAL = Counter("dialguard_switch_acks_total",
                     "Decisions the switch adapter applied or failed to apply", ["status"])
SKIPPED_TOTAL = Counter("dialguard_switch_skipped_total",
                        "Decisions the switch adapter deliberately did not apply, by why",
                        ["why"])
APPLY_SECONDS = Histogram("dialguard_switch_apply_seconds",
                          "Wall time from a decision's decided_at to its entry in the switch "
                          "(live decisions; the start-up rebuild is not counted)",
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
BLOCKED_ENTRIES = Gauge("dialguard_switch_blocked_entries",
                        "Numbers, caller ranges and trunks the adapter holds a live block "
                        "entry for in the switch")
PENDING = Gauge("dialguard_switch_pending_decisions",
                "Decisions that failed to apply and are being retried")
BAD_DECISIONS = Counter("dialguard_switch_bad_decisions_total",
                        "Records on the decisions topic that are not decisions")
RESYNCS = Counter("dialguard_switch_resyncs_total",
                  "Restarts of the switch the adapter found (Kamailio's core.uptime went back) "
                  "and healed by re-applying the decisions in force")
#: A failed uptime check is logged at most this often (the switch is down: the pending
#: decisions' acks say so already).
CHECK_LOG_EVERY_S = 60.0
for _status in ("applied", "failed"):
    ACKS_TOTAL.labels(_status)

# Why a decision is skipped (bounded: a metric label and the ack's detail prefix).
SKIP_DRY_RUN = "dry_run"
SKIP_LABEL = "label"
SKIP_OLDER = "older"
SKIP_EXPIRED = "expired"
SKIP_UNKNOWN = "unknown_action"
#: ``--log-only``: no switch attached, the adapter says what it would have done.
SKIP_LOG_ONLY = "log_only"


# --- pure decision logic ------------------------------------------------------------------------
@dataclass(frozen=True)
class RpcOp:
    method: str
    params: tuple[Any, ...]


@dataclass(frozen=True)
class Plan:
    """What to do with one decision: ``ops`` to run (empty = nothing), or why it is skipped."""

    ops: tuple[RpcOp, ...] = ()
    skip: str = ""
    detail: str = ""
    #: Wall time the entry lapses (0: no entry left behind).
    expires_at: float = 0.0

    @property
    def applies(self) -> bool:
        return not self.skip


def version_of(decision: Decision) -> Version:
    """Decisions of one number are ordered by when they were decided, then by event time."""
    return (decision.decided_at, decision.trigger_ts)


def remaining_ttl(decision: Decision, now: float) -> float:
    """Seconds the decision still holds: its TTL minus the time since it was decided."""
    return decision.ttl_s - (now - decision.decided_at)


def plan_decision(decision: Decision, last: Version | None, now: float,
                  tables: Tables, switch: str) -> Plan:
    """What switch ``switch`` must do with ``decision`` given the version last applied for
    its key (the number, ``prefix:<digits>`` or ``trunk:<switch>/<trunk>``)."""
    if decision.dry_run:
        return Plan(skip=SKIP_DRY_RUN, detail="dry run: never applied to the switch")
    if decision.action == "label":
        return Plan(skip=SKIP_LABEL, detail="label: annotates the number, nothing to apply")
    if decision.action not in ("block", "rate_limit", "unblock"):
        return Plan(skip=SKIP_UNKNOWN, detail=f"unknown action {decision.action!r}")
    try:
        target = target_of(decision, switch, tables)
    except Unsupported as exc:
        return Plan(skip=exc.why, detail=exc.detail)
    if last is not None and version_of(decision) <= last:
        return Plan(skip=SKIP_OLDER, detail=f"not newer than the decision applied "
                                            f"(decided_at {last[0]:.3f})")
    if target.scope != SCOPE_NUMBER:
        return _plan_entry(decision, target, now, tables)
    number = decision.number
    drop_block = RpcOp("htable.delete", (tables.blocked, number))
    drop_limit = RpcOp("htable.delete", (tables.ratelimit, number))
    if decision.action == "unblock":
        return Plan(ops=(drop_block, drop_limit), detail="unblocked: entries removed")
    left = remaining_ttl(decision, now)
    if left <= 0:
        return Plan(ops=(drop_block, drop_limit), detail=f"{decision.action} expired "
                    f"{-left:.0f}s before it reached the switch: entries removed")
    expire = max(1, math.ceil(left))
    if decision.action == "block":
        ops = (RpcOp("htable.setxs", (tables.blocked, number, BLOCKED_VALUE, expire)),
               drop_limit)
        detail = f"blocked for {expire}s"
    else:
        ops = (RpcOp("htable.setxi", (tables.ratelimit, number, tables.rate_limit_calls,
                                      expire)), drop_block)
        detail = f"rate limited to {tables.rate_limit_calls} INVITEs per window for {expire}s"
    return Plan(ops=ops, detail=detail, expires_at=now + expire)


def _plan_entry(decision: Decision, target: Target, now: float, tables: Tables) -> Plan:
    """A range or trunk decision: one entry of htable ``prefix`` / ``trunk`` set or deleted."""
    table = tables.prefix if target.scope == SCOPE_PREFIX else tables.trunk
    drop = RpcOp("htable.delete", (table, target.key))
    where = target.describe()
    if decision.action == "unblock":
        return Plan(ops=(drop,), detail=f"unblocked: {where} entry removed")
    left = remaining_ttl(decision, now)
    if left <= 0:
        return Plan(ops=(drop,), detail=f"{decision.action} expired {-left:.0f}s before it "
                    f"reached the switch: {where} entry removed")
    expire = max(1, math.ceil(left))
    calls = tables.calls(target.scope)
    value = entry_value(decision.action, calls, target.match)
    if decision.action == "block":
        detail = f"blocked for {expire}s: {where}"
    else:
        detail = f"rate limited to {calls} INVITEs per window for {expire}s: {where}"
    return Plan(ops=(RpcOp("htable.setxs", (table, target.key, value, expire)),),
                detail=detail, expires_at=now + expire)


def unblock_of_key(key: str, now: float) -> Decision:
    """What a tombstone on the decisions topic means: the key's decision is gone, so whatever
    the switch holds for it (number, range or trunk) is lifted."""
    scope, target = parse_key(key)
    switch = None
    if scope == SCOPE_TRUNK:
        try:
            switch = split_trunk_id(target)[0]
        except ValueError:
            switch = None
    return Decision(number=key, action="unblock", ttl_s=0, score=0.0,
                    reasons=["tombstone on the decisions topic"], policy="", policy_version=0,
                    decided_at=now, trigger_ts=0.0, scope=scope, target=target, switch=switch)


def applies_here(decision: Decision, switch: str, tables: Tables) -> bool:
    """Whether this switch can apply the decision at all (not another switch's trunk, not a
    match or target it refuses); the rebuild leaves the others alone quietly, they were acked
    "skipped" with why when they came."""
    try:
        target_of(decision, switch, tables)
    except Unsupported:
        return False
    return True


def fold_latest(decisions: Iterable[tuple[str, Decision | None]]) -> dict[str, Decision]:
    """Newest enforcing decision per number from ``(key, decision or tombstone)`` records.

    Dry runs and labels change nothing on a switch, so they never hide the block or rate limit
    before them; a tombstone forgets the number.
    """
    latest: dict[str, Decision] = {}
    for key, decision in decisions:
        if decision is None:
            latest.pop(key, None)
            continue
        if decision.dry_run or decision.action not in ("block", "rate_limit", "unblock"):
            continue
        held = latest.get(decision.number)
        if held is None or version_of(decision) > version_of(held):
            latest[decision.number] = decision
    return latest


def rebuild_plan(latest: dict[str, Decision], now: float, switch: str = "",
                 tables: Tables = Tables()) -> list[Decision]:
    """Decisions a rebuilt switch needs: live blocks and rate limits, and unblocks (a switch
    that kept running may still hold the entry); expired ones are left out, and so are
    decisions this switch does not apply (another switch's trunk, a match it does not know)."""
    return [d for d in latest.values()
            if (d.action == "unblock" or remaining_ttl(d, now) > 0)
            and (not switch or applies_here(d, switch, tables))]


def backoff_delays(attempts: int, initial: float, cap: float) -> list[float]:
    """Sleeps between ``attempts`` tries: doubling from ``initial``, never above ``cap``."""
    return [min(cap, initial * (2 ** i)) for i in range(max(0, attempts - 1))]


# --- Kamailio JSON-RPC ------------------------------------------------------------------------
class KamailioRpc:
    """The adapter's Kamailio: :func:`rpc_call` with its timeout, numbered requests, and a
    delete of a missing entry taken as done."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._id = 0

    def call(self, method: str, *params: Any) -> Any:
        self._id += 1
        return rpc_call(self.url, method, *params, timeout=self.timeout, request_id=self._id)

    def run(self, op: RpcOp) -> None:
        try:
            self.call(op.method, *op.params)
        except RpcError as exc:
            # Deleting what is not there leaves the switch as wanted.
            if op.method == "htable.delete" and "not found" in str(exc).lower():
                return
            raise


# --- the adapter ------------------------------------------------------------------------------
@dataclass
class Pending:
    decision: Decision
    attempts: int
    error: str


@dataclass
class Tally:
    applied: int = 0
    failed: int = 0
    skipped: int = 0
    rebuilt: int = 0


class SwitchAdapter:
    """Consumes decisions for one switch, applies them, publishes acks."""

    def __init__(self, settings: Settings, rpc: KamailioRpc | None = None,
                 clock: Callable[[], float] = time.time,
                 progress: TextIO | None = sys.stderr, log_only: bool = False) -> None:
        self.settings = settings
        self.log_only = log_only
        self.tables = Tables.of(settings)
        self.rpc = rpc or KamailioRpc(settings.kamailio_rpc_url, settings.adapter_rpc_timeout_s)
        self.clock = clock
        self.progress = progress
        self.switch = settings.switch_name
        self.applied: dict[str, Version] = {}
        self.blocked_until: dict[str, float] = {}
        self.pending: dict[str, Pending] = {}
        #: The decision in force per key on the switch (the newest applied block or rate
        #: limit, not yet lapsed): what a restarted switch must be given again.
        self.in_force: dict[str, Decision] = {}
        #: Kamailio's ``(up_since, uptime)`` at the last look; None before the first.
        self._switch_seen: tuple[str, float] | None = None
        self._last_switch_check = 0.0
        #: A resync that the switch interrupted, to finish at the next look.
        self._resync_due = False
        self._check_log = LogLimiter(log, CHECK_LOG_EVERY_S)
        self.tally = Tally()
        self.producer = Producer(producer_config(settings), logger=log)
        self.consumer = Consumer({**settings.kafka_client_config(),
                                  "group.id": GROUP_PREFIX + self.switch,
                                  "enable.auto.commit": True,
                                  "enable.auto.offset.store": False,
                                  "auto.offset.reset": "earliest",
                                  # A thin topic: do not let the broker sit on a fetch.
                                  "fetch.wait.max.ms": FETCH_WAIT_MS})
        self._stopping = False
        self._last_retry = 0.0
        self._last_progress = 0.0
        self._progress_seen: tuple[int, ...] = ()

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        self._stopping = True

    def run(self, stop_after_s: float = 0.0) -> int:
        started = time.monotonic()
        try:
            ends = self.rebuild()
            self.check_switch(force=True)  # the identity of the switch the rebuild filled
            self._refresh_gauges()
            self.consumer.assign([TopicPartition(DECISIONS.name, p, off)
                                  for p, off in ends.items()])
            target = ("LOG ONLY, no switch attached: decisions are logged, not applied"
                      if self.log_only else f"kamailio {self.settings.kamailio_rpc_url}")
            log.info("%s for switch %s (%s): %d entries rebuilt, consuming %s",
                     READY_MARK, self.switch, target, self.tally.rebuilt, DECISIONS.name)
            while not self._stopping:
                if stop_after_s and time.monotonic() - started > stop_after_s:
                    break
                for msg in self.consumer.consume(100, timeout=POLL_S):
                    if msg.error():
                        log.warning("consumer: %s", msg.error())
                        continue
                    self.handle_record(msg.key(), msg.value())
                    self.consumer.store_offsets(msg)
                self.check_switch()
                self.retry_pending()
                self.producer.poll(0)
                self._refresh_gauges()
                self._maybe_progress()
        finally:
            left = self.producer.flush(FLUSH_TIMEOUT_S)
            if left:
                log.error("%d acks not delivered before shutdown", left)
            self.consumer.close()
            self._print_progress(final=True)
        return 0

    # -- rebuild -----------------------------------------------------------------------------
    def rebuild(self) -> dict[int, int]:
        """Apply the newest live decision per number from the whole topic; return where it ended."""
        md = self.consumer.list_topics(DECISIONS.name, timeout=METADATA_TIMEOUT_S)
        topic = md.topics.get(DECISIONS.name)
        if topic is None or topic.error is not None or not topic.partitions:
            raise RuntimeError(f"topic {DECISIONS.name} is missing on "
                               f"{self.settings.kafka_bootstrap}: run `dialguard topics create`")
        parts = sorted(topic.partitions)
        ends: dict[int, int] = {}
        remaining: set[int] = set()
        for p in parts:
            low, high = watermarks(self.consumer, TopicPartition(DECISIONS.name, p))
            ends[p] = high
            if high > low:  # retention may have emptied a partition whose end is not 0
                remaining.add(p)
        self.consumer.assign([TopicPartition(DECISIONS.name, p, OFFSET_BEGINNING) for p in parts])
        records: list[tuple[str, Decision | None]] = []
        deadline = time.monotonic() + REBUILD_TIMEOUT_S
        while remaining and time.monotonic() < deadline and not self._stopping:
            for msg in self.consumer.consume(1000, timeout=POLL_S):
                if msg.error():
                    continue
                if msg.offset() < ends[msg.partition()]:
                    record = self._decode(msg.key(), msg.value())
                    if record is not None:
                        records.append(record)
                if msg.offset() + 1 >= ends[msg.partition()]:
                    remaining.discard(msg.partition())
        if remaining:
            log.error("rebuild: partitions %s not read to their end within %.0fs; consuming on",
                      sorted(remaining), REBUILD_TIMEOUT_S)
        self.consumer.unassign()
        latest = fold_latest(records)
        now = self.clock()
        todo = rebuild_plan(latest, now, self.switch, self.tables)
        print(f"[switch-adapter] rebuild: {len(records)} decision records, {len(latest)} "
              f"numbers, {len(todo)} to apply to {self.switch}", file=self.progress or sys.stderr,
              flush=True)
        before = self.tally.applied
        for decision in todo:
            self.handle(decision, rebuild=True)
        # What lapsed needs nothing on the switch, but a late copy of anything older than it
        # must still be recognised as older.
        for number, decision in latest.items():
            self.applied.setdefault(number, version_of(decision))
        self.tally.rebuilt = self.tally.applied - before
        return ends

    # -- one decision ------------------------------------------------------------------------
    def _decode(self, key: bytes | None, value: bytes | None) -> tuple[str, Decision | None] | None:
        name = (key or b"").decode(errors="replace")
        if value is None:
            return (name, None)
        try:
            return (name, Decision.decode(value))
        except (TypeError, ValueError) as exc:
            BAD_DECISIONS.inc()
            log.error("not a decision (key %r): %s: %r", name, exc, value[:120])
            return None

    def handle_record(self, key: bytes | None, value: bytes | None) -> None:
        record = self._decode(key, value)
        if record is None:
            return
        number, decision = record
        if decision is None:
            # A tombstone: the number has no decision any more; lift what the switch holds.
            decision = unblock_of_key(number, self.clock())
        self.handle(decision)

    def handle(self, decision: Decision, rebuild: bool = False) -> None:
        now = self.clock()
        queued = self.pending.get(decision.number)
        last = self.applied.get(decision.number)
        if queued is not None and (last is None or version_of(queued.decision) > last):
            last = version_of(queued.decision)
        plan = plan_decision(decision, last, now, self.tables, self.switch)
        if not plan.applies:
            self.tally.skipped += 1
            SKIPPED_TOTAL.labels(plan.skip).inc()
            self._ack(decision, "skipped", plan.detail, attempts=0, applied_at=0.0)
            return
        if self.log_only:
            self.applied[decision.number] = version_of(decision)
            self.tally.skipped += 1
            SKIPPED_TOTAL.labels(SKIP_LOG_ONLY).inc()
            calls = "; ".join(f"{op.method}{op.params}" for op in plan.ops)
            log.info("log only, not applied: %s %s (%s) would be %s", decision.action,
                     decision.number, plan.detail, calls)
            self._ack(decision, "skipped", f"log only, no switch attached: would be "
                      f"{plan.detail}", attempts=0, applied_at=0.0)
            return
        if self.pending:
            # Kamailio is known down: queue behind what already waits, do not stall the stream.
            error = next(iter(self.pending.values())).error
            self._fail(decision, 0, f"switch unreachable ({error})")
            return
        self._apply(decision, plan, rebuild=rebuild, attempts_before=0,
                    tries=self.settings.adapter_retry_attempts)

    def _apply(self, decision: Decision, plan: Plan, rebuild: bool, attempts_before: int,
               tries: int) -> bool:
        delays = backoff_delays(tries, self.settings.adapter_retry_initial_s,
                                self.settings.adapter_retry_max_s)
        error = ""
        attempts = attempts_before
        for i in range(tries):
            attempts += 1
            try:
                for op in plan.ops:
                    self.rpc.run(op)
                break
            except RpcError as exc:
                error = str(exc)
                if i < len(delays) and not self._stopping:
                    time.sleep(delays[i])
        else:
            held = self.pending.get(decision.number)
            if held is not None and held.decision is decision:
                held.attempts, held.error = attempts, error  # a retry of a pending one
            else:
                self._fail(decision, attempts, error)
            return False
        applied_at = self.clock()
        self.applied[decision.number] = version_of(decision)
        if decision.action == "block" and plan.expires_at > applied_at:
            self.blocked_until[decision.number] = plan.expires_at
        else:
            self.blocked_until.pop(decision.number, None)
        if decision.action in ("block", "rate_limit") and plan.expires_at > applied_at:
            self.in_force[decision.number] = decision
        else:
            self.in_force.pop(decision.number, None)
        self.pending.pop(decision.number, None)
        PENDING.set(len(self.pending))
        self.tally.applied += 1
        ACKS_TOTAL.labels("applied").inc()
        if not rebuild:
            APPLY_SECONDS.observe(max(0.0, applied_at - decision.decided_at))
        detail = ("rebuild: " if rebuild else "") + plan.detail
        self._ack(decision, "applied", detail, attempts=attempts, applied_at=applied_at,
                  expires_at=plan.expires_at)
        return True

    def _fail(self, decision: Decision, attempts: int, error: str) -> None:
        """Ack "failed" once per decision and keep it pending (the newest per number)."""
        self.pending[decision.number] = Pending(decision, attempts, error)
        PENDING.set(len(self.pending))
        self.tally.failed += 1
        ACKS_TOTAL.labels("failed").inc()
        self._ack(decision, "failed", f"{error}; kept pending, retried every "
                  f"{self.settings.adapter_pending_retry_s:.0f}s", attempts=attempts,
                  applied_at=0.0)
        log.warning("could not apply %s %s after %d attempts: %s", decision.action,
                    decision.number, attempts, error)

    def retry_pending(self, force: bool = False) -> None:
        """Retry pending decisions (oldest first) once per ``adapter_pending_retry_s``."""
        if not self.pending:
            return
        now = time.monotonic()
        if not force and now - self._last_retry < self.settings.adapter_pending_retry_s:
            return
        self._last_retry = now
        for number in sorted(self.pending, key=lambda n: version_of(self.pending[n].decision)):
            item = self.pending.get(number)
            if item is None:
                continue
            plan = plan_decision(item.decision, self.applied.get(number), self.clock(),
                                 self.tables, self.switch)
            if not plan.applies:
                self.pending.pop(number, None)
                continue
            if not self._apply(item.decision, plan, rebuild=False,
                               attempts_before=item.attempts, tries=1):
                break  # still down: try again next round
        PENDING.set(len(self.pending))

    # -- a restarted switch ------------------------------------------------------------------
    def check_switch(self, force: bool = False) -> bool:
        """Every ``adapter_switch_check_s``: ask Kamailio since when it is up; if it restarted
        since the last look (``up_since`` changed or ``uptime`` went back), resync it. Returns
        whether a resync ran to its end."""
        every = self.settings.adapter_switch_check_s
        if self.log_only or every <= 0:
            return False
        now = time.monotonic()
        if not force and now - self._last_switch_check < every:
            return False
        self._last_switch_check = now
        try:
            up = self.rpc.call("core.uptime")
            seen = (str(up["up_since"]), float(up["uptime"]))
        except (RpcError, KeyError, TypeError, ValueError) as exc:
            # Down (or not a Kamailio answer): keep the last identity, so that the switch that
            # comes back is recognised as restarted or not.
            self._check_log.warning("check", "cannot ask switch %s its uptime: %s", self.switch,
                                    exc)
            return False
        last, self._switch_seen = self._switch_seen, seen
        restarted = last is not None and (seen[0] != last[0] or seen[1] < last[1])
        if restarted:
            RESYNCS.inc()
            log.warning("switch %s restarted (up since %s, was up since %s, %.0fs up then): "
                        "its tables are empty, re-applying the %d decisions in force",
                        self.switch, seen[0], last[0], last[1], len(self.in_force))  # type: ignore[index]
        elif not self._resync_due:
            return False
        return self.resync()

    def resync(self) -> bool:
        """Re-apply every decision in force (oldest first, remaining TTL from its decided_at),
        except those a newer pending decision replaces (that one is applied right after). On
        a failure the rest waits for the next look at the switch."""
        now = self.clock()
        todo = sorted((d for key, d in self.in_force.items()
                       if key not in self.pending and remaining_ttl(d, now) > 0),
                      key=version_of)
        for done, decision in enumerate(todo):
            plan = plan_decision(decision, None, now, self.tables, self.switch)
            if not plan.applies:
                continue
            try:
                for op in plan.ops:
                    self.rpc.run(op)
            except RpcError as exc:
                self._resync_due = True
                log.warning("resync of switch %s stopped after %d of %d decisions: %s; "
                            "finishing at the next check", self.switch, done, len(todo), exc)
                return False
            ACKS_TOTAL.labels("applied").inc()
            self._ack(decision, "applied", f"resync: {plan.detail}", attempts=1,
                      applied_at=self.clock(), expires_at=plan.expires_at)
        self._resync_due = False
        log.warning("switch %s resynced: %d decisions in force re-applied", self.switch,
                    len(todo))
        self.retry_pending(force=True)
        return True

    # -- outputs -----------------------------------------------------------------------------
    def _ack(self, decision: Decision, status: str, detail: str, attempts: int,
             applied_at: float, expires_at: float = 0.0) -> None:
        latency = max(0.0, applied_at - decision.decided_at) if applied_at else 0.0
        ack = Ack(number=decision.number, action=decision.action, status=status,  # type: ignore[arg-type]
                  latency_s=round(latency, 6), detail=detail, switch=self.switch,
                  decided_at=decision.decided_at, trigger_ts=decision.trigger_ts,
                  applied_at=applied_at, attempts=attempts, expires_at=expires_at,
                  policy=decision.policy, policy_version=decision.policy_version)
        while True:
            try:
                self.producer.produce(ACKS.name, key=decision.number.encode(),
                                      value=ack.encode(), on_delivery=self._on_delivery)
                break
            except BufferError:
                self.producer.poll(0.1)
            except KafkaException as exc:
                log.error("cannot produce ack: %s", exc)
                raise
        self.producer.poll(0)

    @staticmethod
    def _on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            log.error("ack delivery to %s failed: %s", msg.topic(), err)

    def _refresh_gauges(self) -> None:
        now = self.clock()
        for number in [n for n, until in self.blocked_until.items() if until <= now]:
            del self.blocked_until[number]
        for number in [n for n, d in self.in_force.items() if remaining_ttl(d, now) <= 0]:
            del self.in_force[number]
        BLOCKED_ENTRIES.set(len(self.blocked_until))

    def _maybe_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_S:
            self._print_progress()

    def _print_progress(self, final: bool = False) -> None:
        seen = (self.tally.applied, self.tally.failed, self.tally.skipped, len(self.pending))
        if not final and seen == self._progress_seen:
            return
        self._progress_seen = seen
        self._last_progress = time.monotonic()
        print(f"[switch-adapter] {'done. ' if final else ''}{self.switch}: "
              f"{self.tally.applied} applied, {self.tally.failed} failed, "
              f"{self.tally.skipped} skipped, {len(self.pending)} pending, "
              f"{len(self.blocked_until)} blocked entries live",
              file=self.progress or sys.stderr, flush=True)


# --- CLI ------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=0.0,
                        help="stop after this many seconds (0 = run until SIGTERM/Ctrl-C)")
    parser.add_argument("--log-only", action="store_true",
                        help="no switch attached: log what each decision would change and ack "
                             "it 'skipped' (make run uses this when Kamailio cannot start)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from prometheus_client import start_http_server

    start_http_server(settings.adapter_metrics_port, addr=settings.metrics_host)
    log.info("switch adapter metrics on http://%s:%d/metrics", settings.metrics_host,
             settings.adapter_metrics_port)
    adapter = SwitchAdapter(settings, log_only=args.log_only)
    signal.signal(signal.SIGTERM, adapter.stop)
    try:
        return adapter.run(stop_after_s=args.duration)
    except KeyboardInterrupt:
        return 130
