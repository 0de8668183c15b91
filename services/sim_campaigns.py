"""Issue 10's robots and the legitimate traffic that looks like them, for the simulator.

The robots are sold on evading per-number blocking, so each one here defeats a per-number view
in its own way; what none of them can hide is where its calls enter the network and which
number ranges it draws from. Next to each sits legitimate traffic that looks the same from the
pool or trunk level, so a source-level detector is judged on what it must not stop too:

========================  ===========================================  ===========================
robot                     what it shows                                legitimate look-alike
========================  ===========================================  ===========================
``rotating``              a fresh caller number on every call, some    ``otp``: a bank's voice-OTP
                          of them real subscribers' (spoofed); one     pool, high volume, short,
                          trunk                                        but answered
``neighbour``             the callee's number with the last 4 digits   ``interconnect``: the other
                          made up, inside an interconnect trunk        carriers' people on that
                                                                       same trunk
``pool``                  ~300 numbers of one 10 000-number block,     ``pbx``: a company's
                          a handful of calls each, one trunk           hundreds of DIDs in one
                                                                       block on its trunk
========================  ===========================================  ===========================

Robots keep what robots cannot help (few answers, people hanging up within seconds, dead
numbers in purchased lists) but every other parameter is drawn per campaign from a range, and
their attestation varies campaign by campaign, so nothing a robot operator can change separates
them for free.

Parameters live in the scenario dataclasses of :mod:`services.simulator` (which stays the entry
point); :func:`build` is called by :class:`services.simulator.Simulation` while it builds its
actors. This module imports the simulator's building blocks, never the other way round at import
time.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import TYPE_CHECKING, Callable

from services.simulator import (CONTACTS_SPREAD, CALL_RATE_SHAPE, HUMAN_PROFILE, INTERCONNECT,
                                ISUP, NEIGHBOUR, OFFICE_PROFILE, OTP, PBX,
                                POOL, ROBOT_ATTEST_CYCLE, ROTATING, SIP, Actor, BurstDialer,
                                CallResult, CallStyle, CompanyPbxs, Durations, Interconnects,
                                Line, NeighbourCampaigns, Network, NumberPools, OtpServices,
                                Phone, RotatingCampaigns, TruthEntry, human_style, next_arrival,
                                robot_style)

if TYPE_CHECKING:
    from services.simulator import Simulation

#: National significant digits of a mobile number (prefix + block + line): 3 + 4 + 4.
MOBILE_NATIONAL_DIGITS = 11
MOBILE_PREFIX_DIGITS = 3
#: Virtual-operator ranges wholesale robots rent pools from (170 is the snowshoe pools').
VIRTUAL_OPERATOR_PREFIXES = ("165", "167", "171")
#: Fixed-line area codes (Beijing, Guangzhou, Shanghai, Tianjin, Shenzhen) and local length:
#: businesses' DIDs and banks' outbound numbers are landline numbers.
LANDLINE_AREAS = ("10", "20", "21", "22", "755")
LANDLINE_LOCAL_DIGITS = 8
#: Local landline numbers start with one of these digits.
LANDLINE_FIRST_DIGITS = (5, 6, 8)
#: Other domestic operators' mobile prefixes: the interconnect's people are not ours.
OTHER_OPERATOR_PREFIXES = ("133", "153", "173", "177", "180", "181", "189", "199")
#: Foreign country codes and their national number lengths (roaming-in and foreign callers).
FOREIGN_RANGES: tuple[tuple[str, int], ...] = (("852", 8), ("853", 8), ("886", 9), ("65", 8),
                                               ("60", 9), ("81", 10), ("44", 10), ("1", 10))
#: Attestation neighbour campaigns get from the carrier that hands them over, campaign by
#: campaign (a B is a carrier that knows its customer but not the number shown).
NEIGHBOUR_ATTEST_CYCLE: tuple[str | None, ...] = ("C", None, "B")
#: Tries to find a real subscriber's number a rotating campaign has not shown yet, before it
#: makes one up instead.
SPOOF_TRIES = 8
#: OTP calls: the customer is waiting for the code, so the phone rings briefly and is picked up.
OTP_RING_S = (2.0, 8.0)
OTP_GIVE_UP_S = (20.0, 30.0)
OTP_BUSY = 0.3
OTP_DURATION_SIGMA = 0.3


# =============================================================================================
# Numbers
# =============================================================================================
def line_digits(block_size: int) -> int:
    """Digits that vary inside a number block of ``block_size`` (a power of ten)."""
    digits = round(math.log10(block_size)) if block_size > 0 else 0
    if not 1 <= digits <= 6 or 10 ** digits != block_size:
        raise ValueError(f"block size {block_size} must be a power of ten from 10 to 10^6")
    return digits


def mobile_block(cc: str, prefixes: tuple[str, ...], block_size: int,
                 rnd: random.Random) -> str:
    """A random mobile number block: the leading digits its ``block_size`` numbers share."""
    free = MOBILE_NATIONAL_DIGITS - MOBILE_PREFIX_DIGITS - line_digits(block_size)
    head = f"{rnd.randrange(10 ** free):0{free}d}" if free else ""
    return f"{cc}{rnd.choice(prefixes)}{head}"


def landline_block(cc: str, block_size: int, rnd: random.Random) -> str:
    """A random fixed-line block (an area code and the leading local digits)."""
    free = LANDLINE_LOCAL_DIGITS - line_digits(block_size) - 1
    head = f"{rnd.randrange(10 ** free):0{free}d}" if free > 0 else ""
    return f"{cc}{rnd.choice(LANDLINE_AREAS)}{rnd.choice(LANDLINE_FIRST_DIGITS)}{head}"


def block_numbers(block: str, block_size: int, count: int, rnd: random.Random) -> list[str]:
    """``count`` distinct numbers of one block."""
    digits = line_digits(block_size)
    return [f"{block}{line:0{digits}d}"
            for line in rnd.sample(range(block_size), min(count, block_size))]


def foreign_or_other_operator(cc: str, foreign_share: float, rnd: random.Random) -> str:
    """A number of another carrier: a foreign one, or another domestic operator's mobile."""
    if rnd.random() < foreign_share:
        country, length = rnd.choice(FOREIGN_RANGES)
        return f"{country}{rnd.randint(1, 9)}{rnd.randrange(10 ** (length - 1)):0{length - 1}d}"
    rest = MOBILE_NATIONAL_DIGITS - MOBILE_PREFIX_DIGITS
    return f"{cc}{rnd.choice(OTHER_OPERATOR_PREFIXES)}{rnd.randrange(10 ** rest):0{rest}d}"


def neighbour_of(callee: str, tail: int, rnd: random.Random) -> str:
    """The callee's number with its last ``tail`` digits made up (never the callee itself)."""
    while True:
        made_up = f"{rnd.randrange(10 ** tail):0{tail}d}"
        if made_up != callee[-tail:]:
            return callee[:-tail] + made_up


# =============================================================================================
# Robots
# =============================================================================================
class RotatingCampaign(BurstDialer):
    """Shows a number it never showed before on every call: made up, or a real subscriber's.

    Made-up numbers are reserved in the simulation, so no other actor ever owns one; borrowed
    ones stay their subscriber's in the per-number truth, and only the per-call truth says a
    robot placed the call.
    """

    def __init__(self, campaign: str, line: Line, attest: str | None, rnd: random.Random,
                 p: RotatingCampaigns) -> None:
        super().__init__(rnd, rnd.uniform(*p.attempts_per_day),
                         rnd.uniform(*p.active_hours_per_day), p.burst_min,
                         rnd.randint(*p.lines))
        self.campaign = campaign
        self.line = line
        self.attest = attest if line.proto == SIP else None
        self.unallocated = rnd.uniform(*p.unallocated)
        self.real_share = rnd.uniform(*p.real_share)
        self.style = robot_style(rnd.uniform(*p.answer), rnd.uniform(*p.hangup_share))
        #: Every number shown so far: the campaign's promise is that none repeats.
        self.shown: set[str] = set()

    def dial(self, sim: "Simulation", ts: float) -> CallResult:
        number = self.caller_number(sim)
        self.shown.add(number)
        phone = Phone(number, self.line, self.attest,
                      TruthEntry(number, ROTATING, self.campaign, True))
        return sim.call(ts, phone, self.purchased_callee(sim, self.unallocated), self.style,
                        self.rnd)

    def caller_number(self, sim: "Simulation") -> str:
        rnd = self.rnd
        if sim.subscribers and rnd.random() < self.real_share:
            for _ in range(SPOOF_TRIES):
                number = rnd.choice(sim.subscribers).phone.number
                if number not in self.shown:
                    return number
        while True:
            number = sim.space.any_mobile(rnd)
            if number not in self.shown and not sim.has_caller(number):
                sim.reserve_caller(number)
                return number


class NeighbourCampaign(BurstDialer):
    """Calls from the callee's own number block: the caller copies all but its last digits.

    The made-up number may well be a real subscriber's (blocks are mostly allocated): then it
    is spoofed, and the per-number truth keeps its owner.
    """

    def __init__(self, campaign: str, line: Line, attest: str | None, rnd: random.Random,
                 p: NeighbourCampaigns) -> None:
        super().__init__(rnd, rnd.uniform(*p.attempts_per_day),
                         rnd.uniform(*p.active_hours_per_day), p.burst_min,
                         rnd.randint(*p.lines))
        self.campaign = campaign
        self.line = line
        self.attest = attest if line.proto == SIP else None
        self.tail = p.tail_digits
        self.unallocated = rnd.uniform(*p.unallocated)
        self.style = robot_style(rnd.uniform(*p.answer), rnd.uniform(*p.hangup_share))

    def dial(self, sim: "Simulation", ts: float) -> CallResult:
        callee = self.purchased_callee(sim, self.unallocated)
        number = neighbour_of(callee, self.tail, self.rnd)
        if not sim.has_caller(number):
            sim.reserve_caller(number)  # no actor may adopt it later
        phone = Phone(number, self.line, self.attest,
                      TruthEntry(number, NEIGHBOUR, self.campaign, True))
        return sim.call(ts, phone, callee, self.style, self.rnd)


class PoolCampaign(BurstDialer):
    """A pool of numbers of one block on one trunk, each number used a handful of times."""

    def __init__(self, phones: list[Phone], rnd: random.Random, p: NumberPools) -> None:
        per_number = rnd.uniform(*p.calls_per_number)
        super().__init__(rnd, per_number * len(phones), rnd.uniform(*p.active_hours_per_day),
                         p.burst_min, rnd.randint(*p.lines))
        self.phones = phones
        self.unallocated = rnd.uniform(*p.unallocated)
        self.style = robot_style(rnd.uniform(*p.answer), rnd.uniform(*p.hangup_share))

    def dial(self, sim: "Simulation", ts: float) -> CallResult:
        phone = self.rnd.choice(self.phones)
        return sim.call(ts, phone, self.purchased_callee(sim, self.unallocated), self.style,
                        self.rnd)


# =============================================================================================
# Legitimate look-alikes
# =============================================================================================
class WeightedCallers(Actor):
    """Many phones as one actor: one Poisson process at their summed rate, each call placed by
    a phone drawn by its own rate (thousands of quiet callers cost one heap entry)."""

    profile: tuple[float, ...] = HUMAN_PROFILE

    def __init__(self, phones: list[Phone], rates: list[float], rnd: random.Random) -> None:
        self.phones = phones
        self.rnd = rnd
        self.per_day = sum(rates)
        self.cum_weights = list(itertools.accumulate(rates))
        self.index = range(len(phones))

    def start(self, sim: "Simulation", ts: float) -> None:
        sim.after(next_arrival(self.rnd, ts, self.per_day, self.profile), self.wake)

    def wake(self, sim: "Simulation", ts: float) -> None:
        i = self.rnd.choices(self.index, cum_weights=self.cum_weights)[0]
        self.place(sim, ts, i)
        sim.after(next_arrival(self.rnd, ts, self.per_day, self.profile), self.wake)

    def place(self, sim: "Simulation", ts: float, i: int) -> None:
        raise NotImplementedError


class ContactCallers(WeightedCallers):
    """People or employees who mostly call their own contacts (repeat callees), else anyone."""

    def __init__(self, phones: list[Phone], rates: list[float], contacts: list[list[str]],
                 contact_share: float, style: CallStyle, rnd: random.Random) -> None:
        super().__init__(phones, rates, rnd)
        self.contacts = contacts
        self.contact_share = contact_share
        self.style = style

    def place(self, sim: "Simulation", ts: float, i: int) -> None:
        rnd = self.rnd
        mine = self.contacts[i]
        callee = rnd.choice(mine) if mine and rnd.random() < self.contact_share \
            else sim.space.allocated(rnd)
        sim.call(ts, self.phones[i], callee, self.style, rnd)


class CompanyPbx(ContactCallers):
    """A company's employees calling clients through its PBX: office hours, answered, long."""

    profile = OFFICE_PROFILE


class InterconnectPeople(ContactCallers):
    """Other carriers' subscribers calling ours over an interconnect trunk."""

    profile = HUMAN_PROFILE


class OtpService(WeightedCallers):
    """A bank's voice one-time passwords: every customer once, short calls, nearly all answered."""

    def __init__(self, phones: list[Phone], rnd: random.Random, p: OtpServices) -> None:
        super().__init__(phones, [p.calls_per_day / len(phones)] * len(phones), rnd)
        self.p = p
        lo, hi = p.duration_s
        self.style = CallStyle(p.answer, OTP_BUSY, OTP_RING_S, OTP_GIVE_UP_S,
                               ((1.0, Durations(math.sqrt(lo * hi), OTP_DURATION_SIGMA,
                                                lo, hi)),))
        self.called: set[str] = set()

    def place(self, sim: "Simulation", ts: float, i: int) -> None:
        rnd, p = self.rnd, self.p
        if rnd.random() < p.unallocated:
            callee = sim.space.unallocated(rnd)
        elif sim.subscribers and rnd.random() < p.subscriber_customers:
            callee = rnd.choice(sim.subscribers).phone.number
        else:
            callee = sim.space.allocated(rnd)
        while callee in self.called:  # a customer waits for one code, not two
            callee = sim.space.allocated(rnd)
        self.called.add(callee)
        sim.call(ts, self.phones[i], callee, self.style, rnd)


# =============================================================================================
# Building them
# =============================================================================================
def interconnect_lines(sim: "Simulation") -> list[Line]:
    """The interconnect trunks: the scenario's, or one (empty of people) for neighbour or
    rotating campaigns to arrive on when the scenario has none."""
    sc = sim.scenario
    p = sc.interconnect
    count = max(p.trunks, 1 if sc.neighbour.campaigns or sc.rotating.via_interconnect else 0)
    return [Network.interconnect(f"carrier-{k}",
                                 ISUP if k >= count - p.isup_trunks else SIP)
            for k in range(count)]


def build(sim: "Simulation") -> tuple[list[BurstDialer], list[Actor]]:
    """(robot dialers, legitimate actors) of the scenario's issue-10 populations."""
    interconnects = interconnect_lines(sim)
    return (_rotating(sim, interconnects) + _neighbours(sim, interconnects) + _pools(sim),
            _pbxs(sim) + _otps(sim) + _interconnect_people(sim, interconnects))


def _rotating(sim: "Simulation", interconnects: list[Line]) -> list[BurstDialer]:
    p = sim.scenario.rotating
    own = p.campaigns - min(p.via_interconnect, p.campaigns)
    return [RotatingCampaign(f"rotating-{i}", Network.gateway(f"rot-{i}") if i < own
                             else interconnects[i % len(interconnects)],
                             ROBOT_ATTEST_CYCLE[(i + 1) % len(ROBOT_ATTEST_CYCLE)],
                             sim.rng(ROTATING, i), p)
            for i in range(p.campaigns)]


def _neighbours(sim: "Simulation", lines: list[Line]) -> list[BurstDialer]:
    p = sim.scenario.neighbour
    return [NeighbourCampaign(f"neighbour-{i}", lines[i % len(lines)],
                              NEIGHBOUR_ATTEST_CYCLE[i % len(NEIGHBOUR_ATTEST_CYCLE)],
                              sim.rng(NEIGHBOUR, i), p)
            for i in range(p.campaigns)]


def _pools(sim: "Simulation") -> list[BurstDialer]:
    p = sim.scenario.pools
    cc = sim.scenario.network.country_code
    dialers: list[BurstDialer] = []
    for k in range(p.pools):
        rnd = sim.rng(POOL, k)
        numbers = _unused_block(sim, lambda: mobile_block(cc, VIRTUAL_OPERATOR_PREFIXES,
                                                          p.block_size, rnd),
                                p.block_size, p.numbers, rnd)
        attest = ROBOT_ATTEST_CYCLE[(k + 2) % len(ROBOT_ATTEST_CYCLE)]
        trunk = Network.gateway(f"pool-{k}")
        phones = [sim.phone(n, POOL, f"pool-{k}", True, attest, trunk) for n in numbers]
        dialers.append(PoolCampaign(phones, rnd, p))
    return dialers


def _pbxs(sim: "Simulation") -> list[Actor]:
    p: CompanyPbxs = sim.scenario.pbx
    cc = sim.scenario.network.country_code
    actors: list[Actor] = []
    for c in range(p.companies):
        rnd = sim.rng(PBX, c)
        numbers = _unused_block(sim, lambda: landline_block(cc, p.block_size, rnd),
                                p.block_size, p.dids, rnd)
        line = sim.network.enterprise(f"pbx-{c}")
        phones = [sim.phone(n, PBX, f"pbx-{c}", False,
                            "A" if rnd.random() < p.attest_a else "B", line) for n in numbers]
        rates = [rnd.uniform(*p.calls_per_did) for _ in phones]
        contacts = [[sim.space.allocated(rnd)
                     for _ in range(max(1, round(p.contacts * rnd.uniform(*CONTACTS_SPREAD))))]
                    for _ in phones]
        actors.append(CompanyPbx(phones, rates, contacts, p.contact_share,
                                 human_style(p.answer, p.median_duration_s), rnd))
    return actors


def _otps(sim: "Simulation") -> list[Actor]:
    p = sim.scenario.otp
    cc = sim.scenario.network.country_code
    actors: list[Actor] = []
    for b in range(p.services):
        rnd = sim.rng(OTP, b)
        numbers = _unused_block(sim, lambda: landline_block(cc, p.block_size, rnd),
                                p.block_size, p.numbers, rnd)
        line = sim.network.enterprise(f"otp-{b}")
        phones = [sim.phone(n, OTP, f"otp-{b}", False, "A", line) for n in numbers]
        actors.append(OtpService(phones, rnd, p))
    return actors


def _interconnect_people(sim: "Simulation", lines: list[Line]) -> list[Actor]:
    p: Interconnects = sim.scenario.interconnect
    cc = sim.scenario.network.country_code
    subscribers = [s.phone.number for s in sim.subscribers]
    actors: list[Actor] = []
    for k in range(p.trunks):
        rnd = sim.rng(INTERCONNECT, k)
        phones: list[Phone] = []
        while len(phones) < p.people:
            number = foreign_or_other_operator(cc, p.foreign_share, rnd)
            if sim.has_caller(number):
                continue
            attest = rnd.choices(("A", "B", None), (*p.attest, 1.0 - sum(p.attest)))[0]
            phones.append(sim.phone(number, INTERCONNECT, f"carrier-{k}", False, attest,
                                    lines[k]))
        rates = [p.calls_per_day * rnd.gammavariate(CALL_RATE_SHAPE, 1 / CALL_RATE_SHAPE)
                 for _ in phones]
        contacts = []
        for _ in phones:
            size = max(1, round(p.contacts * rnd.uniform(*CONTACTS_SPREAD)))
            contacts.append([rnd.choice(subscribers)
                             if subscribers and rnd.random() < p.subscriber_contacts
                             else sim.space.allocated(rnd) for _ in range(size)])
        actors.append(InterconnectPeople(phones, rates, contacts, p.contact_share,
                                         human_style(p.answer, p.median_duration_s), rnd))
    return actors


def _unused_block(sim: "Simulation", draw_block: Callable[[], str], block_size: int,
                  count: int, rnd: random.Random) -> list[str]:
    """``count`` numbers of one block, none of them already some other actor's."""
    while True:
        numbers = block_numbers(draw_block(), block_size, count, rnd)
        if not any(sim.has_caller(n) for n in numbers):
            return numbers

