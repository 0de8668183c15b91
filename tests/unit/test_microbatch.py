"""The micro-batch's durability order, with in-process stand-ins (the real-broker proof is
tests/integration/test_exact_recovery.py)."""

import pytest

import streams.microbatch
from streams.microbatch import MicroBatch, StateWrites


class Log:
    """The producer as the micro-batch sees it: marks epochs, says whether they arrived."""

    def __init__(self, deliver_results=()):
        self.steps: list[str] = []
        self.results = list(deliver_results)
        self.acknowledged = True  # what delivered() answers for any epoch
        self.epochs = 0

    def mark(self) -> int:
        self.epochs += 1
        self.steps.append("mark")
        return self.epochs

    def delivered(self, epoch: int) -> bool:
        return self.acknowledged

    def deliver(self, timeout: float) -> bool:
        self.steps.append("deliver")
        return self.results.pop(0) if self.results else True


class Store:
    def __init__(self, log: Log, name: str) -> None:
        self.log, self.name = log, name

    def put_many(self, entries: list) -> None:
        self.log.steps.extend(f"write {self.name} {key}" for key, _, _ in entries)


class Stage:
    def __init__(self, log: Log, name: str, keys=("k",)) -> None:
        self.log, self.name = log, name
        self.dirty = dict.fromkeys(keys)
        self.store = Store(log, name)

    def touched(self) -> int:
        return len(self.dirty)

    def snapshot(self) -> StateWrites:
        self.log.steps.append(f"snapshot {self.name}")
        entries = [(k, k.encode(), None) for k in self.dirty]
        self.dirty.clear()
        return StateWrites(entries, self.store)


class Record:
    def __init__(self, log: Log, n: int) -> None:
        self.log, self.n = log, n

    def ack(self) -> bool:
        self.log.steps.append(f"ack {self.n}")
        return True


def test_commit_delivers_outputs_then_writes_state_then_releases_records():
    log = Log()
    batch = MicroBatch([Stage(log, "numbers"), Stage(log, "sources")], log, 1.0, 10, 5.0,
                       clock=lambda: 0.0)
    batch.hold(Record(log, 1))
    batch.hold(Record(log, 2))
    assert batch.commit()
    assert log.steps == ["snapshot numbers", "snapshot sources", "mark", "deliver",
                         "write numbers k", "write sources k", "mark", "deliver",
                         "ack 1", "ack 2"]
    assert batch.held == [] and batch.inflight is None


@pytest.mark.parametrize("results, steps", [
    ([False], ["snapshot numbers", "mark", "deliver"]),
    ([True, False], ["snapshot numbers", "mark", "deliver", "write numbers k", "mark",
                     "deliver"]),
])
def test_nothing_is_released_when_the_broker_has_not_acknowledged(results, steps):
    log = Log(results)
    batch = MicroBatch([Stage(log, "numbers")], log, 1.0, 10, 5.0, clock=lambda: 0.0)
    batch.hold(Record(log, 1))
    assert not batch.commit()
    assert log.steps == steps and batch.inflight is not None and batch.postponed == 1
    assert batch.commit() and "ack 1" in log.steps  # taken further by the next commit


def test_the_fold_goes_on_while_a_commit_waits_for_the_broker(monkeypatch):
    """A pipelined commit covers what was held at its start; it writes state only once its
    outputs are acknowledged, spread over half the interval and a few states per turn, and
    releases only its own records."""
    monkeypatch.setattr(streams.microbatch, "STATE_WRITES_PER_TURN", 2)
    now = [0.0]
    log = Log()
    log.acknowledged = False
    stage = Stage(log, "numbers", keys=("a", "b", "c", "d"))
    batch = MicroBatch([stage], log, 1.0, 10, 5.0, clock=lambda: now[0])
    batch.hold(Record(log, 1))
    batch.start()
    assert not batch.advance() and not batch.due()
    batch.hold(Record(log, 2))  # folded while the broker has not answered
    stage.dirty["a"] = None     # "a" changed again: the next commit writes it again
    assert log.steps == ["snapshot numbers", "mark"]
    log.acknowledged = True
    assert not batch.advance()  # delivered at t=0: no write is due yet
    assert log.steps == ["snapshot numbers", "mark"]
    now[0] = 0.125              # a quarter of the spread: one of four states
    assert not batch.advance() and log.steps[-1] == "write numbers a"
    now[0] = 0.5                # the whole spread: the rest, two per turn
    assert not batch.advance() and log.steps[-2:] == ["write numbers b", "write numbers c"]
    assert batch.advance()
    assert log.steps[-3:] == ["write numbers d", "mark", "ack 1"]
    assert [r.n for r in batch.held] == [2] and stage.touched() == 1


def test_a_state_is_read_from_its_snapshot_until_it_is_written():
    log = Log()
    writes = StateWrites([("a", b"A1", None), ("b", b"B1", None)], Store(log, "numbers"))
    assert writes.get("a") == b"A1" and not writes.done
    assert writes.write(1) == 1 and writes.get("a") is None and writes.get("b") == b"B1"
    assert writes.write() == 1 and writes.done and writes.get("b") is None


def test_due_by_time_or_by_touched_states_and_only_with_records_held():
    now = [0.0]
    log = Log()
    stage = Stage(log, "numbers")
    batch = MicroBatch([stage], log, 2.0, 3, 5.0, clock=lambda: now[0])
    assert not batch.due()  # nothing held
    batch.hold(Record(log, 1))
    assert not batch.due()
    now[0] = 2.0
    assert batch.due()
    now[0] = 0.0
    batch.last_commit = 0.0
    stage.dirty.update({"a": None, "b": None})
    assert batch.due()  # three touched states
    with pytest.raises(ValueError):
        MicroBatch([stage], log, 0.0, 3, 5.0)


def test_a_dropped_commit_releases_nothing():
    log = Log()
    log.acknowledged = False
    batch = MicroBatch([Stage(log, "numbers")], log, 1.0, 10, 5.0, clock=lambda: 0.0)
    batch.hold(Record(log, 1))
    batch.start()
    batch.hold(Record(log, 2))
    assert batch.forget() == 2 and batch.inflight is None and batch.held == []
    assert not [s for s in log.steps if s.startswith(("ack", "write"))]


class Consumer:
    """Stands in for Faust's consumer: every acknowledgement arrives at ``ack(message)``."""

    def __init__(self) -> None:
        self.acked: list[str] = []

    def ack(self, message: str) -> bool:
        self.acked.append(message)
        return True


class GatedRecord:
    """A held record whose acknowledgement goes through the consumer, as a Faust event's."""

    def __init__(self, consumer: Consumer, name: str) -> None:
        self.consumer, self.name = consumer, name

    def ack(self) -> bool:
        return self.consumer.ack(self.name)


def test_only_the_commit_acknowledges_records():
    """Faust acknowledges records it drops after a rebalance; on a partition with nothing
    committed yet that let its commit pass records no stage had folded. With the gate only
    the micro-batch's release reaches the consumer."""
    from streams.microbatch import AckGate

    consumer = Consumer()
    gate = AckGate(consumer)
    batch = MicroBatch([Stage(Log(), "numbers")], Log(), 1.0, 10, 5.0, clock=lambda: 0.0,
                       gate=gate)
    assert consumer.ack("dropped by faust") is False  # the instance's ack is the gate now
    batch.hold(GatedRecord(consumer, "folded"))
    assert batch.commit()
    assert consumer.acked == ["folded"] and gate.ignored == 1
    assert consumer.ack("dropped later") is False and not gate.open
