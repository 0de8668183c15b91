"""Every dashboard and rule expression, run by a real Prometheus scraping a real worker.

Why: promtool proves the rules are valid PromQL and behave on made-up series; only a real
scrape proves the worker exports what the panels and alerts ask for, with the label names and
values they match on. The test starts Debian's ``prometheus`` on a free loopback port (1 s
scrape and rule evaluation, its own storage in the test's tmp folder), drives a worker with
two simulated hours of traffic plus feedback labels on numbers the worker blocked (so the
false- and true-positive series exist and move), then asks Prometheus for each expression and
requires at least one series from each, and every rule to evaluate without error. Prometheus
and the worker are stopped whatever happens.

Expressions on the metrics of the other processes (control API, switch adapter, ingest:
``dashboards.queries.EXTERNAL_METRICS``) cannot return series from a worker alone; here they
must run without error, and ``tests/unit/test_dashboards.py`` checks that they parse and that
each metric they read is defined in its process's code.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaException

from dashboards import build
from dashboards import queries as q
from dashboards.tooling import ToolMissing, prometheus_tool, selected_names
from services.control_client import publish_label, publish_policy
from services.simulator import Scenario, Simulation
from streams.policy import Policy
from streams.schema import Label
from tests.integration.worker_harness import (DECISIONS, TopicReader, HarnessWorker,
                                              decisions_of, free_port, produce_events)

pytestmark = pytest.mark.integration

SIM_SEED = 23
SIM_HOURS = 2
#: Event time starts this far in the past, so the whole simulation is history, not future.
SIM_START_AGO_S = 3 * 3600
SCRAPE_INTERVAL = "1s"
PROMETHEUS_START_TIMEOUT_S = 30.0
PROMETHEUS_STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 5.0
BLOCK_WAIT_S = 90.0
SERIES_WAIT_S = 60.0
#: Simulated time produced before the first labels (the rest comes after).
PHASE_ONE_S = 3600
#: Series that must have been scraped once before phase 2 moves them.
PHASE_ONE_SERIES = (q.ENFORCING_DECISIONS, "dialguard_true_positives_total",
                    "dialguard_false_positives_total")
POLICY_PUBLISH_TIMEOUT_S = 20.0
POLL_S = 1.0
#: Labels of each outcome (robot confirmed / legitimate) on numbers the worker blocked.
LABELS_PER_OUTCOME = 1
TRUE_POSITIVE_LABEL = "complaint"
FALSE_POSITIVE_LABEL = "appeal_upheld"
SCRAPE_JOB = yaml.safe_load(
    (build.DASHBOARDS_DIR / "prometheus.yml").read_text())["scrape_configs"][0]["job_name"]


@dataclass
class PrometheusServer:
    """Debian's ``prometheus`` binary on a loopback port with a config of the test's own."""

    binary: str
    home: Path
    target_port: int
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "prometheus.log"

    def write_config(self) -> Path:
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": [str(build.RULES_PATH)],
            "scrape_configs": [{"job_name": SCRAPE_JOB, "static_configs": [
                {"targets": [f"127.0.0.1:{self.target_port}"]}]}],
        }
        path = self.home / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={config}",
                 f"--storage.tsdb.path={self.home / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.home, start_new_session=True)
        deadline = time.monotonic() + PROMETHEUS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.tail()}")
            if self._ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"prometheus not ready in {PROMETHEUS_START_TIMEOUT_S}s:\n"
                           f"{self.tail()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=HTTP_TIMEOUT_S) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(PROMETHEUS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def api(self, path: str, **params: str) -> Any:
        """``data`` of a Prometheus HTTP API answer; raises with Prometheus's error otherwise."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def series_count(self, expr: str) -> int:
        return len(self.api("query", query=expr)["result"])

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def all_expressions() -> dict[str, str]:
    """expr -> where it is used: every panel query, every recording rule (its expression and
    the series it records) and every alert's watched signal."""
    exprs: dict[str, str] = {}
    for name in build.DASHBOARDS:
        for title, expr in build.panel_targets((build.GRAFANA_DIR / name).read_text()):
            exprs.setdefault(expr, f"{name}: {title}")
    for rule in q.recording_rules():
        exprs.setdefault(rule.expr, f"recording rule {rule.record}")
        exprs.setdefault(rule.record, f"recorded series {rule.record}")
    for alert in q.alert_rules():
        exprs.setdefault(alert.signal, f"alert {alert.alert} (signal)")
    return exprs


def reads_other_process(expr: str) -> bool:
    return any(q.external_job(name) for name in selected_names(expr))


def expressions_with_series() -> dict[str, str]:
    """Those of :func:`all_expressions` that read the worker's metrics (or rules) only."""
    return {e: w for e, w in all_expressions().items() if not reads_other_process(e)}


def expressions_of_other_processes() -> dict[str, str]:
    return {e: w for e, w in all_expressions().items() if reads_other_process(e)}


def tool(name: str) -> str:
    try:
        return prometheus_tool(name)
    except ToolMissing as exc:
        pytest.fail(str(exc))


def publish_live_policy(settings) -> None:
    """Publish the default policy, live. Why: the worker exports dialguard_policy_version only
    for a published policy (the built-in default has no record to report), and an earlier test
    may have left a dry-run one in force. Retried: right after topic creation the broker may
    not yet answer watermark queries for control.policy (NOT_LEADER_FOR_PARTITION)."""
    deadline = time.monotonic() + POLICY_PUBLISH_TIMEOUT_S
    while True:
        try:
            publish_policy(settings, Policy().to_dict(), author="test",
                           reason="prometheus test: live default policy")
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL_S)


@pytest.fixture
def worker(broker_settings, tmp_path):
    w = HarnessWorker(broker_settings, tmp_path / "worker",
                      app_id=f"dg-prom-{uuid.uuid4().hex[:6]}")
    try:
        w.start()
        publish_live_policy(broker_settings)
        yield w
    finally:
        w.stop()
        print(f"\n--- worker log tail ---\n{w.tail(10)}")


@pytest.fixture
def prometheus(worker, tmp_path):
    server = PrometheusServer(tool("prometheus"), tmp_path / "prometheus", worker.metrics_port)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def blocked_robots(settings, robots: set[str], wanted: int) -> list[str]:
    """Robots of this simulation the worker put under a live block, in decision order."""
    def live_blocks(msgs) -> list[str]:
        seen: dict[str, None] = {}
        for d in decisions_of(msgs):
            if d.number in robots and d.action == "block" and not d.dry_run:
                seen.setdefault(d.number)
        return list(seen)

    reader = TopicReader(settings, DECISIONS.name)
    try:
        reader.poll_until(lambda msgs: len(live_blocks(msgs)) >= wanted, timeout=BLOCK_WAIT_S)
        return live_blocks(reader.messages)
    finally:
        reader.close()


def label(settings, numbers: list[str], verdict: str) -> None:
    for number in numbers:
        publish_label(settings, Label(number=number, label=verdict, ts=time.time(),
                                      id=f"prom-test-{uuid.uuid4().hex[:8]}", source="test"))


def missing_series(server: PrometheusServer, exprs: dict[str, str]) -> dict[str, str]:
    """The expressions (with where they are used) that return no series yet."""
    return {expr: where for expr, where in exprs.items() if server.series_count(expr) == 0}


def wait_for_series(server: PrometheusServer, exprs: dict[str, str],
                    timeout: float) -> dict[str, str]:
    """Poll until every expression has a series; returns those still without one."""
    deadline = time.monotonic() + timeout
    missing = missing_series(server, exprs)
    while missing and time.monotonic() < deadline:
        time.sleep(POLL_S)
        missing = missing_series(server, exprs)
    return missing


def test_every_dashboard_and_rule_expression_has_series_on_a_real_worker(
        prometheus, worker, broker_settings):
    start = time.time() - SIM_START_AGO_S
    sim = Simulation(Scenario.small(), seed=SIM_SEED, start_ts=start)
    events = list(sim.events(SIM_HOURS * 3600))
    robots = {t.number for t in sim.truth() if t.robot}
    # Two phases, because a counter series is born at its first value: increase() only sees
    # what happens after Prometheus scraped it once. Phase 1 creates the decision and feedback
    # series, phase 2 moves them, as on a network that has been running for a while.
    split = start + PHASE_ONE_S
    produce_events(broker_settings, [e for e in events if e.ts < split])
    blocked = blocked_robots(broker_settings, robots, wanted=2 * LABELS_PER_OUTCOME)
    assert len(blocked) >= 2 * LABELS_PER_OUTCOME, \
        f"worker blocked only {blocked}:\n{worker.tail()}"
    true_pos = blocked[:LABELS_PER_OUTCOME]
    false_pos = blocked[LABELS_PER_OUTCOME:2 * LABELS_PER_OUTCOME]
    label(broker_settings, true_pos, TRUE_POSITIVE_LABEL)
    label(broker_settings, false_pos, FALSE_POSITIVE_LABEL)
    born = wait_for_series(prometheus, {s: "phase 1" for s in PHASE_ONE_SERIES}, SERIES_WAIT_S)
    assert not born, f"not scraped: {sorted(born)}\n{worker.tail()}"

    produce_events(broker_settings, [e for e in events if e.ts >= split])
    label(broker_settings, true_pos, TRUE_POSITIVE_LABEL)  # each label on an enforced number
    label(broker_settings, false_pos, FALSE_POSITIVE_LABEL)  # counts, a repeat included

    exprs = expressions_with_series()
    missing = wait_for_series(prometheus, exprs, SERIES_WAIT_S)
    assert not missing, (f"{len(missing)} of {len(exprs)} expressions have no series:\n"
                         + "\n".join(f"  {where}: {expr}" for expr, where in missing.items())
                         + f"\n--- prometheus log ---\n{prometheus.tail()}")

    for alert in q.alert_rules():  # the full alert expressions run too (they may be empty)
        prometheus.api("query", query=alert.expr)
    others = expressions_of_other_processes()
    for expr in others:  # no such process here: they must run, empty
        prometheus.api("query", query=expr)
    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
    assert len(rules) == len(q.recording_rules()) + len(q.alert_rules())
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not broken, broken
    print(f"\n{len(exprs)} worker expressions with series, {len(others)} of other processes "
          f"run empty; {len(rules)} rules healthy; "
          f"labelled {len(true_pos)} true and {len(false_pos)} false positives twice")
