"""The control API process against the real broker, with a real worker applying what it writes.

One API process (tokens for admin / analyst / viewer, given hashed through the environment)
and one worker serve the module. Each test uses numbers of its own. Policy versions are read
back from the API rather than assumed: other modules share the session broker.
"""

from __future__ import annotations

import random
import re
import time
import uuid

import pytest

from services.worker_process import scrape
from streams.schema import Label
from streams.topics import ALLOWLIST, FEEDBACK, SHADOW_DECISIONS
from tests.integration.api_harness import ApiHarness
from tests.integration.test_worker import robot_burst
from tests.integration.worker_harness import (DECISIONS, HarnessWorker, TopicReader,
                                              decisions_of, produce_events)

pytestmark = pytest.mark.integration
APPLY_TIMEOUT_S = 30.0
DECISION_WAIT_S = 120.0
#: Small limits so the 413 path is exercised with small bodies.
MAX_BODY = 64 * 1024
#: The guard runs often here so its end-to-end test does not wait half a minute.
GUARD_INTERVAL_S = 1.0
ENFORCING = ("block", "rate_limit")


@pytest.fixture(scope="module")
def worker(broker_settings, tmp_path_factory):
    w = HarnessWorker(broker_settings, tmp_path_factory.mktemp("api-worker"),
                      app_id=f"dg-api-{uuid.uuid4().hex[:6]}")
    w.start()
    yield w
    w.stop()
    print(f"\n--- worker log tail ---\n{w.tail(10)}")


@pytest.fixture(scope="module")
def api(broker_settings, tmp_path_factory):
    harness = ApiHarness(broker_settings, tmp_path_factory.mktemp("api"), extra_env={
        "DIALGUARD_API_MAX_BODY_BYTES": str(MAX_BODY),
        "DIALGUARD_API_GUARD_INTERVAL_S": str(GUARD_INTERVAL_S)})
    harness.start()
    yield harness
    harness.stop()
    print(f"\n--- API log tail ---\n{harness.tail(15)}")


def fresh_numbers(n: int) -> list[str]:
    rnd = random.Random(uuid.uuid4().int)
    return [f"86171{rnd.randrange(10**8):08d}" for _ in range(n)]


def policy_version_metric(worker: HarnessWorker, name: str = "default",
                          metric: str = "dialguard_policy_version") -> int | None:
    text = scrape(worker.metrics_port) or ""
    found = re.search(rf'^{metric}\{{policy="{name}"\}} ([0-9.e+]+)$', text, re.M)
    return int(float(found.group(1))) if found else None


def wait_applied(worker: HarnessWorker, version: int, started: float | None = None) -> float:
    """Seconds from ``started`` (default: now) until the worker reports ``version`` in force
    (printed, never asserted on)."""
    started = time.monotonic() if started is None else started
    deadline = started + APPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        if policy_version_metric(worker) == version:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"worker still on v{policy_version_metric(worker)}, not v{version}")


def wait_decisions(settings, numbers: set[str], until, timeout=DECISION_WAIT_S):
    reader = TopicReader(settings, DECISIONS.name)
    try:
        reader.poll_until(lambda msgs: until([d for d in decisions_of(msgs)
                                              if d.number in numbers]), timeout=timeout,
                          quiet_s=2.0)
        return [d for d in decisions_of(reader.messages) if d.number in numbers]
    finally:
        reader.close()


def put_policy(api: ApiHarness, policy: dict, reason: str, who: str = "analyst") -> dict:
    return api.client(who).put("/api/v1/policies/default",
                               {"policy": policy, "reason": reason})["policy"]


def test_policy_put_is_applied_by_the_worker_and_rolled_back(api, worker, broker_settings):
    analyst = api.client("analyst")
    base = put_policy(api, {}, "baseline for the API test")
    print(f"\nbaseline v{base['version']} applied by the worker after "
          f"{wait_applied(worker, base['version']):.2f} s")
    sent = time.monotonic()
    strict = put_policy(api, {"thresholds": {"label": 0.3, "rate_limit": 0.4, "block": 0.5}},
                        "block earlier")
    answered = time.monotonic() - sent
    assert strict["version"] == base["version"] + 1 and strict["author"] == "analyst"
    took = wait_applied(worker, strict["version"], sent)
    print(f"PUT v{strict['version']} answered in {answered:.2f} s; the worker's "
          f"dialguard_policy_version showed it {took:.2f} s after the PUT was sent")
    robots = fresh_numbers(2)
    start = time.time() - 2 * 3600
    produce_events(broker_settings, sorted(
        robot_burst(robots[0], start, seed=21) + robot_burst(robots[1], start, seed=22),
        key=lambda e: e.ts))
    decisions = wait_decisions(broker_settings, set(robots), lambda ds: set(robots) <= {
        d.number for d in ds if d.action == "block"})
    blocks = [d for d in decisions if d.action == "block"]
    assert {d.number for d in blocks} == set(robots)
    assert all(d.policy_version == strict["version"] for d in decisions)
    assert any("block 0.50" in r for d in blocks for r in d.reasons)

    sent = time.monotonic()
    back = analyst.post("/api/v1/policies/default/rollback",
                        {"version": base["version"], "reason": "too aggressive"})["policy"]
    assert back["version"] == strict["version"] + 1
    assert back["thresholds"] == base["thresholds"]
    print(f"rollback to v{base['version']} as v{back['version']} applied after "
          f"{wait_applied(worker, back['version'], sent):.2f} s after the request")
    versions = analyst.get("/api/v1/policies/default/versions")["versions"]
    assert [v["version"] for v in versions[:3]] == [back["version"], strict["version"],
                                                    base["version"]]
    audit = analyst.get("/api/v1/audit", subject="policy/default", limit=3)["records"]
    assert [a["action"] for a in audit] == ["policy.rollback", "policy.live", "policy.live"]
    assert audit[0]["before"]["version"] == strict["version"]
    assert audit[0]["after"]["version"] == back["version"]
    assert audit[0]["actor"] == "analyst" and "too aggressive" in audit[0]["reason"]

    # the lookup explains the decisions, with the features of the latest score
    look = analyst.get(f"/api/v1/numbers/{robots[0]}")
    assert look["current"]["action"] == "block"
    assert look["decisions"][0]["reasons"] and look["score"]["features"]["attempts_1h"] > 0


def test_whatif_replays_real_scores(api, worker, broker_settings):
    analyst = api.client("analyst")
    robots = fresh_numbers(3)
    start = time.time() - 2 * 3600
    produce_events(broker_settings, sorted(
        [e for i, n in enumerate(robots) for e in robot_burst(n, start, seed=30 + i)],
        key=lambda e: e.ts))
    wait_decisions(broker_settings, set(robots), lambda ds: set(robots) <= {
        d.number for d in ds if d.action in ENFORCING})
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(analyst.get(f"/api/v1/numbers/{n}")["score"] for n in robots):
            break
        time.sleep(0.5)
    live = analyst.get("/api/v1/policies/default")["live"]
    # far more evidence than any robot here has: nobody may be rate-limited or blocked
    cautious = {**live, "min_attempts": 100_000}
    r = analyst.post("/api/v1/whatif", {"policy": cautious, "window_s": 3600})
    print(f"\nwhat-if over {r['numbers']} numbers: current {r['current']} candidate "
          f"{r['candidate']} est. FP {r['estimated_false_positives']} changed "
          f"{r['changed_total']}")
    assert r["numbers"] >= len(robots)
    assert r["current"]["block"] + r["current"]["rate_limit"] >= len(robots)
    assert r["candidate"]["block"] == r["candidate"]["rate_limit"] == 0
    assert r["estimated_false_positives"]["candidate"] == 0
    changed = {c["number"]: c for c in r["changed"]}
    for n in robots:
        assert changed[n]["from"] in ENFORCING and changed[n]["to"] == "label"
    same = analyst.post("/api/v1/whatif", {"policy": live})
    assert same["changed_total"] == 0 and same["current"] == same["candidate"]


def test_allowlist_through_the_api(api, broker_settings):
    analyst, viewer = api.client("analyst"), api.client("viewer")
    number = fresh_numbers(1)[0]
    entry = analyst.post("/api/v1/allowlist", {"number": f"+{number}", "reason": "hospital",
                                               "ttl_s": 3600})["entry"]
    assert entry["number"] == number and entry["expires_at"] > time.time()
    assert number in {e["number"] for e in viewer.get("/api/v1/allowlist")["entries"]}
    assert viewer.get(f"/api/v1/numbers/{number}")["allowlisted"] == "hospital"
    status, body = api.raw("DELETE", "/api/v1/allowlist/110?reason=x",
                           token=api.tokens["analyst"])
    assert status == 403 and "built in" in body["error"]
    analyst.delete(f"/api/v1/allowlist/{number}", reason="contract ended")
    assert number not in {e["number"] for e in viewer.get("/api/v1/allowlist")["entries"]}
    reader = TopicReader(broker_settings, ALLOWLIST.name)
    try:
        assert reader.poll_until(lambda msgs: [m.value() is None for m in msgs
                                               if m.key() == number.encode()] == [False, True],
                                 timeout=30)
    finally:
        reader.close()
    audit = viewer.get("/api/v1/audit", subject=f"allowlist/{number}")["records"]
    assert [a["action"] for a in audit] == ["allowlist.remove", "allowlist.add"]
    assert audit[0]["before"]["reason"] == "hospital" and audit[0]["after"] is None


def test_trunk_allowlist_and_scoped_decisions_reach_their_topics(api, broker_settings):
    """Issue 10 on the real broker: a trunk entry keyed trunk:<id> on control.allowlist, a
    protected trunk refused, a trunk block and a range block on switch.control.decisions keyed
    as the worker keys them, and the campaigns list built from the topic."""
    analyst, viewer = api.client("analyst"), api.client("viewer")
    tag = uuid.uuid4().hex[:6]
    bank, robots = f"sw-it/bank-{tag}", f"sw-it/ent-{tag}"
    rng = f"86179{random.randrange(10**4):04d}"
    analyst.post("/api/v1/allowlist", {"trunk": bank, "reason": "bank trunk"})
    status, body = api.raw("POST", f"/api/v1/trunks/sw-it/bank-{tag}/block",
                           b'{"reason": "x"}', token=api.tokens["analyst"])
    assert status == 409 and "bank trunk" in body["error"]
    d = analyst.post(f"/api/v1/trunks/sw-it/ent-{tag}/block",
                     {"reason": "spoofed neighbours", "match": {"neighbour_tail": 4}})["decision"]
    assert d["number"] == f"trunk:{robots}" and d["switch"] == "sw-it"
    analyst.post(f"/api/v1/prefixes/{rng}/block", {"reason": "range campaign"})
    keys = {f"trunk:{robots}", f"prefix:{rng}"}
    found = wait_decisions(broker_settings, keys, lambda ds: keys <= {x.number for x in ds},
                           timeout=30)
    by_key = {x.number: x for x in found}
    assert by_key[f"trunk:{robots}"].scope == "trunk"
    assert by_key[f"trunk:{robots}"].match == {"neighbour_tail": 4}
    assert (by_key[f"prefix:{rng}"].scope, by_key[f"prefix:{rng}"].target) == ("prefix", rng)
    campaigns = {c["number"] for c in viewer.get("/api/v1/campaigns")["campaigns"]}
    assert keys <= campaigns
    assert viewer.get(f"/api/v1/numbers/{rng}12345")["covered_by"][0]["number"] == \
        f"prefix:{rng}"
    analyst.delete(f"/api/v1/allowlist/trunk/sw-it/bank-{tag}", reason="moved")
    reader = TopicReader(broker_settings, ALLOWLIST.name)
    try:
        assert reader.poll_until(lambda msgs: [m.value() is None for m in msgs
                                               if m.key() == f"trunk:{bank}".encode()]
                                 == [False, True], timeout=30)
    finally:
        reader.close()
    for key_path in (f"trunks/sw-it/ent-{tag}", f"prefixes/{rng}"):
        analyst.post(f"/api/v1/{key_path}/unblock", {"reason": "test over"})


def test_feedback_single_and_bulk_are_idempotent(api, broker_settings):
    analyst = api.client("analyst")
    numbers = fresh_numbers(3)
    tag = uuid.uuid4().hex[:8]
    one = {"id": f"{tag}-1", "number": numbers[0], "label": "complaint", "note": "robot"}
    assert analyst.post("/api/v1/feedback", one) == {"accepted": 1, "duplicates": 0}
    assert analyst.post("/api/v1/feedback", one) == {"accepted": 0, "duplicates": 1}
    csv = (f"id,number,label,note\n{tag}-1,{numbers[0]},complaint,again\n"
           f"{tag}-2,{numbers[1]},analyst_legit,bank\n{tag}-3,{numbers[2]},nonsense,\n"
           f"{tag}-4,{numbers[2]},callback_ok,\n{tag}-4,{numbers[2]},callback_ok,dup in file\n")
    r = analyst.request("POST", "/api/v1/feedback/bulk", raw=csv.encode(),
                        content_type="text/csv")
    assert (r["accepted"], r["duplicates"]) == (2, 2)
    assert [row["line"] for row in r["rejected"]] == [4]
    ndjson = (f'{{"id":"{tag}-2","number":"{numbers[1]}","label":"analyst_legit"}}\n'
              f'{{"id":"{tag}-5","number":"{numbers[1]}","label":"robot"}}\nnot json\n')
    r = analyst.request("POST", "/api/v1/feedback/bulk", raw=ndjson.encode(),
                        content_type="application/x-ndjson")
    assert (r["accepted"], r["duplicates"], r["rejected"][0]["line"]) == (1, 1, 3)
    expected = [f"{tag}-{i}" for i in (1, 2, 4, 5)]

    def ids(msgs):
        return sorted(lb.id for lb in (Label.decode(m.value()) for m in msgs)
                      if lb.id.startswith(tag))
    reader = TopicReader(broker_settings, FEEDBACK.name)
    try:
        reader.poll_until(lambda msgs: set(expected) <= set(ids(msgs)), timeout=30,
                          quiet_s=2.0)
    finally:
        reader.close()
    assert ids(reader.messages) == expected  # each id once on the topic


def test_appeal_upheld_unblocks_and_allowlists(api, broker_settings):
    analyst = api.client("analyst")
    number = fresh_numbers(1)[0]
    blocked = analyst.post(f"/api/v1/numbers/{number}/block",
                           {"reason": "suspected campaign", "ttl_s": 3600})["decision"]
    assert blocked["policy"] == "manual" and blocked["reasons"] == ["suspected campaign",
                                                                    "by analyst"]
    appeal = analyst.post("/api/v1/appeals", {"number": number, "appellant": "Dr. Li",
                                              "contact": "li@clinic.example",
                                              "note": "we call patients"})["appeal"]
    assert appeal["id"] in {a["id"] for a in
                            analyst.get("/api/v1/appeals", status="pending")["appeals"]}
    decided = analyst.post(f"/api/v1/appeals/{appeal['id']}/decision",
                           {"outcome": "upheld", "reason": "verified clinic",
                            "allow_for_s": 86400})["appeal"]
    assert decided["status"] == "upheld"
    decisions = wait_decisions(broker_settings, {number},
                               lambda ds: [d.action for d in ds] == ["block", "unblock"],
                               timeout=30)
    assert [d.action for d in decisions] == ["block", "unblock"]
    assert decisions[1].policy == "manual" and not decisions[1].dry_run
    look = analyst.get(f"/api/v1/numbers/{number}")
    assert look["current"] is None and look["allowlisted"]
    assert [lb["label"] for lb in look["labels"]] == ["appeal_upheld"]
    assert look["labels"][0]["contact"] == "li@clinic.example"
    status, body = api.raw("POST", f"/api/v1/appeals/{appeal['id']}/decision",
                           b'{"outcome": "denied", "reason": "x"}', api.tokens["analyst"])
    assert status == 409


def test_rejections_over_http(api):
    tok = api.tokens
    assert api.raw("GET", "/api/v1/policies")[0] == 401
    assert api.raw("GET", "/api/v1/policies", token="not-a-token")[0] == 401
    status, body = api.raw("PUT", "/api/v1/policies/default",
                           b'{"policy": {}, "reason": "x"}', tok["viewer"])
    assert status == 403 and "analyst" in body["error"]
    status, body = api.raw("PUT", "/api/v1/switches", b'{"dry_run_all": true, "reason": "x"}',
                           tok["analyst"])
    assert status == 403
    status, body = api.raw("PUT", "/api/v1/policies/default",
                           b'{"policy": {"thresholds": {"label": 0.9, "block": 0.2}}, '
                           b'"reason": "x"}', tok["analyst"])
    assert status == 422 and "label <= rate_limit <= block" in body["error"]
    big = b'{"policy": {}, "reason": "' + b"x" * (MAX_BODY + 10) + b'"}'
    status, body = api.raw("PUT", "/api/v1/policies/default", big, tok["analyst"])
    assert status == 413 and "error" in body
    status, body = api.raw("GET", "/api/v1/numbers/abc", token=tok["viewer"])
    assert status == 400 and "abc" in body["error"]
    assert api.raw("GET", "/healthz")[0] == 200
    metrics = api.metrics()
    assert 'dialguard_api_requests_total{method="PUT",route="/api/v1/policies/{name}",' \
           'status="413"}' in metrics
    assert "dialguard_api_request_seconds_bucket" in metrics


def test_global_switch_is_admin_only_and_audited(api):
    admin = api.client("admin")
    on = admin.put("/api/v1/switches", {"dry_run_all": True, "reason": "drill"})
    assert on["dry_run_all"] is True and on["author"] == "admin"
    off = admin.put("/api/v1/switches", {"dry_run_all": False, "reason": "drill over"})
    assert off["dry_run_all"] is False
    audit = admin.get("/api/v1/audit", subject="switches", limit=2)["records"]
    assert [a["after"]["dry_run_all"] for a in audit] == [False, True]


def test_shadow_version_is_evaluated_then_promoted(api, worker, broker_settings):
    analyst = api.client("analyst")
    live = put_policy(api, {}, "live baseline for the shadow trial")
    shadow = analyst.put("/api/v1/policies/default", {
        "policy": {"thresholds": {"label": 0.3, "rate_limit": 0.4, "block": 0.5}},
        "reason": "trial", "stage": "shadow"})["policy"]
    assert shadow["version"] == live["version"] + 1
    pair = analyst.get("/api/v1/policies/default")
    assert pair["live"]["version"] == live["version"]
    assert pair["shadow"]["version"] == shadow["version"]
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while time.monotonic() < deadline and \
            policy_version_metric(worker, "default", "dialguard_shadow_policy_version") \
            != shadow["version"]:
        time.sleep(0.1)
    assert policy_version_metric(worker) == live["version"]
    robots = fresh_numbers(2)
    start = time.time() - 2 * 3600
    produce_events(broker_settings, sorted(
        robot_burst(robots[0], start, seed=51) + robot_burst(robots[1], start, seed=52),
        key=lambda e: e.ts))
    reader = TopicReader(broker_settings, SHADOW_DECISIONS.name)
    try:
        reader.poll_until(lambda msgs: set(robots) <= {
            d.number for d in decisions_of(msgs) if d.action == "block"}, timeout=DECISION_WAIT_S)
        shadowed = [d for d in decisions_of(reader.messages) if d.number in robots]
    finally:
        reader.close()
    assert {d.number for d in shadowed if d.action == "block"} == set(robots)
    assert all(d.policy_version == shadow["version"] for d in shadowed)
    enforced = wait_decisions(broker_settings, set(robots), lambda ds: set(robots) <= {
        d.number for d in ds if d.action in ENFORCING})
    assert all(d.policy_version == live["version"] for d in enforced)  # shadow never enforced
    promoted = analyst.post("/api/v1/policies/default/promote",
                            {"reason": "trial went well"})["policy"]
    assert promoted["version"] == shadow["version"]
    print(f"\npromoted shadow v{promoted['version']}: worker applied it after "
          f"{wait_applied(worker, promoted['version']):.2f} s")
    assert analyst.get("/api/v1/policies/default")["shadow"] is None


def test_guard_rolls_back_a_version_with_too_many_false_positives(api, worker,
                                                                  broker_settings):
    analyst = api.client("analyst")
    safe = put_policy(api, {}, "safe baseline")
    risky = put_policy(api, {"thresholds": {"label": 0.3, "rate_limit": 0.4, "block": 0.5},
                             "fp_target": 0.2, "fp_min_labels": 2}, "risky")
    wait_applied(worker, risky["version"])
    robots = fresh_numbers(2)
    start = time.time() - 2 * 3600
    produce_events(broker_settings, sorted(
        robot_burst(robots[0], start, seed=41) + robot_burst(robots[1], start, seed=42),
        key=lambda e: e.ts))
    wait_decisions(broker_settings, set(robots), lambda ds: set(robots) <= {
        d.number for d in ds if d.action in ENFORCING and d.policy_version == risky["version"]})
    # both enforced numbers turn out legitimate: 100% > 20% with 2 >= 2 labels
    for number in robots:
        analyst.post("/api/v1/feedback", {"id": f"guard-{uuid.uuid4().hex}", "number": number,
                                          "label": "analyst_legit"})
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    live = risky
    while time.monotonic() < deadline and live["version"] == risky["version"]:
        time.sleep(0.5)
        live = analyst.get("/api/v1/policies/default")["live"]
    assert live["version"] == risky["version"] + 1 and live["author"] == "guard"
    assert live["thresholds"] == safe["thresholds"]
    assert "automatic rollback" in live["reason"]
    print(f"\nguard: {live['reason']}; worker applied it after "
          f"{wait_applied(worker, live['version']):.2f} s")
    audit = analyst.get("/api/v1/audit", subject="policy/default", limit=1)["records"][0]
    assert audit["actor"] == "guard" and audit["before"]["version"] == risky["version"]
    assert re.search(r'^dialguard_policy_auto_rollbacks_total\{policy="default"\} 1\.0$',
                     api.metrics(), re.M)


def test_the_cli_is_a_client_of_the_api(api, tmp_path, monkeypatch, capsys):
    from services.cli import main

    monkeypatch.setenv("DIALGUARD_API_URL", api.url)
    monkeypatch.setenv("DIALGUARD_API_TOKEN", api.tokens["analyst"])
    viewer = api.client("viewer")
    before = viewer.get("/api/v1/policies/default")["live"]["version"]
    policy_file = tmp_path / "p.json"
    policy_file.write_text('{"name": "default", "thresholds": {"label": 0.5, '
                           '"rate_limit": 0.7, "block": 0.88}}')
    # the historical form still works; the author is the token's name
    assert main(["policy", "set", str(policy_file), "--author", "alice",
                 "--reason", "from the CLI"]) == 0
    live = viewer.get("/api/v1/policies/default")["live"]
    assert live["version"] == before + 1 and live["author"] == "analyst"
    assert live["thresholds"]["block"] == 0.88
    assert main(["whatif", str(policy_file)]) == 0
    assert "numbers scored in the last" in capsys.readouterr().out
    numbers = fresh_numbers(2)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"id,number,label\ncli-{numbers[0]},{numbers[0]},complaint\n"
                      f"cli-{numbers[1]},{numbers[1]},legit\n")
    assert main(["feedback", "import", str(labels)]) == 0
    assert "accepted 2, duplicates 0, rejected 0" in capsys.readouterr().out
    assert main(["feedback", "import", str(labels)]) == 0
    assert "accepted 0, duplicates 2" in capsys.readouterr().out
    assert main(["allow", "add", numbers[1], "--reason", "call center", "--ttl", "600"]) == 0
    assert main(["number", "lookup", numbers[1]]) == 0
    assert '"allowlisted": "call center"' in capsys.readouterr().out
    assert main(["audit", "--subject", "policy/default", "--limit", "1"]) == 0
    assert "from the CLI" in capsys.readouterr().out
    # analyst may not mint tokens through the API: a clear one-line error, exit 1
    assert main(["token", "create", "eve", "--role", "admin"]) == 1
    assert "HTTP 403" in capsys.readouterr().err
    monkeypatch.setenv("DIALGUARD_API_TOKEN", api.tokens["admin"])
    assert main(["token", "create", "eve", "--role", "viewer"]) == 0
    eve = capsys.readouterr().out.strip()
    assert api.raw("GET", "/api/v1/whoami", token=eve) == (200, {"name": "eve",
                                                                 "role": "viewer"})
