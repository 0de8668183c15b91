"""`dialguard simulate` produces to a real broker and writes its ground truth."""

import os
import subprocess
import sys

import pytest

from services.settings import REPO_ROOT
from services.simulator import read_truth
from streams.schema import EventValidator
from streams.topics import SIGNALING_EVENTS
from tests.integration.worker_harness import TopicReader

pytestmark = pytest.mark.integration


def test_simulate_fast_produces_valid_events_and_truth(broker_settings, tmp_path):
    truth = tmp_path / "truth.jsonl"
    topic = f"sim-check-{os.getpid()}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")},
           "DIALGUARD_KAFKA_BOOTSTRAP": broker_settings.kafka_bootstrap,
           "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "simulate", "--scenario", "small", "--seed", "5",
         "--fast", "--duration", "1800", "--history-hours", "2", "--truth", str(truth),
         "--topic", topic], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "simulator done:" in done.stderr and "events produced" in done.stderr
    produced = int(done.stderr.split("simulator done: ")[1].split(" events")[0].replace(",", ""))
    entries = read_truth(truth)
    assert produced > 100 and any(e.robot for e in entries) and any(not e.robot for e in entries)
    reader = TopicReader(broker_settings, topic)
    try:
        assert reader.poll_until(lambda msgs: len(msgs) >= produced, timeout=60)
    finally:
        reader.close()
    validator = EventValidator()
    events = [validator.decode(m.value()) for m in reader.messages]
    assert all(m.key() == e.caller.encode() for m, e in zip(reader.messages, events))
    assert SIGNALING_EVENTS.name != topic  # the real topic was left alone
