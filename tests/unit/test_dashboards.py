"""Dashboards and rules as code: committed files equal the code, PromQL names real metrics, and
promtool accepts and passes the rules (``dashboards/rules_test.yml``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from dashboards import build
from dashboards import queries as q
from dashboards.tooling import ToolMissing, prometheus_tool, selected_names
from services.settings import REPO_ROOT, Settings
from streams import metrics
from streams.policy import ENFORCING

PROMTOOL_TIMEOUT_S = 60
#: Series names a metric of each type exports (prometheus_client's exposition).
SAMPLE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}
GRID_COLUMNS = 24


def exported_series_names() -> set[str]:
    """Every series name the worker can export, from the metric objects in streams/metrics.py."""
    names: set[str] = set()
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for family in obj.describe():
                names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type])
    return names


def external_series_names() -> set[str]:
    """Series names of the metrics other processes export (queries.EXTERNAL_METRICS)."""
    return {name + suffix for name in q.EXTERNAL_METRICS
            for suffix in ("",) + q.HISTOGRAM_SUFFIXES}


def committed_rules() -> dict:
    return yaml.safe_load(build.RULES_PATH.read_text())


def recorded_names() -> set[str]:
    return {r["record"] for g in committed_rules()["groups"] for r in g["rules"] if "record" in r}


def all_panel_targets() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every panel query, from the committed JSON."""
    return [(name, title, expr) for name in build.DASHBOARDS
            for title, expr in build.panel_targets((build.GRAFANA_DIR / name).read_text())]


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        promtool = prometheus_tool("promtool")
    except ToolMissing as exc:
        pytest.fail(str(exc))
    return subprocess.run([promtool, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=PROMTOOL_TIMEOUT_S, check=False)


# -- generated files ---------------------------------------------------------------------------
def test_committed_files_equal_what_the_code_generates():
    assert build.stale_files(build.generated_files()) == [], \
        "run `python -m dashboards.build` and commit the result"


def test_check_cli_exits_zero_on_the_committed_files():
    done = subprocess.run([sys.executable, "-m", "dashboards.build", "--check"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_check_fails_when_a_committed_file_differs(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "GRAFANA_DIR", tmp_path / "grafana")
    monkeypatch.setattr(build, "RULES_PATH", tmp_path / "rules.yml")
    monkeypatch.setattr(build, "DASHBOARDS_DIR", tmp_path)
    assert build.main(["--check"]) == 1  # nothing written yet
    assert build.main([]) == 0
    assert build.main(["--check"]) == 0
    edited = tmp_path / "grafana" / "noc-overview.json"
    edited.write_text(edited.read_text().replace("NOC overview", "NOC overvue"))
    assert build.main(["--check"]) == 1


# -- PromQL names only what exists ---------------------------------------------------------------
def test_every_panel_query_selects_exported_metrics_or_recorded_rules():
    known = exported_series_names() | external_series_names() | recorded_names()
    targets = all_panel_targets()
    assert len(targets) >= 20
    unknown = {(name, title, n) for name, title, expr in targets
               for n in selected_names(expr) - known}
    assert not unknown, unknown


def test_every_panel_query_is_defined_in_queries_py():
    """One source of truth: a panel may not carry PromQL of its own."""
    defined = {v for v in vars(q).values() if isinstance(v, str)}
    defined |= {r.record for r in q.recording_rules()}
    inline = {(name, title, expr) for name, title, expr in all_panel_targets()
              if expr not in defined}
    assert not inline, inline


def test_every_rule_selects_exported_metrics_or_earlier_recorded_rules():
    """Rules of a group run in order: a rule may only use what was recorded before it."""
    exported = exported_series_names() | external_series_names()
    recorded: set[str] = set()
    for group in committed_rules()["groups"]:
        for rule in group["rules"]:
            unknown = selected_names(rule["expr"]) - exported - recorded
            assert not unknown, (rule.get("record") or rule.get("alert"), unknown)
            if "record" in rule:
                recorded.add(rule["record"])


def test_the_metric_inventory_is_what_the_worker_exports():
    names = exported_series_names()
    assert {"dialguard_decisions_total", "dialguard_calls_before_block_bucket",
            "dialguard_blocks_active", "dialguard_consumer_lag_messages",
            "dialguard_dry_run_all", "dialguard_shadow_policy_version",
            "dialguard_shadow_decisions_total"} <= names
    assert "dialguard_decisions" not in names
    assert not names & external_series_names(), "a worker metric is listed as another's"


# -- metrics of the other processes ---------------------------------------------------------------
def metric_is_defined(source: str, family: str) -> bool:
    """``family`` appears as a string literal in ``source`` (prometheus_client drops a
    counter's ``_total`` from the name it is given, so either spelling defines it)."""
    names = {family, family.removesuffix("_total")}
    return any(re.search(rf"""["']{re.escape(n)}["']""", source) for n in names)


@pytest.mark.parametrize("family", sorted(q.EXTERNAL_METRICS))
def test_every_metric_of_another_process_is_defined_in_its_code(family: str):
    job = q.EXTERNAL_METRICS[family]
    files = sorted({path for pattern in q.METRIC_SOURCES[job] for path in REPO_ROOT.glob(pattern)
                    if path.is_file()})
    where = [str(f.relative_to(REPO_ROOT)) for f in files
             if metric_is_defined(f.read_text(encoding="utf-8"), family)]
    assert where, (f"{family} (job {job}) is defined in none of {q.METRIC_SOURCES[job]} "
                   f"({len(files)} files): the panels and alerts on it would stay empty")


def test_metric_definition_check_can_fail():
    assert metric_is_defined('C = Counter("dialguard_api_requests", "x")',
                             "dialguard_api_requests_total")
    assert not metric_is_defined('C = Counter("dialguard_api_request", "x")',
                                 "dialguard_api_requests_total")


def test_each_expression_reads_at_most_one_other_process():
    """A panel or alert on another process's metrics reads that process only, so the
    real-Prometheus test can tell which expressions a worker alone must answer."""
    exprs = [expr for _, _, expr in all_panel_targets()]
    exprs += [r["expr"] for g in committed_rules()["groups"] for r in g["rules"]]
    for expr in exprs:
        jobs = {q.external_job(n) for n in selected_names(expr)}
        if jobs - {None}:
            assert len(jobs) == 1, (expr, jobs)


def test_boards_show_every_other_process_and_the_guarded_rollout():
    used = {n for _, _, expr in all_panel_targets() for n in selected_names(expr)}
    assert set(q.EXTERNAL_METRICS) <= {n.removesuffix("_bucket") for n in used}
    policy_board = {expr for name, _, expr in all_panel_targets()
                    if name == "policy-board.json"}
    assert {q.KILL_SWITCH, q.SHADOW_POLICY_VERSION, q.LIVE_DECISIONS_BY_POLICY_ACTION,
            q.SHADOW_DECISIONS_BY_POLICY_ACTION, q.AUTO_ROLLBACKS} <= policy_board


def test_prometheus_scrapes_every_process_on_its_metrics_port():
    config = yaml.safe_load((build.DASHBOARDS_DIR / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    # the worker first: tests/integration/test_prometheus.py takes its job name from there
    assert config["scrape_configs"][0]["job_name"] == q.WORKER_JOB
    s = Settings.from_env({})
    ports = {q.WORKER_JOB: s.metrics_port, q.API_JOB: s.api_metrics_port,
             q.SWITCH_ADAPTER_JOB: s.adapter_metrics_port, q.INGEST_JOB: s.ingest_metrics_port}
    assert set(jobs) == set(ports) == set(q.EXTERNAL_METRICS.values()) | {q.WORKER_JOB}
    for job, port in ports.items():
        assert jobs[job]["dns_sd_configs"][0]["port"] == port, job


def test_every_recording_rule_is_used_by_a_panel_or_a_rule():
    used = {n for _, _, expr in all_panel_targets() for n in selected_names(expr)}
    used |= {n for g in committed_rules()["groups"] for r in g["rules"]
             for n in selected_names(r["expr"])}
    assert recorded_names() - used == set()


def test_quality_panels_use_the_recording_rules():
    exprs = {expr for _, _, expr in all_panel_targets()}
    for window in q.QUALITY_WINDOWS:
        assert q.fp_rate_record(window) in exprs
        assert q.precision_record(window) in exprs
    assert q.FP_RATE_TARGET_RECORD in exprs and q.DLQ_RATIO_RECORD in exprs


def test_enforcing_actions_match_the_detector():
    assert set(q.ENFORCING_ACTIONS_REGEX.split("|")) == set(ENFORCING)


def test_dead_letter_reasons_and_policy_series_are_initialised():
    """Without these series the DLQ ratio has no value on a clean stream and the first false
    positive of a policy is invisible to increase()."""
    exposed = {s.labels["reason"] for s in metrics.DEAD_LETTERS.collect()[0].samples}
    assert exposed >= set(metrics.DLQ_REASONS)
    metrics.init_policy_series("unit-test-policy")
    fps = {s.labels.get("policy") for s in metrics.FALSE_POSITIVES.collect()[0].samples}
    assert "unit-test-policy" in fps


# -- rules -----------------------------------------------------------------------------------------
def test_every_alert_explains_itself():
    alerts = [r for g in committed_rules()["groups"] for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} == {a.alert for a in q.alert_rules()}
    for alert in alerts:
        assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_every_alert_has_a_firing_case_and_the_healthy_case_covers_all():
    tests = yaml.safe_load((build.DASHBOARDS_DIR / "rules_test.yml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t.get("alert_rule_test", [])
             if case["exp_alerts"]}
    assert fired == {a.alert for a in q.alert_rules()}
    healthy = [t for t in tests if t["name"].startswith("healthy")]
    assert len(healthy) == 1
    quiet = {c["alertname"] for c in healthy[0]["alert_rule_test"] if not c["exp_alerts"]}
    assert quiet == fired


def test_promtool_checks_the_rules():
    done = run_promtool("check", "rules", str(build.RULES_PATH))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests_pass():
    done = run_promtool("test", "rules", str(build.DASHBOARDS_DIR / "rules_test.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


# -- dashboards are well formed ------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_dashboard_is_well_formed(name: str):
    model = json.loads((build.GRAFANA_DIR / name).read_text())
    assert {"uid", "title", "panels", "schemaVersion", "templating"} <= set(model)
    panels = model["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables[build.DATASOURCE_VARIABLE]["query"] == "prometheus"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == f"${{{build.DATASOURCE_VARIABLE}}}"


def test_dashboard_uids_are_unique_and_provisioning_points_at_the_mounted_folder():
    uids = [json.loads((build.GRAFANA_DIR / n).read_text())["uid"] for n in build.DASHBOARDS]
    assert len(set(uids)) == len(uids)
    provisioning = yaml.safe_load(
        (build.DASHBOARDS_DIR / "provisioning" / "dashboards" / "dialguard.yml").read_text())
    provider = provisioning["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/var/lib/")


#: Label names the worker's metrics may carry: each a small, bounded set of values. A number,
#: a range or a trunk id as a label would create a series per caller (and leak it).
BOUNDED_LABELS = {"action", "policy", "dry_run", "scope", "proto", "kind", "reason", "target",
                  "topic", "outcome", "partition", "stage"}


def test_worker_metrics_never_label_by_number_range_or_trunk():
    from streams.scope import SCOPES

    wrappers = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert wrappers
    for metric in wrappers:
        assert set(metric._labelnames) <= BOUNDED_LABELS, (metric._name, metric._labelnames)
    metrics.init_policy_series("unit-test-scopes")
    for metric in (metrics.DECISIONS, metrics.BLOCKS_ACTIVE, metrics.FALSE_POSITIVES,
                   metrics.TRUE_POSITIVES, metrics.CAMPAIGNS_ACTIVE):
        scopes = {s.labels["scope"] for fam in metric.collect() for s in fam.samples}
        assert scopes <= set(SCOPES), (metric._name, scopes)
    # the boards group by scope and kind, never by a per-source label
    for _, _, expr in all_panel_targets():
        for clause in re.findall(r"by \(([^)]*)\)", expr):
            labels = {x.strip() for x in clause.split(",")}
            assert labels <= BOUNDED_LABELS | {"le", "instance", "route", "status", "source"}, \
                (expr, labels)


def test_campaigns_are_on_the_noc_board_and_quality_is_split_by_scope():
    noc = {expr for name, _, expr in all_panel_targets() if name == "noc-overview.json"}
    assert {q.CAMPAIGNS_ACTIVE, q.CAMPAIGNS_ACTIVE_BY_SCOPE, q.SCOPED_DECISIONS_BY_SCOPE_ACTION,
            q.SOURCE_EVENTS_FOLDED_BY_KIND, q.SOURCES_TRACKED_BY_KIND,
            q.BLOCKS_ACTIVE_BY_SCOPE} <= noc
    quality = {expr for name, _, expr in all_panel_targets()
               if name == "detection-quality.json"}
    assert q.scope_fp_rate_record(q.SCOPE_QUALITY_WINDOW) in quality
    # the per-policy quality rules sum over scope (they group by policy only)
    for rule in q.quality_rules("1h")[:3]:
        assert rule.expr.startswith("sum by (policy) ("), rule
