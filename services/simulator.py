"""A traffic simulator that tells the truth: realistic signaling plus who is a robot.

Each caller (or campaign) is an *actor* with its own random generator derived from the seed, so
a run is reproducible and an actor's calls do not depend on who else is simulated. A single
heap orders everything by event time: an actor's "place the next call" trigger and the concrete
events of calls already placed (attempt, then answer + release or fail). Popping the heap yields
events in event-time order for as long as you like.

Populations and why they look the way they do:

* subscribers: a few calls a day, diurnal, mostly answered, minutes long, mostly to a personal
  circle of contacts (who call back), some wrong numbers, the odd emergency call.
* robocallers: thousands of attempts a day in bursts over several lines; few answers, and
  people hang up within seconds; purchased lists with dead numbers in them.
* scanners: dial number ranges in order; most numbers do not exist.
* snowshoe pools: hundreds of numbers in one block on one trunk, each quiet, robotic together.
* spoofers: a fresh random caller ID on every call, on one trunk.
* call centers (bank, hospital, delivery): robot volume in business hours, but answered and
  long, and customers call them back. These must never be blocked.
* emergency: subscribers call 110/119/120/122/112/911; PSAPs call people back.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import orjson

from services.settings import Settings
from streams.schema import SignalingEvent

DAY_S = 86_400.0
HOUR_S = 3_600.0
#: Local time offset of the simulated network (China, UTC+8) for diurnal profiles.
UTC_OFFSET_H = 8
COUNTRY = "86"
MOBILE_PREFIXES = ("130", "131", "132", "135", "136", "137", "138", "139", "150", "151",
                   "152", "158", "159", "182", "183", "186", "187", "188")
#: A mobile block not allocated to anyone here: dialling it gives 404 / ISUP cause 1.
UNALLOCATED_PREFIX = "174"
EMERGENCY_NUMBERS = ("110", "119", "120", "122", "112", "911")
PSAP_NUMBERS = ("110", "120")
ISUP_SHARE = 0.3
#: Hourly activity weights (local time) of people and of offices.
HUMAN_PROFILE = (0.1, 0.05, 0.03, 0.03, 0.05, 0.1, 0.3, 0.7, 1.0, 1.2, 1.3, 1.3,
                 1.1, 1.0, 1.1, 1.2, 1.2, 1.3, 1.4, 1.5, 1.5, 1.2, 0.7, 0.3)
OFFICE_PROFILE = (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0)
PROGRESS_EVERY_S = 2.0


def mobile(rnd: random.Random) -> str:
    return COUNTRY + rnd.choice(MOBILE_PREFIXES) + f"{rnd.randrange(10**8):08d}"


def unallocated(rnd: random.Random) -> str:
    return COUNTRY + UNALLOCATED_PREFIX + f"{rnd.randrange(10**8):08d}"


def local_hour(ts: float) -> int:
    return int((ts / HOUR_S + UTC_OFFSET_H) % 24)


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Subscribers:
    count: int = 2000
    calls_per_day: float = 5.0
    answer: float = 0.75
    median_duration_s: float = 90.0
    contacts: int = 12
    contact_share: float = 0.8
    wrong_number: float = 0.02
    emergency: float = 0.003


@dataclass(frozen=True)
class Robocallers:
    count: int = 8
    attempts_per_day: tuple[int, int] = (1000, 5000)
    burst_min: tuple[float, float] = (10.0, 60.0)
    active_hours_per_day: tuple[float, float] = (6.0, 12.0)
    answer: tuple[float, float] = (0.05, 0.2)
    unallocated: tuple[float, float] = (0.1, 0.4)
    short_share: float = 0.85


@dataclass(frozen=True)
class Scanners:
    count: int = 3
    attempts_per_day: tuple[int, int] = (500, 3000)
    step: tuple[int, int] = (1, 3)
    allocated_density: float = 0.35
    answer: float = 0.05


@dataclass(frozen=True)
class Snowshoe:
    pools: int = 1
    numbers: int = 200
    attempts_per_day: tuple[int, int] = (10, 40)
    answer: float = 0.12


@dataclass(frozen=True)
class Spoofers:
    campaigns: int = 1
    attempts_per_day: int = 2000
    answer: float = 0.1


@dataclass(frozen=True)
class CallCenters:
    orgs: tuple[str, ...] = ("bank", "hospital", "delivery")
    numbers_per_org: int = 2
    attempts_per_day: tuple[int, int] = (800, 3000)
    answer: tuple[float, float] = (0.55, 0.75)
    duration_s: tuple[float, float] = (60.0, 360.0)
    unallocated: float = 0.01
    callbacks_per_day: int = 60


@dataclass(frozen=True)
class Emergency:
    psap_callbacks_per_day: float = 30.0


@dataclass(frozen=True)
class Scenario:
    subscribers: Subscribers = field(default_factory=Subscribers)
    robocallers: Robocallers = field(default_factory=Robocallers)
    scanners: Scanners = field(default_factory=Scanners)
    snowshoe: Snowshoe = field(default_factory=Snowshoe)
    spoofers: Spoofers = field(default_factory=Spoofers)
    call_centers: CallCenters = field(default_factory=CallCenters)
    emergency: Emergency = field(default_factory=Emergency)

    @classmethod
    def default(cls) -> "Scenario":
        return cls()

    @classmethod
    def small(cls) -> "Scenario":
        """A few hours of this make a test: every population, well under 100k events."""
        return cls(subscribers=Subscribers(count=200), robocallers=Robocallers(count=3),
                   scanners=Scanners(count=1), snowshoe=Snowshoe(numbers=40),
                   spoofers=Spoofers(attempts_per_day=800),
                   call_centers=CallCenters(orgs=("bank",), numbers_per_org=2),
                   emergency=Emergency(psap_callbacks_per_day=40))

    @classmethod
    def slow_robots(cls) -> "Scenario":
        """Robots that pace themselves to stay under per-number volume thresholds."""
        return cls(robocallers=Robocallers(count=10, attempts_per_day=(150, 600),
                                           active_hours_per_day=(10.0, 16.0)))

    @classmethod
    def snowshoe_heavy(cls) -> "Scenario":
        """Campaigns spread thin over several number pools."""
        return cls(robocallers=Robocallers(count=2), snowshoe=Snowshoe(pools=4, numbers=150))

    @classmethod
    def collections(cls) -> "Scenario":
        """Legitimate outbound centers that few people answer (debt collection, surveys)."""
        return cls(call_centers=CallCenters(orgs=("collections", "survey", "pharmacy"),
                                            numbers_per_org=3, answer=(0.3, 0.45),
                                            duration_s=(20.0, 200.0), unallocated=0.04))

    @classmethod
    def bursty_humans(cls) -> "Scenario":
        """People who phone a lot (agents, dispatchers): many short, partly answered calls."""
        return cls(subscribers=Subscribers(count=1000, calls_per_day=30.0, answer=0.5,
                                           median_duration_s=40.0, contacts=200,
                                           contact_share=0.3))

    @classmethod
    def named(cls, name: str) -> "Scenario":
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
        return getattr(cls, name)()


SCENARIOS = ("default", "small", "slow_robots", "snowshoe_heavy", "collections",
             "bursty_humans")


@dataclass(frozen=True)
class TruthEntry:
    number: str
    population: str
    campaign: str
    robot: bool


# --------------------------------------------------------------------------------------------
# Actors
# --------------------------------------------------------------------------------------------
@dataclass
class Line:
    """Where an actor's calls enter the network."""

    proto: str
    trunk: str
    switch: str


class Actor:
    """Places calls. Subclasses choose when (``next_gap``) and to whom / with what outcome."""

    population = "actor"
    robot = False

    def __init__(self, number: str, campaign: str, rnd: random.Random, line: Line) -> None:
        self.number = number
        self.campaign = campaign
        self.rnd = rnd
        self.line = line

    def rate_at(self, ts: float) -> float:
        """Calls per second at ``ts``; the base class draws from a diurnal Poisson process."""
        raise NotImplementedError

    def max_rate(self) -> float:
        raise NotImplementedError

    def next_call(self, ts: float) -> float:
        """Next call time after ``ts`` by thinning a Poisson process of rate ``max_rate``."""
        peak = self.max_rate()
        if peak <= 0:
            return math.inf
        t = ts
        for _ in range(10_000):
            t += self.rnd.expovariate(peak)
            if self.rnd.random() * peak <= self.rate_at(t):
                return t
        return math.inf

    def caller_id(self) -> str:
        return self.number

    def place(self, ts: float, call_id: str) -> list[SignalingEvent]:
        raise NotImplementedError

    # -- helpers shared by all populations ---------------------------------------------------
    def attest(self) -> str | None:
        return "A" if self.line.proto == "sip" else None

    def call(self, ts: float, call_id: str, callee: str, *, exists: bool, answer_p: float,
             duration_s: float, caller: str | None = None) -> list[SignalingEvent]:
        """The events of one call with the given odds, in this actor's protocol."""
        rnd, line = self.rnd, self.line
        caller = caller or self.caller_id()
        isup = line.proto == "isup"
        base = dict(proto=line.proto, call_id=call_id, caller=caller, callee=callee,
                    trunk=line.trunk, switch=line.switch)
        events = [SignalingEvent(ts=ts, kind="attempt", attest=self.attest(), **base)]
        if not exists:
            events.append(SignalingEvent(ts=ts + rnd.uniform(0.2, 1.5), kind="fail",
                                         code=1 if isup else 404, **base))
            return events
        ring = rnd.uniform(3.0, 20.0)
        if rnd.random() < answer_p:
            events.append(SignalingEvent(ts=ts + ring, kind="answer",
                                         code=None if isup else 200, **base))
            events.append(SignalingEvent(ts=ts + ring + duration_s, kind="release",
                                         code=16 if isup else None,
                                         duration_s=round(duration_s, 3), **base))
        else:
            busy = rnd.random() < 0.3
            code = (17 if busy else 19) if isup else (486 if busy else rnd.choice((480, 487)))
            events.append(SignalingEvent(ts=ts + (rnd.uniform(1, 5) if busy else ring + 25),
                                         kind="fail", code=code, **base))
        return events


def _diurnal(profile: tuple[float, ...], per_day: float, ts: float) -> float:
    return per_day / DAY_S * profile[local_hour(ts)] * 24 / sum(profile)


class Subscriber(Actor):
    population = "subscriber"

    def __init__(self, number: str, rnd: random.Random, line: Line, p: Subscribers,
                 directory: list[str]) -> None:
        super().__init__(number, "-", rnd, line)
        self.p = p
        self.per_day = rnd.uniform(0.3, 2.0) * p.calls_per_day
        self.contacts = [rnd.choice(directory) for _ in range(p.contacts)] or [mobile(rnd)]

    def rate_at(self, ts: float) -> float:
        return _diurnal(HUMAN_PROFILE, self.per_day, ts)

    def max_rate(self) -> float:
        return self.per_day / DAY_S * max(HUMAN_PROFILE) * 24 / sum(HUMAN_PROFILE)

    def place(self, ts: float, call_id: str) -> list[SignalingEvent]:
        rnd, p = self.rnd, self.p
        duration = min(rnd.lognormvariate(math.log(p.median_duration_s), 1.0), 2 * HOUR_S)
        u = rnd.random()
        if u < p.emergency:
            return self.call(ts, call_id, rnd.choice(EMERGENCY_NUMBERS), exists=True,
                             answer_p=0.98, duration_s=rnd.uniform(30, 240))
        if u < p.emergency + p.wrong_number:
            return self.call(ts, call_id, unallocated(rnd), exists=False, answer_p=0,
                             duration_s=0)
        callee = rnd.choice(self.contacts) if rnd.random() < p.contact_share else mobile(rnd)
        return self.call(ts, call_id, callee, exists=True, answer_p=p.answer,
                         duration_s=duration)


class Robocaller(Actor):
    population = "robocaller"
    robot = True

    def __init__(self, number: str, campaign: str, rnd: random.Random, line: Line,
                 p: Robocallers) -> None:
        super().__init__(number, campaign, rnd, line)
        self.p = p
        per_day = rnd.uniform(*p.attempts_per_day)
        active_h = rnd.uniform(*p.active_hours_per_day)
        self.burst_rate = per_day / (active_h * HOUR_S)
        self.mean_burst_s = rnd.uniform(*p.burst_min) * 60
        self.mean_idle_s = self.mean_burst_s * (24 / active_h - 1)
        self.answer = rnd.uniform(*p.answer)
        self.unallocated = rnd.uniform(*p.unallocated)
        self.burst_end = -math.inf
        self.attest_choice = rnd.choices(("C", None, "A"), weights=(5, 3, 2))[0]

    def max_rate(self) -> float:
        return self.burst_rate

    def rate_at(self, ts: float) -> float:
        return self.burst_rate

    def next_call(self, ts: float) -> float:
        if ts >= self.burst_end:  # start the next burst after an idle spell
            start = ts + self.rnd.expovariate(1 / self.mean_idle_s)
            self.burst_end = start + self.rnd.expovariate(1 / self.mean_burst_s)
            ts = start
        return ts + self.rnd.expovariate(self.burst_rate)

    def attest(self) -> str | None:
        return self.attest_choice if self.line.proto == "sip" else None

    def robot_duration(self) -> float:
        if self.rnd.random() < self.p.short_share:
            return self.rnd.uniform(1.0, 8.0)  # hung up on
        return self.rnd.uniform(15.0, 45.0)    # listened to the pitch

    def place(self, ts: float, call_id: str) -> list[SignalingEvent]:
        exists = self.rnd.random() >= self.unallocated
        callee = mobile(self.rnd) if exists else unallocated(self.rnd)
        return self.call(ts, call_id, callee, exists=exists, answer_p=self.answer,
                         duration_s=self.robot_duration())


class Scanner(Robocaller):
    population = "scanner"

    def __init__(self, number: str, campaign: str, rnd: random.Random, line: Line,
                 p: Scanners) -> None:
        robo = Robocallers(attempts_per_day=p.attempts_per_day, answer=(p.answer, p.answer))
        super().__init__(number, campaign, rnd, line, robo)
        self.sp = p
        self.step = rnd.randint(*p.step)
        self.cursor = int(COUNTRY + rnd.choice(MOBILE_PREFIXES) + f"{rnd.randrange(10**7):07d}0")

    def place(self, ts: float, call_id: str) -> list[SignalingEvent]:
        self.cursor += self.step
        exists = random.Random(self.cursor).random() < self.sp.allocated_density
        return self.call(ts, call_id, str(self.cursor), exists=exists, answer_p=self.answer,
                         duration_s=self.rnd.uniform(1.0, 4.0))


class SnowshoeNumber(Robocaller):
    population = "snowshoe"

    def __init__(self, number: str, campaign: str, rnd: random.Random, line: Line,
                 p: Snowshoe) -> None:
        robo = Robocallers(attempts_per_day=p.attempts_per_day, answer=(p.answer, p.answer),
                           active_hours_per_day=(10.0, 14.0))
        super().__init__(number, campaign, rnd, line, robo)


class Spoofer(Robocaller):
    population = "spoofed"

    def __init__(self, campaign: str, rnd: random.Random, line: Line, p: Spoofers) -> None:
        robo = Robocallers(attempts_per_day=(p.attempts_per_day, p.attempts_per_day),
                           answer=(p.answer, p.answer), active_hours_per_day=(10.0, 14.0))
        super().__init__(f"spoof:{campaign}", campaign, rnd, line, robo)
        self.used: list[str] = []

    def caller_id(self) -> str:
        number = mobile(self.rnd)
        self.used.append(number)
        return number


class CallCenter(Actor):
    population = "call_center"

    def __init__(self, number: str, campaign: str, rnd: random.Random, line: Line,
                 p: CallCenters) -> None:
        super().__init__(number, campaign, rnd, line)
        self.p = p
        self.per_day = rnd.uniform(*p.attempts_per_day)
        self.answer = rnd.uniform(*p.answer)

    def rate_at(self, ts: float) -> float:
        return _diurnal(OFFICE_PROFILE, self.per_day, ts)

    def max_rate(self) -> float:
        return self.per_day / DAY_S * 24 / sum(OFFICE_PROFILE)

    def place(self, ts: float, call_id: str) -> list[SignalingEvent]:
        exists = self.rnd.random() >= self.p.unallocated
        duration = min(self.rnd.lognormvariate(math.log(sum(self.p.duration_s) / 2), 0.5),
                       HOUR_S)
        callee = mobile(self.rnd) if exists else unallocated(self.rnd)
        return self.call(ts, call_id, callee, exists=exists, answer_p=self.answer,
                         duration_s=duration)


class Customer(Actor):
    """Customers calling a call center back: the reciprocity robots never get."""

    population = "customer"

    def __init__(self, center: str, rnd: random.Random, line: Line, per_day: float) -> None:
        super().__init__(f"customers-of:{center}", center, rnd, line)
        self.center = center
        self.per_day = per_day

    def rate_at(self, ts: float) -> float:
        return _diurnal(OFFICE_PROFILE, self.per_day, ts)

    def max_rate(self) -> float:
        return self.per_day / DAY_S * 24 / sum(OFFICE_PROFILE)

    def caller_id(self) -> str:
        return mobile(self.rnd)

    def place(self, ts: float, call_id: str) -> list[SignalingEvent]:
        return self.call(ts, call_id, self.center, exists=True, answer_p=0.9,
                         duration_s=self.rnd.uniform(60, 400))


class Psap(Actor):
    """An emergency service calling people back after incidents."""

    population = "emergency"

    def __init__(self, number: str, rnd: random.Random, line: Line, per_day: float) -> None:
        super().__init__(number, "emergency", rnd, line)
        self.per_day = per_day

    def rate_at(self, ts: float) -> float:
        return self.per_day / DAY_S

    def max_rate(self) -> float:
        return self.per_day / DAY_S

    def place(self, ts: float, call_id: str) -> list[SignalingEvent]:
        return self.call(ts, call_id, mobile(self.rnd), exists=True, answer_p=0.7,
                         duration_s=self.rnd.uniform(20, 180))


# --------------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------------
class Simulation:
    """Deterministic for a seed: the same seed and start give the same events."""

    def __init__(self, scenario: Scenario, seed: int, start_ts: float) -> None:
        self.scenario = scenario
        self.seed = seed
        self.start_ts = start_ts
        self._ids = itertools.count()
        self.actors = self._build()

    def _rnd(self, *key: object) -> random.Random:
        return random.Random(f"{self.seed}/" + "/".join(map(str, key)))

    def _line(self, rnd: random.Random, trunk: str | None = None) -> Line:
        proto = "isup" if rnd.random() < ISUP_SHARE else "sip"
        return Line(proto, trunk or f"tk-{rnd.randrange(12):02d}", f"sw-{rnd.randrange(4)}")

    def _build(self) -> list[Actor]:
        sc = self.scenario
        setup = self._rnd("setup")
        directory = [mobile(setup) for _ in range(sc.subscribers.count)]
        actors: list[Actor] = []
        for i, number in enumerate(directory):
            rnd = self._rnd("sub", i)
            actors.append(Subscriber(number, rnd, self._line(rnd), sc.subscribers, directory))
        for i in range(sc.robocallers.count):
            rnd = self._rnd("robo", i)
            actors.append(Robocaller(mobile(rnd), f"robocall-{i}", rnd, self._line(rnd),
                                     sc.robocallers))
        for i in range(sc.scanners.count):
            rnd = self._rnd("scan", i)
            actors.append(Scanner(mobile(rnd), f"scan-{i}", rnd, self._line(rnd), sc.scanners))
        for pool in range(sc.snowshoe.pools):
            prnd = self._rnd("snow", pool)
            block = COUNTRY + "170" + f"{prnd.randrange(100):02d}"
            trunk = f"tk-snow-{pool}"
            for j in range(sc.snowshoe.numbers):
                rnd = self._rnd("snow", pool, j)
                actors.append(SnowshoeNumber(f"{block}{j:06d}", f"snowshoe-{pool}", rnd,
                                             Line("sip", trunk, "sw-0"), sc.snowshoe))
        for i in range(sc.spoofers.campaigns):
            rnd = self._rnd("spoof", i)
            actors.append(Spoofer(f"spoof-{i}", rnd, Line("sip", f"tk-intl-{i}", "sw-1"),
                                  sc.spoofers))
        for org in sc.call_centers.orgs:
            for j in range(sc.call_centers.numbers_per_org):
                rnd = self._rnd("cc", org, j)
                number = COUNTRY + "95" + f"{rnd.randrange(10**9):09d}"
                actors.append(CallCenter(number, org, rnd, self._line(rnd), sc.call_centers))
                crnd = self._rnd("cust", org, j)
                actors.append(Customer(number, crnd, self._line(crnd),
                                       sc.call_centers.callbacks_per_day))
        for number in PSAP_NUMBERS:
            rnd = self._rnd("psap", number)
            actors.append(Psap(number, rnd, self._line(rnd),
                               sc.emergency.psap_callbacks_per_day / len(PSAP_NUMBERS)))
        return actors

    def events(self, duration_s: float = math.inf) -> Iterator[SignalingEvent]:
        """Events in event-time order from ``start_ts`` for ``duration_s`` simulated seconds."""
        end = self.start_ts + duration_s
        heap: list[tuple[float, int, object]] = []
        seq = itertools.count()
        for actor in self.actors:
            first = actor.next_call(self.start_ts)
            if first < end:
                heapq.heappush(heap, (first, next(seq), actor))
        while heap:
            ts, _, item = heapq.heappop(heap)
            if ts >= end:
                return
            if isinstance(item, SignalingEvent):
                yield item
                continue
            actor = item  # type: ignore[assignment]
            call_id = f"s{self.seed}-{next(self._ids)}"
            for ev in actor.place(ts, call_id):  # type: ignore[attr-defined]
                heapq.heappush(heap, (ev.ts, next(seq), ev))
            nxt = actor.next_call(ts)  # type: ignore[attr-defined]
            if nxt < end:
                heapq.heappush(heap, (nxt, next(seq), actor))

    def truth(self) -> list[TruthEntry]:
        out: list[TruthEntry] = []
        for a in self.actors:
            if isinstance(a, Spoofer):
                out += [TruthEntry(n, a.population, a.campaign, True) for n in a.used]
            elif isinstance(a, Customer):
                continue  # random one-off callers; legit, not worth a line each
            else:
                out.append(TruthEntry(a.number, a.population, a.campaign, a.robot))
        return out


def write_truth(path: Path, entries: list[TruthEntry]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        for e in entries:
            fh.write(orjson.dumps(asdict(e)) + b"\n")
    tmp.replace(path)


def read_truth(path: Path) -> list[TruthEntry]:
    return [TruthEntry(**orjson.loads(line)) for line in path.read_bytes().splitlines() if line]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=7, help="random seed; same seed, same traffic")
    parser.add_argument("--scenario", choices=SCENARIOS, default="default",
                        help="population mix: 'default' (2000 subscribers, 8 robocallers, "
                             "3 scanners, a 200-number snowshoe pool, spoofers, 3 call centers, "
                             "emergency calls), 'small' (a fast one for tests), or a hard one: "
                             "slow_robots, snowshoe_heavy, collections, bursty_humans")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="simulated seconds to produce; 0 = until Ctrl-C")
    parser.add_argument("--speed", type=float, default=None,
                        help="simulated seconds per wall second (default DIALGUARD_SIMULATE_SPEED "
                             "= 20); event time never runs ahead of the wall clock")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="at most this many events per wall second (0 = no cap)")
    parser.add_argument("--fast", action="store_true",
                        help="ignore --speed: produce as fast as possible (still never stamps "
                             "an event in the future)")
    parser.add_argument("--history-hours", type=float, default=None,
                        help="start the simulated clock this many hours in the past (default "
                             "DIALGUARD_SIMULATE_HISTORY_H = 6), so a fast run has history to "
                             "replay before it reaches real time")
    parser.add_argument("--truth", type=Path, default=None,
                        help="ground-truth JSON lines (number, population, campaign, robot); "
                             "default <DIALGUARD_HOME>/data/simulation-truth.jsonl")
    parser.add_argument("--topic", default=None, help="target topic (default signaling.events)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


class Pacer:
    """Holds events back so simulated time runs at ``speed`` and never passes the wall clock."""

    def __init__(self, sim_start: float, speed: float, rate: float, fast: bool) -> None:
        self.sim_start = sim_start
        self.wall_start = time.monotonic()
        self.speed = speed
        self.rate = rate
        self.fast = fast
        self.sent = 0

    def wait(self, ts: float) -> None:
        while True:
            now = time.time()
            delay = ts - now  # never in the future
            if not self.fast:
                target = self.sim_start + self.speed * (time.monotonic() - self.wall_start)
                delay = max(delay, (ts - target) / self.speed)
            if self.rate > 0:
                delay = max(delay, self.sent / self.rate - (time.monotonic() - self.wall_start))
            if delay <= 0:
                self.sent += 1
                return
            time.sleep(min(delay, 0.5))


def run(args: argparse.Namespace, settings: Settings) -> int:
    from confluent_kafka import Producer

    from streams.sink import producer_config
    from streams.topics import SIGNALING_EVENTS

    topic = args.topic or SIGNALING_EVENTS.name
    history_h = settings.simulate_history_h if args.history_hours is None else args.history_hours
    speed = settings.simulate_speed if args.speed is None else args.speed
    truth_path = args.truth or settings.data_dir / "simulation-truth.jsonl"
    start = time.time() - history_h * HOUR_S
    sim = Simulation(Scenario.named(args.scenario), args.seed, start)
    producer = Producer({**producer_config(settings), "linger.ms": 20})
    pacer = Pacer(start, speed, args.rate, args.fast)
    duration = args.duration if args.duration > 0 else math.inf
    robots = {a.number for a in sim.actors if a.robot}
    print(f"simulating scenario {args.scenario} seed {args.seed} from "
          f"{_utc(start)} ({history_h:g} h ago) at {'max' if args.fast else f'{speed:g}x'} "
          f"speed to {topic}; truth -> {truth_path}", file=sys.stderr, flush=True)
    sent, active, last_print, t0 = 0, set(), time.monotonic(), time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)  # `dialguard stop` / make run's Ctrl-C
    try:
        for ev in sim.events(duration):
            pacer.wait(ev.ts)
            _produce(producer, topic, ev)
            sent += 1
            if ev.caller in robots and ev.kind == "attempt":
                active.add(ev.caller)
            if time.monotonic() - last_print >= PROGRESS_EVERY_S:
                producer.poll(0)
                if not args.quiet:
                    rate = sent / max(time.monotonic() - t0, 1e-9)
                    print(f"sim clock {_utc(ev.ts)} | {sent:,} events | {rate:,.0f}/s | "
                          f"robots active {len(active)}", file=sys.stderr, flush=True)
                active.clear()
                last_print = time.monotonic()
                write_truth(truth_path, sim.truth())
    except KeyboardInterrupt:
        print("simulator interrupted; flushing", file=sys.stderr)
    finally:
        left = producer.flush(30)
        write_truth(truth_path, sim.truth())
        print(f"simulator done: {sent:,} events produced"
              f"{f', {left} undelivered' if left else ''}; truth in {truth_path}",
              file=sys.stderr, flush=True)
    return 0 if not left else 1


def _produce(producer, topic: str, ev: SignalingEvent) -> None:  # type: ignore[no-untyped-def]
    while True:
        try:
            producer.produce(topic, key=ev.key, value=ev.encode())
            return
        except BufferError:
            producer.poll(0.1)


def _interrupt(signum: int, frame: object) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
