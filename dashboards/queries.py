"""Every PromQL expression of dialguard's dashboards and Prometheus rules, defined once.

Why one module: the Grafana panels (``dashboards/build.py``), the rules file it generates
(``dashboards/rules.yml``) and the tests (which run each expression through ``promtool`` and a
real Prometheus scraping a real worker) must agree on what "false-positive rate" or "consumer
lag" means. A panel that shows one formula while the alert fires on another is worse than no
panel. Metric names are those of the worker (``streams/metrics.py``) or of another process
listed in :data:`EXTERNAL_METRICS` (control API, switch adapter, ingest);
``tests/unit/test_dashboards.py`` checks every name used here exists there (or is a recording
rule below), and ``tests/integration/test_prometheus.py`` requires a series from every
expression that reads only the worker's metrics.

Windows are fixed (``[5m]``), not Grafana's ``$__rate_interval``, so the very string a panel
sends is one Prometheus can run as is (the integration test does exactly that).
"""

from __future__ import annotations

from dataclasses import dataclass

# -- windows and thresholds --------------------------------------------------------------------
#: Window of per-second rates on the live panels and of the dead-letter ratio alert.
RATE_WINDOW = "5m"
#: Blocks are rare events: quantiles of "calls before block" need a longer window to be stable.
BLOCK_QUANTILE_WINDOW = "1h"
#: Detection quality is judged from feedback labels, which trickle in: short and long windows.
QUALITY_WINDOWS = ("1h", "24h")
#: Target false-positive rate: at most 1 enforced decision in 100 later found to be legitimate.
FP_RATE_TARGET = 0.01
#: Any limiter trip within this window alerts (the limiter only trips on a surge of new blocks).
LIMITER_WINDOW = "10m"
#: Any ADWIN drift alarm within this window alerts.
DRIFT_WINDOW = "30m"
#: Unprocessed messages on one partition that mean detection is falling behind the network.
CONSUMER_LAG_ALERT_MESSAGES = 10_000
#: Share of input records sent to the dead-letter topic that means a producer broke its format.
DLQ_RATIO_ALERT = 0.01
#: Decision actions that act on traffic (streams.policy.ENFORCING); "label" only annotates.
ENFORCING_ACTIONS_REGEX = "block|rate_limit"
#: Scopes decided per source (streams.scope.SOURCE_SCOPES): the campaigns of robots that
#: rotate their caller number, stopped by range or by trunk.
SOURCE_SCOPES_REGEX = "prefix|trunk"
#: Window of the per-scope quality rules: feedback on range and trunk decisions is sparse.
SCOPE_QUALITY_WINDOW = "24h"

#: Counted auto-rollbacks stay visible (panel) and alerting this long after they happened.
ROLLBACK_WINDOW = "1h"
#: The kill switch is an emergency brake: on for longer than this, someone must decide.
KILL_SWITCH_FOR = "15m"

# -- processes other than the worker -------------------------------------------------------------
#: Prometheus job names (dashboards/prometheus.yml) of the processes the boards read.
WORKER_JOB = "dialguard-worker"
API_JOB = "dialguard-api"
SWITCH_ADAPTER_JOB = "dialguard-switch-adapter"
INGEST_JOB = "dialguard-ingest"
#: Metric families exported by processes other than the worker, and the job scraping them. The
#: worker's own metrics are the objects of ``streams/metrics.py``; these are defined by the
#: other processes' code (:data:`METRIC_SOURCES`), which a unit test greps for each name.
EXTERNAL_METRICS: dict[str, str] = {
    "dialguard_policy_auto_rollbacks_total": API_JOB,
    "dialguard_api_requests_total": API_JOB,
    "dialguard_api_request_seconds": API_JOB,
    "dialguard_switch_acks_total": SWITCH_ADAPTER_JOB,
    "dialguard_switch_apply_seconds": SWITCH_ADAPTER_JOB,
    "dialguard_switch_blocked_entries": SWITCH_ADAPTER_JOB,
    "dialguard_ingest_events_total": INGEST_JOB,
    "dialguard_ingest_dead_letters_total": INGEST_JOB,
}
#: Where each job's metrics are defined (glob patterns relative to the repository root).
METRIC_SOURCES: dict[str, tuple[str, ...]] = {
    API_JOB: ("services/api/**/*.py", "services/api*.py"),
    SWITCH_ADAPTER_JOB: ("services/switch_adapter/**/*.py", "services/switch_adapter*.py"),
    INGEST_JOB: ("services/ingest/**/*.py",),
}
#: Series a histogram family exports besides its own name.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def external_job(series: str) -> str | None:
    """The job of a series name another process exports, or None (the worker's or a rule's)."""
    if series in EXTERNAL_METRICS:
        return EXTERNAL_METRICS[series]
    for suffix in HISTOGRAM_SUFFIXES:
        if series.endswith(suffix) and series[:-len(suffix)] in EXTERNAL_METRICS:
            return EXTERNAL_METRICS[series[:-len(suffix)]]
    return None


# -- raw selectors -------------------------------------------------------------------------------
ENFORCING_DECISIONS = (f'dialguard_decisions_total{{action=~"{ENFORCING_ACTIONS_REGEX}",'
                       f'dry_run="false"}}')
FALSE_POSITIVES = "dialguard_false_positives_total"
TRUE_POSITIVES = "dialguard_true_positives_total"

# -- recording rule names (level:metric:operations) ---------------------------------------------
FP_RATE_TARGET_RECORD = "dialguard:fp_rate_target"
DLQ_RATIO_RECORD = f"dialguard:dead_letter_ratio:rate{RATE_WINDOW}"


def enforcing_record(window: str) -> str:
    """Live (not dry-run) block and rate-limit decisions per policy over ``window``."""
    return f"policy:dialguard_enforcing_decisions:increase{window}"


def false_positives_record(window: str) -> str:
    """Enforced numbers labelled legitimate per policy over ``window``."""
    return f"policy:dialguard_false_positives:increase{window}"


def true_positives_record(window: str) -> str:
    """Enforced numbers labelled robot per policy over ``window``."""
    return f"policy:dialguard_true_positives:increase{window}"


def fp_rate_record(window: str) -> str:
    """False positives per enforcing decision, per policy over ``window``."""
    return f"policy:dialguard_false_positive_rate:ratio{window}"


def scope_enforcing_record(window: str) -> str:
    """Live block and rate-limit decisions per policy and scope over ``window``."""
    return f"policy_scope:dialguard_enforcing_decisions:increase{window}"


def scope_false_positives_record(window: str) -> str:
    """Labelled-legitimate enforcement per policy and scope over ``window`` (a range's counts
    every number inside it labelled legitimate)."""
    return f"policy_scope:dialguard_false_positives:increase{window}"


def scope_fp_rate_record(window: str) -> str:
    """False positives per enforcing decision, per policy and scope, over ``window``."""
    return f"policy_scope:dialguard_false_positive_rate:ratio{window}"


def precision_record(window: str) -> str:
    """Estimated precision tp / (tp + fp) of enforcement, per policy over ``window``."""
    return f"policy:dialguard_precision:ratio{window}"


@dataclass(frozen=True)
class RecordingRule:
    """A Prometheus recording rule: ``record`` is the new series, ``expr`` computes it."""

    record: str
    expr: str


def _increase_by_policy(selector: str, window: str) -> str:
    """Summed over every other label, ``scope`` included: a policy's quality counts its
    number, range and trunk decisions alike (the per-scope split has its own rules)."""
    return f"sum by (policy) (increase({selector}[{window}]))"


def _increase_by_policy_scope(selector: str, window: str) -> str:
    return f"sum by (policy, scope) (increase({selector}[{window}]))"


def _or_zero(record: str, fallback: str) -> str:
    """``record``, or 0 for each policy that has ``fallback`` but no ``record`` series.

    Why: a policy with decisions but no false positive yet has an FP rate of 0, not "no data";
    without this, the panels go blank exactly when things are fine.
    """
    return f"({record} or {fallback} * 0)"


def quality_rules(window: str) -> list[RecordingRule]:
    """Feedback-based quality over ``window``: counts first, ratios from them."""
    enforcing = enforcing_record(window)
    fps = false_positives_record(window)
    tps = true_positives_record(window)
    tp_or_zero = _or_zero(tps, fps)
    fp_or_zero = _or_zero(fps, tps)
    return [
        RecordingRule(enforcing, _increase_by_policy(ENFORCING_DECISIONS, window)),
        RecordingRule(fps, _increase_by_policy(FALSE_POSITIVES, window)),
        RecordingRule(tps, _increase_by_policy(TRUE_POSITIVES, window)),
        # Dividing by "> 0" drops windows without enforcement instead of reporting +Inf.
        RecordingRule(fp_rate_record(window),
                      f"{_or_zero(fps, enforcing)} / ({enforcing} > 0)"),
        RecordingRule(precision_record(window),
                      f"{tp_or_zero} / (({tp_or_zero} + {fp_or_zero}) > 0)"),
    ]


def scope_quality_rules(window: str) -> list[RecordingRule]:
    """The false-positive rate of each policy split by scope: are range and trunk decisions,
    which cut off everyone behind them, as right as number decisions?"""
    enforcing = scope_enforcing_record(window)
    fps = scope_false_positives_record(window)
    return [
        RecordingRule(enforcing, _increase_by_policy_scope(ENFORCING_DECISIONS, window)),
        RecordingRule(fps, _increase_by_policy_scope(FALSE_POSITIVES, window)),
        RecordingRule(scope_fp_rate_record(window),
                      f"{_or_zero(fps, enforcing)} / ({enforcing} > 0)"),
    ]


def recording_rules() -> list[RecordingRule]:
    """All recording rules, in evaluation order (a rule may use the ones before it)."""
    rules = [RecordingRule(FP_RATE_TARGET_RECORD, f"vector({FP_RATE_TARGET})")]
    for window in QUALITY_WINDOWS:
        rules.extend(quality_rules(window))
    rules.extend(scope_quality_rules(SCOPE_QUALITY_WINDOW))
    dead = f"sum(rate(dialguard_dead_letters_total[{RATE_WINDOW}]))"
    accepted = f"sum(rate(dialguard_events_total[{RATE_WINDOW}]))"
    rules.append(RecordingRule(DLQ_RATIO_RECORD, f"{dead} / ({accepted} + {dead})"))
    return rules


# -- panel expressions ---------------------------------------------------------------------------
def quantile(q: float, histogram: str, window: str) -> str:
    """The ``q`` quantile of a histogram across workers over ``window``."""
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[{window}])))"


EVENTS_BY_PROTO_KIND = f"sum by (proto, kind) (rate(dialguard_events_total[{RATE_WINDOW}]))"
DECISIONS_BY_ACTION = f"sum by (action) (rate(dialguard_decisions_total[{RATE_WINDOW}]))"
BLOCKS_ACTIVE = "sum(dialguard_blocks_active)"
BLOCKS_ACTIVE_BY_SCOPE = "sum by (scope) (dialguard_blocks_active)"
DECISIONS_BY_SCOPE = f"sum by (scope) (rate(dialguard_decisions_total[{RATE_WINDOW}]))"

# -- campaigns: ranges and trunks (the source stage) ---------------------------------------------
CAMPAIGNS_ACTIVE = "sum(dialguard_campaigns_active)"
CAMPAIGNS_ACTIVE_BY_SCOPE = "sum by (scope) (dialguard_campaigns_active)"
SCOPED_DECISIONS_BY_SCOPE_ACTION = (f"sum by (scope, action) (rate(dialguard_decisions_total"
                                    f'{{scope=~"{SOURCE_SCOPES_REGEX}"}}[{RATE_WINDOW}]))')
SOURCE_EVENTS_FOLDED_BY_KIND = (f"sum by (kind) "
                                f"(rate(dialguard_source_events_folded_total[{RATE_WINDOW}]))")
SOURCE_EVENTS_OUT_BY_KIND = (f"sum by (kind) "
                             f"(rate(dialguard_source_events_total[{RATE_WINDOW}]))")
SOURCES_TRACKED_BY_KIND = "sum by (kind) (dialguard_sources_tracked)"
SOURCE_SCORES_BY_KIND = f"sum by (kind) (rate(dialguard_source_scores_total[{RATE_WINDOW}]))"
SPOOFED_NUMBER_HOLDS = f"sum(rate(dialguard_spoofed_number_holds_total[{RATE_WINDOW}]))"
#: The policy board's view of a day of decisions, by scope as well as action.
DECISIONS_24H_BY_SCOPE_ACTION = ("sum by (scope, action, dry_run) "
                                 "(increase(dialguard_decisions_total[24h]))")
#: max, not sum: after a rebalance the previous owner may still export its last value.
CONSUMER_LAG_BY_PARTITION = "max by (partition) (dialguard_consumer_lag_messages)"
WORST_PARTITION_LAG = f"max({CONSUMER_LAG_BY_PARTITION})"
DLQ_BY_REASON = f"sum by (reason) (rate(dialguard_dead_letters_total[{RATE_WINDOW}]))"
LIMITER_TRIPS = f"sum(increase(dialguard_block_limiter_trips_total[{LIMITER_WINDOW}]))"
LATE_EVENTS = f"sum(rate(dialguard_late_events_dropped_total[{RATE_WINDOW}]))"
FLUSH_P99 = quantile(0.99, "dialguard_flush_seconds", RATE_WINDOW)

DECISION_LATENCY_P50 = quantile(0.5, "dialguard_decision_latency_seconds", RATE_WINDOW)
DECISION_LATENCY_P99 = quantile(0.99, "dialguard_decision_latency_seconds", RATE_WINDOW)
CALLS_BEFORE_BLOCK_P50 = quantile(0.5, "dialguard_calls_before_block", BLOCK_QUANTILE_WINDOW)
CALLS_BEFORE_BLOCK_P90 = quantile(0.9, "dialguard_calls_before_block", BLOCK_QUANTILE_WINDOW)
MODEL_ROC_AUC = "max by (instance) (dialguard_model_roc_auc)"
MODEL_LOG_LOSS = "max by (instance) (dialguard_model_log_loss)"
DRIFT_ALARMS = f"sum(increase(dialguard_model_drift_alarms_total[{DRIFT_WINDOW}]))"
#: Dead letters that did not reach the DLQ (refused or unacknowledged): bad input lost.
DLQ_NOT_WRITTEN = f"sum(increase(dialguard_dead_letter_failures_total[{RATE_WINDOW}]))"

POLICY_VERSION = "max by (policy) (dialguard_policy_version)"
#: 1 if any worker runs with the kill switch on (all read the same record; max shows a laggard).
KILL_SWITCH = "max(dialguard_dry_run_all)"
SHADOW_POLICY_VERSION = "max by (policy) (dialguard_shadow_policy_version)"
LIVE_DECISIONS_BY_POLICY_ACTION = (f"sum by (policy, action) "
                                   f"(rate(dialguard_decisions_total[{RATE_WINDOW}]))")
SHADOW_DECISIONS_BY_POLICY_ACTION = (f"sum by (policy, action) "
                                     f"(rate(dialguard_shadow_decisions_total[{RATE_WINDOW}]))")
_ROLLBACKS = "dialguard_policy_auto_rollbacks_total"
#: Auto-rollbacks per policy over ROLLBACK_WINDOW. Why the second operand: a counter series is
#: born at its first value, which increase() never sees; a series that did not exist a window
#: ago counts with its whole value (the API should create its series at 0, this is the net).
#: max, not sum, so a series both new and increasing is not counted twice; the label added to
#: the new series keeps ``or`` (which matches label sets, names aside) from dropping it.
AUTO_ROLLBACKS = (f"max by (policy) (increase({_ROLLBACKS}[{ROLLBACK_WINDOW}]) or "
                  f"label_replace({_ROLLBACKS} unless {_ROLLBACKS} offset {ROLLBACK_WINDOW}, "
                  f'"born", "within_window", "", ""))')

# -- other processes: ingest, switch adapter, control API ------------------------------------------
INGEST_EVENTS_BY_SOURCE_KIND = (f"sum by (source, kind) "
                                f"(rate(dialguard_ingest_events_total[{RATE_WINDOW}]))")
INGEST_DLQ_BY_SOURCE_REASON = (f"sum by (source, reason) "
                               f"(rate(dialguard_ingest_dead_letters_total[{RATE_WINDOW}]))")
SWITCH_ACKS_BY_STATUS = f"sum by (status) (rate(dialguard_switch_acks_total[{RATE_WINDOW}]))"
SWITCH_APPLY_P50 = quantile(0.5, "dialguard_switch_apply_seconds", RATE_WINDOW)
SWITCH_APPLY_P99 = quantile(0.99, "dialguard_switch_apply_seconds", RATE_WINDOW)
#: Per adapter: each one mirrors the block list into the switch it drives.
SWITCH_BLOCKED_ENTRIES = "sum by (instance) (dialguard_switch_blocked_entries)"
API_REQUESTS_BY_ROUTE_STATUS = (f"sum by (route, status) "
                                f"(rate(dialguard_api_requests_total[{RATE_WINDOW}]))")
API_REQUEST_P99_BY_ROUTE = (f"histogram_quantile(0.99, sum by (route, le) "
                            f"(rate(dialguard_api_request_seconds_bucket[{RATE_WINDOW}])))")
DECISIONS_BY_POLICY_DRY_RUN = (f"sum by (policy, dry_run) "
                               f"(rate(dialguard_decisions_total[{RATE_WINDOW}]))")
DECISIONS_24H_BY_POLICY_ACTION = ("sum by (policy, action, dry_run) "
                                  "(increase(dialguard_decisions_total[24h]))")


# -- alerting rules ------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlertRule:
    """An alert as ``signal condition``.

    Why split: ``signal`` is the watched quantity and has series whenever a worker is scraped,
    so the integration test can prove it is computable; ``signal condition`` (what fires) is
    empty on a healthy system and so proves nothing by itself.
    """

    alert: str
    signal: str
    condition: str
    for_: str
    severity: str
    summary: str
    description: str

    @property
    def expr(self) -> str:
        return f"{self.signal} {self.condition}"


def _fp_rate_alert(window: str, for_: str, severity: str) -> AlertRule:
    return AlertRule(
        alert=f"DialguardFalsePositiveRateHigh{window}",
        signal=fp_rate_record(window),
        condition=f"> on() group_left() {FP_RATE_TARGET_RECORD}",
        for_=for_, severity=severity,
        summary=f"Policy {{{{ $labels.policy }}}}: false-positive rate over {window} above "
                f"target",
        description=(f"{{{{ $value | humanizePercentage }}}} of the live blocks and rate "
                     f"limits of policy {{{{ $labels.policy }}}} in the last {window} were "
                     f"later labelled legitimate (target {FP_RATE_TARGET:.0%}). People who "
                     f"have a right to call are being cut off: review the policy's thresholds "
                     f"or switch it to dry_run."))


def alert_rules() -> list[AlertRule]:
    """The alerts, in the order they appear in rules.yml."""
    return [
        _fp_rate_alert("1h", for_="15m", severity="critical"),
        _fp_rate_alert("24h", for_="1h", severity="warning"),
        AlertRule(
            alert="DialguardBlockLimiterTripped", signal=LIMITER_TRIPS, condition="> 0",
            for_="", severity="critical",
            summary="Block limiter turned new blocks into dry-run",
            description=(f"New blocks exceeded the blast-radius limit in the last "
                         f"{LIMITER_WINDOW} and were published as dry-run (trips: {{{{ $value "
                         f"| humanize }}}}). Either a large campaign is under way or the "
                         f"model or policy misfires: check the decisions before raising the "
                         f"limit.")),
        AlertRule(
            alert="DialguardConsumerLagHigh", signal=CONSUMER_LAG_BY_PARTITION,
            condition=f"> {CONSUMER_LAG_ALERT_MESSAGES}", for_="10m", severity="warning",
            summary="Partition {{ $labels.partition }} of signaling.events is falling behind",
            description=("{{ $value | humanize }} messages of partition "
                         "{{ $labels.partition }} are not processed yet: robots keep calling "
                         "until the worker catches up. Add workers (up to the partition "
                         "count) or look for a stuck worker.")),
        AlertRule(
            alert="DialguardDeadLetterSurge", signal=DLQ_RATIO_RECORD,
            condition=f"> {DLQ_RATIO_ALERT}", for_="10m", severity="warning",
            summary="Surge of malformed signaling records",
            description=("{{ $value | humanizePercentage }} of incoming records over the last "
                         f"{RATE_WINDOW} went to signaling.events.dlq (alert above "
                         f"{DLQ_RATIO_ALERT:.0%}). A producer changed its format: the "
                         "dead-letter panel shows the reasons, the records' dlq.* headers "
                         "where they came from.")),
        AlertRule(
            alert="DialguardDeadLettersNotWritten", signal=DLQ_NOT_WRITTEN, condition="> 0",
            for_="", severity="warning",
            summary="Dead letters are not reaching signaling.events.dlq",
            description=(f"{{{{ $value | humanize }}}} records sent to the dead-letter topic "
                         f"in the last {RATE_WINDOW} were not written (local queue full, "
                         f"refused by the client or not acknowledged by the broker): they are "
                         f"counted as dead letters but lost. The worker carries on; its log "
                         f"and the reason label of dialguard_dead_letter_failures_total say "
                         f"why (e.g. the DLQ's max.message.bytes, ACLs, a broker outage).")),
        AlertRule(
            alert="DialguardModelDrift", signal=DRIFT_ALARMS, condition="> 0",
            for_="", severity="warning",
            summary="The score distribution drifted",
            description=(f"ADWIN raised drift alarms on the stream of scores in the last "
                         f"{DRIFT_WINDOW} (alarms: {{{{ $value | humanize }}}}): traffic "
                         f"changed or the model did. Watch the false-positive rate and the decisions per "
                         f"action before trusting new blocks.")),
        AlertRule(
            alert="DialguardPolicyAutoRolledBack", signal=AUTO_ROLLBACKS, condition="> 0",
            for_="", severity="critical",
            summary="Policy {{ $labels.policy }} was rolled back automatically",
            description=(f"The live version of policy {{{{ $labels.policy }}}} enforced against "
                         f"too many numbers later labelled legitimate (above its fp_target) "
                         f"and the control API rolled it back to the previous version "
                         f"(rollbacks in the last {ROLLBACK_WINDOW}: {{{{ $value | humanize "
                         f"}}}}). The audit log (control.audit) says which version, why and "
                         f"when; fix the thresholds before publishing it again.")),
        AlertRule(
            alert="DialguardKillSwitchOn", signal=KILL_SWITCH, condition="> 0",
            for_=KILL_SWITCH_FOR, severity="warning",
            summary="Kill switch on: every decision is dry-run",
            description=(f"dry_run_all has been on for more than {KILL_SWITCH_FOR}: no new "
                         f"block or rate limit reaches the switches, and the ones in force "
                         f"run out on their TTL, so robots call freely again. Lift it "
                         f"(control API) once the cause is fixed.")),
    ]
