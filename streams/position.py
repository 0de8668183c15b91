"""Where an event was read from: what makes folding exact across crashes and rebalances.

Kafka delivers at least once: after a crash or a rebalance a worker reads again from the last
committed offset, and events folded since then would be counted twice. So each state keeps,
in the same write as its counters, the position of the newest event folded into it. A record
at or before that position is skipped on replay. A caller's events always arrive on one
partition of ``signaling.events`` (the topic is keyed by caller), so one position per number
suffices; a source receives events re-keyed from every events partition, so it keeps one per
origin partition (:class:`Origins`).

A position is ``(partition, offset, index)``: ``index`` is the event's place inside a batch
record (0 for a record holding one event).
"""

from __future__ import annotations

from typing import NamedTuple

#: Origin partition of an event that did not come from Kafka (tests, replays, ``make eval``):
#: never skipped.
NO_PARTITION = -1


class Folded(NamedTuple):
    """The newest event folded into a state."""

    partition: int
    offset: int
    index: int = 0

    def covers(self, partition: int, offset: int, index: int) -> bool:
        """Whether the event at that position is already in the state."""
        return partition == self.partition and (offset, index) <= (self.offset, self.index)


class Origins:
    """Newest folded position per origin partition, for a state fed from many partitions."""

    __slots__ = ("newest",)

    def __init__(self, newest: dict[int, tuple[int, int]] | None = None) -> None:
        self.newest: dict[int, tuple[int, int]] = newest or {}

    def seen(self, partition: int, offset: int, index: int) -> bool:
        """True if already folded; otherwise records it as the newest and returns False."""
        if partition == NO_PARTITION:
            return False
        last = self.newest.get(partition)
        if last is not None and (offset, index) <= last:
            return True
        self.newest[partition] = (offset, index)
        return False

    def to_list(self) -> list[list[int]]:
        return [[p, o, i] for p, (o, i) in self.newest.items()]

    @classmethod
    def from_list(cls, rows: list[list[int]]) -> "Origins":
        return cls({int(p): (int(o), int(i)) for p, o, i in rows})
