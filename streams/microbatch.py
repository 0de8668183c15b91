"""The worker's unit of durability: what was folded since the last commit, made durable in
one stated order.

Faust would acknowledge each record as soon as the agent moves past it and commit its offset
a few seconds later, whether or not the state that counted it was written; a crash in between
loses counts, and a crash the other way round counts events twice. So the agents read with
acks off (``stream.noack()``), hold each record here, and :meth:`MicroBatch.commit` releases
them only once everything they caused is durable:

1. **fold**: events are folded into in-memory state by the stages as they are read; decisions
   and score records are handed to the producer as they are made, events re-keyed for the
   source stage are gathered into batch records;
2. **outputs delivered**: the re-keyed batches are sent and the producer flushed: the broker
   has acknowledged (acks=all) every decision, score and re-keyed event caused by the folded
   records. If it has not within the timeout, nothing below happens this time;
3. **state written**: each number and source touched since the last commit is written once to
   its table (RocksDB and its changelog topic), with the position of the newest event folded
   into it (:mod:`streams.position`), and the producer flushed again: the broker holds every
   changelog record;
4. **records released**: the held records are acknowledged; Faust commits their offsets at its
   next commit, after flushing the changelog producer. Only this step acknowledges anything
   (:class:`AckGate`): Faust also acknowledges records it drops itself (fetched before a
   rebalance, or while its flow control is suspended) so that they do not hold its commit
   back, and with nothing committed yet on a partition its commit then passes records this
   worker never folded. Seen in the scale-out test: a partition of ``signaling.sources``
   committed at offset 47 with none of its first 47 records folded (half a range's calls
   lost). A dropped record is fetched again after the rebalance and released here.

A crash anywhere re-reads records from the last committed offset. Events a state already holds
(step 3 happened) are skipped by position, in the number stage and, per origin partition, in
the source stage; events it does not hold are folded again and their outputs sent again
(decisions carry their trigger time, so a switch adapter applies a repeated one once). So
counts after a crash equal an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, Iterator, Protocol

log = logging.getLogger(__name__)


class Stage(Protocol):
    dirty: dict[str, Any]

    def persist(self) -> int: ...


class Outputs(Protocol):
    def deliver(self, timeout: float) -> bool: ...


class Held(Protocol):
    """What the agent read (a Faust event): acknowledging it lets its offset be committed."""

    def ack(self) -> bool: ...


class AckGate:
    """Lets acknowledgements through to the consumer only while the micro-batch releases its
    records (step 4 of the module docstring); any other is ignored.

    Installed on the consumer instance: Faust routes every acknowledgement of a record,
    its own included, through ``consumer.ack(message)``.
    """

    def __init__(self, consumer: Any) -> None:
        self._ack: Callable[[Any], bool] = consumer.ack
        self.open = False
        self.ignored = 0
        consumer.ack = self.ack

    def ack(self, message: Any) -> bool:
        if self.open:
            return self._ack(message)
        self.ignored += 1
        return False

    @contextlib.contextmanager
    def opened(self) -> Iterator[None]:
        self.open = True
        try:
            yield
        finally:
            self.open = False


class MicroBatch:
    """Records read since the last commit, and the stages whose state they changed."""

    def __init__(self, stages: list[Stage], outputs: Outputs, interval_s: float,
                 max_states: int, deliver_timeout_s: float,
                 clock: Any = time.monotonic, gate: AckGate | None = None) -> None:
        if interval_s <= 0 or max_states < 1 or deliver_timeout_s <= 0:
            raise ValueError("commit interval, state cap and delivery timeout must be positive")
        self.stages = stages
        self.outputs = outputs
        self.interval_s = interval_s
        self.max_states = max_states
        self.deliver_timeout_s = deliver_timeout_s
        self.clock = clock
        #: Opened while held records are released (None: acknowledgements are not gated).
        self.gate = gate
        self.held: list[Held] = []
        self.last_commit = clock()
        self.commits = 0
        self.postponed = 0

    def hold(self, record: Held) -> None:
        """A record whose events were folded: released at the next commit."""
        self.held.append(record)

    def due(self) -> bool:
        return bool(self.held) and (
            self.clock() - self.last_commit >= self.interval_s
            or sum(len(stage.dirty) for stage in self.stages) >= self.max_states)

    def commit(self) -> bool:
        """Make everything folded so far durable, in the order of the module docstring.
        Returns False when outputs were not acknowledged in time (retried next commit)."""
        self.last_commit = self.clock()
        if not self._delivered("outputs"):
            return False
        for stage in self.stages:
            stage.persist()
        if not self._delivered("state"):
            return False
        held, self.held = self.held, []
        with self.gate.opened() if self.gate is not None else contextlib.nullcontext():
            for record in held:
                record.ack()
        self.commits += 1
        return True

    def _delivered(self, what: str) -> bool:
        if self.outputs.deliver(self.deliver_timeout_s):
            return True
        self.postponed += 1
        log.warning("%s not acknowledged by the broker within %.0fs: offsets held back, "
                    "retried at the next commit", what, self.deliver_timeout_s)
        return False

    def forget(self) -> int:
        """Drop held records without acknowledging them (their partitions were taken away:
        the new owner reads them again). Returns how many."""
        dropped = len(self.held)
        self.held = []
        return dropped
