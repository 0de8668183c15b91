"""A traffic simulator that tells the truth: realistic signaling, plus who really is a robot.

Detection can only be judged against ground truth, and live traffic has none. This module makes
traffic whose every caller is known: each event comes from an *actor* (a subscriber, a robot, a
call center...) and every number that calls is written to a truth file with its population,
campaign and a robot flag.

Truth has two grains, because robots borrow numbers:

* per number (:meth:`Simulation.truth`, the ``--truth`` file): the number's *owner*. A
  subscriber whose number a rotating campaign showed stays a subscriber; a number a robot made
  up belongs to that robot.
* per call (:meth:`Simulation.labelled_events` in process, the ``--call-truth`` file from the
  CLI): the actor that really placed the call, and whether the number it showed is someone
  else's (``spoofed``). ``make eval`` scores calls with this.

How it works, and why:

* Every actor owns a random generator seeded from ``(seed, actor)``, so a run is reproducible
  and one actor's calls do not shift when another population is resized.
* One heap orders everything by event time: actors' wake-ups ("place the next call") and the
  future events of calls already placed (an ``attempt`` now; ``answer`` + ``release`` or a
  ``fail`` later). Popping the heap yields events in event-time order for as long as you like.
* Callees live in a :class:`NumberSpace`: blocks of allocated mobile numbers, partly filled, plus
  service and emergency numbers. A call to a number outside it fails as unallocated (SIP 404,
  ISUP cause 1), which is what purchased lists and range scanners run into.
* The network has switches with access trunks; about 30 % of switches speak ISUP (causes
  instead of SIP codes, and no STIR/SHAKEN attestation).

Populations:

* subscribers: a few calls a day, diurnal, mostly answered, minutes long, mostly to a personal
  contact list in which other subscribers appear (missed calls get returned), a few misdials.
* robocallers: thousands of attempts a day in bursts over several concurrent lines; few answers,
  and people hang up within seconds; purchased lists with dead numbers in them. Attestation is
  often C or absent, but some robots sit behind an operator that signs them A.
* scanners: dial ranges in number order; most of the range is dead; one-ring calls.
* snowshoe pools: hundreds of numbers in one block on one trunk, each too quiet to stand out.
* spoofers: a fresh, never repeated caller ID on every call, all on one gateway trunk.
* issue 10's robots and their legitimate look-alikes (:mod:`services.sim_campaigns`): rotating
  numbers (some real subscribers', spoofed), neighbour spoofing inside an interconnect trunk,
  300-number pools in one 10 000-number block; a company PBX's DIDs in one block, a bank's
  voice-OTP pool, other carriers' people on the interconnect trunk.
* call centers (bank, hospital, delivery): robot volume in business hours, but answered and
  minutes long, and customers call them back. These must never be blocked. The bank's (and a
  collections agency's) numbers share an enterprise trunk of their own.
* emergency: subscribers call 110/119/120/122/112/911, and the PSAP (110 or 120) calls the
  caller and others back after an incident.
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
import zlib
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import orjson

from services.settings import Settings
from streams.schema import SignalingEvent
from streams.topics import SIGNALING_EVENTS

MINUTE_S = 60.0
HOUR_S = 3_600.0
DAY_S = 86_400.0
#: The simulated network keeps China Standard Time; diurnal profiles are in local hours.
LOCAL_UTC_OFFSET_H = 8

# --- Numbering -------------------------------------------------------------------------------
#: Chinese mobile prefixes; a mobile number is country code + prefix + 4-digit block + 4 digits.
MOBILE_PREFIXES = ("130", "131", "132", "135", "136", "137", "138", "139", "150", "151",
                   "152", "158", "159", "182", "183", "186", "187", "188")
BLOCK_DIGITS = 4
LINE_DIGITS = 4
BLOCKS_PER_PREFIX = 10 ** BLOCK_DIGITS
NUMBERS_PER_BLOCK = 10 ** LINE_DIGITS
#: Operators hand out blocks in runs of neighbouring blocks.
BLOCK_RUN = (1, 8)
#: Share of unallocated draws that are holes inside allocated blocks (the rest: dead blocks).
HOLE_SHARE = 0.5
#: National business numbers (400-xxx-xxxx) that banks, hospitals and couriers publish.
SERVICE_PREFIX = "400"
SERVICE_DIGITS = 7
#: Virtual-operator range where wholesale number pools are cheap (snowshoe campaigns).
POOL_PREFIX = "170"
POOL_BLOCK_DIGITS = 2
POOL_LINE_DIGITS = 6
EMERGENCY_NUMBERS = ("110", "119", "120", "122", "112", "911")
#: How often each emergency number is dialled (police and ambulance dominate).
EMERGENCY_WEIGHTS = (50.0, 10.0, 30.0, 8.0, 1.5, 0.5)
#: The PSAP that calls back after a call to each emergency number.
PSAP_OF = {"110": "110", "119": "110", "120": "120", "122": "110", "112": "110", "911": "110"}
PSAP_NUMBERS = ("110", "120")
#: Emergency calls per day in the small scenario (200 people would make one a month).
EMERGENCY_CALLS_SMALL = 60.0

# --- Signaling codes (see streams.schema for how the detector classifies them) --------------
SIP, ISUP = "sip", "isup"
SIP_OK = 200
SIP_NOT_FOUND = 404
SIP_REQUEST_TIMEOUT = 408
SIP_TEMPORARILY_UNAVAILABLE = 480
SIP_BUSY_HERE = 486
SIP_REQUEST_TERMINATED = 487
ISUP_UNALLOCATED_NUMBER = 1
ISUP_NORMAL_CLEARING = 16
ISUP_USER_BUSY = 17
ISUP_NO_ANSWER = 19
#: Ringing longer than this ends in a network no-answer (480/408) rather than a caller cancel.
NETWORK_NO_ANSWER_S = 30.0
#: How long "number does not exist" and "busy" take to come back.
UNALLOCATED_FAIL_S = (0.3, 2.0)
BUSY_FAIL_S = (0.5, 3.0)

# --- Time of day -----------------------------------------------------------------------------
#: Hourly activity of people (local time): quiet at night, peaks in the day and evening.
HUMAN_PROFILE = (0.1, 0.05, 0.03, 0.03, 0.05, 0.1, 0.3, 0.7, 1.0, 1.2, 1.3, 1.3,
                 1.1, 1.0, 1.1, 1.2, 1.2, 1.3, 1.4, 1.5, 1.5, 1.2, 0.7, 0.3)
#: Hourly activity of offices: 9:00 to 18:00 with a lunch dip.
OFFICE_PROFILE = (0, 0, 0, 0, 0, 0, 0, 0, 0, 1.0, 1.0, 1.0, 0.6, 0.9, 1.0, 1.0, 1.0, 0.8,
                  0, 0, 0, 0, 0, 0)

# --- Populations (truth labels) --------------------------------------------------------------
SUBSCRIBER = "subscriber"
ROBOCALLER = "robocaller"
SCANNER = "scanner"
SNOWSHOE = "snowshoe"
SPOOFED = "spoofed"
CALL_CENTER = "call_center"
CUSTOMER = "customer"
EMERGENCY = "emergency"
#: Issue 10's robots (services.sim_campaigns): a fresh caller number on every call (some of
#: them real subscribers' numbers), neighbour spoofing inside a shared interconnect, and a pool
#: of numbers in one number block making a handful of calls each.
ROTATING = "rotating"
NEIGHBOUR = "neighbour"
POOL = "pool"
#: ...and the legitimate traffic that looks like them at the pool level: a company PBX with
#: hundreds of DIDs in one block, a bank's voice one-time-password service calling from a pool,
#: and other carriers' subscribers arriving over an interconnect trunk.
PBX = "pbx"
OTP = "otp"
INTERCONNECT = "interconnect"
POPULATIONS = (SUBSCRIBER, ROBOCALLER, SCANNER, SNOWSHOE, SPOOFED, ROTATING, NEIGHBOUR, POOL,
               CALL_CENTER, CUSTOMER, EMERGENCY, PBX, OTP, INTERCONNECT)
ROBOT_POPULATIONS = (ROBOCALLER, SCANNER, SNOWSHOE, SPOOFED, ROTATING, NEIGHBOUR, POOL)
#: Robots whose caller numbers are throwaway or borrowed (a made-up number per call, a real
#: subscriber's number, the callee's neighbour): per-number scores mean nothing for them, so
#: evaluation judges them per call.
SPOOFING_POPULATIONS = (SPOOFED, ROTATING, NEIGHBOUR)
NO_CAMPAIGN = "-"

#: Share of people's numbers their operator fully attests (A); the rest get B (PBX, MVNO).
HUMAN_ATTEST_A = 0.95
#: Business lines often sit behind a PBX the operator only partly vouches for (B).
CALL_CENTER_ATTEST_A = 0.67
#: People's call rates spread around the scenario mean: gamma with this shape (mean 1).
CALL_RATE_SHAPE = 2.0
#: Contact list sizes spread this much around the scenario mean.
CONTACTS_SPREAD = (0.5, 1.5)
#: A misdial changes one of this many trailing digits (the subscriber part of a number).
MISDIAL_DIGITS = BLOCK_DIGITS + LINE_DIGITS
#: When a missed call between subscribers is returned.
RETURN_MISSED_DELAY_S = (2 * MINUTE_S, HOUR_S)
#: When a customer calls a call center back after its call.
CUSTOMER_CALLBACK_DELAY_S = (5 * MINUTE_S, 2 * HOUR_S)
#: When the PSAP starts calling back after an emergency call, and the pause between its calls.
PSAP_CALLBACK_DELAY_S = (5 * MINUTE_S, 45 * MINUTE_S)
PSAP_CALLBACK_SPACING_S = (MINUTE_S, 5 * MINUTE_S)

# --- Robots ----------------------------------------------------------------------------------
#: A robot waits this long after a line frees before it dials on it again.
REDIAL_GAP_S = (0.5, 3.0)
#: Robot attestation, robot by robot: what the originating operator signs. Mostly C or none,
#: but some robots sit behind an operator that signs A ("we know this customer"), so
#: attestation can only ever be a feature, never a verdict.
ROBOT_ATTEST_CYCLE: tuple[str | None, ...] = ("C", None, "A", "C", None)
#: Idle gaps between bursts vary this much around their mean.
IDLE_SPREAD = (0.5, 1.5)
#: Scanners pick the sparsest of this many candidate blocks: fresh ranges are mostly dead.
SCANNER_BLOCK_CANDIDATES = 5
#: Share of answered robot calls that the callee hangs up on within seconds.
ROBOT_HANGUP_SHARE = 0.85

# --- CLI -------------------------------------------------------------------------------------
PROGRESS_EVERY_S = 2.0
POLL_EVERY_EVENTS = 200
MAX_IDLE_S = 0.5
FLUSH_TIMEOUT_S = 30.0
DEFAULT_SEED = 7


# =============================================================================================
# Scenario parameters
# =============================================================================================
@dataclass(frozen=True)
class NetworkPlan:
    """Numbering and switching of the simulated operator."""

    country_code: str = "86"
    #: Allocated 10 000-number mobile blocks (callees live here).
    allocated_blocks: int = 400
    #: Share of each allocated block that has a subscriber.
    block_fill: tuple[float, float] = (0.3, 0.9)
    switches: int = 10
    trunks_per_switch: int = 4
    #: Share of switches (with their trunks) that speak ISUP instead of SIP.
    isup_share: float = 0.3


@dataclass(frozen=True)
class Subscribers:
    count: int = 2000
    #: Mean calls per subscriber per day (each subscriber has its own rate around this).
    calls_per_day: float = 5.0
    answer: float = 0.75
    median_duration_s: float = 90.0
    #: Mean size of a personal contact list.
    contacts: int = 12
    #: Share of calls that go to a contact (the rest: shops, strangers, one-offs).
    contact_share: float = 0.85
    #: Share of contacts that are other simulated subscribers (they call each other).
    subscriber_contacts: float = 0.4
    #: Share of calls that are misdialled.
    wrong_number: float = 0.02
    #: Chance that a subscriber returns a missed call from another subscriber.
    return_missed: float = 0.5


@dataclass(frozen=True)
class Robocallers:
    count: int = 8
    attempts_per_day: tuple[float, float] = (1000.0, 5000.0)
    #: Length of one burst of dialing, minutes.
    burst_min: tuple[float, float] = (10.0, 60.0)
    #: Hours per day spent in bursts (the rest is idle gaps).
    active_hours_per_day: tuple[float, float] = (6.0, 12.0)
    #: Concurrent lines: a robot never has more calls up at once.
    lines: tuple[int, int] = (4, 10)
    #: Chance that a reachable callee answers (robots: 5-20 %).
    answer: tuple[float, float] = (0.05, 0.2)
    #: Dead numbers in the purchased list.
    unallocated: tuple[float, float] = (0.1, 0.4)
    #: Share of answered calls the callee hangs up on within seconds.
    hangup_share: float = ROBOT_HANGUP_SHARE


@dataclass(frozen=True)
class Scanners:
    count: int = 3
    attempts_per_day: tuple[float, float] = (500.0, 3000.0)
    #: Largest step between consecutive callees (each step is 1..this).
    max_step: tuple[int, int] = (1, 3)
    burst_min: tuple[float, float] = (10.0, 60.0)
    active_hours_per_day: tuple[float, float] = (6.0, 12.0)
    lines: tuple[int, int] = (2, 4)
    answer: float = 0.05


@dataclass(frozen=True)
class Snowshoe:
    pools: int = 1
    #: Numbers per pool, all in one block and on one trunk.
    numbers: int = 200
    #: Attempts per number per day: low enough to pass any per-number threshold.
    attempts_per_day: tuple[float, float] = (10.0, 40.0)
    burst_min: tuple[float, float] = (20.0, 90.0)
    active_hours_per_day: tuple[float, float] = (10.0, 14.0)
    lines: tuple[int, int] = (10, 30)
    answer: float = 0.08
    unallocated: tuple[float, float] = (0.1, 0.3)


@dataclass(frozen=True)
class Spoofers:
    campaigns: int = 1
    attempts_per_day: float = 2000.0
    burst_min: tuple[float, float] = (10.0, 60.0)
    active_hours_per_day: tuple[float, float] = (10.0, 14.0)
    lines: tuple[int, int] = (4, 10)
    answer: float = 0.08
    unallocated: float = 0.2


@dataclass(frozen=True)
class CallCenters:
    orgs: tuple[str, ...] = ("bank", "hospital", "delivery")
    numbers_per_org: int = 2
    #: Outbound calls per number per day, all in business hours.
    attempts_per_day: tuple[float, float] = (800.0, 3000.0)
    answer: tuple[float, float] = (0.55, 0.75)
    #: Answered calls last between these (seconds).
    duration_s: tuple[float, float] = (60.0, 360.0)
    unallocated: float = 0.01
    #: Share of customers called who are simulated subscribers (the rest: the wider base).
    subscriber_customers: float = 0.1
    #: Chance that a customer who missed the call calls back; and one who answered.
    callback_missed: float = 0.35
    callback_answered: float = 0.05
    #: Customers calling a number on their own, per number per day.
    inbound_per_day: float = 150.0
    #: Orgs whose numbers all go out through one enterprise trunk of their own (the others
    #: sit on ordinary access trunks).
    enterprise_trunk_orgs: tuple[str, ...] = ("bank", "collections")


@dataclass(frozen=True)
class Emergency:
    #: Emergency calls by subscribers per day (network-wide).
    calls_per_day: float = 6.0
    #: Chance that the PSAP calls back after an incident...
    callback_share: float = 0.6
    #: ...and how many numbers it calls (the caller first, then witnesses, relatives).
    callback_numbers: tuple[int, int] = (1, 4)


@dataclass(frozen=True)
class RotatingCampaigns:
    """Robots sold on "every call goes out with a random caller number": no number repeats.

    Some calls show a real subscriber's number (spoofed), the rest a made-up mobile number;
    every call of a campaign enters through its one trunk. Parameters are ranges drawn per
    campaign, so campaigns differ in everything a robot operator can tune.
    """

    campaigns: int = 1
    attempts_per_day: tuple[float, float] = (1500.0, 5000.0)
    burst_min: tuple[float, float] = (10.0, 60.0)
    active_hours_per_day: tuple[float, float] = (8.0, 14.0)
    lines: tuple[int, int] = (4, 12)
    answer: tuple[float, float] = (0.04, 0.15)
    hangup_share: tuple[float, float] = (0.75, 0.95)
    unallocated: tuple[float, float] = (0.05, 0.35)
    #: Share of calls that show a real subscriber's number instead of a made-up one.
    real_share: tuple[float, float] = (0.1, 0.5)
    #: The last this many campaigns come in over an interconnect trunk shared with other
    #: carriers' people (a transit carrier that takes anyone's traffic) instead of a trunk
    #: of their own.
    via_interconnect: int = 0


@dataclass(frozen=True)
class NeighbourCampaigns:
    """Neighbour spoofing: the caller is the callee's number with its last digits made up.

    The calls arrive over an interconnect trunk that also carries other carriers' ordinary
    subscribers (:class:`Interconnects`), so the trunk as a whole is mostly legitimate.
    """

    campaigns: int = 1
    attempts_per_day: tuple[float, float] = (800.0, 3000.0)
    burst_min: tuple[float, float] = (10.0, 60.0)
    active_hours_per_day: tuple[float, float] = (8.0, 12.0)
    lines: tuple[int, int] = (3, 8)
    #: A local-looking number is answered more often than other robots' calls.
    answer: tuple[float, float] = (0.1, 0.3)
    hangup_share: tuple[float, float] = (0.7, 0.9)
    unallocated: tuple[float, float] = (0.05, 0.25)
    #: Trailing digits the robot makes up; the rest are copied from the callee.
    tail_digits: int = LINE_DIGITS


@dataclass(frozen=True)
class NumberPools:
    """A campaign spread over a pool of numbers in one number block, a handful of calls each."""

    pools: int = 1
    numbers: int = 300
    #: Size of the number block the pool is drawn from (a power of ten: 10 000 = last 4 digits).
    block_size: int = NUMBERS_PER_BLOCK
    #: Calls per number per day: far below any per-number threshold.
    calls_per_number: tuple[float, float] = (4.0, 8.0)
    burst_min: tuple[float, float] = (15.0, 60.0)
    active_hours_per_day: tuple[float, float] = (8.0, 12.0)
    lines: tuple[int, int] = (5, 20)
    answer: tuple[float, float] = (0.05, 0.15)
    hangup_share: tuple[float, float] = (0.75, 0.95)
    unallocated: tuple[float, float] = (0.1, 0.3)


@dataclass(frozen=True)
class CompanyPbxs:
    """Companies whose employees call out through a PBX: hundreds of DIDs in one number block
    on one enterprise trunk; at the pool level a snowshoe look-alike, per call plainly human."""

    companies: int = 1
    dids: int = 300
    block_size: int = NUMBERS_PER_BLOCK
    #: Calls per DID per working day (each DID has its own rate in this range).
    calls_per_did: tuple[float, float] = (3.0, 10.0)
    answer: float = 0.75
    median_duration_s: float = 180.0
    #: Clients per employee, and the share of calls that go to one of them.
    contacts: int = 25
    contact_share: float = 0.8
    #: Share of the company's calls its operator fully attests (the rest: B, PBX behind it).
    attest_a: float = 0.5


@dataclass(frozen=True)
class OtpServices:
    """A bank's voice one-time-password service: high volume from a pool of numbers, short
    calls, but answered (the customer is waiting for the code) and each customer called once."""

    services: int = 1
    numbers: int = 20
    block_size: int = NUMBERS_PER_BLOCK
    #: Calls per service per day, following people's activity (logins, payments).
    calls_per_day: float = 3000.0
    answer: float = 0.93
    duration_s: tuple[float, float] = (15.0, 40.0)
    #: Customers who typed their number wrong.
    unallocated: float = 0.003
    #: Share of customers who are simulated subscribers.
    subscriber_customers: float = 0.1


@dataclass(frozen=True)
class Interconnects:
    """Interconnect trunks carrying other carriers' subscribers: ordinary people with numbers
    from other operators' and countries' ranges, each calling a few times a day. Neighbour
    spoofing campaigns hide in these trunks."""

    trunks: int = 1
    #: The last this many trunks are ISUP (no attestation at all on them).
    isup_trunks: int = 0
    people: int = 600
    calls_per_day: float = 3.0
    answer: float = 0.7
    median_duration_s: float = 90.0
    contacts: int = 8
    contact_share: float = 0.85
    #: Share of a person's contacts who are simulated subscribers.
    subscriber_contacts: float = 0.5
    #: Share of people with foreign numbers (the rest: other domestic operators).
    foreign_share: float = 0.2
    #: Attestation passed on from the originating carrier: A, B, else none (lost in transit).
    attest: tuple[float, float] = (0.6, 0.15)


@dataclass(frozen=True)
class Scenario:
    """Who is on the network. Factories below are the named scenarios of ``--scenario``."""

    network: NetworkPlan = field(default_factory=NetworkPlan)
    subscribers: Subscribers = field(default_factory=Subscribers)
    robocallers: Robocallers = field(default_factory=Robocallers)
    scanners: Scanners = field(default_factory=Scanners)
    snowshoe: Snowshoe = field(default_factory=Snowshoe)
    spoofers: Spoofers = field(default_factory=Spoofers)
    call_centers: CallCenters = field(default_factory=CallCenters)
    emergency: Emergency = field(default_factory=Emergency)
    rotating: RotatingCampaigns = field(default_factory=RotatingCampaigns)
    neighbour: NeighbourCampaigns = field(default_factory=NeighbourCampaigns)
    pools: NumberPools = field(default_factory=NumberPools)
    pbx: CompanyPbxs = field(default_factory=CompanyPbxs)
    otp: OtpServices = field(default_factory=OtpServices)
    interconnect: Interconnects = field(default_factory=Interconnects)

    @classmethod
    def default(cls) -> "Scenario":
        return cls()

    @classmethod
    def small(cls) -> "Scenario":
        """Every population, small: a few simulated hours are a unit test (~10k events/4 h).

        Emergency calls are far more frequent than in life so that a few hours contain some.
        """
        return cls(subscribers=Subscribers(count=200), robocallers=Robocallers(count=3),
                   scanners=Scanners(count=1), snowshoe=Snowshoe(numbers=40),
                   spoofers=Spoofers(attempts_per_day=800.0),
                   call_centers=CallCenters(orgs=("bank",), numbers_per_org=2),
                   emergency=Emergency(calls_per_day=EMERGENCY_CALLS_SMALL),
                   rotating=RotatingCampaigns(attempts_per_day=(800.0, 1200.0)),
                   neighbour=NeighbourCampaigns(attempts_per_day=(600.0, 900.0)),
                   pools=NumberPools(numbers=100),
                   pbx=CompanyPbxs(dids=60),
                   otp=OtpServices(numbers=8, calls_per_day=600.0),
                   interconnect=Interconnects(people=100))

    @classmethod
    def campaigns(cls) -> "Scenario":
        """Issue 10's robots, several of each, next to every legitimate look-alike.

        Rotating-number campaigns, neighbour spoofing hidden in interconnect trunks (one SIP,
        one ISUP, so attestation cannot tell), number pools in one block; and company PBXs,
        banks' OTP services, interconnect people and call centers on enterprise trunks.
        """
        return cls(robocallers=Robocallers(count=2), scanners=Scanners(count=1),
                   rotating=RotatingCampaigns(campaigns=3, via_interconnect=1),
                   neighbour=NeighbourCampaigns(campaigns=2),
                   pools=NumberPools(pools=3),
                   pbx=CompanyPbxs(companies=2),
                   otp=OtpServices(services=2),
                   interconnect=Interconnects(trunks=2, isup_trunks=1, people=1000),
                   call_centers=CallCenters(orgs=("bank", "hospital", "delivery",
                                                  "collections"), numbers_per_org=3))

    @classmethod
    def slow_robots(cls) -> "Scenario":
        """Robots that pace themselves to stay under per-number volume thresholds."""
        return cls(robocallers=Robocallers(count=10, attempts_per_day=(150.0, 600.0),
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

    def with_country_code(self, country_code: str) -> "Scenario":
        """The same scenario on another country's numbering (``DIALGUARD_COUNTRY_CODE``)."""
        return replace(self, network=replace(self.network, country_code=country_code))


SCENARIOS = ("default", "small", "campaigns", "slow_robots", "snowshoe_heavy", "collections",
             "bursty_humans")


@dataclass(frozen=True)
class TruthEntry:
    """Who a calling number really is. ``campaign`` groups numbers run by one operator."""

    number: str
    population: str
    campaign: str
    robot: bool


# =============================================================================================
# Numbers and network
# =============================================================================================
def local_hour(ts: float) -> int:
    return int((ts / HOUR_S + LOCAL_UTC_OFFSET_H) % 24)


def _unit_hash(salt: str, number: str) -> float:
    """A stable uniform [0, 1) per number (Python's ``hash`` is salted per process)."""
    return zlib.crc32(f"{salt}|{number}".encode()) / 2 ** 32


class NumberSpace:
    """The set of allocated numbers, as blocks with a fill ratio plus a few fixed numbers.

    Membership is computed, not stored: a number in an allocated block exists when its stable
    hash falls under the block's fill. That keeps millions of callees in a few kilobytes and
    lets a scanner walk a range and meet exactly the holes a real range has.
    """

    def __init__(self, plan: NetworkPlan, rnd: random.Random, salt: str) -> None:
        self.cc = plan.country_code
        self.salt = salt
        self.fixed: dict[str, None] = dict.fromkeys(EMERGENCY_NUMBERS)
        self.blocks: dict[str, float] = {}
        while len(self.blocks) < plan.allocated_blocks:
            prefix = rnd.choice(MOBILE_PREFIXES)
            first = rnd.randrange(BLOCKS_PER_PREFIX - BLOCK_RUN[1])
            for block in range(first, first + rnd.randint(*BLOCK_RUN)):
                if len(self.blocks) < plan.allocated_blocks:
                    self.blocks.setdefault(self._block_key(prefix, block),
                                           rnd.uniform(*plan.block_fill))
        self.block_list = list(self.blocks)

    def _block_key(self, prefix: str, block: int) -> str:
        return f"{self.cc}{prefix}{block:0{BLOCK_DIGITS}d}"

    def add(self, number: str) -> None:
        """Make a number exist (service numbers that can be called)."""
        self.fixed[number] = None

    def is_allocated(self, number: str) -> bool:
        if number in self.fixed:
            return True
        fill = self.blocks.get(number[:-LINE_DIGITS])
        return fill is not None and _unit_hash(self.salt, number) < fill

    def allocated(self, rnd: random.Random) -> str:
        """A random existing mobile number."""
        while True:
            line = rnd.randrange(NUMBERS_PER_BLOCK)
            number = f"{rnd.choice(self.block_list)}{line:0{LINE_DIGITS}d}"
            if self.is_allocated(number):
                return number

    def unallocated(self, rnd: random.Random) -> str:
        """A mobile-looking number nobody has: a hole in a block or a dead block."""
        while True:
            if rnd.random() < HOLE_SHARE:
                block = rnd.choice(self.block_list)
            else:
                block = self._block_key(rnd.choice(MOBILE_PREFIXES),
                                        rnd.randrange(BLOCKS_PER_PREFIX))
            number = f"{block}{rnd.randrange(NUMBERS_PER_BLOCK):0{LINE_DIGITS}d}"
            if not self.is_allocated(number):
                return number

    def any_mobile(self, rnd: random.Random) -> str:
        """A mobile-looking number, allocated or not (what a spoofer makes up)."""
        return (f"{self.cc}{rnd.choice(MOBILE_PREFIXES)}"
                f"{rnd.randrange(BLOCKS_PER_PREFIX * NUMBERS_PER_BLOCK):08d}")

    def service_number(self, rnd: random.Random) -> str:
        """A published business number (callable, so it joins the allocated set)."""
        line = rnd.randrange(10 ** SERVICE_DIGITS)
        number = f"{self.cc}{SERVICE_PREFIX}{line:0{SERVICE_DIGITS}d}"
        self.add(number)
        return number

    def sparse_block_start(self, rnd: random.Random) -> int:
        """Where a scanner starts: the first number of a thinly filled block."""
        candidates = [rnd.choice(self.block_list) for _ in range(SCANNER_BLOCK_CANDIDATES)]
        block = min(candidates, key=self.blocks.__getitem__)
        return int(block) * NUMBERS_PER_BLOCK + rnd.randrange(NUMBERS_PER_BLOCK // 2)


@dataclass(frozen=True)
class Line:
    """Where a caller's calls enter the network: protocol, trunk and switch."""

    proto: str
    trunk: str
    switch: str


class Network:
    """Switches with access trunks; a share of switches speak ISUP (legacy TDM)."""

    def __init__(self, plan: NetworkPlan, rnd: random.Random) -> None:
        isup = set(rnd.sample(range(plan.switches), round(plan.switches * plan.isup_share)))
        self.access = [Line(ISUP if s in isup else SIP, f"tk-{s:02d}-{t}", f"sw-{s:02d}")
                       for s in range(plan.switches) for t in range(plan.trunks_per_switch)]

    def home(self, number: str, sip_only: bool = False) -> Line:
        """A number's access line is fixed by the number, so its protocol never changes.

        ``sip_only``: numbers whose calls carry an attestation live on SIP (ISUP has none).
        """
        lines = [line for line in self.access if line.proto == SIP] if sip_only else self.access
        return lines[zlib.crc32(number.encode()) % len(lines)]

    @staticmethod
    def gateway(name: str) -> Line:
        """A dedicated SIP interconnect trunk (wholesale carriers, international gateways)."""
        return Line(SIP, f"tk-gw-{name}", "sw-gw")

    def enterprise(self, name: str) -> Line:
        """A business's own SIP trunk (PBX, contact center) on one of the operator's SIP
        switches, chosen by the name so it stays put when populations are resized."""
        switches = sorted({line.switch for line in self.access if line.proto == SIP})
        return Line(SIP, f"tk-ent-{name}", switches[zlib.crc32(name.encode()) % len(switches)])

    @staticmethod
    def interconnect(name: str, proto: str = SIP) -> Line:
        """A trunk from another carrier: its subscribers' calls (and whatever hides among them)."""
        return Line(proto, f"tk-ic-{name}", "sw-ic")


@dataclass(frozen=True)
class Phone:
    """A calling identity: number, line, what its operator attests, and who it really is."""

    number: str
    line: Line
    attest: str | None
    truth: TruthEntry


# =============================================================================================
# Calls
# =============================================================================================
@dataclass(frozen=True)
class Durations:
    """Lognormal talk time, clipped: human call lengths have a long right tail."""

    median_s: float
    sigma: float
    min_s: float
    max_s: float

    def draw(self, rnd: random.Random) -> float:
        value = rnd.lognormvariate(math.log(self.median_s), self.sigma)
        return min(max(value, self.min_s), self.max_s)


@dataclass(frozen=True)
class CallStyle:
    """How a population's calls go once dialled."""

    #: Chance that a reachable callee answers.
    answer: float
    #: Share of unanswered reachable calls that meet a busy line.
    busy: float
    #: Ringing before an answer.
    ring_s: tuple[float, float]
    #: How long the caller lets an unanswered call ring.
    give_up_s: tuple[float, float]
    #: Talk time: a weighted mixture of distributions.
    durations: tuple[tuple[float, Durations], ...]

    def duration(self, rnd: random.Random) -> float:
        weights = [w for w, _ in self.durations]
        return rnd.choices([d for _, d in self.durations], weights)[0].draw(rnd)


def human_style(answer: float, median_s: float) -> CallStyle:
    return CallStyle(answer, 0.3, (3.0, 20.0), (20.0, 45.0),
                     ((1.0, Durations(median_s, 1.0, 2.0, 2 * HOUR_S)),))


def robot_style(answer: float, hangup_share: float) -> CallStyle:
    """People hang up on robots within seconds; a few listen to the pitch."""
    return CallStyle(answer, 0.2, (3.0, 15.0), (12.0, 25.0),
                     ((hangup_share, Durations(5.0, 0.4, 2.0, 10.0)),
                      (1.0 - hangup_share, Durations(25.0, 0.5, 10.0, 120.0))))


#: Scanners ring once and hang up: they want to know whether the number exists.
SCANNER_DURATIONS = Durations(2.0, 0.3, 1.0, 4.0)
EMERGENCY_STYLE = CallStyle(0.99, 0.0, (1.0, 6.0), (60.0, 90.0),
                            ((1.0, Durations(90.0, 0.6, 15.0, 1200.0)),))
PSAP_STYLE = CallStyle(0.8, 0.2, (3.0, 20.0), (30.0, 45.0),
                       ((1.0, Durations(60.0, 0.6, 10.0, 600.0)),))
#: Customers calling a business line: an IVR answers almost always, queues can be full.
CUSTOMER_STYLE = CallStyle(0.92, 0.5, (1.0, 4.0), (30.0, 60.0),
                           ((1.0, Durations(180.0, 0.6, 20.0, 1800.0)),))

ANSWERED, BUSY, NO_ANSWER, UNALLOCATED = "answered", "busy", "no_answer", "unallocated"


@dataclass(frozen=True)
class CallResult:
    outcome: str
    #: When the call is over and its line is free again.
    end_ts: float


def fail_code(proto: str, outcome: str, rang_s: float, rnd: random.Random) -> int:
    """The SIP status or ISUP cause a failed call ends with."""
    if proto == ISUP:
        return {UNALLOCATED: ISUP_UNALLOCATED_NUMBER, BUSY: ISUP_USER_BUSY}.get(
            outcome, ISUP_NO_ANSWER)
    if outcome == UNALLOCATED:
        return SIP_NOT_FOUND
    if outcome == BUSY:
        return SIP_BUSY_HERE
    if rang_s < NETWORK_NO_ANSWER_S:
        return SIP_REQUEST_TERMINATED  # the caller gave up (CANCEL)
    return rnd.choice((SIP_TEMPORARILY_UNAVAILABLE, SIP_REQUEST_TIMEOUT))


# =============================================================================================
# Arrival processes
# =============================================================================================
def next_arrival(rnd: random.Random, ts: float, per_day: float,
                 profile: tuple[float, ...]) -> float:
    """Next event of a Poisson process whose rate follows an hourly profile (by thinning).

    Hours with zero weight are skipped whole; that is exact because the process is memoryless.
    """
    if per_day <= 0:
        return math.inf
    top = max(profile)
    peak = per_day / DAY_S * top * 24 / sum(profile)
    t = ts
    while True:
        t += rnd.expovariate(peak)
        weight = profile[local_hour(t)]
        if weight <= 0:
            t = (math.floor(t / HOUR_S) + 1) * HOUR_S
            continue
        if rnd.random() * top <= weight:
            return t


class Actor:
    """Something on the network that wakes at times of its choosing and places calls."""

    robot = False

    def start(self, sim: "Simulation", ts: float) -> None:
        raise NotImplementedError


class Subscriber(Actor):
    """A person: calls contacts by day and evening, answers most calls, returns missed ones."""

    def __init__(self, phone: Phone, rnd: random.Random, p: Subscribers) -> None:
        self.phone = phone
        self.rnd = rnd
        self.p = p
        #: People differ: rates spread around the mean (gamma, mean 1).
        self.per_day = p.calls_per_day * rnd.gammavariate(CALL_RATE_SHAPE, 1 / CALL_RATE_SHAPE)
        self.contacts: list[str] = []
        self.style = human_style(p.answer, p.median_duration_s)

    def start(self, sim: "Simulation", ts: float) -> None:
        sim.after(next_arrival(self.rnd, ts, self.per_day, HUMAN_PROFILE), self.wake)

    def wake(self, sim: "Simulation", ts: float) -> None:
        self.call(sim, ts, self.pick_callee(sim))
        sim.after(next_arrival(self.rnd, ts, self.per_day, HUMAN_PROFILE), self.wake)

    def pick_callee(self, sim: "Simulation") -> str:
        rnd, p = self.rnd, self.p
        if rnd.random() < p.wrong_number and self.contacts:
            return misdial(rnd.choice(self.contacts), rnd)
        if rnd.random() < p.contact_share and self.contacts:
            return rnd.choice(self.contacts)
        return sim.space.allocated(rnd)

    def call(self, sim: "Simulation", ts: float, callee: str,
             style: CallStyle | None = None) -> CallResult:
        result = sim.call(ts, self.phone, callee, style or self.style, self.rnd)
        other = sim.subscriber(callee)
        if other is not None and result.outcome in (BUSY, NO_ANSWER) \
                and other.rnd.random() < other.p.return_missed:
            back = result.end_ts + other.rnd.uniform(*RETURN_MISSED_DELAY_S)
            sim.after(back, lambda s, t: other.call(s, t, self.phone.number))
        return result


def misdial(number: str, rnd: random.Random) -> str:
    """One wrong digit among the subscriber digits: the classic wrong number."""
    i = len(number) - 1 - rnd.randrange(min(MISDIAL_DIGITS, len(number)))
    digit = rnd.choice([d for d in "0123456789" if d != number[i]])
    return number[:i] + digit + number[i + 1:]


class BurstDialer(Actor):
    """A robot's dialer: bursts of 10-60 min over a few concurrent lines, idle gaps between.

    Within a burst attempts arrive at a steady Poisson rate; when every line is busy the next
    attempt waits for a line to free. Idle gaps are scheduled by the operator's software, so
    they vary around their mean rather than having an exponential tail: every robot shows up
    within a few hours. The start state is drawn from the mix (in a burst with probability =
    duty cycle), so robots are already at work at ``start_ts``.
    """

    robot = True

    def __init__(self, rnd: random.Random, attempts_per_day: float, active_hours: float,
                 burst_min: tuple[float, float], lines: int) -> None:
        self.rnd = rnd
        duty = min(active_hours / 24.0, 1.0)
        self.rate = attempts_per_day / (active_hours * HOUR_S)
        self.burst_min = burst_min
        mean_burst_s = sum(burst_min) / 2 * MINUTE_S
        self.mean_idle_s = mean_burst_s * (1.0 - duty) / duty if duty < 1 else 0.0
        self.duty = duty
        self.busy_until = [-math.inf] * max(lines, 1)
        self.burst_start = self.burst_end = -math.inf

    def _burst_len(self) -> float:
        return self.rnd.uniform(*self.burst_min) * MINUTE_S

    def _begin_burst(self, ts: float, elapsed_share: float = 0.0) -> None:
        self.burst_start = ts
        self.burst_end = ts + self._burst_len() * (1.0 - elapsed_share)

    def _idle_gap(self) -> float:
        return self.mean_idle_s * self.rnd.uniform(*IDLE_SPREAD)

    def start(self, sim: "Simulation", ts: float) -> None:
        if self.rnd.random() < self.duty:
            self._begin_burst(ts, elapsed_share=self.rnd.random())
            sim.after(ts + self.rnd.expovariate(self.rate), self.wake)
        else:
            self._begin_burst(ts + self._idle_gap() * self.rnd.random())
            sim.after(self.burst_start, self.wake)

    def active(self, ts: float) -> bool:
        return self.burst_start <= ts < self.burst_end

    def wake(self, sim: "Simulation", ts: float) -> None:
        if ts >= self.burst_end:
            self._begin_burst(max(ts, self.burst_end + self._idle_gap()))
            sim.after(self.burst_start, self.wake)
            return
        free = min(self.busy_until)
        if free > ts:  # every line is busy: dial again once one frees
            sim.after(free + self.rnd.uniform(*REDIAL_GAP_S), self.wake)
            return
        result = self.dial(sim, ts)
        self.busy_until[self.busy_until.index(free)] = result.end_ts
        sim.after(ts + self.rnd.expovariate(self.rate), self.wake)

    def dial(self, sim: "Simulation", ts: float) -> CallResult:
        raise NotImplementedError

    def purchased_callee(self, sim: "Simulation", unallocated: float) -> str:
        """A line of a bought list: mostly real numbers, a share long dead."""
        if self.rnd.random() < unallocated:
            return sim.space.unallocated(self.rnd)
        return sim.space.allocated(self.rnd)


class Robocaller(BurstDialer):
    def __init__(self, phone: Phone, rnd: random.Random, p: Robocallers) -> None:
        super().__init__(rnd, rnd.uniform(*p.attempts_per_day),
                         rnd.uniform(*p.active_hours_per_day), p.burst_min,
                         rnd.randint(*p.lines))
        self.phone = phone
        self.unallocated = rnd.uniform(*p.unallocated)
        self.style = robot_style(rnd.uniform(*p.answer), p.hangup_share)

    def dial(self, sim: "Simulation", ts: float) -> CallResult:
        callee = self.purchased_callee(sim, self.unallocated)
        return sim.call(ts, self.phone, callee, self.style, self.rnd)


class Scanner(BurstDialer):
    """Walks a number range upwards in small steps to find out which numbers exist."""

    def __init__(self, phone: Phone, rnd: random.Random, p: Scanners, start: int) -> None:
        super().__init__(rnd, rnd.uniform(*p.attempts_per_day),
                         rnd.uniform(*p.active_hours_per_day), p.burst_min,
                         rnd.randint(*p.lines))
        self.phone = phone
        self.cursor = start
        self.max_step = rnd.randint(*p.max_step)
        self.style = CallStyle(p.answer, 0.2, (1.0, 4.0), (2.0, 6.0),
                               ((1.0, SCANNER_DURATIONS),))

    def dial(self, sim: "Simulation", ts: float) -> CallResult:
        self.cursor += self.rnd.randint(1, self.max_step)
        return sim.call(ts, self.phone, str(self.cursor), self.style, self.rnd)


class SnowshoePool(BurstDialer):
    """One campaign spread over many numbers of one block on one trunk, each number quiet."""

    def __init__(self, phones: list[Phone], rnd: random.Random, p: Snowshoe) -> None:
        self.per_number = [rnd.uniform(*p.attempts_per_day) for _ in phones]
        super().__init__(rnd, sum(self.per_number), rnd.uniform(*p.active_hours_per_day),
                         p.burst_min, rnd.randint(*p.lines))
        self.phones = phones
        self.cum_weights = list(itertools.accumulate(self.per_number))
        self.unallocated = rnd.uniform(*p.unallocated)
        self.style = robot_style(p.answer, ROBOT_HANGUP_SHARE)

    def dial(self, sim: "Simulation", ts: float) -> CallResult:
        phone = self.rnd.choices(self.phones, cum_weights=self.cum_weights)[0]
        return sim.call(ts, phone, self.purchased_callee(sim, self.unallocated), self.style,
                        self.rnd)


class Spoofer(BurstDialer):
    """Makes up a new caller ID for every call, so no number ever repeats; one trunk."""

    def __init__(self, campaign: str, line: Line, rnd: random.Random, p: Spoofers) -> None:
        super().__init__(rnd, p.attempts_per_day, rnd.uniform(*p.active_hours_per_day),
                         p.burst_min, rnd.randint(*p.lines))
        self.campaign = campaign
        self.line = line
        self.p = p
        self.style = robot_style(p.answer, ROBOT_HANGUP_SHARE)

    def dial(self, sim: "Simulation", ts: float) -> CallResult:
        while True:
            number = sim.space.any_mobile(self.rnd)
            if not sim.has_caller(number):
                break
        attest = self.rnd.choice(("C", None))
        phone = Phone(number, self.line, attest, TruthEntry(number, SPOOFED, self.campaign, True))
        sim.reserve_caller(number)
        return sim.call(ts, phone, self.purchased_callee(sim, self.p.unallocated), self.style,
                        self.rnd)


class CallCenter(Actor):
    """A bank's, hospital's or courier's outbound line: robot volume, human outcomes."""

    def __init__(self, phone: Phone, rnd: random.Random, p: CallCenters) -> None:
        self.phone = phone
        self.rnd = rnd
        self.p = p
        self.per_day = rnd.uniform(*p.attempts_per_day)
        lo, hi = p.duration_s
        self.style = CallStyle(rnd.uniform(*p.answer), 0.3, (3.0, 25.0), (25.0, 40.0),
                               ((1.0, Durations(math.sqrt(lo * hi), 0.5, lo, hi)),))

    def start(self, sim: "Simulation", ts: float) -> None:
        sim.after(next_arrival(self.rnd, ts, self.per_day, OFFICE_PROFILE), self.wake)

    def wake(self, sim: "Simulation", ts: float) -> None:
        rnd, p = self.rnd, self.p
        if rnd.random() < p.unallocated:
            callee = sim.space.unallocated(rnd)  # a customer record with a stale number
        elif rnd.random() < p.subscriber_customers:
            callee = rnd.choice(sim.subscribers).phone.number
        else:
            callee = sim.space.allocated(rnd)
        result = sim.call(ts, self.phone, callee, self.style, rnd)
        if result.outcome != UNALLOCATED:
            share = p.callback_answered if result.outcome == ANSWERED else p.callback_missed
            if rnd.random() < share:
                back = result.end_ts + rnd.uniform(*CUSTOMER_CALLBACK_DELAY_S)
                sim.after(back, lambda s, t: s.customer_call(t, callee, self.phone, rnd))
        sim.after(next_arrival(rnd, ts, self.per_day, OFFICE_PROFILE), self.wake)


class CustomerLine(Actor):
    """Customers calling a business number on their own, in business hours."""

    def __init__(self, center: Phone, rnd: random.Random, per_day: float) -> None:
        self.center = center
        self.rnd = rnd
        self.per_day = per_day

    def start(self, sim: "Simulation", ts: float) -> None:
        sim.after(next_arrival(self.rnd, ts, self.per_day, OFFICE_PROFILE), self.wake)

    def wake(self, sim: "Simulation", ts: float) -> None:
        sim.customer_call(ts, sim.space.allocated(self.rnd), self.center, self.rnd)
        sim.after(next_arrival(self.rnd, ts, self.per_day, OFFICE_PROFILE), self.wake)


class EmergencyDesk(Actor):
    """Incidents: a subscriber calls an emergency number; the PSAP may call people back."""

    def __init__(self, psaps: dict[str, Phone], rnd: random.Random, p: Emergency) -> None:
        self.psaps = psaps
        self.rnd = rnd
        self.p = p

    def start(self, sim: "Simulation", ts: float) -> None:
        if sim.subscribers:
            sim.after(next_arrival(self.rnd, ts, self.p.calls_per_day, HUMAN_PROFILE),
                      self.wake)

    def wake(self, sim: "Simulation", ts: float) -> None:
        rnd = self.rnd
        person = rnd.choice(sim.subscribers)
        dialled = rnd.choices(EMERGENCY_NUMBERS, EMERGENCY_WEIGHTS)[0]
        result = sim.call(ts, person.phone, dialled, EMERGENCY_STYLE, rnd)
        if rnd.random() < self.p.callback_share:
            self.call_back(sim, self.psaps[PSAP_OF[dialled]], person.phone.number, result.end_ts)
        sim.after(next_arrival(rnd, ts, self.p.calls_per_day, HUMAN_PROFILE), self.wake)

    def call_back(self, sim: "Simulation", psap: Phone, caller: str, after_ts: float) -> None:
        """The PSAP calls the caller back, then witnesses or relatives, a few minutes apart."""
        rnd = self.rnd
        others = rnd.randint(*self.p.callback_numbers) - 1
        t = after_ts + rnd.uniform(*PSAP_CALLBACK_DELAY_S)
        for callee in [caller] + [sim.space.allocated(rnd) for _ in range(others)]:
            sim.after(t, lambda s, at, c=callee: s.call(at, psap, c, PSAP_STYLE, rnd))
            t += rnd.uniform(*PSAP_CALLBACK_SPACING_S)


# =============================================================================================
# Simulation
# =============================================================================================
#: Something to do at a simulated time (an actor's wake-up, a callback); returns are ignored.
Task = Callable[["Simulation", float], object]


@dataclass(frozen=True)
class _Emit:
    """A future event on the heap with the truth of the actor that placed its call (which is
    not the number's owner when the caller number is spoofed)."""

    event: SignalingEvent
    truth: TruthEntry | None


class Simulation:
    """Deterministic for a seed: the same scenario, seed and start give the same events.

    One simulation is one run: :meth:`events` (or :meth:`labelled_events`) may be consumed
    once; :meth:`truth` then lists every number that has called so far (in order of first
    appearance).

    Truth comes at two grains. Per number (:meth:`truth`, the truth file): who *owns* the
    number, so a subscriber whose number a robot borrowed stays a subscriber. Per call
    (:meth:`labelled_events`): who really placed the call, whatever number it showed; the two
    differ exactly for spoofed calls (:meth:`spoofed`).
    """

    def __init__(self, scenario: Scenario, seed: int, start_ts: float) -> None:
        self.scenario = scenario
        self.seed = seed
        self.start_ts = start_ts
        self.space = NumberSpace(scenario.network, self.rng("numbers"), salt=str(seed))
        self.network = Network(scenario.network, self.rng("network"))
        self._heap: list[tuple[float, int, _Emit | Task]] = []
        self._seq = itertools.count()
        self._call_ids = itertools.count()
        self._truth: dict[str, TruthEntry] = {}
        self._truth_list: list[TruthEntry] = []
        #: Caller numbers taken by some actor (spoofers must not reuse one).
        self._callers: dict[str, None] = {}
        #: Who owns a number (every actor's own numbers, not the ones robots make up).
        self._owners: dict[str, TruthEntry] = {}
        self._by_number: dict[str, Subscriber] = {}
        self._customers: dict[str, Phone] = {}
        self._started = False
        self.subscribers: list[Subscriber] = []
        self.dialers: list[BurstDialer] = []
        self.actors: list[Actor] = self._build()

    # -- construction ------------------------------------------------------------------------
    def rng(self, *key: object) -> random.Random:
        return random.Random("/".join(map(str, (self.seed, *key))))

    def phone(self, number: str, population: str, campaign: str, robot: bool,
               attest: str | None, line: Line | None = None) -> Phone:
        """A number an actor owns (its truth is the number's truth), on its line."""
        self.reserve_caller(number)
        line = line or self.network.home(number)
        truth = TruthEntry(number, population, campaign, robot)
        self._owners[number] = truth
        return Phone(number, line, attest if line.proto == SIP else None, truth)

    def _build(self) -> list[Actor]:
        sc = self.scenario
        actors: list[Actor] = []
        self._build_subscribers()
        actors += self.subscribers
        for i in range(sc.robocallers.count):
            rnd = self.rng(ROBOCALLER, i)
            number = self.fresh(rnd)
            attest = ROBOT_ATTEST_CYCLE[i % len(ROBOT_ATTEST_CYCLE)]
            phone = self.phone(number, ROBOCALLER, f"robocall-{i}", True, attest,
                               self.network.home(number, sip_only=attest == "A"))
            self.dialers.append(Robocaller(phone, rnd, sc.robocallers))
        for i in range(sc.scanners.count):
            rnd = self.rng(SCANNER, i)
            phone = self.phone(self.fresh(rnd), SCANNER, f"scan-{i}", True,
                               rnd.choice(("C", None)))
            self.dialers.append(Scanner(phone, rnd, sc.scanners,
                                        self.space.sparse_block_start(rnd)))
        pool_blocks = self.rng(SNOWSHOE).sample(range(10 ** POOL_BLOCK_DIGITS),
                                                 sc.snowshoe.pools)
        for pool, block in enumerate(pool_blocks):
            rnd = self.rng(SNOWSHOE, pool)
            self.dialers.append(SnowshoePool(self._pool_phones(pool, block, rnd), rnd,
                                             sc.snowshoe))
        for i in range(sc.spoofers.campaigns):
            rnd = self.rng(SPOOFED, i)
            self.dialers.append(Spoofer(f"spoof-{i}", Network.gateway(f"intl-{i}"), rnd,
                                        sc.spoofers))
        from services import sim_campaigns  # its actors build on this module's classes

        campaign_dialers, look_alikes = sim_campaigns.build(self)
        self.dialers += campaign_dialers
        actors += self.dialers
        actors += look_alikes
        for org in sc.call_centers.orgs:
            line = self.network.enterprise(f"cc-{org}") \
                if org in sc.call_centers.enterprise_trunk_orgs else None
            for j in range(sc.call_centers.numbers_per_org):
                rnd = self.rng(CALL_CENTER, org, j)
                phone = self.phone(self.space.service_number(rnd), CALL_CENTER, org, False,
                                   "A" if rnd.random() < CALL_CENTER_ATTEST_A else "B", line)
                actors.append(CallCenter(phone, rnd, sc.call_centers))
                actors.append(CustomerLine(phone, self.rng(CUSTOMER, org, j),
                                           sc.call_centers.inbound_per_day))
        psaps = {n: self.phone(n, EMERGENCY, f"psap-{n}", False, "A") for n in PSAP_NUMBERS}
        actors.append(EmergencyDesk(psaps, self.rng(EMERGENCY), sc.emergency))
        return actors

    def fresh(self, rnd: random.Random) -> str:
        """A number no other actor uses (robots own ordinary-looking mobile numbers)."""
        while True:
            number = self.space.allocated(rnd)
            if number not in self._callers:
                return number

    def _build_subscribers(self) -> None:
        p = self.scenario.subscribers
        rnd = self.rng(SUBSCRIBER)
        numbers: list[str] = []
        while len(numbers) < p.count:
            number = self.fresh(rnd)
            self.reserve_caller(number)
            numbers.append(number)
        contacts: dict[str, dict[str, None]] = {n: {} for n in numbers}
        for number in numbers:
            size = max(1, round(p.contacts * rnd.uniform(*CONTACTS_SPREAD)))
            peers = min(round(size * p.subscriber_contacts), len(numbers) - 1)
            for other in rnd.sample(numbers, peers):
                if other != number:  # people in each other's phone book
                    contacts[number][other] = None
                    contacts[other][number] = None
            for _ in range(size - peers):
                contacts[number][self.space.allocated(rnd)] = None
        for i, number in enumerate(numbers):
            sub_rnd = self.rng(SUBSCRIBER, i)
            phone = self.phone(number, SUBSCRIBER, NO_CAMPAIGN, False,
                               "A" if sub_rnd.random() < HUMAN_ATTEST_A else "B")
            sub = Subscriber(phone, sub_rnd, p)
            sub.contacts = list(contacts[number])
            self.subscribers.append(sub)
            self._by_number[number] = sub

    def _pool_phones(self, pool: int, block_id: int, rnd: random.Random) -> list[Phone]:
        """A pool's numbers share one block (one 7-digit prefix for +86) and one trunk."""
        p = self.scenario.snowshoe
        cc = self.scenario.network.country_code
        block = f"{cc}{POOL_PREFIX}{block_id:0{POOL_BLOCK_DIGITS}d}"
        lines = rnd.sample(range(10 ** POOL_LINE_DIGITS), p.numbers)
        trunk = Network.gateway(f"wholesale-{pool}")
        attest = rnd.choice(("B", "C"))
        return [self.phone(f"{block}{n:0{POOL_LINE_DIGITS}d}", SNOWSHOE, f"snowshoe-{pool}",
                           True, attest, trunk) for n in lines]

    # -- used by actors ----------------------------------------------------------------------
    def after(self, ts: float, task: Task) -> None:
        heapq.heappush(self._heap, (ts, next(self._seq), task))

    def subscriber(self, number: str) -> Subscriber | None:
        return self._by_number.get(number)

    def has_caller(self, number: str) -> bool:
        return number in self._callers or number in self.space.fixed

    def reserve_caller(self, number: str) -> None:
        self._callers[number] = None

    def call(self, ts: float, phone: Phone, callee: str, style: CallStyle,
             rnd: random.Random) -> CallResult:
        """Place one call: push its attempt now and its answer/release or fail later."""
        line = phone.line
        cid = f"{self.seed}-{next(self._call_ids)}"

        def push(ev: SignalingEvent) -> None:
            self._push(ev, phone.truth)

        def event(at: float, kind: str, **extra: Any) -> SignalingEvent:
            return SignalingEvent(ts=at, proto=line.proto, kind=kind, call_id=cid,
                                  caller=phone.number, callee=callee, trunk=line.trunk,
                                  switch=line.switch, **extra)

        push(event(ts, "attempt", attest=phone.attest))
        isup = line.proto == ISUP
        if not self.space.is_allocated(callee):
            end = ts + rnd.uniform(*UNALLOCATED_FAIL_S)
            push(event(end, "fail", code=fail_code(line.proto, UNALLOCATED, 0.0, rnd)))
            return CallResult(UNALLOCATED, end)
        if rnd.random() < style.answer:
            answer_ts = ts + rnd.uniform(*style.ring_s)
            duration = round(style.duration(rnd), 3)
            end = answer_ts + duration
            push(event(answer_ts, "answer", code=None if isup else SIP_OK))
            push(event(end, "release", duration_s=duration,
                       code=ISUP_NORMAL_CLEARING if isup else None))
            return CallResult(ANSWERED, end)
        if rnd.random() < style.busy:
            end = ts + rnd.uniform(*BUSY_FAIL_S)
            push(event(end, "fail", code=fail_code(line.proto, BUSY, 0.0, rnd)))
            return CallResult(BUSY, end)
        rang = rnd.uniform(*style.give_up_s)
        push(event(ts + rang, "fail", code=fail_code(line.proto, NO_ANSWER, rang, rnd)))
        return CallResult(NO_ANSWER, ts + rang)

    def customer_call(self, ts: float, customer: str, center: Phone,
                      rnd: random.Random) -> None:
        """A customer calls a business line: from their own phone if they are a subscriber."""
        sub = self.subscriber(customer)
        if sub is not None:
            sub.call(self, ts, center.number, CUSTOMER_STYLE)
            return
        phone = self._customers.get(customer)
        if phone is None:
            if self.has_caller(customer):
                return  # the number belongs to a robot or a spoofed ID: its truth stays true
            phone = self.phone(customer, CUSTOMER, center.truth.campaign, False,
                               "A" if rnd.random() < HUMAN_ATTEST_A else "B")
            self._customers[customer] = phone
        self.call(ts, phone, center.number, CUSTOMER_STYLE, rnd)

    def _push(self, event: SignalingEvent, truth: TruthEntry) -> None:
        heapq.heappush(self._heap, (event.ts, next(self._seq), _Emit(event, truth)))

    # -- public ------------------------------------------------------------------------------
    def events(self, duration_s: float = math.inf) -> Iterator[SignalingEvent]:
        """Events in event-time order from ``start_ts`` for ``duration_s`` simulated seconds.

        Calls still in progress at the end are cut there (an answer may lack its release).
        """
        for ev, _ in self.labelled_events(duration_s):
            yield ev

    def labelled_events(self, duration_s: float = math.inf
                        ) -> Iterator[tuple[SignalingEvent, TruthEntry]]:
        """:meth:`events`, each with the per-call truth: who really placed its call.

        Every event of a call (attempt, answer, release, fail) carries the same entry: the
        placing actor's population, campaign and robot flag, with ``number`` = the caller
        number it showed. For a spoofed call that is the robot, while :meth:`truth` keeps the
        number's owner. The entries are shared, not copied, so this costs nothing per event.
        """
        if self._started:
            raise RuntimeError("a Simulation runs once; build a new one for another run")
        self._started = True
        end = self.start_ts + duration_s
        for actor in self.actors:
            actor.start(self, self.start_ts)
        heap = self._heap
        known = self._truth
        while heap:
            ts, _, item = heapq.heappop(heap)
            if ts >= end:
                return
            if isinstance(item, _Emit):
                ev = item.event
                if ev.kind == "attempt" and ev.caller not in known:
                    entry = self._owners.get(ev.caller, item.truth)
                    known[ev.caller] = entry
                    self._truth_list.append(entry)
                yield ev, item.truth
            else:
                item(self, ts)

    def owner(self, number: str) -> TruthEntry | None:
        """The truth of the actor that owns ``number`` (None: a number nobody owns)."""
        return self._owners.get(number)

    def spoofed(self, call_truth: TruthEntry) -> bool:
        """Whether a call with this per-call truth showed a number someone else owns."""
        owner = self._owners.get(call_truth.number)
        return owner is not None and owner is not call_truth

    def truth(self) -> list[TruthEntry]:
        """Every number that has called so far, with who owns it (robots' made-up numbers:
        the robot)."""
        return list(self._truth_list)

    def truth_from(self, index: int) -> list[TruthEntry]:
        """Truth entries from position ``index`` on (for appending to a file as they come)."""
        return self._truth_list[index:]

    def robots_active(self, ts: float) -> tuple[int, int]:
        """(robot dialers in a burst at ``ts``, robot dialers in total)."""
        return sum(1 for d in self.dialers if d.active(ts)), len(self.dialers)


def write_truth(path: Path, entries: list[TruthEntry]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as fh:
        for e in entries:
            fh.write(orjson.dumps(asdict(e)) + b"\n")
    tmp.replace(path)


def read_truth(path: Path) -> list[TruthEntry]:
    return [TruthEntry(**orjson.loads(line)) for line in path.read_bytes().splitlines() if line]


@dataclass(frozen=True)
class CallTruth:
    """Who really placed one call: a line of the per-call truth file (``--call-truth``).

    ``spoofed``: the caller number belongs to another actor (whose per-number truth entry it
    keeps). ``ts`` is the attempt's event time.
    """

    call_id: str
    ts: float
    caller: str
    population: str
    campaign: str
    robot: bool
    spoofed: bool

    @classmethod
    def of(cls, sim: "Simulation", ev: SignalingEvent, truth: TruthEntry) -> "CallTruth":
        return cls(ev.call_id, ev.ts, ev.caller, truth.population, truth.campaign, truth.robot,
                   sim.spoofed(truth))


def read_call_truth(path: Path) -> list[CallTruth]:
    return [CallTruth(**orjson.loads(line)) for line in path.read_bytes().splitlines() if line]


class CallTruthWriter:
    """Appends one :class:`CallTruth` line per call attempt as it is produced.

    One line per call grows with the run (unlike the per-number file), so it is written only
    when asked for; evaluation in process uses :meth:`Simulation.labelled_events` instead.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh: BinaryIO = path.open("wb")
        self.written = 0

    def add(self, sim: "Simulation", ev: SignalingEvent, truth: TruthEntry) -> None:
        if ev.kind == "attempt":
            self._fh.write(orjson.dumps(asdict(CallTruth.of(sim, ev, truth))) + b"\n")
            self.written += 1

    def close(self) -> None:
        self._fh.close()


class TruthWriter:
    """Appends truth lines as numbers first call, so a run stopped at any moment leaves a
    truth file that covers every number it sent."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh: BinaryIO = path.open("wb")
        self.written = 0

    def update(self, sim: Simulation) -> None:
        new = sim.truth_from(self.written)
        if new:
            self._fh.write(b"".join(orjson.dumps(asdict(e)) + b"\n" for e in new))
            self._fh.flush()
            self.written += len(new)

    def close(self, sim: Simulation) -> None:
        self.update(sim)
        self._fh.close()


# =============================================================================================
# CLI: dialguard simulate
# =============================================================================================
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="random seed; the same seed and scenario give the same traffic "
                             f"(default {DEFAULT_SEED})")
    parser.add_argument("--scenario", choices=SCENARIOS, default="default",
                        help="population mix: 'default' (2000 subscribers, 8 robocallers, "
                             "3 scanners, a 200-number snowshoe pool, a spoofing campaign, "
                             "a rotating-number, a neighbour-spoofing and a 300-number pool "
                             "campaign, bank/hospital/delivery call centers, a company PBX, a "
                             "bank OTP service, an interconnect trunk, emergency calls), "
                             "'small' (a fast one for tests), 'campaigns' (several rotating, "
                             "neighbour and pool campaigns among all their legitimate "
                             "look-alikes), or a hard case for evaluation: slow_robots, "
                             "snowshoe_heavy, collections, bursty_humans")
    parser.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                        help="simulated seconds to produce, then stop (default 0: run until "
                             "Ctrl-C)")
    parser.add_argument("--speed", type=float, default=None,
                        help="simulated seconds per wall-clock second while replaying history "
                             "(default DIALGUARD_SIMULATE_SPEED); once the simulated clock "
                             "reaches now it runs in real time, so no event is ever stamped "
                             "in the future")
    parser.add_argument("--rate", type=float, default=0.0, metavar="EVENTS_PER_S",
                        help="produce at most this many events per wall-clock second, to go "
                             "easy on a shared cluster (default 0: no cap)")
    parser.add_argument("--fast", action="store_true",
                        help="ignore --speed and produce history as fast as possible; events "
                             "are still never stamped after the current wall-clock time")
    parser.add_argument("--history-hours", type=float, default=None, metavar="HOURS",
                        help="start the simulated clock this many hours in the past (default "
                             "DIALGUARD_SIMULATE_HISTORY_H) so detection has history to chew "
                             "on; the clock then catches up with real time")
    parser.add_argument("--truth", type=Path, default=None, metavar="PATH",
                        help="where to write the ground truth, one JSON line per calling "
                             "number: number, population, campaign, robot of the number's "
                             "owner (a robot's made-up number: the robot) (default "
                             "<DIALGUARD_HOME>/data/simulation-truth.jsonl); written as numbers "
                             "appear, so an interrupted run still leaves it")
    parser.add_argument("--call-truth", type=Path, default=None, metavar="PATH",
                        help="also write per-call ground truth, one JSON line per call attempt: "
                             "call_id, ts, caller, population, campaign, robot, spoofed (who "
                             "really placed the call; a spoofed call shows a number whose "
                             "per-number truth is its owner's). Grows with the run, so off "
                             "unless given")
    parser.add_argument("--topic", default=SIGNALING_EVENTS.name,
                        help=f"topic to produce to (default {SIGNALING_EVENTS.name})")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress line every few seconds")


class Pacer:
    """Holds events back so the simulated clock runs at ``speed`` and never passes the wall
    clock (an event from the future would be dead-lettered), and so no more than ``rate``
    events go out per second. Clocks are injectable so tests need not sleep."""

    def __init__(self, sim_start: float, speed: float, rate: float, fast: bool,
                 wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic,
                 idle: Callable[[float], None] = time.sleep) -> None:
        self.sim_start = sim_start
        self.speed = speed
        self.rate = rate
        self.fast = fast
        self.wall = wall
        self.mono = mono
        self.idle = idle
        self.mono_start = mono()
        self.sent = 0

    def delay(self, ts: float) -> float:
        """Wall seconds to wait before an event stamped ``ts`` may go out (<= 0: go)."""
        elapsed = self.mono() - self.mono_start
        wait = ts - self.wall()
        if not self.fast:
            wait = max(wait, (ts - self.sim_start) / self.speed - elapsed)
        if self.rate > 0:
            wait = max(wait, self.sent / self.rate - elapsed)
        return wait

    def wait(self, ts: float) -> None:
        while (d := self.delay(ts)) > 0:
            self.idle(min(d, MAX_IDLE_S))
        self.sent += 1


class Progress:
    """One status line every few seconds: where the simulated clock is and what it sends."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.last = time.monotonic()
        self.last_sent = 0

    def due(self) -> bool:
        return time.monotonic() - self.last >= PROGRESS_EVERY_S

    def report(self, sim: Simulation, ts: float, sent: int) -> None:
        now = time.monotonic()
        rate = (sent - self.last_sent) / max(now - self.last, 1e-9)
        self.last, self.last_sent = now, sent
        if self.quiet:
            return
        active, total = sim.robots_active(ts)
        behind = time.time() - ts
        clock = f"{_format_span(behind)} behind now" if behind > PROGRESS_EVERY_S * 2 \
            else "real time"
        print(f"sim clock {_utc(ts)} ({clock}) | {sent:,} events sent | {rate:,.0f} events/s"
              f" | robots active {active}/{total}", file=sys.stderr, flush=True)


def _check_args(args: argparse.Namespace, speed: float, history_h: float) -> str | None:
    if speed <= 0:
        return "--speed must be positive"
    if args.rate < 0 or args.duration < 0 or history_h < 0:
        return "--rate, --duration and --history-hours cannot be negative"
    return None


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``dialguard simulate``: produce the simulation to Kafka, paced, with ground truth."""
    from confluent_kafka import Producer

    speed = settings.simulate_speed if args.speed is None else args.speed
    history_h = settings.simulate_history_h if args.history_hours is None else args.history_hours
    problem = _check_args(args, speed, history_h)
    if problem:
        print(f"dialguard simulate: {problem}", file=sys.stderr)
        return 2
    topic = args.topic or SIGNALING_EVENTS.name
    truth_path: Path = args.truth or settings.data_dir / "simulation-truth.jsonl"
    start = time.time() - history_h * HOUR_S
    scenario = Scenario.named(args.scenario).with_country_code(settings.country_code)
    sim = Simulation(scenario, args.seed, start)
    producer = Producer({**settings.kafka_client_config(), "partitioner": "murmur2_random",
                         "linger.ms": 20, "enable.idempotence": True,
                         "compression.type": "lz4"})
    failures = [0]

    def on_delivery(err: Any, msg: Any) -> None:  # noqa: ARG001 - librdkafka's signature
        if err is not None:
            failures[0] += 1

    pacer = Pacer(start, speed, args.rate, args.fast, idle=lambda s: producer.poll(s))
    progress = Progress(args.quiet)
    truth = TruthWriter(truth_path)
    call_truth = CallTruthWriter(args.call_truth) if args.call_truth else None
    duration = args.duration if args.duration > 0 else math.inf
    pace = "as fast as possible" if args.fast else f"{speed:g}x"
    print(f"simulating scenario {args.scenario} seed {args.seed} from {_utc(start)} "
          f"({history_h:g} h ago) at {pace}, then real time; to topic {topic}; truth in "
          f"{truth_path}", file=sys.stderr, flush=True)
    sent, left = 0, 0
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `dialguard stop` stops us cleanly
    try:
        for ev, who in sim.labelled_events(duration):
            pacer.wait(ev.ts)
            _produce(producer, topic, ev, on_delivery)
            if call_truth is not None:
                call_truth.add(sim, ev, who)
            sent += 1
            if sent % POLL_EVERY_EVENTS == 0:
                producer.poll(0)
            if progress.due():
                progress.report(sim, ev.ts, sent)
                truth.update(sim)
    except KeyboardInterrupt:
        print("simulator interrupted; flushing what was produced", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            left = producer.flush(FLUSH_TIMEOUT_S)
        except KeyboardInterrupt:
            left = len(producer)
        truth.close(sim)
        if call_truth is not None:
            call_truth.close()
        print(f"simulator done: {sent:,} events produced"
              f"{f', {left} undelivered' if left else ''}"
              f"{f', {failures[0]} failed' if failures[0] else ''}; "
              f"{truth.written:,} numbers in truth file {truth_path}"
              f"{f', {call_truth.written:,} calls in {call_truth.path}' if call_truth else ''}",
              file=sys.stderr, flush=True)
    return 0 if not left and not failures[0] else 1


def _produce(producer: Any, topic: str, ev: SignalingEvent,
             on_delivery: Callable[[Any, Any], None]) -> None:
    """Produce one event keyed by caller; a full local queue is drained, then retried."""
    key, value = ev.key, ev.encode()
    while True:
        try:
            producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.1)


def _interrupt(signum: int, frame: object) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _format_span(seconds: float) -> str:
    minutes = int(seconds // MINUTE_S)
    return f"{minutes // 60}h{minutes % 60:02d}m"
