"""The two stages in separate processes of one app id (``DIALGUARD_WORKER_STAGES``).

A number-only worker and a source-only worker share the consumer group and the tables'
changelogs; Faust's assignor gives each only partitions of the topic it reads. Together they
must count exactly what one worker running both stages counts: every attempt per number and
per source, each stage's state only in its own process.
"""

from __future__ import annotations

import time
import uuid

import pytest

from services.settings import STAGE_NUMBER, STAGE_SOURCE
from streams.app import SOURCE_TABLE_NAME, TABLE_NAME
from streams.features import CallerState
from streams.source_features import SourceState
from services.worker_process import scrape
from tests.integration.test_exact_recovery import (SETTLE_TIMEOUT_S, changelog, produce,
                                                   settled, truth, workload)
from tests.integration.worker_harness import HarnessWorker

pytestmark = pytest.mark.integration


def test_number_and_source_workers_together_count_every_attempt(broker_settings, tmp_path):
    events = workload(tag=5, seed=45)
    want_numbers, want_sources = truth(events)
    app_id = f"dg-split-{uuid.uuid4().hex[:6]}"
    numbers_only = HarnessWorker(broker_settings, tmp_path / "n", app_id=app_id)
    sources_only = HarnessWorker(broker_settings, tmp_path / "s", app_id=app_id)
    numbers_only.extra_env["DIALGUARD_WORKER_STAGES"] = STAGE_NUMBER
    sources_only.extra_env["DIALGUARD_WORKER_STAGES"] = STAGE_SOURCE
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    try:
        numbers_only.start()
        sources_only.start()
        produce(broker_settings, events)
        while not settled(broker_settings, app_id):
            assert time.monotonic() < deadline, numbers_only.tail() + sources_only.tail()
            time.sleep(0.5)
        n_text = scrape(numbers_only.metrics_port) or ""
        s_text = scrape(sources_only.metrics_port) or ""
    finally:
        numbers_only.stop()
        sources_only.stop()
    assert "stages number;" in numbers_only.log_path.read_text()
    assert "stages source;" in sources_only.log_path.read_text()
    # Each process ran its own stage only: events in and re-keyed in one, folded in the other
    # (the fresh app id also reads what earlier tests left on the session broker).
    assert metric_total(n_text, "dialguard_events_total") >= len(events)
    assert metric_total(n_text, "dialguard_source_events_total") >= len(events)
    assert metric_total(n_text, "dialguard_source_events_folded_total") == 0
    assert metric_total(s_text, "dialguard_events_total") == 0
    assert metric_total(s_text, "dialguard_source_events_folded_total") > 0
    numbers = {k.decode(): CallerState.from_bytes(v).attempts_total
               for k, v in changelog(broker_settings, app_id, TABLE_NAME).items()}
    sources = {k.decode(): SourceState.from_bytes(v).attempts_total
               for k, v in changelog(broker_settings, app_id, SOURCE_TABLE_NAME).items()}
    assert {n: numbers.get(n) for n in want_numbers} == want_numbers
    assert {k: sources.get(k) for k in want_sources} == want_sources


def metric_total(text: str, name: str) -> float:
    """Sum of a counter's series in a metrics text (0 when it has none)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{"))
