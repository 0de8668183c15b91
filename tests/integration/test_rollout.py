"""Guarded rollout against a real broker and a real worker: a shadow candidate, the kill switch.

The records are written as the control API writes them (``control.policy`` keys ``<name>``,
``<name>#shadow`` and ``#switches``, through ``services.control_client``); the test waits for
the worker to apply each one by reading its own gauges (policy version, shadow version, kill
switch) rather than sleeping, then drives robot traffic and reads what the worker published on
``switch.control.decisions`` and ``decisions.shadow``. Whatever happens, the shadow and the
switches are tombstoned and the default policy is published live again, so the tests that share
the session broker see a network without a kill switch.
"""

from __future__ import annotations

import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.control_client import publish_control_record, publish_policy
from services.worker_process import scrape
from streams.policy import SWITCHES_KEY, ControlSwitches, Policy, Thresholds, shadow_key
from streams.schema import Decision
from streams.topics import SHADOW_DECISIONS
from tests.integration.test_worker import robot_burst
from tests.integration.worker_harness import (DECISIONS, SCORES, HarnessWorker, TopicReader,
                                              decisions_of, produce_events, scores_of)

pytestmark = pytest.mark.integration

APPLY_WAIT_S = 30.0
DECISION_WAIT_S = 120.0
POLL_S = 0.3
#: Live thresholds a robot's score (~0.9) never reaches for block: only the shadow blocks.
NO_BLOCK = Thresholds(label=0.5, rate_limit=0.7, block=1.0)
#: Event time of the robots' calls: in the past, so nothing is "from the future".
START_AGO_S = 2 * 3600
#: A second burst of the same robot starts after the first one (120 calls 5 s apart).
BURST_SPAN_S = 700


def metric_value(port: int, name: str, **labels: str) -> float | None:
    """A sample of the worker's metrics endpoint, or None (endpoint down or no such series)."""
    text = scrape(port)
    if text is None:
        return None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def wait_metric(worker: HarnessWorker, value: float, name: str, **labels: str) -> None:
    """Until the worker exports ``value``: the control feed applied the record."""
    deadline = time.monotonic() + APPLY_WAIT_S
    seen = None
    while time.monotonic() < deadline:
        worker.check_alive()
        seen = metric_value(worker.metrics_port, name, **labels)
        if seen == value:
            return
        time.sleep(POLL_S)
    raise AssertionError(f"{name}{labels} is {seen}, not {value}, after {APPLY_WAIT_S}s:\n"
                         f"{worker.tail()}")


def read_decisions(settings, topic: str, number: str, until) -> list[Decision]:
    """Decisions about ``number`` on ``topic`` once ``until`` holds for them (and 2 s quiet)."""
    reader = TopicReader(settings, topic)
    try:
        reader.poll_until(lambda msgs: until([d for d in decisions_of(msgs)
                                              if d.number == number]),
                          timeout=DECISION_WAIT_S, quiet_s=2.0)
        return [d for d in decisions_of(reader.messages) if d.number == number]
    finally:
        reader.close()


def has_block(decisions: list[Decision]) -> bool:
    return any(d.action == "block" for d in decisions)


@pytest.fixture
def worker(model_broker_settings, tmp_path):
    w = HarnessWorker(model_broker_settings, tmp_path / "worker",
                      app_id=f"dg-rollout-{uuid.uuid4().hex[:6]}")
    try:
        w.start()
        yield w
    finally:
        try:
            publish_control_record(model_broker_settings, shadow_key("default"), None)
            publish_control_record(model_broker_settings, SWITCHES_KEY, None)
            publish_policy(model_broker_settings, Policy().to_dict(), author="test",
                           reason="rollout test: back to the live default")
        finally:
            w.stop()
            print(f"\n--- worker log tail ---\n{w.tail(15)}")


def test_shadow_candidate_and_kill_switch_on_a_real_worker(worker, model_broker_settings):
    settings = model_broker_settings
    start = time.time() - START_AGO_S

    # 1. live policy that never blocks, candidate with the default block threshold in shadow
    live = publish_policy(settings, Policy(thresholds=NO_BLOCK).to_dict(), author="test",
                          reason="rollout test: live never blocks")
    wait_metric(worker, live.version, "dialguard_policy_version", policy="default")
    candidate = Policy(version=live.version + 1, author="test", reason="rollout test: shadow")
    publish_control_record(settings, shadow_key("default"), candidate.encode())
    wait_metric(worker, candidate.version, "dialguard_shadow_policy_version", policy="default")

    robot = "8617000100001"
    produce_events(settings, robot_burst(robot, start, seed=21))
    shadow = read_decisions(settings, SHADOW_DECISIONS.name, robot, until=has_block)
    shadow_blocks = [d for d in shadow if d.action == "block"]
    assert shadow_blocks, f"no shadow block: {shadow}\n{worker.tail()}"
    assert {d.policy_version for d in shadow} == {candidate.version}
    assert not shadow_blocks[0].dry_run
    live_decisions = read_decisions(settings, DECISIONS.name, robot,
                                    until=lambda ds: bool(ds))
    assert live_decisions and not has_block(live_decisions), live_decisions
    assert {d.policy_version for d in live_decisions} == {live.version}
    reader = TopicReader(settings, SCORES.name)
    try:
        reader.poll_until(lambda msgs: any(s.number == robot and s.shadow_action == "block"
                                           for s in scores_of(msgs)), timeout=DECISION_WAIT_S)
        scored = [s for s in scores_of(reader.messages) if s.number == robot]
    finally:
        reader.close()
    assert {s.shadow_version for s in scored} == {candidate.version}
    assert any(s.shadow_action == "block" and s.action != "block" for s in scored)

    # 2. shadow removed, default thresholds live, kill switch on: every live block is dry-run
    publish_control_record(settings, shadow_key("default"), None)
    wait_metric(worker, 0, "dialguard_shadow_policy_version", policy="default")
    blocking = publish_policy(settings, Policy().to_dict(), author="test",
                              reason="rollout test: live default")
    wait_metric(worker, blocking.version, "dialguard_policy_version", policy="default")
    publish_control_record(settings, SWITCHES_KEY, ControlSwitches(
        dry_run_all=True, author="test", reason="rollout drill", at=time.time()).encode())
    wait_metric(worker, 1, "dialguard_dry_run_all")

    robot2 = "8617000100002"
    produce_events(settings, robot_burst(robot2, start, seed=22))
    under_switch = read_decisions(settings, DECISIONS.name, robot2, until=has_block)
    assert has_block(under_switch), f"no block: {under_switch}\n{worker.tail()}"
    assert all(d.dry_run for d in under_switch), under_switch
    assert all("kill switch on" in d.reasons[-1] for d in under_switch)

    # 3. kill switch off: the same robot's still-fresh dry-run block is re-issued for real
    publish_control_record(settings, SWITCHES_KEY, ControlSwitches(
        dry_run_all=False, author="test", reason="drill over", at=time.time()).encode())
    wait_metric(worker, 0, "dialguard_dry_run_all")
    produce_events(settings, robot_burst(robot2, start + BURST_SPAN_S, n=20, seed=23))
    after = read_decisions(settings, DECISIONS.name, robot2,
                           until=lambda ds: any(d.action == "block" and not d.dry_run
                                                for d in ds))
    live_blocks = [d for d in after if d.action == "block" and not d.dry_run]
    assert live_blocks, f"no live block after the switch: {after}\n{worker.tail()}"
    assert live_blocks[0].trigger_ts >= start + BURST_SPAN_S
    assert live_blocks[0].policy_version == blocking.version
    print(f"\nshadow v{candidate.version}: {len(shadow)} decisions ({len(shadow_blocks)} "
          f"blocks) while live v{live.version} made {len(live_decisions)} without a block; "
          f"kill switch: {len(under_switch)} dry-run decisions, then a live block at "
          f"+{live_blocks[0].trigger_ts - start:.0f} s event time")
