"""``make eval``: detection quality of the worker's logic against the simulator's ground truth.

Each run simulates a scenario for a seed, feeds every event through the same
:class:`streams.detector.Detector` the worker runs (in process, no Kafka: the worker adds
transport, not judgement), and scores what it decided against the truth, at two grains.

Per call, in event time (what the network experiences). A call is *stopped* when a live
(not dry-run) ``rate_limit`` or ``block`` covers it at its attempt time
(:class:`services.eval_coverage.CoverageIndex`: any scope, number, prefix or trunk, the latest
decision per key, TTL counted from the trigger). Each attempt is judged before it is folded,
against every decision published up to the previous event, so the call that tips a block is
not counted as stopped by it. Who placed the call comes from the per-call truth
(:meth:`services.simulator.Simulation.labelled_events`), so a robot showing a subscriber's
number is a robot's call. Reported per population: calls, calls stopped; for robot campaigns
also the share stopped once the campaign has run 10 minutes and the time from a campaign's first
call to its first stopped call (p50/p90 over campaigns); for legitimate traffic the share
stopped against the 0.01 % target, and emergency calls stopped (must be 0).

Per number (what analysts see): enforcement = a number-scope ``rate_limit`` or ``block`` that
is not dry-run (a ``label`` harms nobody); precision = robots among enforced numbers;
false-positive rate = legitimate numbers enforced / legitimate numbers that called; recall per
robot number and per campaign; calls leaked = attempts a robot made up to its first block; time
to block = from its first attempt to the event that tipped the block. Numbers of spoofing
populations (a throwaway or borrowed number per call) and numbers whose calls came from more
than one actor (a subscriber whose number was spoofed) are left out: a per-number verdict on
them means nothing; their calls are in the per-call table.

Known simplification: the simulator does not react to blocks, so a stopped call's later events
(answer, release) still reach the detector.

Scenarios, seeds and duration are arguments, so anyone can reproduce the figures.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from online_models.scorer import NuisanceScorer
from online_models.source_scorer import SourceScorer
from services.eval_coverage import CoverageIndex
from services.settings import Settings
from services.simulator import (EMERGENCY, EMERGENCY_NUMBERS, NEIGHBOUR, POOL, ROTATING,
                                SCENARIOS, SPOOFING_POPULATIONS, Scenario, Simulation,
                                TruthEntry)
from streams.control import ControlState
from streams.source_detector import SourceDetector
from streams.detector import DictStore, Detector, MemorySink
from streams.policy import ENFORCING
from streams.schema import Decision, SignalingEvent
from streams.scope import SCOPE_NUMBER, SCOPES, trunk_id

DEFAULT_SCENARIOS = ("default", "campaigns", "slow_robots", "snowshoe_heavy", "collections",
                     "bursty_humans")
DEFAULT_SEEDS = (1, 2, 3)
DEFAULT_HOURS = 24.0
#: Simulated runs start here (a fixed instant, so runs are reproducible to the event).
EPOCH = 1_800_000_000.0
FLUSH_EVERY = 2000
#: A campaign's calls after its first this many seconds are the ones detection should stop.
CAMPAIGN_SETTLE_S = 600.0
#: Robots shown campaign by campaign: the ones only source decisions can stop (issue 10).
CAMPAIGN_TABLE_POPULATIONS = (ROTATING, NEIGHBOUR, POOL)
#: Legitimate calls stopped, at most (as a fraction: 0.01 %).
LEGIT_STOPPED_TARGET = 0.0001
MATCH_SUFFIX = "+match"


def scope_label(decision: Decision) -> str:
    """``number``, ``prefix``, ``trunk``, or one of those with ``+match`` (narrowed)."""
    return decision.scope + (MATCH_SUFFIX if decision.match else "")


# =============================================================================================
# Per call
# =============================================================================================
@dataclass
class CampaignCalls:
    """The calls one campaign (or one legitimate group) placed in one run, by per-call truth."""

    population: str
    campaign: str
    robot: bool
    calls: int = 0
    stopped: int = 0
    first_ts: float = math.inf
    first_stopped_ts: float | None = None
    #: Calls after the campaign's first CAMPAIGN_SETTLE_S seconds, and how many were stopped.
    late_calls: int = 0
    late_stopped: int = 0
    #: Stopped calls by the scope of the decision that stopped them.
    by_scope: Counter[str] = field(default_factory=Counter)
    #: Trunks (``<switch>/<trunk>``) the calls entered through (bounded by the network's size).
    trunks: set[str] = field(default_factory=set)

    def add(self, ts: float, hit: Decision | None) -> None:
        if self.calls == 0:
            self.first_ts = ts
        self.calls += 1
        late = ts > self.first_ts + CAMPAIGN_SETTLE_S
        self.late_calls += late
        if hit is None:
            return
        self.stopped += 1
        self.late_stopped += late
        self.by_scope[scope_label(hit)] += 1
        if self.first_stopped_ts is None:
            self.first_stopped_ts = ts

    @property
    def time_to_first_stop(self) -> float | None:
        return None if self.first_stopped_ts is None else self.first_stopped_ts - self.first_ts


class CallLedger:
    """Per-call scoring of one run: every attempt with who placed it and what stopped it."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], CampaignCalls] = {}
        self.emergency_calls = 0
        self.emergency_stopped = 0

    def add(self, ev: SignalingEvent, who: TruthEntry, hit: Decision | None) -> None:
        key = (who.population, who.campaign)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = CampaignCalls(who.population, who.campaign, who.robot)
        group.add(ev.ts, hit)
        group.trunks.add(trunk_id(ev.switch, ev.trunk))
        if ev.callee in EMERGENCY_NUMBERS or who.population == EMERGENCY:
            self.emergency_calls += 1
            self.emergency_stopped += hit is not None


# =============================================================================================
# Per number
# =============================================================================================
@dataclass
class NumberOutcome:
    number: str
    population: str
    campaign: str
    robot: bool
    attempts: int = 0
    first_attempt: float = 0.0
    actions: set[str] = field(default_factory=set)
    first_block: Decision | None = None
    attempts_before_block: int = 0
    max_score: float = 0.0


class NumberLedger:
    """Attempts per caller number, and which actor(s) placed them."""

    def __init__(self) -> None:
        self.attempts: dict[str, list[float]] = defaultdict(list)
        #: number -> the one actor that called from it, or None once a second one did
        self.actor: dict[str, TruthEntry | None] = {}
        self.outcomes: dict[str, NumberOutcome] = {}

    def add(self, ev: SignalingEvent, who: TruthEntry) -> None:
        self.attempts[ev.caller].append(ev.ts)
        known = self.actor.get(ev.caller, who)
        same = known is who or (known is not None and (known.population, known.campaign) ==
                                (who.population, who.campaign))
        self.actor[ev.caller] = who if same else None

    def decided(self, d: Decision) -> None:
        """Note a number decision while the attempt counts up to it are exact."""
        if d.dry_run or d.scope != SCOPE_NUMBER:
            return
        o = self.outcomes.setdefault(d.number, NumberOutcome(d.number, "?", "-", False))
        o.actions.add(d.action)
        if d.action == "block" and o.first_block is None:
            o.first_block = d
            o.attempts_before_block = sum(1 for ts in self.attempts[d.number]
                                          if ts <= d.trigger_ts)

    def judged(self, sink: MemorySink) -> tuple[dict[str, NumberOutcome], int]:
        """(outcomes of numbers a per-number verdict means something for, numbers left out)."""
        kept: dict[str, NumberOutcome] = {}
        left_out = 0
        for number, times in self.attempts.items():
            who = self.actor.get(number)
            if who is None or who.population in SPOOFING_POPULATIONS:
                left_out += 1
                continue
            o = self.outcomes.get(number) or NumberOutcome(number, "", "", False)
            o.population, o.campaign, o.robot = who.population, who.campaign, who.robot
            o.attempts, o.first_attempt = len(times), times[0]
            kept[number] = o
        for s in sink.scores:
            o = kept.get(s.number)
            if o is not None:
                o.max_score = max(o.max_score, s.score)
        return kept, left_out


# =============================================================================================
# A run
# =============================================================================================
@dataclass
class RunResult:
    scenario: str
    seed: int
    events: int
    seconds: float
    outcomes: dict[str, NumberOutcome]
    calls: dict[tuple[str, str], CampaignCalls] = field(default_factory=dict)
    emergency_calls: int = 0
    emergency_stopped: int = 0
    #: (scope label, action, dry_run) -> decisions published
    decisions: Counter[tuple[str, str, bool]] = field(default_factory=Counter)
    #: Numbers left out of the per-number table (spoofing populations, several actors).
    numbers_left_out: int = 0

    @property
    def label(self) -> str:
        return f"{self.scenario} seed {self.seed}"


def run_one(scenario: str, seed: int, hours: float, settings: Settings) -> RunResult:
    """Simulate, detect and score one run.

    Every decision that appears in ``sink.decisions`` (whatever stage published it and
    whatever its scope) is applied to the coverage index right after the fold or flush that
    published it, before the next attempt is judged.
    """
    sim = Simulation(Scenario.named(scenario), seed, EPOCH)
    control = ControlState(settings.policy_name)
    sink = MemorySink()
    # Both stages of the worker, in process: the number stage re-keys every accepted event
    # straight into the source stage (in the worker, through signaling.sources); both publish
    # into the same sink, so coverage sees every decision whatever its scope.
    sources = SourceDetector(settings, SourceScorer(), control, sink, DictStore(),
                             wall_clock=lambda: 0.0)
    sink.on_source = sources.fold
    detector = Detector(settings, NuisanceScorer(anomaly_weight=settings.anomaly_weight),
                        control, sink, DictStore(), wall_clock=lambda: 0.0)
    coverage = CoverageIndex()
    calls = CallLedger()
    numbers = NumberLedger()
    decisions: Counter[tuple[str, str, bool]] = Counter()
    started = time.perf_counter()
    n = 0
    upto = 0

    def record() -> int:
        for d in sink.decisions[upto:]:
            coverage.apply(d)
            numbers.decided(d)
            decisions[(scope_label(d), d.action, d.dry_run)] += 1
        return len(sink.decisions)

    for n, (ev, who) in enumerate(sim.labelled_events(hours * 3600), start=1):
        if ev.kind == "attempt":
            calls.add(ev, who, coverage.stopped(ev.ts, ev.caller, ev.callee, ev.switch,
                                                ev.trunk, ev.attest))
            numbers.add(ev, who)
        detector.fold(ev)
        if n % FLUSH_EVERY == 0:
            detector.flush()
            sources.flush()
        if len(sink.decisions) > upto:
            upto = record()
    detector.flush()
    sources.flush()
    record()
    outcomes, left_out = numbers.judged(sink)
    return RunResult(scenario, seed, n, time.perf_counter() - started, outcomes, calls.groups,
                     calls.emergency_calls, calls.emergency_stopped, decisions, left_out)


# =============================================================================================
# Per-number tables
# =============================================================================================
@dataclass
class Summary:
    label: str
    robots: int
    robots_enforced: int
    robots_blocked: int
    campaigns: int
    campaigns_caught: int
    legit: int
    legit_enforced: int
    leaked: list[int]
    time_to_block: list[float]

    @property
    def precision(self) -> float:
        enforced = self.robots_enforced + self.legit_enforced
        return self.robots_enforced / enforced if enforced else 1.0


def summarise(label: str, outcomes: list[NumberOutcome]) -> Summary:
    robots = [o for o in outcomes if o.robot]
    legit = [o for o in outcomes if not o.robot]
    enforced = [o for o in robots if o.actions & set(ENFORCING)]
    blocked = [o for o in robots if o.first_block is not None]
    campaigns = {o.campaign for o in robots}
    caught = {o.campaign for o in enforced}
    return Summary(label, len(robots), len(enforced), len(blocked), len(campaigns), len(caught),
                   len(legit), sum(1 for o in legit if o.actions & set(ENFORCING)),
                   [o.attempts_before_block for o in blocked],
                   [o.first_block.trigger_ts - o.first_attempt for o in blocked
                    if o.first_block is not None])


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def format_table(rows: list[Summary]) -> str:
    head = (f"{'population / run':<28}{'robots':>7}{'recall':>8}{'blocked':>8}{'campaigns':>10}"
            f"{'legit':>7}{'FP':>5}{'FP rate':>9}{'precision':>10}{'leak p50':>9}"
            f"{'leak p90':>9}{'ttb p50 s':>10}{'ttb p90 s':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        recall = r.robots_enforced / r.robots if r.robots else float("nan")
        fp_rate = r.legit_enforced / r.legit if r.legit else float("nan")
        camp = f"{r.campaigns_caught}/{r.campaigns}" if r.campaigns else "-"
        lines.append(
            f"{r.label:<28}{r.robots:>7}{recall:>8.2f}{r.robots_blocked:>8}{camp:>10}"
            f"{r.legit:>7}{r.legit_enforced:>5}{fp_rate:>9.4f}{r.precision:>10.3f}"
            f"{_pct(r.leaked, 0.5):>9.0f}{_pct(r.leaked, 0.9):>9.0f}"
            f"{_pct(r.time_to_block, 0.5):>10.0f}{_pct(r.time_to_block, 0.9):>10.0f}")
    return "\n".join(lines)


def population_rows(results: list[RunResult]) -> list[Summary]:
    by_pop: dict[str, list[NumberOutcome]] = defaultdict(list)
    for r in results:
        for o in r.outcomes.values():
            by_pop[o.population].append(o)
    return [summarise(pop, outs) for pop, outs in sorted(by_pop.items())]


# =============================================================================================
# Per-call tables
# =============================================================================================
@dataclass
class CallSummary:
    """Calls of one population (or one run) across the campaigns given."""

    label: str
    robot: bool
    groups: list[CampaignCalls]

    @property
    def calls(self) -> int:
        return sum(g.calls for g in self.groups)

    @property
    def stopped(self) -> int:
        return sum(g.stopped for g in self.groups)

    @property
    def share(self) -> float:
        return self.stopped / self.calls if self.calls else float("nan")

    @property
    def late_share(self) -> float:
        late = sum(g.late_calls for g in self.groups)
        return sum(g.late_stopped for g in self.groups) / late if late else float("nan")

    @property
    def first_stops(self) -> list[float]:
        return [t for g in self.groups if (t := g.time_to_first_stop) is not None]

    @property
    def by_scope(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for g in self.groups:
            total.update(g.by_scope)
        return total


def call_rows(results: list[RunResult]) -> list[CallSummary]:
    """One row per population over all runs; robots first."""
    by_pop: dict[str, list[CampaignCalls]] = defaultdict(list)
    for r in results:
        for g in r.calls.values():
            by_pop[g.population].append(g)
    rows = [CallSummary(pop, groups[0].robot, groups) for pop, groups in by_pop.items()]
    return sorted(rows, key=lambda s: (not s.robot, s.label))


def _seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def _scopes(counts: Counter[str]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items())) or "-"


def format_call_table(rows: list[CallSummary]) -> str:
    head = (f"{'population':<14}{'kind':>6}{'calls':>10}{'stopped':>9}{'stopped %':>11}"
            f"{'late %':>8}{'campaigns':>10}{'1st stop p50 s':>15}{'p90 s':>8}"
            f"{'legit target':>13}  stopped by scope")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.robot:
            caught = sum(1 for g in r.groups if g.stopped)
            stops = r.first_stops
            lines.append(
                f"{r.label:<14}{'robot':>6}{r.calls:>10,}{r.stopped:>9,}{100 * r.share:>11.2f}"
                f"{100 * r.late_share:>8.2f}{f'{caught}/{len(r.groups)}':>10}"
                f"{_seconds(_pct(stops, 0.5)):>15}{_seconds(_pct(stops, 0.9)):>8}{'':>13}  "
                f"{_scopes(r.by_scope)}")
        else:
            verdict = "ok" if r.share <= LEGIT_STOPPED_TARGET else "OVER"
            lines.append(
                f"{r.label:<14}{'legit':>6}{r.calls:>10,}{r.stopped:>9,}{100 * r.share:>11.4f}"
                f"{'-':>8}{'-':>10}{'-':>15}{'-':>8}{verdict:>13}  {_scopes(r.by_scope)}")
    return "\n".join(lines)


def format_campaign_table(results: list[RunResult]) -> str:
    """Issue 10's robot campaigns one by one (same scenario and campaign id over seeds), with
    the trunk they came in on, so a campaign detection misses can be found and replayed."""
    by_campaign: dict[tuple[str, str], list[CampaignCalls]] = defaultdict(list)
    for r in results:
        for g in r.calls.values():
            if g.population in CAMPAIGN_TABLE_POPULATIONS:
                by_campaign[(r.scenario, g.campaign)].append(g)
    head = (f"{'scenario':<16}{'campaign':<14}{'trunk':<22}{'calls':>9}{'stopped %':>10}"
            f"{'late %':>8}{'seeds caught':>13}{'1st stop p50 s':>15}")
    lines = [head, "-" * len(head)]
    for (scenario, campaign), groups in sorted(by_campaign.items()):
        s = CallSummary(campaign, True, groups)
        trunks = sorted(set().union(*(g.trunks for g in groups)))
        trunk = trunks[0] if len(trunks) == 1 else f"{len(trunks)} trunks"
        caught = sum(1 for g in groups if g.stopped)
        lines.append(f"{scenario:<16}{campaign:<14}{trunk:<22}{s.calls:>9,}"
                     f"{100 * s.share:>10.2f}{100 * s.late_share:>8.2f}"
                     f"{f'{caught}/{len(groups)}':>13}{_seconds(_pct(s.first_stops, 0.5)):>15}")
    return "\n".join(lines)


def format_run_call_table(results: list[RunResult]) -> str:
    head = (f"{'run':<28}{'robot calls':>12}{'stopped %':>10}{'late %':>8}"
            f"{'legit calls':>12}{'stopped':>8}{'stopped %':>10}{'emergency stopped':>18}")
    lines = [head, "-" * len(head)]

    def row(label: str, runs: list[RunResult]) -> str:
        groups = [g for r in runs for g in r.calls.values()]
        robots = CallSummary(label, True, [g for g in groups if g.robot])
        legit = CallSummary(label, False, [g for g in groups if not g.robot])
        emergency = sum(r.emergency_stopped for r in runs)
        return (f"{label:<28}{robots.calls:>12,}{100 * robots.share:>10.2f}"
                f"{100 * robots.late_share:>8.2f}{legit.calls:>12,}{legit.stopped:>8,}"
                f"{100 * legit.share:>10.4f}{emergency:>18}")

    lines += [row(r.label, [r]) for r in results]
    lines.append(row("ALL", results))
    return "\n".join(lines)


def legit_verdict(results: list[RunResult]) -> str:
    groups = [g for r in results for g in r.calls.values() if not g.robot]
    legit = CallSummary("legit", False, groups)
    emergency_calls = sum(r.emergency_calls for r in results)
    emergency = sum(r.emergency_stopped for r in results)
    ok = legit.share <= LEGIT_STOPPED_TARGET if legit.calls else True
    return (f"legitimate calls stopped: {legit.stopped:,} of {legit.calls:,} "
            f"({100 * legit.share:.4f} %; target <= {100 * LEGIT_STOPPED_TARGET:g} %: "
            f"{'met' if ok else 'MISSED'})\n"
            f"emergency calls stopped: {emergency} of {emergency_calls:,} "
            f"(must be 0: {'met' if emergency == 0 else 'MISSED'})")


def format_decision_table(results: list[RunResult]) -> str:
    """Decisions published, by scope (with/without a match) and action; dry runs apart."""
    counts: Counter[tuple[str, str, bool]] = Counter()
    for r in results:
        counts.update(r.decisions)
    actions = ("block", "rate_limit", "label", "unblock")
    head = f"{'scope':<16}" + "".join(f"{a:>12}" for a in actions) + f"{'dry-run':>10}{'total':>9}"
    lines = [head, "-" * len(head)]
    labels = [s + m for s in SCOPES for m in ("", MATCH_SUFFIX)]
    labels += sorted({k[0] for k in counts} - set(labels))
    for label in labels:
        live = [counts[(label, a, False)] for a in actions]
        dry = sum(v for (s, _, d), v in counts.items() if s == label and d)
        if not sum(live) and not dry and label.endswith(MATCH_SUFFIX):
            continue
        lines.append(f"{label:<16}" + "".join(f"{v:>12,}" for v in live)
                     + f"{dry:>10,}{sum(live) + dry:>9,}")
    return "\n".join(lines)


# =============================================================================================
# Plot
# =============================================================================================
def plot(results: list[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outcomes = [o for r in results for o in r.outcomes.values() if o.max_score > 0]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 4.5))
    robot_scores = [o.max_score for o in outcomes if o.robot]
    legit_scores = [o.max_score for o in outcomes if not o.robot]
    bins = [i / 40 for i in range(41)]
    left.hist(legit_scores, bins=bins, alpha=0.6, label=f"legitimate ({len(legit_scores)})")
    left.hist(robot_scores, bins=bins, alpha=0.6, label=f"robots ({len(robot_scores)})")
    left.set_yscale("log")
    left.set_xlabel("highest score of a number")
    left.set_ylabel("numbers")
    left.set_title("Score distributions (numbers that were scored)")
    left.legend()
    ttb = [o.first_block.trigger_ts - o.first_attempt for r in results
           for o in r.outcomes.values() if o.robot and o.first_block is not None]
    middle.hist([t / 60 for t in ttb], bins=30, color="tab:red")
    middle.set_xlabel("minutes from first attempt to block")
    middle.set_ylabel("robot numbers")
    middle.set_title(f"Time to block ({len(ttb)} robot numbers blocked)")
    rows = call_rows(results)
    right.barh([r.label for r in rows], [100 * r.share for r in rows],
               color=["tab:red" if r.robot else "tab:blue" for r in rows])
    right.invert_yaxis()
    right.set_xlabel("% of calls stopped (red: robots, blue: legitimate)")
    right.set_title("Calls stopped, per population")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# =============================================================================================
# CLI
# =============================================================================================
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                        help=f"comma separated, from: {', '.join(SCENARIOS)} "
                             f"(default {','.join(DEFAULT_SCENARIOS)})")
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)),
                        help="comma separated simulator seeds")
    parser.add_argument("--hours", type=float, default=DEFAULT_HOURS,
                        help="simulated hours per run")
    parser.add_argument("--plot", type=Path, default=None,
                        help="PNG with score distributions, time to block and calls stopped "
                             "per population (default <DIALGUARD_HOME>/eval/eval.png)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for name in scenarios:
        Scenario.named(name)  # fail fast on a typo
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    results: list[RunResult] = []
    total = len(scenarios) * len(seeds)
    wall = time.perf_counter()
    for i, (name, seed) in enumerate(((n, s) for n in scenarios for s in seeds), start=1):
        print(f"[{i}/{total}] scenario {name} seed {seed}: {args.hours:g} simulated hours ...",
              file=sys.stderr, flush=True)
        r = run_one(name, seed, args.hours, settings)
        print(f"[{i}/{total}] {r.events:,} events in {r.seconds:.1f}s", file=sys.stderr,
              flush=True)
        results.append(r)
    print("\nPer call, per run (stopped = covered by a live rate_limit/block of any scope at "
          "its attempt; late = after a campaign's first 10 minutes)")
    print(format_run_call_table(results))
    print("\nPer call, per population (all runs; campaigns = caught/total; 1st stop = from a "
          "campaign's first call to its first stopped call, over caught campaigns)")
    print(format_call_table(call_rows(results)))
    print("\nPer campaign, robots only source decisions can stop (over seeds)")
    print(format_campaign_table(results))
    print()
    print(legit_verdict(results))
    print("\nDecisions published, by scope (all runs; +match = a trunk or range narrowed to "
          "part of its calls)")
    print(format_decision_table(results))
    per_run = [summarise(r.label, list(r.outcomes.values())) for r in results]
    overall = summarise("ALL", [o for r in results for o in r.outcomes.values()])
    left_out = sum(r.numbers_left_out for r in results)
    print(f"\nPer number, per run (number decisions only; enforcement = rate_limit or block; "
          f"leak = calls before block; ttb = time to block; {left_out:,} numbers of spoofing "
          f"campaigns or shared by several actors left out)")
    print(format_table(per_run + [overall]))
    print("\nPer number, per population (all runs)")
    print(format_table(population_rows(results)))
    print("\nNote: rotating, neighbour and spoofed campaigns show a throwaway or borrowed number "
          "per call and pool/snowshoe numbers each stay under any per-number threshold; only "
          "source decisions (prefix, trunk) can stop them, so judge them in the per-call "
          "table.")
    path = args.plot or settings.home / "eval" / "eval.png"
    plot(results, path)
    print(f"\nplot: {path}")
    print(f"reproduce: dialguard eval --scenarios {','.join(scenarios)} "
          f"--seeds {','.join(map(str, seeds))} --hours {args.hours:g} "
          f"({time.perf_counter() - wall:.0f}s here)")
    return 0
