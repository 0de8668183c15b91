"""Records of one topic gathered into batch records, one open batch per partition.

A batch record (see :mod:`streams.schema`) carries many events of one partition, so Kafka and
Faust pay their per-record cost once per batch. Every event of a batch must belong to the
partition its key hashes to (:func:`streams.topics.partition_for`), or one caller's events
would be folded by two workers; so batches are grouped by that partition, never by arrival.
"""

from __future__ import annotations

from typing import Any, Iterator

from streams.schema import BATCH_MAX_EVENTS
from streams.topics import partition_for


class PartitionBatches:
    """Open batches by partition; a batch is handed back as soon as it is full.

    >>> b = PartitionBatches(partitions=4, max_events=2)
    >>> b.add(b"8613800138000", {"n": 1}) is None
    True
    >>> b.add(b"8613800138000", {"n": 2})
    (1, [{'n': 1}, {'n': 2}])
    >>> b.add(b"8613900139001", {"n": 3}) is None
    True
    >>> list(b.drain())
    [(2, [{'n': 3}])]
    """

    def __init__(self, partitions: int, max_events: int = BATCH_MAX_EVENTS) -> None:
        if partitions < 1 or not 1 <= max_events <= BATCH_MAX_EVENTS:
            raise ValueError(f"need partitions >= 1 and 1 <= max_events <= {BATCH_MAX_EVENTS}")
        self.partitions = partitions
        self.max_events = max_events
        self.open: dict[int, list[Any]] = {}
        self.pending = 0

    def add(self, key: bytes, value: Any) -> tuple[int, list[Any]] | None:
        """Add one value under ``key``; returns ``(partition, values)`` when that fills a
        batch (the caller sends it), else None."""
        partition = partition_for(key, self.partitions)
        batch = self.open.get(partition)
        if batch is None:
            batch = self.open[partition] = []
        batch.append(value)
        self.pending += 1
        if len(batch) >= self.max_events:
            del self.open[partition]
            self.pending -= len(batch)
            return partition, batch
        return None

    def drain(self) -> Iterator[tuple[int, list[Any]]]:
        """Every open batch, emptied."""
        batches, self.open, self.pending = self.open, {}, 0
        yield from batches.items()
