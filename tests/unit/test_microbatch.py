"""The micro-batch's durability order, with in-process stand-ins (the real-broker proof is
tests/integration/test_exact_recovery.py)."""

import pytest

from streams.microbatch import MicroBatch


class Log:
    def __init__(self, deliver_results=()):
        self.steps: list[str] = []
        self.results = list(deliver_results)

    def deliver(self, timeout: float) -> bool:
        self.steps.append("deliver")
        return self.results.pop(0) if self.results else True


class Stage:
    def __init__(self, log: Log, name: str) -> None:
        self.log, self.name = log, name
        self.dirty = {"k": None}

    def persist(self) -> int:
        self.log.steps.append(f"persist {self.name}")
        self.dirty.clear()
        return 1


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
    assert log.steps == ["deliver", "persist numbers", "persist sources", "deliver",
                         "ack 1", "ack 2"]
    assert batch.held == []


@pytest.mark.parametrize("results, steps", [
    ([False], ["deliver"]),
    ([True, False], ["deliver", "persist numbers", "deliver"]),
])
def test_nothing_is_released_when_the_broker_has_not_acknowledged(results, steps):
    log = Log(results)
    batch = MicroBatch([Stage(log, "numbers")], log, 1.0, 10, 5.0, clock=lambda: 0.0)
    batch.hold(Record(log, 1))
    assert not batch.commit()
    assert log.steps == steps and len(batch.held) == 1 and batch.postponed == 1


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
