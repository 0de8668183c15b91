"""The worker's unit of durability: what was folded since the last commit, made durable in
one stated order, without stopping the fold while the broker answers.

Faust would acknowledge each record as soon as the agent moves past it and commit its offset
a few seconds later, whether or not the state that counted it was written; a crash in between
loses counts, and a crash the other way round counts events twice. So the agents read with
acks off (``stream.noack()``), hold each record here, and a commit releases them only once
everything they caused is durable. :meth:`MicroBatch.start` fixes what a commit covers and
:meth:`MicroBatch.advance` takes it through the order, a step at a time:

1. **fold**: events are folded into in-memory state by the stages as they are read; decisions
   and score records are handed to the producer as they are made, events re-keyed for the
   source stage are gathered into batch records and handed over before the commit starts;
2. **snapshot** (``start``): the held records are taken, each state touched since the last
   commit is serialised as it is now (:class:`StateWrites`, readable by the stage until
   written), and the producer's records so far are marked (:class:`Epoch`);
3. **outputs delivered**: the broker has acknowledged (acks=all) every record of that mark:
   every decision, score and re-keyed event the held records caused, and more. Until then
   nothing below happens; the fold goes on meanwhile;
4. **state written**: each snapshot state is written to its table (RocksDB and its changelog
   topic), with the position of the newest event folded into it (:mod:`streams.position`),
   ``STATE_WRITES_PER_TURN`` at a time, and the producer marked again; once the broker has
   acknowledged that mark it holds every changelog record;
5. **records released**: the held records are acknowledged; Faust commits their offsets at
   its next commit. Only this step acknowledges anything (:class:`AckGate`): Faust also
   acknowledges records it drops itself (fetched before a rebalance, or while its flow
   control is suspended) so that they do not hold its commit back, and with nothing committed
   yet on a partition its commit then passes records this worker never folded. Seen in the
   scale-out test: a partition of ``signaling.sources`` committed at offset 47 with none of
   its first 47 records folded (half a range's calls lost). A dropped record is fetched again
   after the rebalance and released here.

One commit is in flight at a time; :meth:`MicroBatch.commit` runs the order to its end,
waiting for the broker (on a rebalance, at shutdown, in tests). Events folded while a commit
is in flight belong to the next one: a state serialised at step 2 and changed since is touched
again, and its record is held again.

A crash anywhere re-reads records from the last committed offset. Events a state already holds
(step 4 happened) are skipped by position, in the number stage and, per origin partition, in
the source stage; events it does not hold are folded again and their outputs sent again
(decisions carry their trigger time, so a switch adapter applies a repeated one once). So
counts after a crash equal an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Callable, Iterator, Protocol

log = logging.getLogger(__name__)


#: Most state writes per call of :meth:`MicroBatch.advance` (a RocksDB write-batch entry and
#: a changelog record, ~5 us each in a live worker): a commit of 15,000 new callers' states
#: holds the loop a millisecond at a time, not 75 ms at once.
STATE_WRITES_PER_TURN = 250
#: A commit's state writes are spread over this share of the commit interval. Written at
#: once, 15,000 changelog records reached the broker in one burst that its fetches then
#: queued behind: records reached the worker up to 400 ms old at each commit (20k live
#: events/s on 2 shared cores) against 20-40 ms between commits.
WRITES_SPREAD = 0.5


class Store(Protocol):
    def put_many(self, entries: list[tuple[str, bytes, Any]]) -> None:
        """Write each (key, state, ctx): ctx routes the write (the record the state's newest
        event came from)."""


class StateWrites:
    """States serialised at a commit's snapshot, written after its outputs are delivered.

    Until its write, a state is read from here (:meth:`get`): pushed out of its stage's
    memory meanwhile, it would otherwise be read back from the store as it was before.
    """

    def __init__(self, entries: list[tuple[str, bytes, Any]], store: Store) -> None:
        self.entries = entries
        self.store = store
        self.written = 0
        self.pending: dict[str, bytes] = {key: raw for key, raw, _ in entries}

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def done(self) -> bool:
        return self.written == len(self.entries)

    def get(self, key: str) -> bytes | None:
        return self.pending.get(key)

    def write(self, limit: int | None = None) -> int:
        """Write up to ``limit`` more (all for None). Returns how many were written."""
        end = len(self.entries) if limit is None else min(self.written + limit,
                                                          len(self.entries))
        chunk = self.entries[self.written:end]
        if chunk:
            self.store.put_many(chunk)
        pending = self.pending
        for key, raw, _ in chunk:
            if pending.get(key) is raw:
                del pending[key]
        self.written = end
        return len(chunk)


class Writes(Protocol):
    """A snapshot's states: :class:`StateWrites`, or the number stage's own
    (``streams._native.Snapshot``: one object for many thousand states)."""

    written: int

    def __len__(self) -> int: ...

    @property
    def done(self) -> bool: ...

    def get(self, key: str) -> bytes | None: ...

    def write(self, limit: int | None = None) -> int: ...


class Stage(Protocol):
    def touched(self) -> int:
        """States changed since the last snapshot."""

    def snapshot(self) -> Writes:
        """Each touched state serialised now (step 2); no longer touched."""


class Outputs(Protocol):
    def mark(self) -> Any:
        """Close the current epoch (every record produced so far) and return it."""

    def delivered(self, epoch: Any) -> bool:
        """Whether the broker acknowledged every record of ``epoch`` (never waits)."""

    def deliver(self, timeout: float) -> bool:
        """Wait up to ``timeout`` until the broker has every record produced so far."""


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


#: Steps of a commit in flight (see the module docstring).
DELIVER_OUTPUTS, WRITE_STATES, DELIVER_STATES = "deliver outputs", "write states", \
    "deliver states"


class Commit:
    """One commit in flight: its records, the mark of its outputs, its snapshot states."""

    def __init__(self, held: list[Held], outputs: Any, writes: list[Writes],
                 started: float) -> None:
        self.held = held
        self.outputs = outputs
        self.writes = writes
        self.states: Any = None
        self.step = DELIVER_OUTPUTS
        self.started = started
        self.waited_since = started


class MicroBatch:
    """Records read since the last commit, the stages whose state they changed, and the
    commit in flight."""

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
        self.inflight: Commit | None = None
        self.last_commit = clock()
        self.commits = 0
        self.postponed = 0

    def hold(self, record: Held) -> None:
        """A record whose events were folded: released by the commit after its next start."""
        self.held.append(record)

    def due(self) -> bool:
        """Whether a commit should start now (never while one is in flight)."""
        return self.inflight is None and bool(self.held) and (
            self.clock() - self.last_commit >= self.interval_s
            or sum(stage.touched() for stage in self.stages) >= self.max_states)

    def start(self) -> None:
        """Step 2: fix what the next commit covers. The caller has handed every output of
        the held records to the producer first (the re-keyed batches included)."""
        if self.inflight is not None:
            raise RuntimeError("a commit is in flight; advance it first")
        now = self.last_commit = self.clock()
        writes = [stage.snapshot() for stage in self.stages]
        self.inflight = Commit(self.held, self.outputs.mark(), writes, now)
        self.held = []

    def advance(self, block: bool = False) -> bool:
        """Take the commit in flight as far as the broker allows (steps 3 to 5); with
        ``block``, wait for the broker up to the delivery timeout at each step. Returns True
        when no commit is in flight any more."""
        c = self.inflight
        if c is None:
            return True
        if c.step == DELIVER_OUTPUTS:
            if not self._delivered(c, c.outputs, block, "outputs"):
                return False
            c.step = WRITE_STATES
            c.waited_since = self.clock()
        if c.step == WRITE_STATES:
            budget = None if block else self._write_budget(c)
            for writes in c.writes:
                n = writes.write(budget)
                if budget is not None:
                    budget -= n
                if not writes.done:
                    return False  # this turn's budget is spent
            c.states = self.outputs.mark()
            c.step = DELIVER_STATES
            c.waited_since = self.clock()
        if not self._delivered(c, c.states, block, "state"):
            return False
        with self.gate.opened() if self.gate is not None else contextlib.nullcontext():
            for record in c.held:
                record.ack()
        self.inflight = None
        self.commits += 1
        return True

    def _write_budget(self, c: Commit) -> int:
        """States to write this turn: as many as keep the writes on a straight line from the
        outputs' delivery to ``WRITES_SPREAD`` of the interval later, at most
        ``STATE_WRITES_PER_TURN``."""
        total = sum(len(w) for w in c.writes)
        written = sum(w.written for w in c.writes)
        share = (self.clock() - c.waited_since) / (WRITES_SPREAD * self.interval_s)
        return max(0, min(math.ceil(total * min(share, 1.0)) - written, STATE_WRITES_PER_TURN))

    def commit(self) -> bool:
        """Make everything folded so far durable, waiting for the broker: the commit in
        flight first, then one of everything since. Returns False when the broker did not
        acknowledge in time (the commit stays in flight and is taken further later)."""
        if not self.advance(block=True):
            return False
        self.start()
        return self.advance(block=True)

    def _delivered(self, c: Commit, epoch: Any, block: bool, what: str) -> bool:
        """Whether the broker has ``epoch`` (or, blocking, everything); past the delivery
        timeout it says so, once per timeout, and keeps waiting."""
        if (self.outputs.deliver(self.deliver_timeout_s) if block
                else self.outputs.delivered(epoch)):
            return True
        if not block and self.clock() - c.waited_since < self.deliver_timeout_s:
            return False
        c.waited_since = self.clock()
        self.postponed += 1
        log.warning("%s not acknowledged by the broker within %.0fs: offsets held back, "
                    "still waiting", what, self.deliver_timeout_s)
        return False

    def forget(self) -> int:
        """Drop held records and the commit in flight without acknowledging anything (their
        partitions were taken away: the new owner reads them again). Returns how many
        records."""
        dropped = len(self.held) + (len(self.inflight.held) if self.inflight else 0)
        self.held = []
        self.inflight = None
        return dropped
