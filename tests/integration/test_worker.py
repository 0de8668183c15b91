"""The worker against a real broker: simulated traffic in, decisions out.

One worker process serves the module (startup costs seconds); each test uses its own numbers so
the tests do not see each other's decisions. Event times are in the past so nothing is "from
the future" for the validator.
"""

from __future__ import annotations

import random
import time
import uuid

import orjson
import pytest
from confluent_kafka import Producer

from services.control_client import publish_policy
from services.simulator import Scenario, Simulation
from streams.policy import Policy
from streams.schema import DLQ_HEADER_ORIGINAL_SIZE, DLQ_HEADER_REASON, SignalingEvent
from streams.sink import DLQ_MAX_VALUE_BYTES, producer_config
from streams.topics import SIGNALING_EVENTS
from tests.integration.worker_harness import (DECISIONS, SCORES, SIGNALING_DLQ, TopicReader,
                                              HarnessWorker, decisions_of, produce_events,
                                              produce_raw, scores_of)

pytestmark = pytest.mark.integration
SIM_HOURS = 3
#: A robot may place this many calls before its block (evidence gate is 30 attempts).
LEAK_BOUND = 120
ACTIONS = ("block", "rate_limit")
DECISION_WAIT_S = 120.0


@pytest.fixture(scope="module")
def worker(broker_settings, tmp_path_factory):
    w = HarnessWorker(broker_settings, tmp_path_factory.mktemp("worker"),
                      app_id=f"dg-test-{uuid.uuid4().hex[:6]}")
    w.start()
    yield w
    w.stop()
    print(f"\n--- worker log tail ---\n{w.tail(15)}")


def robot_burst(number: str, start: float, n: int = 120, seed: int = 1) -> list[SignalingEvent]:
    """A plain robot: 10% answered, 3 s calls, 30% of failures to unallocated numbers."""
    rnd = random.Random(seed)
    evs: list[SignalingEvent] = []
    for i in range(n):
        ts = start + 5 * i
        callee = f"86139{rnd.randrange(10**8):08d}"
        cid = f"{number}-{seed}-{i}"
        evs.append(SignalingEvent(ts=ts, proto="sip", kind="attempt", call_id=cid,
                                  caller=number, callee=callee))
        if rnd.random() < 0.1:
            evs.append(SignalingEvent(ts=ts + 4, proto="sip", kind="answer", call_id=cid,
                                      caller=number, callee=callee, code=200))
            evs.append(SignalingEvent(ts=ts + 7, proto="sip", kind="release", call_id=cid,
                                      caller=number, callee=callee, duration_s=3.0))
        else:
            evs.append(SignalingEvent(ts=ts + 2, proto="sip", kind="fail", call_id=cid,
                                      caller=number, callee=callee,
                                      code=404 if rnd.random() < 0.3 else 480))
    return sorted(evs, key=lambda e: e.ts)


def wait_decisions(settings, numbers: set[str], until, timeout=DECISION_WAIT_S, quiet_s=3.0):
    reader = TopicReader(settings, DECISIONS.name)
    try:
        reader.poll_until(lambda msgs: until([d for d in decisions_of(msgs)
                                              if d.number in numbers]),
                          timeout=timeout, quiet_s=quiet_s)
        return [d for d in decisions_of(reader.messages) if d.number in numbers]
    finally:
        reader.close()


def test_simulated_robots_are_blocked_and_legit_callers_are_not(worker, broker_settings):
    sim = Simulation(Scenario.small(), seed=11, start_ts=time.time() - (SIM_HOURS + 1) * 3600)
    events = list(sim.events(SIM_HOURS * 3600))
    truth = sim.truth()
    robots = {t.number for t in truth if t.robot and t.population in ("robocaller", "scanner")}
    legit = {t.number for t in truth if not t.robot}
    assert robots and legit
    produce_events(broker_settings, events)
    decisions = wait_decisions(broker_settings, robots | legit,
                               until=lambda ds: robots <= {d.number for d in ds
                                                           if d.action in ACTIONS},
                               quiet_s=5.0)
    acted = {d.number for d in decisions if d.action in ACTIONS and not d.dry_run}
    blocked = {d.number for d in decisions if d.action == "block" and not d.dry_run}
    wrongly = [d for d in decisions if d.number in legit and d.action in ACTIONS]
    assert not wrongly, [(d.number, d.action, d.reasons) for d in wrongly]
    assert robots <= acted, f"robots neither rate-limited nor blocked: {robots - acted}"
    assert len(blocked & robots) * 2 >= len(robots), "most robots must end up blocked"
    leaks = []
    for number in blocked & robots:
        first = min(d.trigger_ts for d in decisions if d.number == number and d.action == "block")
        leaks.append(sum(1 for e in events
                         if e.caller == number and e.kind == "attempt" and e.ts <= first))
    print(f"\nrobots {len(robots)}: blocked {len(blocked & robots)}, rate-limited only "
          f"{len((acted - blocked) & robots)}; calls before block {sorted(leaks)}; "
          f"legit numbers {len(legit)}, rate-limited or blocked: 0")
    assert max(leaks) <= LEAK_BOUND


def test_emergency_number_is_never_blocked(worker, broker_settings):
    start = time.time() - 3 * 3600
    produce_events(broker_settings, robot_burst("120", start, seed=5)
                   + robot_burst("8617000000120", start, seed=6))
    decisions = wait_decisions(broker_settings, {"120", "8617000000120"},
                               until=lambda ds: any(d.number == "8617000000120" for d in ds
                                                    if d.action == "block"))
    assert any(d.number == "8617000000120" and d.action == "block" for d in decisions)
    assert not [d for d in decisions if d.number == "120"]


def test_malformed_records_land_in_the_dlq_and_the_worker_keeps_going(worker, broker_settings):
    bad = [(b"k1", b"this is not json"),
           (b"k2", orjson.dumps({"v": 1, "ts": time.time(), "proto": "sip"})),
           (b"k3", orjson.dumps({"v": 1, "ts": time.time() + 86400, "proto": "sip",
                                 "kind": "attempt", "call_id": "x", "caller": "8613800000001",
                                 "callee": "8613800000002"})),
           (None, b"\x00\x01\x02")]
    produce_raw(broker_settings, bad)
    number = "8617000000777"
    produce_events(broker_settings, robot_burst(number, time.time() - 2 * 3600, seed=7))
    reader = TopicReader(broker_settings, SIGNALING_DLQ.name)
    try:
        values = {v for _, v in bad}
        assert reader.poll_until(
            lambda msgs: values <= {m.value() for m in msgs}, timeout=60)
        reasons = {m.value(): dict(m.headers() or [])[DLQ_HEADER_REASON].decode()
                   for m in reader.messages if m.value() in values}
    finally:
        reader.close()
    assert reasons[b"this is not json"] == "not_json"
    assert reasons[bad[1][1]] == "missing_field"
    assert reasons[bad[2][1]] == "future_timestamp"
    decisions = wait_decisions(broker_settings, {number},
                               until=lambda ds: any(d.action == "block" for d in ds))
    assert any(d.action == "block" for d in decisions)
    assert worker.alive()


#: Records over every size limit that compress small enough to pass the broker (issue 12: 150
#: of them stalled a worker ~12 minutes, each dead letter crashing the agent).
HUGE_RECORDS = 20
HUGE_RECORD_BYTES = 5_000_000


def test_oversized_records_are_dead_lettered_truncated_and_the_worker_keeps_going(
        worker, broker_settings):
    marker = uuid.uuid4().hex.encode()
    huge = [(marker + b" %03d " % i).ljust(HUGE_RECORD_BYTES, b" ") for i in range(HUGE_RECORDS)]
    producer = Producer({**producer_config(broker_settings), "message.max.bytes": 10_000_000})
    for value in huge:
        producer.produce(SIGNALING_EVENTS.name, key=b"k-huge", value=value)
    assert producer.flush(30) == 0  # lz4 makes each a few KB: the broker takes them
    number = "8617000000778"
    produce_events(broker_settings, robot_burst(number, time.time() - 2 * 3600, seed=8))
    reader = TopicReader(broker_settings, SIGNALING_DLQ.name)
    try:
        assert reader.poll_until(lambda msgs: sum(1 for m in msgs if (m.value() or b"")
                                                  .startswith(marker)) >= HUGE_RECORDS, 120)
        letters = [m for m in reader.messages if (m.value() or b"").startswith(marker)]
    finally:
        reader.close()
    assert len(letters) == HUGE_RECORDS
    for msg in letters:
        headers = dict(msg.headers() or [])
        assert headers[DLQ_HEADER_REASON] == b"not_json"
        assert headers[DLQ_HEADER_ORIGINAL_SIZE] == str(HUGE_RECORD_BYTES).encode()
        assert len(msg.value()) == DLQ_MAX_VALUE_BYTES
    decisions = wait_decisions(broker_settings, {number},
                               until=lambda ds: any(d.action == "block" for d in ds))
    assert any(d.action == "block" for d in decisions)
    assert worker.alive()
    assert "MSG_SIZE_TOO_LARGE" not in worker.tail(200)


def test_policy_change_applies_without_restart(worker, broker_settings):
    strict = Policy(thresholds=Policy().thresholds, dry_run=True).to_dict()
    published = publish_policy(broker_settings, strict, author="test", reason="dry-run drill")
    time.sleep(1.5)  # the control feed applies it within a second
    number = "8617000000888"
    produce_events(broker_settings, robot_burst(number, time.time() - 2 * 3600, seed=8))
    decisions = wait_decisions(broker_settings, {number},
                               until=lambda ds: any(d.action == "block" for d in ds))
    blocks = [d for d in decisions if d.action == "block"]
    assert blocks and all(d.dry_run for d in blocks)
    assert blocks[0].policy_version == published.version
    publish_policy(broker_settings, Policy().to_dict(), author="test", reason="back to live")


def test_restarted_worker_keeps_its_counters(worker, broker_settings):
    number = "8617000000999"
    start = time.time() - 2 * 3600
    first = robot_burst(number, start, n=40, seed=9)
    produce_events(broker_settings, first)
    reader = TopicReader(broker_settings, SCORES.name)
    try:
        assert reader.poll_until(
            lambda msgs: any(s.number == number and s.features["attempts_1h"] >= 38
                             for s in scores_of(msgs)), timeout=60)
        time.sleep(1.0)  # let the worker flush its table writes
        worker.stop()
        worker.start()
        second = robot_burst(number, start + 40 * 5 + 1, n=10, seed=10)
        produce_events(broker_settings, second)
        assert reader.poll_until(
            lambda msgs: any(s.number == number and s.features["attempts_1h"] > 40
                             for s in scores_of(msgs)), timeout=90)
    finally:
        reader.close()
    after = [s for s in scores_of(reader.messages) if s.number == number]
    assert max(s.features["attempts_1h"] for s in after) >= 48


def rotating_campaign(switch: str, trunk: str, start: float, n: int, seed: int,
                      gap_s: float = 3.0) -> list[SignalingEvent]:
    """Robots that show a fresh caller number on every call, all through one trunk."""
    rnd = random.Random(seed)
    evs: list[SignalingEvent] = []
    for i in range(n):
        number = f"86150{rnd.randrange(10**8):08d}"
        for ev in robot_burst(number, start + gap_s * i, n=1, seed=seed * 1000 + i):
            ev.trunk, ev.switch = trunk, switch
            evs.append(ev)
    return sorted(evs, key=lambda e: e.ts)


def people(switch: str, trunk: str, start: float, n: int, seed: int) -> list[SignalingEvent]:
    """People on their own trunk: a few hundred subscribers, answered, minutes long."""
    rnd = random.Random(seed)
    callers = [f"86138{rnd.randrange(10**8):08d}" for _ in range(150)]
    evs: list[SignalingEvent] = []
    for i in range(n):
        ts, caller, callee = start + 4 * i, rnd.choice(callers), f"86139{rnd.randrange(10**8):08d}"
        cid = f"p-{seed}-{i}"
        common = {"proto": "sip", "call_id": cid, "caller": caller, "callee": callee,
                  "trunk": trunk, "switch": switch}
        evs.append(SignalingEvent(ts=ts, kind="attempt", attest="A", **common))
        evs.append(SignalingEvent(ts=ts + 5, kind="answer", code=200, **common))
        evs.append(SignalingEvent(ts=ts + 125, kind="release", duration_s=120.0, **common))
    return sorted(evs, key=lambda e: e.ts)


def test_rotating_campaign_is_stopped_at_its_trunk_and_people_elsewhere_are_not(
        worker, broker_settings):
    tag = uuid.uuid4().hex[:6]
    robot_trunk, people_trunk = (f"sw-{tag}", "gw-1"), (f"sw-{tag}", "acc-1")
    start = time.time() - 2 * 3600
    robots = rotating_campaign(*robot_trunk, start, n=400, seed=21)
    humans = people(*people_trunk, start, n=300, seed=22)
    produce_events(broker_settings, sorted(robots + humans, key=lambda e: e.ts))
    key = f"trunk:{robot_trunk[0]}/{robot_trunk[1]}"
    humans_key = f"trunk:{people_trunk[0]}/{people_trunk[1]}"
    numbers = {key, humans_key} | {e.caller for e in robots + humans}
    decisions = wait_decisions(broker_settings, numbers,
                               until=lambda ds: any(d.number == key and d.action == "block"
                                                    for d in ds), quiet_s=3.0)
    block = next(d for d in decisions if d.number == key and d.action == "block")
    assert (block.scope, block.target, block.switch) == ("trunk", f"{robot_trunk[0]}/gw-1",
                                                        robot_trunk[0])
    print(f"\ntrunk decision: {block.action} {block.target} match={block.match} "
          f"| {'; '.join(block.reasons)}")
    enforcing = [d for d in decisions if d.action in ACTIONS and not d.dry_run]
    covered = [e for e in humans if e.kind == "attempt" and any(
        d.covers(e.caller, e.callee, e.switch, e.trunk, e.attest) for d in enforcing)]
    assert not covered, "people on another trunk must never be covered"
    late = [e for e in robots if e.kind == "attempt" and e.ts >= block.trigger_ts]
    assert late and all(block.covers(e.caller, e.callee, e.switch, e.trunk, e.attest)
                        for e in late)


def test_restarted_worker_keeps_its_source_counters(worker, broker_settings):
    tag = uuid.uuid4().hex[:6]
    switch, trunk = f"sw-{tag}", "gw-2"
    key = f"trunk:{switch}/{trunk}"
    start = time.time() - 2 * 3600
    produce_events(broker_settings, rotating_campaign(switch, trunk, start, n=60, seed=31))
    reader = TopicReader(broker_settings, SCORES.name)
    try:
        assert reader.poll_until(
            lambda msgs: any(s.number == key for s in scores_of(msgs)), timeout=60)
        time.sleep(1.0)  # let the worker flush its table writes
        worker.stop()
        worker.start()
        produce_events(broker_settings, rotating_campaign(switch, trunk, start + 60 * 3 + 1,
                                                          n=40, seed=32))
        assert reader.poll_until(
            lambda msgs: any(s.number == key and s.features["attempts_1h"] >= 90
                             for s in scores_of(msgs)), timeout=90)
    finally:
        reader.close()


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp shows them) with a socket listening on port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(addr)
    return found


def test_web_port_listens_on_loopback_only(worker):
    addresses = listening_addresses(worker.web_port)
    assert addresses, "Faust's web port is not listening"
    assert addresses <= {"0100007F"}, addresses  # 127.0.0.1 only, not 0.0.0.0 or ::


def test_a_second_worker_on_the_same_data_folder_says_what_to_set(worker, broker_settings):
    import subprocess
    import sys

    from services.settings import REPO_ROOT

    proc = subprocess.run([sys.executable, "-m", "services.cli", "worker"], env=worker.env(),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "another worker is running on" in proc.stderr and "DIALGUARD_HOME" in proc.stderr
    assert "LOCK" not in proc.stderr
