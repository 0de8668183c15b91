"""Hardening of the control API against the real broker (issue 12, control-plane side).

One API process of its own on the session broker. The bulk upload here is larger than
librdkafka's local producer queue (100,000 messages by default), which is exactly what used to
leave the API's producer wedged: every later write answered 500 while ``/healthz`` said ok.
"""

from __future__ import annotations

import uuid

import pytest

from services.api_client import ApiClient
from streams.schema import Label
from streams.topics import FEEDBACK
from tests.integration.api_harness import ApiHarness
from tests.integration.test_api import fresh_numbers
from tests.integration.worker_harness import TopicReader

pytestmark = pytest.mark.integration
#: One more label than librdkafka's default ``queue.buffering.max.messages`` (100,000): with
#: the audit record, the batch cannot fit the producer's local queue at once.
BULK_ROWS = 100_001
#: A bulk upload of that size is published, audited and read back by the views: be patient.
SLOW_CLIENT_TIMEOUT_S = 300.0
READ_BACK_TIMEOUT_S = 120.0
QUIET_S = 2.0


@pytest.fixture(scope="module")
def api(broker_settings, tmp_path_factory):
    harness = ApiHarness(broker_settings, tmp_path_factory.mktemp("api-hardening"))
    harness.start()
    yield harness
    harness.stop()
    print(f"\n--- API log tail ---\n{harness.tail(15)}")


def test_a_bulk_upload_beyond_the_producer_queue_is_published_and_writes_keep_working(
        api, broker_settings):
    tag = uuid.uuid4().hex[:8]
    numbers = fresh_numbers(BULK_ROWS)
    csv = "id,number,label\n" + "".join(f"{tag}-{i},{n},robot\n"
                                         for i, n in enumerate(numbers))
    analyst = ApiClient(api.url, api.tokens["analyst"], timeout_s=SLOW_CLIENT_TIMEOUT_S)
    answer = analyst.request("POST", "/api/v1/feedback/bulk", raw=csv.encode(),
                             content_type="text/csv")
    assert answer["accepted"] == BULK_ROWS
    assert answer["failed_total"] == 0 and answer["rejected_total"] == 0

    # What was published is audited, with its count.
    audit = analyst.get("/api/v1/audit", subject="labels/bulk", limit=5)["records"]
    ours = [r for r in audit if r["after"] and any(i.startswith(tag)
                                                   for i in r["after"].get("ids", []))]
    assert ours and ours[0]["after"]["count"] == BULK_ROWS

    # Every other write still works afterwards, and health says so.
    admin = api.client("admin")
    assert admin.put("/api/v1/switches", {"dry_run_all": True, "reason": "after bulk"}
                     )["dry_run_all"] is True
    assert admin.put("/api/v1/switches", {"dry_run_all": False, "reason": "after bulk"}
                     )["dry_run_all"] is False
    number = fresh_numbers(1)[0]
    assert analyst.post(f"/api/v1/numbers/{number}/unblock",
                        {"reason": "after bulk"})["decision"]["action"] == "unblock"
    status, health = api.raw("GET", "/healthz")
    assert status == 200 and health["ok"] is True and health["writes"]["ok"] is True

    reader = TopicReader(broker_settings, FEEDBACK.name)
    try:
        reader.poll_until(lambda msgs: len(msgs) >= BULK_ROWS, timeout=READ_BACK_TIMEOUT_S,
                          quiet_s=QUIET_S)
    finally:
        reader.close()
    ids = {Label.decode(m.value()).id for m in reader.messages}
    assert sum(1 for i in ids if i.startswith(f"{tag}-")) == BULK_ROWS


def test_the_real_broker_keeps_its_data_owner_only_and_the_api_sends_security_headers(
        api, broker_settings):
    import stat
    import urllib.request

    data = broker_settings.kafka_dir / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700  # phone numbers live in there
    with urllib.request.urlopen(api.url + "/healthz", timeout=10) as resp:
        headers = resp.headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
