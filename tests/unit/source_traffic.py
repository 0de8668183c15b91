"""Hand-made traffic for the source stage's unit tests: whole calls on a trunk, by population.

Robots do what robots cannot help (few answers, hung up within seconds, dead numbers in the
list); people answer and talk. :func:`tests.unit.helpers.ordered` merges populations in event
time, as a network would deliver them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Iterator

from streams.schema import SignalingEvent
from tests.unit.helpers import T0, call


@dataclass(frozen=True)
class Line:
    switch: str | None
    trunk: str | None


def mobile(rnd: random.Random) -> str:
    return f"86{rnd.choice(('138', '139', '150'))}{rnd.randrange(10 ** 8):08d}"


def fresh_numbers(rnd: random.Random) -> Iterator[str]:
    """A new random caller number on every call (the robots' selling point)."""
    while True:
        yield mobile(rnd)


def robot_calls(line: Line, rnd: random.Random, n: int, gap_s: float, callers: Iterable[str],
                callees: Iterable[str] | None = None, attest: str | None = "C",
                start: float = T0) -> list[SignalingEvent]:
    events: list[SignalingEvent] = []
    caller_it = iter(callers)
    callee_it = iter(callees) if callees is not None else None
    for i in range(n):
        callee = next(callee_it) if callee_it is not None else mobile(rnd)
        r = rnd.random()
        events += call(next(caller_it), callee, start + i * gap_s, answered=0.2 <= r < 0.28,
                       duration=rnd.uniform(2, 8), code=404 if r < 0.2 else 480,
                       attest=attest, trunk=line.trunk, switch=line.switch)
    return events


def people_calls(line: Line, rnd: random.Random, n: int, gap_s: float, callers: list[str],
                 attest: str | None = "A", start: float = T0,
                 duration: tuple[float, float] = (40.0, 400.0), answer: float = 0.75,
                 callees: Iterable[str] | None = None) -> list[SignalingEvent]:
    events: list[SignalingEvent] = []
    callee_it = iter(callees) if callees is not None else None
    for i in range(n):
        callee = next(callee_it) if callee_it is not None else mobile(rnd)
        events += call(rnd.choice(callers), callee, start + i * gap_s + rnd.uniform(0, gap_s / 2),
                       answered=rnd.random() < answer, duration=rnd.uniform(*duration),
                       attest=attest, trunk=line.trunk, switch=line.switch)
    return events
