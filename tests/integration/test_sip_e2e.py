"""End to end with real SIP peers: SIPp callers -> Kamailio (dialguard.cfg) -> SIPp callees.

Kamailio traces every call to the HEP collector (HEPv3), the collector publishes events, a real
worker decides, the switch adapter writes the block into Kamailio's htable, and the robot's next
INVITEs get 603 Decline while ordinary callers keep completing their calls. Every assertion is
on what SIPp itself counted (-trace_stat, -trace_shortmsg, -trace_err); the figures a reader
wants (robot calls that got through before the block, time from the first robot call to the
block) are printed.

It runs on a broker of its own: a worker reads ``signaling.events`` from the beginning, and the
online model must not have learnt from whatever the session's other tests produced before, or
the figures would depend on the order the tests run in.
"""

from __future__ import annotations

import random
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from services.admin import ensure_topics
from services.broker import EmbeddedBroker, free_ports
from services.child_process import child_env
from services.kamailio_process import KamailioProcess
from services.settings import ENV_PREFIX, REPO_ROOT, Settings
from services.worker_process import WorkerProcess
from streams.schema import Decision
from streams.topics import ACKS, DECISIONS
from tests.integration.switch_harness import (AdapterProcess, SippStats, SippUac, SippUas,
                                              acks_of, stop_group, tail, wait_for_line)
from tests.integration.worker_harness import START_TIMEOUT_S, TEST_ENV, TopicReader

pytestmark = pytest.mark.integration

#: The robot: 5 calls/s to distinct callees, a third of them unallocated, answered calls hung
#: up after a second. The default policy needs 30 attempts to 20 distinct callees with 20
#: settled calls before a block, so a block can come after ~6 s at the earliest.
ROBOT_RATE = 5
ROBOT_CALLS = 100
ROBOT_MAX_S = 90
#: Ordinary callers: a few people, each call answered and lasting 3 s.
PEOPLE = 3
PEOPLE_CALLS = 6
PEOPLE_RATE = 0.3
PEOPLE_TALK_MS = 3000
UNALLOCATED_PREFIX = "8699"
COLLECTOR_READY = "listening"
READY_TIMEOUT_S = 60.0
#: The collector flushes its producer on SIGTERM.
COLLECTOR_STOP_TIMEOUT_S = 15.0


def _final_codes(stats: SippStats) -> dict[str, tuple[float, int]]:
    """Per Call-ID: (INVITE sent at, final status code received to it; 0 = none)."""
    sent: dict[str, float] = {}
    final: dict[str, int] = defaultdict(int)
    for ts, direction, call_id, cseq, line in stats.messages:
        if direction == "S" and line.startswith("INVITE ") and call_id not in sent:
            sent[call_id] = ts
        elif direction == "R" and "INVITE" in cseq and line.startswith("SIP/2.0 "):
            code = int(line.split()[1])
            if code >= 200:
                final[call_id] = code
    return {cid: (ts, final[cid]) for cid, ts in sent.items()}


def test_robot_is_blocked_people_get_through(spare_broker: tuple[Settings, EmbeddedBroker],
                                             tmp_path: Path) -> None:
    settings, broker = spare_broker
    broker.start()
    ensure_topics(settings)
    rng = random.Random(4)
    tag = uuid.uuid4().hex[:6]
    robot = f"86170{rng.randrange(10**8):08d}"
    people = [f"86138{rng.randrange(10**8):08d}" for _ in range(PEOPLE)]
    callees = [f"{UNALLOCATED_PREFIX}{rng.randrange(10**7):07d}" if i % 3 == 2
               else f"86139{rng.randrange(10**8):08d}" for i in range(ROBOT_CALLS)]
    hep_port = free_ports(1)[0]
    answer = SippUas("uas_answer.xml", tmp_path / "uas-answer")
    unalloc = SippUas("uas_unallocated.xml", tmp_path / "uas-404")
    kam = KamailioProcess(run_dir=tmp_path / "kamailio", hep_port=hep_port,
                          dest_uri=f"sip:127.0.0.1:{answer.port}",
                          redress=settings.redress_contact, unalloc_prefix=UNALLOCATED_PREFIX,
                          unalloc_uri=f"sip:127.0.0.1:{unalloc.port}")
    # A policy name of its own: the built-in defaults, whatever other tests publish.
    worker = WorkerProcess(settings, tmp_path / "worker", f"e2e-{tag}",
                           extra_env={**TEST_ENV, f"{ENV_PREFIX}POLICY_NAME": f"e2e-{tag}"})
    adapter = AdapterProcess(settings, tmp_path / "adapter", kam.rpc_url, f"e2e-{tag}")
    collector_log = tmp_path / "collector.log"
    collector: subprocess.Popen | None = None
    robot_uac = SippUac("robot_uac.xml", tmp_path / "robot", kam.sip_address,
                        rows=[(robot, c) for c in callees], calls=ROBOT_CALLS, rate=ROBOT_RATE,
                        max_seconds=ROBOT_MAX_S)
    people_uac = SippUac("caller_uac.xml", tmp_path / "people", kam.sip_address,
                         rows=[(people[i % PEOPLE], f"86139{rng.randrange(10**8):08d}")
                               for i in range(PEOPLE_CALLS)],
                         calls=PEOPLE_CALLS, rate=PEOPLE_RATE, pause_ms=PEOPLE_TALK_MS,
                         max_seconds=ROBOT_MAX_S)
    acks = TopicReader(settings, ACKS.name)
    decisions = TopicReader(settings, DECISIONS.name)
    try:
        env = child_env(settings, tmp_path / "collector-home")
        with collector_log.open("ab") as out:
            collector = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "ingest", "hep", "--host", "127.0.0.1",
                 "--port", str(hep_port), "--metrics-port", "0"], stdout=out,
                stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True)
        wait_for_line(collector_log, COLLECTOR_READY, collector, READY_TIMEOUT_S, "HEP collector")
        worker.start()
        worker.wait_ready(START_TIMEOUT_S)
        answer.start()
        unalloc.start()
        kam.start()
        adapter.start()

        robot_uac.start()
        people_uac.start()
        robot_stats = robot_uac.wait()
        people_stats = people_uac.wait()

        # People: every call answered and completed, none declined, nothing unexpected.
        assert people_stats.successful == PEOPLE_CALLS, (people_stats.stat, people_stats.errors)
        assert people_stats.failed == 0, people_stats.errors
        assert not people_stats.received(603)

        # The robot: blocked, and from the first 603 on, every new call is declined.
        calls = _final_codes(robot_stats)
        declined = sorted(ts for ts, code in calls.values() if code == 603)
        assert declined, (f"robot never got a 603; its outcomes: "
                          f"{sorted(set(c for _, c in calls.values()))}\n"
                          f"worker:\n{worker.tail()}\nadapter:\n{adapter.tail()}\n"
                          f"collector:\n{tail(collector_log)}")
        first_603_at = min(ts for ts, code in calls.values() if code == 603)
        first_invite = min(ts for ts, _ in calls.values())
        before = [code for ts, code in calls.values() if ts < first_603_at]
        after = [code for ts, code in calls.values() if ts >= first_603_at]
        assert after and all(code == 603 for code in after), sorted(set(after))
        assert robot_stats.failed == 0, robot_stats.errors
        assert 'Reason: SIP;cause=603;text="' in robot_stats.full_messages
        assert settings.redress_contact in robot_stats.full_messages

        # The switch acknowledged the worker's block of the robot; no person was touched.
        assert acks.poll_until(lambda m: any(a.number == robot and a.action == "block"
                                             and a.status == "applied"
                                             for a in acks_of(m)), 30)
        decisions.poll_until(lambda m: False, 3)
        touched = {Decision.decode(m.value()).number for m in decisions.messages
                   if m.value() is not None
                   and Decision.decode(m.value()).action in ("block", "rate_limit")}
        assert not touched & set(people), touched & set(people)

        block_ack = next(a for a in acks_of(acks.messages)
                         if a.number == robot and a.status == "applied")
        answered = sum(1 for code in before if code == 200)
        print(f"\nSIP e2e: robot placed {len(calls)} calls at {ROBOT_RATE}/s; "
              f"{len(before)} completed before the block ({answered} answered, "
              f"{sum(1 for c in before if c == 404)} unallocated), {len(after)} got 603; "
              f"first robot call -> first 603: {first_603_at - first_invite:.1f} s; "
              f"decision -> Kamailio entry {block_ack.latency_s * 1000:.0f} ms; "
              f"people: {people_stats.successful}/{PEOPLE_CALLS} calls completed")
    finally:
        robot_uac.stop()
        people_uac.stop()
        acks.close()
        decisions.close()
        adapter.stop()
        kam.stop()
        answer.stop()
        unalloc.stop()
        worker.stop()
        stop_group(collector, COLLECTOR_STOP_TIMEOUT_S)
