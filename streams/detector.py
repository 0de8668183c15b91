"""The worker's logic without Faust: fold events into per-number state, score, decide.

Faust gives us partition ownership, the RocksDB table and its changelog; this class gives the
behaviour, so it can be driven by a unit test with plain dicts and lists. Records are folded as
they arrive (``ingest``) by the compiled fold, :class:`streams._native.NumberFold`: it decodes
a record, checks its events, folds them into the hot cache of per-number states and the prefix
and trunk pools, re-keys them for the source stage, and calls back here for what is not per
event. ``publish`` then learns from labels and publishes counts; ``persist`` writes each
touched number's state to the store once per micro-batch, which is what keeps the changelog
from getting one write per counter per event.

The fold's callbacks, and what each must not do (the fold is busy while it calls them, so none
may call the fold back):

* ``load(number, ctx)``: the stored state of a number not in memory (the store's ``get``);
* ``resolve(raw, indices, now)``: the events the fast path did not take, judged by the Python
  check (:meth:`_resolve`): it dead-letters what it refuses;
* ``score(number, state, prefix_pool, trunk_pool)``: an attempt moved the number's counters
  enough to score it (:meth:`_on_score`), with the summaries of its pools;
* ``emit(partition, batch)``: a full batch record of re-keyed events for ``signaling.sources``
  (the sink's ``source_batch``).

Guarded rollout: when ``control.policy`` holds a shadow candidate for the worker's policy, every
score is also run through the candidate (:class:`ShadowRun`) and what it would decide goes to
``decisions.shadow``; the kill switch turns every decision into dry-run (see
``streams/control.py``).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Protocol, TypeVar

import orjson

from online_models.scorer import NuisanceScorer
from services.settings import Settings
from streams import metrics
from streams._native import NumberFold, Snapshot
from streams.control import ControlState
from streams.features import (POOL_CALLERS_CAP, POOL_PREFIX, TRUNK_POOL_PREFIX, CallerState,
                              FeatureConfig, features, pool_features)
from streams.microbatch import StateWrites
from streams.policy import ENFORCING, BlockLimiter, CurrentAction, Policy, decide
from streams.position import NO_PARTITION, Folded
from streams.schema import (BATCH_MAX_EVENTS, REASON_MISSING, Decision, EventValidator,
                            InvalidEvent, ScoreRecord, SignalingEvent, SourceEvent,
                            record_values)
from streams.scope import SCOPE_NUMBER, SCOPE_PREFIX, SCOPE_TRUNK, decision_key

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Feature vectors kept for labels that arrive after the fact.
LABEL_FEATURE_CACHE = 100_000
#: Numbers kept decoded in memory between micro-batches (the least recently used leave first,
#: a sixteenth at a time).
HOT_CACHE = 200_000
#: Idle pool aggregates are swept every this many flushes.
POOL_SWEEP_EVERY = 500
#: Numbers whose last rate_limit/block is remembered, to score later labels against it.
ACTION_MEMORY = 100_000
#: The blocks-active gauge is recounted every this many flushes.
GAUGE_EVERY = 10
#: Numbers whose shadow action is remembered (see :class:`ShadowRun`).
SHADOW_MEMORY = 100_000
#: Appended to the reasons of a decision the kill switch made dry-run.
KILL_SWITCH_REASON = ("kill switch on (dry_run_all by {sw.author}: {sw.reason}): issued as "
                      "dry-run")
#: The fold's counts (``NumberFold.take_counts``) as metrics: counter and its leading labels.
FOLD_COUNTS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "in": (metrics.EVENTS_IN, ()),
    "replayed": (metrics.REPLAYS_SKIPPED, ("number",)),
    "late": (metrics.LATE_DROPPED, ()),
    "source_out": (metrics.SOURCE_EVENTS_OUT, ()),
    "unnumbered": (metrics.UNNUMBERED_CALLERS, ()),
}


@dataclass(frozen=True)
class Origin:
    """Where a raw record came from: the dead-letter headers and the replay positions."""

    topic: str
    partition: int
    offset: int
    #: The event's place inside a batch record (0 for a record holding one event).
    index: int = 0

    def at(self, index: int) -> "Origin":
        return Origin(self.topic, self.partition, self.offset, index)


class Sink(Protocol):
    def decision(self, decision: Decision) -> None: ...
    def source_layout(self) -> tuple[int, int]:
        """(partitions of ``signaling.sources``, events per batch record) for re-keyed rows."""
    def source_batch(self, partition: int, raw: bytes) -> None: ...
    def shadow_decision(self, decision: Decision) -> None: ...
    def score(self, record: ScoreRecord) -> None: ...
    def dead_letter(self, raw: bytes, reason: str, detail: str, origin: Origin) -> None: ...


class StateStore(Protocol):
    """Durable per-number state; ``ctx`` is whatever the store needs to route the read or
    write (the record the key's event came from; None: the store finds the key itself)."""

    def get(self, key: str, ctx: Any = None) -> bytes | None: ...
    def put(self, key: str, value: bytes, ctx: Any) -> None: ...
    def put_many(self, entries: list[tuple[str, bytes, Any]]) -> None: ...


class DictStore:
    """In-process store for tests and replays."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.writes = 0

    def get(self, key: str, ctx: Any = None) -> bytes | None:  # noqa: ARG002
        return self.data.get(key)

    def put(self, key: str, value: bytes, ctx: Any) -> None:
        # An exact-size copy: orjson's result keeps a ~4 KiB buffer whatever its length
        # (measured by `dialguard bench`), which a million held values would multiply.
        self.data[key] = bytes(memoryview(value))
        self.writes += 1

    def put_many(self, entries: list[tuple[str, bytes, Any]]) -> None:
        for key, value, ctx in entries:
            self.put(key, value, ctx)


class MemorySink:
    """Keeps outputs in lists: replays, evaluation and tests run the detector without Kafka."""

    def __init__(self, on_source: Callable[[SourceEvent], None] | None = None) -> None:
        self.decisions: list[Decision] = []
        self.shadow_decisions: list[Decision] = []
        self.scores: list[ScoreRecord] = []
        self.dead: list[tuple[bytes, str, str, Origin]] = []
        #: Re-keyed events go here: to a source detector in process, or kept in a list.
        self.on_source = on_source
        self.source_events: list[SourceEvent] = []

    def source_layout(self) -> tuple[int, int]:
        """One row per batch: each re-keyed event reaches ``on_source`` as it is made, so an
        in-process source stage sees the events in the order the number stage folded them."""
        return 1, 1

    def source_batch(self, partition: int, raw: bytes) -> None:  # noqa: ARG002
        for row in orjson.loads(raw):
            event = SourceEvent(*row)
            if self.on_source is not None:
                self.on_source(event)
            else:
                self.source_events.append(event)

    def decision(self, decision: Decision) -> None:
        self.decisions.append(decision)

    def shadow_decision(self, decision: Decision) -> None:
        self.shadow_decisions.append(decision)

    def score(self, record: ScoreRecord) -> None:
        self.scores.append(record)

    def dead_letter(self, raw: bytes, reason: str, detail: str, origin: Origin) -> None:
        self.dead.append((raw, reason, detail, origin))


def resolve_items(raw: bytes, indices: list[int] | None, origin: Origin,
                  decode: Callable[[Any], T], sink: Sink) -> list[T | None] | None:
    """What a compiled fold could not judge itself: the items of record ``raw`` at
    ``indices`` (every item for None), decoded by the Python reference ``decode``, in
    order; None when the record as a whole is unusable. Whatever ``decode`` refuses goes to
    the DLQ, counted, with its place in the record (as its own JSON for a batch record, the
    record itself otherwise), so the rest of its batch still counts. Both stages' folds call
    back into this."""
    try:
        values = record_values(raw)
    except InvalidEvent as exc:
        dead_letter(sink, raw, exc, origin)
        return None
    batch = len(values) > 1 or raw[:1] == b"["
    out: list[T | None] = []
    for index in range(len(values)) if indices is None else indices:
        if index >= len(values):
            out.append(None)
            continue
        value = values[index]
        try:
            out.append(decode(value))
        except InvalidEvent as exc:
            dead_letter(sink, orjson.dumps(value) if batch else raw, exc, origin.at(index))
            out.append(None)
    return out


def dead_letter(sink: Sink, raw: bytes, exc: InvalidEvent, origin: Origin) -> None:
    metrics.DEAD_LETTERS.labels(exc.reason).inc()
    sink.dead_letter(raw, exc.reason, exc.detail, origin)


def dead_letter_empty(sink: Sink, origin: Origin) -> None:
    """A record without a value (a tombstone): nothing to fold, but never silently dropped."""
    dead_letter(sink, b"", InvalidEvent(REASON_MISSING, "record has no value"), origin)


class ShadowRun:
    """What one shadow candidate decided so far: its own limiter and per-number actions.

    Why in memory only, not in the number's persisted state: a shadow is a short trial whose
    decisions nobody enforces. Persisting its actions would grow every number's changelog
    record for an experiment and outlive it; losing them on a restart or rebalance only means
    the candidate re-issues a decision on ``decisions.shadow`` (a duplicate for whoever compares
    it), never a change on the network. The memory is bounded (oldest numbers forgotten) and
    starts empty for each new candidate version, so two candidates are never mixed.
    """

    def __init__(self, policy: Policy, capacity: int = SHADOW_MEMORY) -> None:
        self.name = policy.name
        self.version = policy.version
        self.capacity = capacity
        self.limiter = BlockLimiter()
        self.actions: OrderedDict[str, CurrentAction] = OrderedDict()

    def is_for(self, policy: Policy) -> bool:
        return policy.name == self.name and policy.version == self.version

    def current(self, number: str) -> CurrentAction:
        return self.actions.get(number) or CurrentAction()

    def remember(self, decision: Decision) -> None:
        # An unblock (a source where people showed up) leaves it watched: a label.
        action = "label" if decision.action == "unblock" else decision.action
        self.actions[decision.number] = CurrentAction(
            action, decision.trigger_ts + decision.ttl_s, decision.score, decision.dry_run)
        self.actions.move_to_end(decision.number)
        if len(self.actions) > self.capacity:
            self.actions.popitem(last=False)


class Detector:
    def __init__(self, settings: Settings, scorer: NuisanceScorer, control: ControlState,
                 sink: Sink, store: StateStore,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.scorer = scorer
        self.control = control
        self.sink = sink
        self.store = store
        self.clock = wall_clock
        self.validator = EventValidator.of(settings)
        self.cfg = FeatureConfig(settings.short_call_s, settings.sequential_max_step,
                                 settings.distinct_callees_cap, settings.late_grace_s,
                                 settings.caller_new_after_s, settings.caller_trunks_cap,
                                 settings.source_conversation_s)
        plan = self.validator.plan
        partitions, batch_events = sink.source_layout()
        self.native = NumberFold(
            cfg=self.cfg, max_future_skew_s=self.validator.max_future_skew_s,
            max_duration_s=self.validator.max_duration_s,
            dial_prefixes=[plan.international_prefix, plan.national_prefix],
            batch_max_events=BATCH_MAX_EVENTS, range_strip=list(settings.range_strip_digits),
            pool_prefix_len=settings.pool_prefix_len, pool_cap=POOL_CALLERS_CAP,
            score_every=settings.score_every_attempts,
            score_min_attempts=settings.score_min_attempts, hot_cache=HOT_CACHE,
            trunk_key=decision_key(SCOPE_TRUNK, ""), range_key=decision_key(SCOPE_PREFIX, ""),
            source_partitions=partitions, source_batch_events=batch_events,
            load=self._load, emit=sink.source_batch, score=self._on_score,
            resolve=self._resolve)
        #: The states of the last snapshot, readable until written (streams.microbatch).
        self.writing: StateWrites | Snapshot = StateWrites([], store)
        #: The do-not-originate prefixes the fold was last given (the policy may change).
        self._dno: tuple[str, ...] = ()
        #: Where the record being folded came from (dead-letter headers of its events).
        self._origin = Origin("", NO_PARTITION, -1)
        self.last_features: OrderedDict[str, dict[str, float]] = OrderedDict()
        self.limiter = BlockLimiter()
        self.shadow_run: ShadowRun | None = None
        self.pending = 0
        self.decisions: list[Decision] = []
        self.flushes = 0
        #: number -> (action, policy, until): live or past enforcement, for feedback metrics
        self.actions: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        #: partition -> last offset folded (consumer lag = highwater - this - 1)
        self.positions: dict[int, int] = {}
        self.tally = metrics.Tally()
        self._drift_reported = scorer.drift_alarms

    # -- ingest ---------------------------------------------------------------------------
    def ingest(self, raw: bytes | None, origin: Origin, ctx: Any = None,
               now: float | None = None) -> int:
        """Validate and fold one record: one event, or a batch of events (a JSON array, as
        dialguard's own producers write). Bad events go to the DLQ one by one, the rest of
        their batch counts; this never raises for them. Returns how many events were read
        (folded, or skipped as already folded before a restart)."""
        self.positions[origin.partition] = origin.offset
        if raw is None:
            dead_letter_empty(self.sink, origin)
            return 0
        self._origin = origin
        self._sync_policy()
        read, folded = self.native.ingest(raw, origin.partition, origin.offset, ctx,
                                          time.time() if now is None else now)
        self.pending += folded
        return read

    def fold(self, ev: SignalingEvent, ctx: Any = None, where: Folded | None = None) -> None:
        """Fold one valid event; ``where`` it was read from, when it came from Kafka."""
        self._sync_policy()
        self.pending += self.native.fold_event(ev, ctx, None if where is None else tuple(where))

    def _sync_policy(self) -> None:
        dno = self.control.policy.do_not_originate
        if dno is not self._dno:
            self.native.set_do_not_originate(list(dno))
            self._dno = dno

    def _resolve(self, raw: bytes, indices: list[int] | None,
                 now: float) -> list[SignalingEvent | None] | None:
        """The fold's ``resolve``: the Python check's verdict on the items the fast path did
        not take (see :func:`resolve_items`)."""
        return resolve_items(raw, indices, self._origin,
                             lambda value: self.validator.check(value, now), self.sink)

    def _load(self, number: str, ctx: Any) -> bytes | None:
        """The fold's ``load``: a state not in memory, from the snapshot being written or
        from the store."""
        raw = self.writing.get(number)
        return raw if raw is not None else self.store.get(number, ctx)

    def _on_score(self, number: str, state: CallerState,
                  prefix_pool: tuple[float, ...] | None,
                  trunk_pool: tuple[float, ...] | None) -> None:
        """The fold's ``score``: this attempt moved the number's counters enough."""
        decision = self._score(number, state, (prefix_pool, trunk_pool))
        if decision is not None:
            self.decisions.append(decision)

    def touched(self) -> int:
        """Numbers folded into since the last :meth:`persist` (the micro-batch's size)."""
        return self.native.dirty_count

    def forget_cache(self) -> None:
        """After a rebalance the store is the truth again (another worker may own a number):
        every state in memory is dropped, and with it what was touched and not written (the
        new owner reads those events again)."""
        self.native.forget()
        self.writing = StateWrites([], self.store)

    # -- flush ----------------------------------------------------------------------------
    def flush(self) -> list[Decision]:
        """:meth:`publish`, then :meth:`persist`: what replays and tests call; the worker
        calls the two apart (streams.microbatch)."""
        decisions = self.publish()
        self.persist()
        return decisions

    def snapshot(self) -> Snapshot:
        """Each number touched since the last snapshot, serialised now with the position of
        the newest event folded into it; written by the micro-batch once its outputs are
        delivered (streams.microbatch), readable here until then."""
        self.writing = self.native.snapshot(self.store.put_many)
        return self.writing

    def persist(self) -> int:
        """Snapshot and write at once (replays and tests). Returns how many were written."""
        return self.snapshot().write()

    def publish(self) -> list[Decision]:
        """Learn from new labels, send the re-keyed events held, publish counts and gauges.
        Returns the decisions made since the last call (already handed to the sink as they
        were made)."""
        started = time.perf_counter()
        self._learn_labels()
        decisions, self.decisions = self.decisions, []
        self.flushes += 1
        if self.flushes % POOL_SWEEP_EVERY == 0:
            self.native.sweep_pools()
        if self.flushes % GAUGE_EVERY == 0:
            self._update_gauges()
        self.pending = 0
        self.native.drain_rows()
        for what, labels, n in self.native.take_counts():
            counter, stage = FOLD_COUNTS[what]
            self.tally.add_n(counter, n, *stage, *labels)
        self.tally.publish()
        metrics.TRACKED_NUMBERS.set(self.native.cached_count)
        metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
        return decisions

    def feature_vector(self, number: str, state: CallerState,
                       pools: tuple[tuple[float, ...] | None, tuple[float, ...] | None]
                       | None = None) -> dict[str, float]:
        """The number's features, its prefix pool's and its newest trunk's; ``pools`` are the
        two pool summaries when the fold has them at hand."""
        feats = features(state)
        if pools is None:
            minute = state.hwm_minute
            pools = (self.native.prefix_summary(number, minute),
                     self.native.trunk_summary(state.last_trunk, minute))
        feats.update(pool_features(pools[0], POOL_PREFIX))
        feats.update(pool_features(pools[1], TRUNK_POOL_PREFIX))
        return feats

    def _score(self, number: str, state: CallerState,
               pools: tuple[tuple[float, ...] | None, tuple[float, ...] | None] | None = None
               ) -> Decision | None:
        feats = self.feature_vector(number, state, pools)
        parts = self.scorer.score(feats)
        metrics.SCORED.inc()
        state.scored_attempts = state.attempts_total
        self._remember_features(number, feats)
        policy = self.control.policy
        current = CurrentAction(state.action, state.action_until, state.action_score,
                                state.action_dry)
        decided_at = self.clock()
        hold = ""
        home = state.owner_elsewhere()
        if home:
            hold = (f"probably spoofed: these calls arrive on {state.last_trunk} while the "
                    f"number's owner talks on {home}; blocking the number would cut off its "
                    "owner, so the source view acts on the trunk or range instead")
        decision, held = decide(policy, self.control.allowlist, self.limiter, number,
                                parts.score, feats, current, state.hwm_ts, decided_at, hold)
        if hold and parts.score >= policy.thresholds_for(number)[0].rate_limit:
            metrics.SPOOFED_NUMBER_HOLDS.inc()
        shadow = self.control.shadow
        shadow_held = None if shadow is None else self._shadow(
            shadow, number, parts.score, feats, state.hwm_ts, decided_at)
        self.sink.score(ScoreRecord(
            number=number, ts=state.hwm_ts, score=round(parts.score, 4),
            anomaly=round(parts.anomaly, 4), prior=round(parts.prior, 4),
            classifier=None if parts.classifier is None else round(parts.classifier, 4),
            features={k: round(v, 4) for k, v in feats.items()}, action=held,
            policy=policy.name, policy_version=policy.version,
            shadow_action=shadow_held, shadow_version=None if shadow is None else shadow.version))
        if decision is None:
            return None
        if decision.dry_run and self.control.dry_run_all:
            decision.reasons.append(KILL_SWITCH_REASON.format(sw=self.control.switches))
        if decision.dry_run and not policy.dry_run:
            metrics.LIMITER_TRIPS.inc()
        if decision.action in ENFORCING and not decision.dry_run:
            if decision.action == "block" and state.action != "block":
                metrics.CALLS_BEFORE_BLOCK.observe(feats.get("attempts_1h", 0.0))
            self.actions[number] = (decision.action, decision.policy,
                                    decision.trigger_ts + decision.ttl_s)
            self.actions.move_to_end(number)
            if len(self.actions) > ACTION_MEMORY:
                self.actions.popitem(last=False)
        state.action = decision.action
        state.action_until = decision.trigger_ts + decision.ttl_s
        state.action_score = decision.score
        state.action_dry = decision.dry_run
        metrics.DECISIONS.labels(decision.action, decision.policy,
                                 str(decision.dry_run).lower(), decision.scope).inc()
        metrics.DETECTION_LAG.observe(max(decided_at - decision.trigger_ts, 0.0))
        self.sink.decision(decision)
        return decision

    def _shadow(self, shadow: Policy, number: str, score: float, feats: dict[str, float],
                trigger_ts: float, decided_at: float) -> str | None:
        """Run the shadow candidate on the score the live policy just saw; publish what it
        would decide to ``decisions.shadow``. Returns the candidate's action in force.

        Same score, features and allowlist as the live path, but the candidate's own limiter
        and memory: nothing here touches the number's state, the live limiter or the live
        metrics, so a candidate cannot change what the network sees. For the same reason it
        runs on the live policy's scoring cadence: a do-not-originate range only the candidate
        has is judged when the number is next scored, not on its first attempt.
        """
        run = self.shadow_run
        if run is None or not run.is_for(shadow):
            run = self.shadow_run = ShadowRun(shadow)
        decision, held = decide(shadow, self.control.allowlist, run.limiter, number, score,
                                feats, run.current(number), trigger_ts, decided_at)
        if decision is None:
            return held
        if decision.dry_run and self.control.dry_run_all:
            decision.reasons.append(KILL_SWITCH_REASON.format(sw=self.control.switches))
        run.remember(decision)
        metrics.SHADOW_DECISIONS.labels(decision.action, decision.policy).inc()
        self.sink.shadow_decision(decision)
        return held

    def _remember_features(self, number: str, feats: dict[str, float]) -> None:
        self.last_features[number] = feats
        self.last_features.move_to_end(number)
        if len(self.last_features) > LABEL_FEATURE_CACHE:
            self.last_features.popitem(last=False)

    def _learn_labels(self) -> None:
        labels = self.control.drain_labels()
        if not labels:
            return
        for label in labels:
            feats = self.last_features.get(label.number)
            if feats is None:
                state = self.native.cached(label.number)
                if state is None:
                    raw = self._load(label.number, None)
                    state = CallerState.from_bytes(raw) if raw else None
                if state is None:
                    continue  # another worker owns this number and learns from it
                feats = self.feature_vector(label.number, state)
            self.scorer.learn_label(feats, label.target)
            metrics.LABELS_LEARNED.labels(str(label.target)).inc()
            self._judge(label.number, label.target)
        metrics.MODEL_ROC_AUC.set(self.scorer.roc_auc.get())
        metrics.MODEL_LOG_LOSS.set(self.scorer.log_loss.get())

    def _judge(self, number: str, target: int) -> None:
        """A label on a number we enforced against tells whether that was right."""
        acted = self.actions.get(number)
        if acted is None:
            return
        counter = metrics.TRUE_POSITIVES if target else metrics.FALSE_POSITIVES
        counter.labels(acted[1], SCOPE_NUMBER).inc()

    def _update_gauges(self) -> None:
        now = self.native.newest_ts
        metrics.BLOCKS_ACTIVE.labels(SCOPE_NUMBER).set(sum(1 for action, _, until in self.actions.values()
                                      if action == "block" and until > now))
        alarms = self.scorer.drift_alarms - self._drift_reported
        if alarms > 0:
            metrics.MODEL_DRIFT.inc(alarms)
            self._drift_reported = self.scorer.drift_alarms
