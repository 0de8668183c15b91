"""The control API in process (aiohttp test server) over in-memory views: auth, validation,
error mapping, read-your-writes, audit, OpenAPI. The real-broker path is in
tests/integration/test_api.py."""

import json

from openapi_spec_validator import validate

from services.api import metrics
from services.api.openapi import document, operations
from streams.topics import DECISIONS, FEEDBACK
from tests.unit.api_helpers import Api, auth

P = "/api/v1"


def test_tokens_roles_and_public_routes(tmp_path):
    async def scenario(c):
        assert (await c.get("/healthz")).status == 200
        r = await c.get(f"{P}/whoami")
        assert r.status == 401 and "bearer" in (await r.json())["error"]
        r = await c.get(f"{P}/whoami", headers={"Authorization": "Bearer nope"})
        assert r.status == 401 and (await r.json())["error"] == "invalid or revoked token"
        r = await c.get(f"{P}/whoami", headers=auth("ana"))
        assert await r.json() == {"name": "ana", "role": "analyst"}
        r = await c.put(f"{P}/policies/default", headers=auth("vera"),
                        json={"policy": {}, "reason": "x"})
        assert r.status == 403 and "needs analyst" in (await r.json())["error"]
        r = await c.put(f"{P}/switches", headers=auth("ana"),
                        json={"dry_run_all": True, "reason": "x"})
        assert r.status == 403
        r = await c.get(f"{P}/tokens", headers=auth("ana"))
        assert r.status == 403
        r = await c.get("/console/..%2Fapp.py")
        assert r.status == 404 and "error" in await r.json()
    Api(tmp_path).run(scenario)


def test_policy_validation_answers_422_with_the_field(tmp_path):
    bad = {"thresholds": {"label": 0.8, "rate_limit": 0.7, "block": 0.9}}
    cases = [(bad, "label <= rate_limit <= block"),
             ({"thresholds": {"block": 1.5}}, "thresholds.block"),
             ({"colour": "red"}, "unknown policy fields: colour"),
             ({"ttl_s": {"blok": 5}}, "ttl_s: unknown actions blok"),
             ({"min_attempts": -1}, "min_attempts"),
             ({"hysteresis": "0.1"}, "hysteresis"),
             ({"prefix_overrides": {"86x": {"block": 0.9}}}, "must be digits"),
             ({"fp_target": 2}, "fp_target")]

    async def scenario(c):
        for policy, message in cases:
            r = await c.put(f"{P}/policies/default", headers=auth("ana"),
                            json={"policy": policy, "reason": "test"})
            body = await r.json()
            assert r.status == 422, (policy, body)
            assert message in body["error"], (policy, body)
        r = await c.put(f"{P}/policies/default", headers=auth("ana"),
                        data=b'{"policy": {"thresholds": {"block": NaN}}, "reason": "x"}')
        assert r.status == 400 and "not valid JSON" in (await r.json())["error"]
        r = await c.put(f"{P}/policies/default", headers=auth("ana"), json={"policy": {}})
        assert r.status == 400 and "reason is required" in (await r.json())["error"]
        r = await c.put(f"{P}/policies/default", headers=auth("ana"),
                        json={"policy": {}, "reason": "x", "stage": "later"})
        assert r.status == 400
    api = Api(tmp_path)
    api.run(scenario)
    assert api.writer.written == []  # nothing invalid reached a topic


def test_size_limits_and_error_mapping(tmp_path):
    api = Api(tmp_path, api_max_body_bytes=1024, api_max_bulk_bytes=2048)

    def explode(limit):
        raise RuntimeError("secret internals at /srv/x.py line 3")
    api.views.recent_decisions = explode

    async def scenario(c):
        big = {"policy": {}, "reason": "x" * 2000}
        r = await c.put(f"{P}/policies/default", headers=auth("ana"), json=big)
        assert r.status == 413 and "error" in await r.json()
        csv = "id,number,label\n" + "".join(f"i{i},86138001{i:05d},complaint\n"
                                            for i in range(100))
        r = await c.post(f"{P}/feedback/bulk", headers={**auth("ana"),
                                                        "Content-Type": "text/csv"}, data=csv)
        assert r.status == 413 and "split" in (await r.json())["error"]
        r = await c.get(f"{P}/decisions/recent", headers=auth("vera"))
        text = await r.text()
        assert r.status == 500 and "secret" not in text and "Traceback" not in text
        assert json.loads(text) == {"error": "internal error (logged on the server)"}
        r = await c.get(f"{P}/nothing-here", headers=auth("vera"))
        assert r.status == 404 and "no such route" in (await r.json())["error"]
        r = await c.patch(f"{P}/policies/default", headers=auth("ana"))
        assert r.status == 405 and "not allowed" in (await r.json())["error"]
        r = await c.get(f"{P}/decisions/recent?limit=abc", headers=auth("vera"))
        assert r.status == 400
    api.run(scenario)


def test_policy_lifecycle_is_consistent_and_audited(tmp_path):
    async def scenario(c):
        h = auth("ana")
        r = await c.put(f"{P}/policies/default", headers=h, json={
            "policy": {"name": "ignored", "version": 99, "author": "mallory",
                       "thresholds": {"block": 0.9}}, "reason": "first"})
        p = (await r.json())["policy"]
        assert (p["name"], p["version"], p["author"], p["reason"]) == \
            ("default", 1, "ana", "first")
        live = (await (await c.get(f"{P}/policies/default", headers=h)).json())["live"]
        assert live["thresholds"]["block"] == 0.9
        r = await c.put(f"{P}/policies/default", headers=h, json={
            "policy": {"thresholds": {"block": 0.95}}, "reason": "try", "stage": "shadow"})
        assert (await r.json())["policy"]["version"] == 2
        pair = await (await c.get(f"{P}/policies/default", headers=h)).json()
        assert pair["live"]["version"] == 1 and pair["shadow"]["version"] == 2
        r = await c.post(f"{P}/policies/default/promote", headers=h, json={"reason": "good"})
        assert (await r.json())["policy"]["version"] == 2
        pair = await (await c.get(f"{P}/policies/default", headers=h)).json()
        assert pair["live"]["thresholds"]["block"] == 0.95 and pair["shadow"] is None
        r = await c.post(f"{P}/policies/default/rollback", headers=h,
                         json={"version": 1, "reason": "too strict"})
        back = (await r.json())["policy"]
        assert back["version"] == 3 and back["thresholds"]["block"] == 0.9
        versions = (await (await c.get(f"{P}/policies/default/versions", headers=h)).json())
        assert [v["version"] for v in versions["versions"]] == [3, 2, 1]
        r = await c.post(f"{P}/policies/default/rollback", headers=h,
                         json={"version": 7, "reason": "x"})
        assert r.status == 404
        r = await c.delete(f"{P}/policies/default/shadow?reason=x", headers=h)
        assert r.status == 404
        audit = (await (await c.get(f"{P}/audit?subject=policy/default", headers=h)).json())
        actions = [a["action"] for a in audit["records"]]
        assert actions == ["policy.rollback", "policy.promote", "policy.shadow", "policy.live"]
        rb = audit["records"][0]
        assert rb["before"]["version"] == 2 and rb["after"]["version"] == 3
        assert rb["actor"] == "ana" and "too strict" in rb["reason"]
        r = await c.put(f"{P}/switches", headers=auth("adam"),
                        json={"dry_run_all": True, "reason": "incident 42"})
        assert (await r.json())["dry_run_all"] is True
        listing = await (await c.get(f"{P}/policies", headers=h)).json()
        assert listing["switches"]["dry_run_all"] is True
        assert listing["switches"]["author"] == "adam"
        assert [p["live"]["version"] for p in listing["policies"]] == [3]
    Api(tmp_path).run(scenario)


def test_allowlist_manual_decisions_feedback_and_appeals(tmp_path):
    api = Api(tmp_path)

    async def scenario(c):
        h = auth("ana")
        r = await c.delete(f"{P}/allowlist/112?reason=x", headers=h)
        assert r.status == 403 and "built in" in (await r.json())["error"]
        r = await c.post(f"{P}/allowlist", headers=h,
                         json={"number": "+86 138 0013 8000", "reason": "hospital",
                               "ttl_s": 600})
        entry = (await r.json())["entry"]
        assert r.status == 201 and entry["number"] == "8613800138000"
        listing = await (await c.get(f"{P}/allowlist", headers=h)).json()
        assert {"number": "112", "reason": "emergency: GSM/EU"} in listing["builtin"]
        assert [e["number"] for e in listing["entries"]] == ["8613800138000"]
        r = await c.delete(f"{P}/allowlist/8613800138000?reason=closed", headers=h)
        assert r.status == 200
        assert (await (await c.get(f"{P}/allowlist", headers=h)).json())["entries"] == []
        r = await c.post(f"{P}/numbers/8617000000001/block", headers=h,
                         json={"reason": "scam campaign", "ttl_s": 7200})
        d = (await r.json())["decision"]
        assert (d["action"], d["policy"], d["policy_version"], d["dry_run"]) == \
            ("block", "manual", 0, False)
        assert d["reasons"] == ["scam campaign", "by ana"]
        look = await (await c.get(f"{P}/numbers/+8617000000001", headers=h)).json()
        assert look["current"]["action"] == "block" and look["decisions"][0]["ttl_s"] == 7200
        r = await c.post(f"{P}/numbers/112/block", headers=h, json={"reason": "x"})
        assert r.status == 403
        label = {"id": "c-1", "number": "8617000000001", "label": "complaint"}
        assert await (await c.post(f"{P}/feedback", headers=h, json=label)).json() == \
            {"accepted": 1, "duplicates": 0}
        assert await (await c.post(f"{P}/feedback", headers=h, json=label)).json() == \
            {"accepted": 0, "duplicates": 1}
        r = await c.post(f"{P}/feedback", headers=h, json={**label, "id": "c-2",
                                                           "label": "spam"})
        assert r.status == 422 and "label must be one of" in (await r.json())["error"]
        r = await c.post(f"{P}/appeals", headers=h, json={"number": "8617000000001",
                                                          "appellant": "Acme clinic",
                                                          "contact": "+86 10 5555 0101",
                                                          "note": "we are a clinic"})
        appeal = (await r.json())["appeal"]
        assert appeal["status"] == "pending"
        pending = await (await c.get(f"{P}/appeals?status=pending", headers=h)).json()
        assert [a["id"] for a in pending["appeals"]] == [appeal["id"]]
        r = await c.post(f"{P}/appeals/{appeal['id']}/decision", headers=h,
                         json={"outcome": "upheld", "reason": "verified clinic",
                               "allow_for_s": 86400})
        decided = (await r.json())["appeal"]
        assert decided["status"] == "upheld" and decided["decided_by"] == "ana"
        r = await c.post(f"{P}/appeals/{appeal['id']}/decision", headers=h,
                         json={"outcome": "denied", "reason": "again"})
        assert r.status == 409
        look = await (await c.get(f"{P}/numbers/8617000000001", headers=h)).json()
        assert look["current"] is None and look["decisions"][0]["action"] == "unblock"
        assert look["allowlisted"].startswith("unblocked: appeal")
        assert [lb["label"] for lb in look["labels"]] == ["complaint", "appeal_upheld"]
        assert look["labels"][1]["appellant"] == "Acme clinic"
    api.run(scenario)
    topics = [rec.topic for rec in api.writer.written]
    assert topics.count(DECISIONS.name) == 2 and topics.count(FEEDBACK.name) == 2


def test_openapi_is_valid_and_matches_the_routes(tmp_path):
    api = Api(tmp_path)
    app = api.app()
    registered = {(r.method, r.resource.canonical) for r in app.router.routes()
                  if r.method != "HEAD"}
    assert registered == operations()
    validate(document())

    async def scenario(c):
        served = await (await c.get(f"{P}/openapi.json", headers=auth("vera"))).json()
        assert served["openapi"].startswith("3.1") and operations(served) == registered
    api.run(scenario)


def test_request_metrics_use_route_templates_not_numbers(tmp_path):
    async def scenario(c):
        await c.get(f"{P}/numbers/8613912345678", headers=auth("vera"))
    Api(tmp_path).run(scenario)
    series = {tuple(s.labels.values()) for m in metrics.REQUESTS.collect() for s in m.samples}
    assert ("/api/v1/numbers/{number}", "GET", "200") in series
    assert not any("8613912345678" in v for labels in series for v in labels)


def test_token_management_through_the_api(tmp_path):
    async def scenario(c):
        r = await c.post(f"{P}/tokens", headers=auth("adam"), json={"name": "zoe",
                                                                   "role": "analyst"})
        created = await r.json()
        assert r.status == 201 and created["role"] == "analyst"
        zoe = {"Authorization": f"Bearer {created['token']}"}
        assert (await (await c.get(f"{P}/whoami", headers=zoe)).json())["name"] == "zoe"
        listing = (await (await c.get(f"{P}/tokens", headers=auth("adam"))).json())["tokens"]
        assert "zoe" in {t["name"] for t in listing}
        assert all("sha256" not in t and "token" not in t for t in listing)
        assert (await c.delete(f"{P}/tokens/zoe", headers=auth("adam"))).status == 200
        assert (await c.get(f"{P}/whoami", headers=zoe)).status == 401
        r = await c.delete(f"{P}/tokens/adam", headers=auth("adam"))
        assert r.status == 400 and "read-only" in (await r.json())["error"]
        audit = (await (await c.get(f"{P}/audit?subject=token", headers=auth("adam"))).json())
        assert [a["action"] for a in audit["records"]] == ["token.revoke", "token.create"]
    Api(tmp_path).run(scenario)
