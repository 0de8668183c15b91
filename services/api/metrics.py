"""Prometheus metrics of the API process (served on ``api_metrics_port``).

``route`` is the route's path template (``/api/v1/numbers/{number}``), never the path itself:
a phone number must never become a label (unbounded series, and personal data in Prometheus).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("dialguard_api_requests_total", "Control API requests",
                   ["route", "method", "status"])
REQUEST_SECONDS = Histogram("dialguard_api_request_seconds", "Control API request latency",
                            ["route"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
AUTO_ROLLBACKS = Counter("dialguard_policy_auto_rollbacks_total",
                         "Live policy versions rolled back by the false-positive guard",
                         ["policy"])
#: A route that matched nothing (404s) is one bounded label value.
UNMATCHED_ROUTE = "unmatched"
