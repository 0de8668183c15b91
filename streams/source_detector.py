"""The source stage without Faust: fold re-keyed events into per-trunk and per-range state,
score, and decide on the narrowest scope that stops a campaign.

Events arrive already validated and re-keyed by the per-number stage (:class:`SourceEvent` on
``signaling.sources``, key ``trunk:<switch>/<trunk>`` or ``prefix:<digits>``: the key of the
decision it may lead to), so one worker owns each source. Like :class:`streams.detector.Detector`,
records are folded by compiled code (:class:`streams._native.SourceFold`: decode, skip what a
source already holds, count) and each touched source is written once per micro-batch; this
class scores, chooses the scope and decides. The fold calls back ``load(key, ctx)``,
``resolve(raw, indices)`` (items it did not take, judged by :meth:`SourceEvent.from_value`),
``protected(caller, ts)`` (the allowlist, on attempts) and ``score(key, kind, state)``; none
may call the fold back.

Which scope acts, narrowest first (a trunk that also carries people must never be blocked
whole):

* a range (``prefix`` decision): judged on its own calls; it never holds a protected number;
* a trunk: its three segments are scored apart: the neighbour-spoofed calls, the calls without
  full attestation, and all of them. A segment may act only on its own evidence and only if
  almost nobody holds a real conversation in it. The whole trunk is taken only when no
  narrower segment holds nearly all of its calls; when people talk on the trunk, only a
  narrower segment can act, and the reasons say so.
* a trunk the events did not name (``-``) is never enforced: a switch cannot match it; a
  trunk named without its switch (``-/<trunk>``) applies to that trunk on any switch.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from online_models.source_scorer import SourceScorer
from streams import metrics
from streams._native import Snapshot, SourceFold
from streams.control import ControlState
from streams.detector import (KILL_SWITCH_REASON, Origin, ShadowRun, Sink, StateStore,
                              dead_letter_empty, resolve_items)
from streams.microbatch import StateWrites
from streams.policy import (ENFORCING, SEVERITY, UNBLOCK, BlockLimiter, CurrentAction,
                            Policy, SourceTarget, decide_source, source_action)
from streams.schema import (BATCH_MAX_EVENTS, LABEL_TARGET, REASON_VALUE, Decision,
                            InvalidEvent, Label, ScoreRecord, SourceEvent)
from streams.scope import SCOPE_PREFIX, SCOPE_TRUNK, UNKNOWN, CallMatch, split_trunk_id
from streams.source_features import (KIND_RANGE, KIND_TRUNK, SEG_ALL, SEG_NEIGHBOUR,
                                     SEG_UNVERIFIED, SEGMENT_PREFIX, SourceConfig, SourceState,
                                     explain, features, segment_view)

log = logging.getLogger(__name__)
#: Sources kept decoded in memory between micro-batches (least recently used leave first, a
#: sixteenth at a time).
HOT_CACHE = 50_000
#: The fold's counts (``SourceFold.take_counts``) as metrics: counter and leading labels.
FOLD_COUNTS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "in": (metrics.SOURCE_EVENTS_IN, ()),
    "replayed": (metrics.REPLAYS_SKIPPED, ("source",)),
    "late": (metrics.LATE_DROPPED, ()),
}
#: Idle sources are swept from the cache every this many flushes.
SWEEP_EVERY = 200
GAUGE_EVERY = 10
#: Features kept per source for labels that arrive later.
LABEL_FEATURE_CACHE = 20_000
#: Sources whose last enforcement is remembered, to judge later labels against it.
ACTION_MEMORY = 20_000
#: A narrower part of a trunk "holds the campaign" when it has at least this share of the
#: trunk's calls; then it acts instead of the whole trunk.
NARROW_HOLDS_SHARE = 0.9
#: What a STIR/SHAKEN-unverified trunk segment matches: anything not fully attested.
UNVERIFIED_MATCH = CallMatch(attest=("B", "C", "none"))


def source_event(value: Any) -> SourceEvent:
    """A source event as :meth:`SourceEvent.from_value` reads it, refused also when a field
    the fold compares is not of its type (before the compiled fold, such an event stopped
    the agent)."""
    ev = SourceEvent.from_value(value)
    if not (isinstance(ev.call_id, str) and isinstance(ev.caller_trunks, (int, float))
            and (ev.duration_s is None or isinstance(ev.duration_s, (int, float)))
            and all(isinstance(p, int) for p in (ev.origin_partition, ev.origin_offset,
                                                 ev.origin_index))):
        raise InvalidEvent(REASON_VALUE, "source event with a field of the wrong type "
                                         "(call_id, duration_s, caller_trunks or origin)")
    return ev


@dataclass(frozen=True)
class Candidate:
    """One part of a source that could act: its target, feature segment and score."""

    source: SourceTarget
    segment: int
    view: dict[str, float]
    score: float
    prior: float
    anomaly: float
    classifier: float | None
    action: str
    note: str

    @property
    def prefix(self) -> str:
        return SEGMENT_PREFIX[self.segment]


class SourceDetector:
    """Per-source state, scoring and scoped decisions (see module docstring)."""

    def __init__(self, settings: Any, scorer: SourceScorer, control: ControlState, sink: Sink,
                 store: StateStore, wall_clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.scorer = scorer
        self.control = control
        self.sink = sink
        self.store = store
        self.clock = wall_clock
        self.cfg = SourceConfig.of(settings)
        self.neighbour_match = CallMatch(neighbour_tail=self.cfg.neighbour_tail)
        self.native = SourceFold(
            cfg=self.cfg, batch_max_events=BATCH_MAX_EVENTS,
            score_every=settings.source_score_every,
            score_min_attempts=settings.source_score_min_attempts, hot_cache=HOT_CACHE,
            load=self._load, score=self._on_score, resolve=self._resolve,
            protected=self._protected)
        #: The states of the last snapshot, readable until written (streams.microbatch).
        self.writing: StateWrites | Snapshot = StateWrites([], store)
        self._origin = Origin("", -1, -1)
        self.limiters = {SCOPE_PREFIX: BlockLimiter(), SCOPE_TRUNK: BlockLimiter()}
        #: Shadow candidate's memory and limiter, per scope (decisions.shadow only).
        self.shadow_runs: dict[str, ShadowRun] = {}
        self.labels: queue.Queue[Label] = control.label_queue()
        self.last_features: OrderedDict[str, dict[str, float]] = OrderedDict()
        #: key -> (action, policy, until, scope): enforcement, for feedback metrics
        self.actions: OrderedDict[str, tuple[str, str, float, str]] = OrderedDict()
        self.decisions: list[Decision] = []
        self.positions: dict[int, int] = {}
        self.tally = metrics.Tally()
        self.pending = 0
        self.flushes = 0
        self.newest_ts = 0.0

    # -- ingest ---------------------------------------------------------------------------
    def ingest(self, raw: bytes | None, origin: Origin, ctx: Any = None) -> int:
        """Decode and fold one record of ``signaling.sources``: one source event, or a batch
        of them in row form (what the number stage writes). Bad ones go to the DLQ one by
        one. Returns how many were read."""
        self.positions[origin.partition] = origin.offset
        if raw is None:
            dead_letter_empty(self.sink, origin)
            return 0
        self._origin = origin
        read, folded = self.native.ingest(raw, ctx)
        self.pending += folded
        return read

    def fold(self, ev: SourceEvent, ctx: Any = None) -> None:
        """Fold one event (replays and ``make eval`` hand them over one by one)."""
        self.pending += self.native.fold_event(ev, ctx)

    def _load(self, key: str, ctx: Any) -> bytes | None:
        """The fold's ``load``: from the snapshot being written, or from the store."""
        raw = self.writing.get(key)
        return raw if raw is not None else self.store.get(key, ctx)

    def _protected(self, caller: str, ts: float) -> bool:
        return self.control.allowlist.match(caller, ts) is not None

    def _on_score(self, key: str, kind: str, state: SourceState) -> None:
        decision = self._score(key, kind, state)
        if decision is not None:
            self.decisions.append(decision)

    def _resolve(self, raw: bytes, indices: list[int] | None) -> list[SourceEvent | None] | None:
        """The fold's ``resolve``: the items it did not take, as :func:`source_event` reads
        them (see :func:`streams.detector.resolve_items`)."""
        return resolve_items(raw, indices, self._origin, source_event, self.sink)

    # -- scoring --------------------------------------------------------------------------
    def _candidates(self, key: str, kind: str, feats: dict[str, float],
                    state: SourceState) -> list[Candidate]:
        """Every part of the source that could act, narrowest first."""
        scope_key = key.split(":", 1)[1]
        if kind == KIND_RANGE:
            parts = [(SourceTarget(SCOPE_PREFIX, scope_key), SEG_ALL)]
        else:
            switch, _ = split_trunk_id(scope_key)
            parts = [(SourceTarget(SCOPE_TRUNK, scope_key, switch, self.neighbour_match),
                      SEG_NEIGHBOUR),
                     (SourceTarget(SCOPE_TRUNK, scope_key, switch, UNVERIFIED_MATCH),
                      SEG_UNVERIFIED),
                     (SourceTarget(SCOPE_TRUNK, scope_key, switch), SEG_ALL)]
        sp = self.control.policy.scope(parts[0][0].scope)
        held_match = state.action_match
        out = []
        for source, seg in parts:
            view = segment_view(feats, SEGMENT_PREFIX[seg])
            if seg != SEG_ALL and view.get("attempts_1h", 0.0) <= 0:
                continue
            parts_ = self.scorer.score_one(view)
            mine = (source.match.to_dict() if source.match else None) == held_match
            held = CurrentAction(state.action, state.action_until).active(state.hwm_ts) \
                if mine else ""
            action, note = source_action(sp, parts_.score, feats, held, SEGMENT_PREFIX[seg])
            out.append(Candidate(source, seg, view, parts_.score, parts_.prior,
                                 parts_.anomaly, parts_.classifier, action, note))
        return out

    def _choose(self, candidates: list[Candidate]) -> tuple[Candidate, tuple[str, ...]]:
        """The narrowest part that stops the campaign, and notes that say why that one."""
        whole = candidates[-1]
        enforcing = [c for c in candidates if c.action in ENFORCING]
        if not enforcing:
            lifted = [c for c in candidates if c.action == UNBLOCK]
            if lifted:
                return lifted[0], ()
            best = max(candidates, key=lambda c: (SEVERITY[c.action], c.score))
            return best, ()
        total = whole.view.get("attempts_1h", 0.0)
        for c in enforcing:
            if c is whole:
                continue
            share = c.view.get("attempts_1h", 0.0) / total if total else 0.0
            if whole.action in ENFORCING and share < NARROW_HOLDS_SHARE:
                continue  # the campaign is wider than this part: take the trunk below
            why = (f"narrowed to {c.source.match.describe()}: "
                   f"{100 * share:.0f}% of the trunk's calls")
            if whole.action not in ENFORCING:
                why += (f"; the trunk as a whole is not blocked "
                        f"({whole.note or 'its other calls do not look robotic'})")
            return c, (why,)
        return whole, ()

    def _score(self, key: str, kind: str, state: SourceState) -> Decision | None:
        feats = features(state, self.control.policy.min_attempts)
        state.scored_attempts = state.attempts_total
        metrics.SOURCE_SCORED.labels(kind).inc()
        candidates = self._candidates(key, kind, feats, state)
        chosen, notes = self._choose(candidates)
        self.scorer.learn_one(feats)
        self._remember_features(key, feats)
        policy = self.control.policy
        chosen_match = chosen.source.match.to_dict() if chosen.source.match else None
        same = chosen_match == state.action_match
        current = CurrentAction(state.action, state.action_until, state.action_score,
                                state.action_dry) if same else CurrentAction()
        max_action = "block"
        if kind == KIND_TRUNK:
            switch, trunk = split_trunk_id(chosen.source.target)
            if trunk == UNKNOWN:
                notes += ("the trunk of these calls is unknown: no switch can match it, so it "
                          "is labelled, never enforced",)
                max_action = "label"
            elif switch == UNKNOWN:
                notes += (f"these calls named no switch: applies to trunk {trunk} on any "
                          "switch",)
        decided_at = self.clock()
        explanation = explain(chosen.view, self.cfg.distinct_cap, self.cfg.short_call_s)
        decision, held = decide_source(
            policy, self.control.allowlist, self.limiters[chosen.source.scope], chosen.source,
            chosen.score, feats, explanation, current, state.hwm_ts, decided_at,
            chosen.prefix, notes, max_action)
        shadow = self.control.shadow
        shadow_held = None if shadow is None else self._shadow(
            shadow, chosen, feats, explanation, state.hwm_ts, decided_at, notes, max_action)
        record_feats = {k: round(v, 4) for k, v in feats.items()}
        record_feats["decision_segment"] = float(chosen.segment)
        self.sink.score(ScoreRecord(
            number=chosen.source.key, ts=state.hwm_ts, score=round(chosen.score, 4),
            anomaly=round(chosen.anomaly, 4), prior=round(chosen.prior, 4),
            classifier=None if chosen.classifier is None else round(chosen.classifier, 4),
            features=record_feats, action=held, policy=policy.name,
            policy_version=policy.version, shadow_action=shadow_held,
            shadow_version=None if shadow is None else shadow.version))
        if decision is None:
            return None
        if decision.dry_run and self.control.dry_run_all:
            decision.reasons.append(KILL_SWITCH_REASON.format(sw=self.control.switches))
        if decision.action in ENFORCING and not decision.dry_run:
            self.actions[decision.number] = (decision.action, decision.policy,
                                             decision.trigger_ts + decision.ttl_s,
                                             decision.scope)
            self.actions.move_to_end(decision.number)
            if len(self.actions) > ACTION_MEMORY:
                self.actions.popitem(last=False)
        # An unblock leaves the source labelled: watched, not enforced.
        state.action = "label" if decision.action == UNBLOCK else decision.action
        state.action_until = decision.trigger_ts + decision.ttl_s
        state.action_score = decision.score
        state.action_dry = decision.dry_run
        state.action_match = decision.match
        metrics.DECISIONS.labels(decision.action, decision.policy,
                                 str(decision.dry_run).lower(), decision.scope).inc()
        metrics.DETECTION_LAG.observe(max(decided_at - decision.trigger_ts, 0.0))
        self.sink.decision(decision)
        return decision

    def _shadow(self, shadow: Policy, chosen: Candidate, feats: dict[str, float],
                explanation: str, trigger_ts: float, decided_at: float,
                notes: tuple[str, ...], max_action: str) -> str | None:
        """What the shadow candidate decides for the part of the source the live policy chose;
        to ``decisions.shadow`` only, with its own limiter and memory per scope (see
        :class:`streams.detector.ShadowRun`: never the source's state, never a switch)."""
        scope = chosen.source.scope
        run = self.shadow_runs.get(scope)
        if run is None or not run.is_for(shadow):
            run = self.shadow_runs[scope] = ShadowRun(shadow)
        decision, held = decide_source(
            shadow, self.control.allowlist, run.limiter, chosen.source, chosen.score, feats,
            explanation, run.current(chosen.source.key), trigger_ts, decided_at,
            chosen.prefix, notes, max_action)
        if decision is None:
            return held
        if decision.dry_run and self.control.dry_run_all:
            decision.reasons.append(KILL_SWITCH_REASON.format(sw=self.control.switches))
        run.remember(decision)
        metrics.SHADOW_DECISIONS.labels(decision.action, decision.policy).inc()
        self.sink.shadow_decision(decision)
        return held

    # -- flush ----------------------------------------------------------------------------
    def flush(self) -> list[Decision]:
        """:meth:`publish`, then :meth:`persist` (the worker calls them apart)."""
        decisions = self.publish()
        self.persist()
        return decisions

    def snapshot(self) -> Snapshot:
        """Each source touched since the last snapshot, with its origin positions; written by
        the micro-batch once its outputs are delivered (streams.microbatch), readable here
        until then."""
        self.writing = self.native.snapshot(self.store.put_many)
        return self.writing

    def persist(self) -> int:
        """Snapshot and write at once (replays and tests). Returns how many were written."""
        return self.snapshot().write()

    def publish(self) -> list[Decision]:
        """Learn from new labels, publish counts and gauges; the decisions made since the
        last call."""
        started = time.perf_counter()
        self._learn_labels()
        decisions, self.decisions = self.decisions, []
        self.flushes += 1
        if self.flushes % SWEEP_EVERY == 0:
            self._sweep()
        if self.flushes % GAUGE_EVERY == 0:
            self._update_gauges()
        self.pending = 0
        for what, labels, n in self.native.take_counts():
            counter, stage = FOLD_COUNTS[what]
            self.tally.add_n(counter, n, *stage, *labels)
        self.newest_ts = self.native.newest_ts
        self.tally.publish()
        metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
        return decisions

    def _sweep(self) -> None:
        """Idle sources leave the hot cache (their state stays in the store)."""
        self.native.sweep_idle(self.native.newest_ts)

    def _update_gauges(self) -> None:
        now = self.native.newest_ts
        for scope in (SCOPE_PREFIX, SCOPE_TRUNK):
            live = [a for a in self.actions.values() if a[3] == scope and a[2] > now]
            metrics.BLOCKS_ACTIVE.labels(scope).set(sum(1 for a in live if a[0] == "block"))
            metrics.CAMPAIGNS_ACTIVE.labels(scope).set(len(live))
        trunks, ranges = self.native.cached_kinds()
        metrics.SOURCES_TRACKED.labels(KIND_TRUNK).set(trunks)
        metrics.SOURCES_TRACKED.labels(KIND_RANGE).set(ranges)

    def touched(self) -> int:
        """Sources folded into since the last snapshot (the micro-batch's size)."""
        return self.native.dirty_count

    def forget_cache(self) -> None:
        """After a rebalance the store is the truth again: every state in memory is dropped,
        and with it what was touched and not written (the new owner reads it again)."""
        self.native.forget()
        self.writing = StateWrites([], self.store)

    # -- feedback -------------------------------------------------------------------------
    def _remember_features(self, key: str, feats: dict[str, float]) -> None:
        self.last_features[key] = feats
        self.last_features.move_to_end(key)
        if len(self.last_features) > LABEL_FEATURE_CACHE:
            self.last_features.popitem(last=False)

    def _learn_labels(self) -> None:
        """Verdicts on a source key teach the source model; a verdict on a number judges the
        range enforcement that covered it (false / true positive by scope)."""
        while True:
            try:
                label = self.labels.get_nowait()
            except queue.Empty:
                return
            if label.label not in LABEL_TARGET:
                continue
            target = LABEL_TARGET[label.label]
            feats = self.last_features.get(label.number)
            if feats is not None:
                self.scorer.learn_label(feats, target)
            acted = self.actions.get(label.number) or self._range_action(label.number)
            if acted is not None:
                counter = metrics.TRUE_POSITIVES if target else metrics.FALSE_POSITIVES
                counter.labels(acted[1], acted[3]).inc()

    def _range_action(self, number: str) -> tuple[str, str, float, str] | None:
        """The enforcement of a range this worker holds that covers ``number``, if any."""
        for length in range(len(number) - 1, 2, -1):
            acted = self.actions.get(f"{SCOPE_PREFIX}:{number[:length]}")
            if acted is not None:
                return acted
        return None
