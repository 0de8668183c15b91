"""Prometheus metrics of the worker. Bounded labels only: never a phone number as a label."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter("dialguard_events_total", "Signaling events accepted by the worker",
                    ["proto", "kind"])
DEAD_LETTERS = Counter("dialguard_dead_letters_total",
                       "Records sent to the dead-letter topic, by reason", ["reason"])
#: Why a dead letter did not reach the DLQ (bounded: the ``reason`` label).
DLQ_FAIL_BUFFER_FULL = "buffer_full"
DLQ_FAIL_PRODUCE = "produce_error"
DLQ_FAIL_DELIVERY = "delivery_error"
DLQ_FAILURE_WHYS = (DLQ_FAIL_BUFFER_FULL, DLQ_FAIL_PRODUCE, DLQ_FAIL_DELIVERY)
DEAD_LETTER_FAILURES = Counter("dialguard_dead_letter_failures_total",
                               "Dead letters that did not reach the dead-letter topic (local "
                               "queue full, refused by the client, or not acknowledged by the "
                               "broker), by reason; the worker carries on, the record is "
                               "counted in dialguard_dead_letters_total but is not in the DLQ",
                               ["reason"])
LATE_DROPPED = Counter("dialguard_late_events_dropped_total",
                       "Events older than the late grace for their number, not counted")
SCORED = Counter("dialguard_scores_total", "Feature vectors scored by the online models")
DECISIONS = Counter("dialguard_decisions_total", "Decisions published, by scope (number, "
                    "prefix, trunk)", ["action", "policy", "dry_run", "scope"])
LIMITER_TRIPS = Counter("dialguard_block_limiter_trips_total",
                        "New blocks turned into dry-run by the blast-radius limiter")
LABELS_LEARNED = Counter("dialguard_labels_learned_total",
                         "Feedback labels the supervised model learned from", ["target"])
CONTROL_RECORDS = Counter("dialguard_control_records_total",
                          "Records read from control topics, by topic and outcome",
                          ["topic", "outcome"])
POLICY_VERSION = Gauge("dialguard_policy_version", "Version of the policy in force", ["policy"])
TRACKED_NUMBERS = Gauge("dialguard_tracked_numbers", "Numbers held in the worker's hot cache")
FLUSH_SECONDS = Histogram("dialguard_flush_seconds",
                          "Time to fold a micro-batch into state, score and decide",
                          buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
DETECTION_LAG = Histogram("dialguard_decision_latency_seconds",
                          "Wall time from the triggering event's time to the decision "
                          "(meaningful on live traffic, not on replays)",
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
BLOCKS_ACTIVE = Gauge("dialguard_blocks_active",
                      "Numbers, ranges and trunks this worker holds a live (not dry-run) block "
                      "for, by scope", ["scope"])
TRUE_POSITIVES = Counter("dialguard_true_positives_total",
                         "Rate-limited/blocked numbers (or numbers inside an enforced range, "
                         "labelled trunks and ranges) later labelled robot (complaint, denied "
                         "appeal, analyst verdict), by the scope of the enforcement",
                         ["policy", "scope"])
FALSE_POSITIVES = Counter("dialguard_false_positives_total",
                          "Rate-limited/blocked numbers (or numbers inside an enforced range, "
                          "labelled trunks and ranges) later labelled legitimate (upheld "
                          "appeal, analyst verdict, good callback), by the scope of the "
                          "enforcement", ["policy", "scope"])
CALLS_BEFORE_BLOCK = Histogram("dialguard_calls_before_block",
                               "Attempts a number made in the last hour when it was first "
                               "blocked (calls leaked before the block)",
                               buckets=(10, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000))
MODEL_ROC_AUC = Gauge("dialguard_model_roc_auc",
                      "ROC AUC of the supervised model on labels, scored before learning each")
MODEL_LOG_LOSS = Gauge("dialguard_model_log_loss",
                       "Rolling log loss of the supervised model on the latest labels")
MODEL_DRIFT = Counter("dialguard_model_drift_alarms_total",
                      "ADWIN drift alarms on the stream of scores")
DRY_RUN_ALL = Gauge("dialguard_dry_run_all",
                    "1 while the kill switch (control.policy #switches dry_run_all) turns every "
                    "decision into dry-run, else 0")
SHADOW_POLICY_VERSION = Gauge("dialguard_shadow_policy_version",
                              "Version of the shadow candidate evaluated beside the policy in "
                              "force (0: none)", ["policy"])
SHADOW_DECISIONS = Counter("dialguard_shadow_decisions_total",
                           "Decisions a shadow candidate would have made, published to "
                           "decisions.shadow (never to switches)", ["action", "policy"])
SOURCE_EVENTS_OUT = Counter("dialguard_source_events_total",
                            "Accepted events re-keyed to signaling.sources, by source kind "
                            "(trunk, range)", ["kind"])
UNNUMBERED_CALLERS = Counter("dialguard_unnumbered_caller_events_total",
                             "Events whose caller is not a number (withheld, invalid): counted "
                             "for their trunk, never as a caller", ["kind"])
REPLAYS_SKIPPED = Counter("dialguard_replayed_events_skipped_total",
                          "Events read again after a restart or rebalance and skipped because "
                          "the state already holds them (exact recovery), by stage",
                          ["stage"])
SOURCE_EVENTS_IN = Counter("dialguard_source_events_folded_total",
                           "Source events folded into per-trunk and per-range state", ["kind"])
SOURCES_TRACKED = Gauge("dialguard_sources_tracked",
                        "Trunks and ranges held in the source stage's hot cache", ["kind"])
SOURCE_SCORED = Counter("dialguard_source_scores_total",
                        "Trunk and range feature vectors scored", ["kind"])
CAMPAIGNS_ACTIVE = Gauge("dialguard_campaigns_active",
                         "Ranges and trunks under a live (not dry-run) rate limit or block: "
                         "campaigns being stopped, by scope", ["scope"])
SPOOFED_NUMBER_HOLDS = Counter("dialguard_spoofed_number_holds_total",
                               "Number decisions held back to a label because the number "
                               "arrives on several trunks (probably spoofed: its owner would "
                               "be cut off)")
CONSUMER_LAG = Gauge("dialguard_consumer_lag_messages",
                     "Messages of signaling.events not yet processed, per partition",
                     ["partition"])


# -- Series that exist before their first event ------------------------------------------------
# Why: a labelled series does not exist until its first increment, so rate()/increase() never
# see that increment (the series is born at 1), dashboards read "No data" instead of 0, and the
# dead-letter ratio (dashboards/queries.py) cannot be computed on a clean stream. The label
# values here are bounded sets.
from streams.policy import THRESHOLD_ACTIONS  # noqa: E402  (below the metrics on purpose)
from streams.schema import DLQ_REASONS  # noqa: E402
from streams.scope import SCOPES  # noqa: E402

DRY_RUN_LABELS = ("true", "false")

for _reason in DLQ_REASONS:
    DEAD_LETTERS.labels(_reason)
for _why in DLQ_FAILURE_WHYS:
    DEAD_LETTER_FAILURES.labels(_why)
for _scope in SCOPES:
    BLOCKS_ACTIVE.labels(_scope)
    CAMPAIGNS_ACTIVE.labels(_scope)
for _kind in ("trunk", "range"):
    SOURCE_EVENTS_OUT.labels(_kind)
    SOURCE_EVENTS_IN.labels(_kind)
    SOURCES_TRACKED.labels(_kind)
    SOURCE_SCORED.labels(_kind)


def init_policy_series(policy: str) -> None:
    """Create a policy's decision and feedback series at 0 when it comes in force, so the first
    false positive of a policy is counted by increase() and its FP rate reads 0, not nothing."""
    for scope in SCOPES:
        TRUE_POSITIVES.labels(policy, scope)
        FALSE_POSITIVES.labels(policy, scope)
        for action in THRESHOLD_ACTIONS:
            for dry_run in DRY_RUN_LABELS:
                DECISIONS.labels(action, policy, dry_run, scope)
    init_shadow_series(policy)


def init_shadow_series(policy: str) -> None:
    """Shadow series of a policy at 0 (creating a gauge child never resets its value), so the
    policy board compares shadow and live decisions from the first shadow decision on."""
    SHADOW_POLICY_VERSION.labels(policy)
    for action in THRESHOLD_ACTIONS:
        SHADOW_DECISIONS.labels(action, policy)


class Tally:
    """Per-event counts kept in a dict and added to Prometheus once per micro-batch.

    Why: ``Counter.labels(...).inc()`` takes a lock and resolves the labels on every call
    (about 4 µs); at tens of thousands of events a second that alone costs a tenth of a core.
    The stages count hot per-event facts here and ``publish()`` on every flush, so a scrape
    lags the fold by at most one micro-batch.
    """

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[Counter, tuple[str, ...]], int] = {}

    def add(self, counter: Counter, *labels: str) -> None:
        key = (counter, labels)
        self.counts[key] = self.counts.get(key, 0) + 1

    def add_n(self, counter: Counter, n: int, *labels: str) -> None:
        key = (counter, labels)
        self.counts[key] = self.counts.get(key, 0) + n

    def publish(self) -> None:
        for (counter, labels), n in self.counts.items():
            (counter.labels(*labels) if labels else counter).inc(n)
        self.counts.clear()
