"""Ranges and trunks through the control API (issue 10): trunk and range allowlist entries,
manual scoped block / unblock with the allowlist's protection, look-ups, campaigns, and policy
validation of ``scopes``. In process over in-memory views (tests/unit/api_helpers.py)."""

from streams.schema import AllowEntry, Decision
from streams.topics import ALLOWLIST, AUDIT, DECISIONS
from tests.unit.api_helpers import Api, auth, score

P = "/api/v1"


def test_allowlist_takes_trunks_and_checks_ranges(tmp_path):
    api = Api(tmp_path)

    async def scenario(c):
        h = auth("ana")
        r = await c.post(f"{P}/allowlist", headers=h,
                         json={"trunk": "sw-2/bank-1", "reason": "bank's trunk"})
        entry = (await r.json())["entry"]
        assert r.status == 201 and entry["trunk"] is True and entry["number"] == "sw-2/bank-1"
        for body, message in [({"trunk": "sw-2", "reason": "x"}, "<switch>/<trunk>"),
                              ({"trunk": "sw 2/t", "reason": "x"}, "without spaces"),
                              ({"trunk": "sw/" + "t" * 200, "reason": "x"}, "longer than"),
                              ({"trunk": "sw-1/-", "reason": "x"}, "unknown trunk"),
                              ({"trunk": "sw/t", "number": "8613800138000", "reason": "x"},
                               "not both"),
                              ({"number": "86", "prefix": True, "reason": "x"}, "too short"),
                              ({"number": "86a", "prefix": True, "reason": "x"}, "digits")]:
            r = await c.post(f"{P}/allowlist", headers=h, json=body)
            assert r.status == 400 and message in (await r.json())["error"], body
        r = await c.post(f"{P}/allowlist", headers=h,
                         json={"number": "8610555", "prefix": True, "reason": "hospital"})
        assert r.status == 201
        listing = await (await c.get(f"{P}/allowlist", headers=h)).json()
        assert {e["number"] for e in listing["entries"]} == {"sw-2/bank-1", "8610555"}
        r = await c.delete(f"{P}/allowlist/trunk/sw-2/bank-1?reason=closed", headers=h)
        assert r.status == 200
        r = await c.delete(f"{P}/allowlist/trunk/sw-2/bank-1?reason=again", headers=h)
        assert r.status == 404
        r = await c.delete(f"{P}/allowlist/911?reason=x", headers=h)
        assert r.status == 403
        audit = await (await c.get(f"{P}/audit?subject=allowlist", headers=h)).json()
        assert [a["subject"] for a in audit["records"]][-1] == "allowlist/trunk:sw-2/bank-1"
    api.run(scenario)
    keys = [rec.key for rec in api.writer.written if rec.topic == ALLOWLIST.name]
    assert keys == ["trunk:sw-2/bank-1", "8610555", "trunk:sw-2/bank-1"]
    assert AllowEntry.decode(api.writer.written[0].value).trunk is True


def test_manual_range_and_trunk_decisions_are_scoped_checked_and_audited(tmp_path):
    api = Api(tmp_path)

    async def scenario(c):
        h = auth("ana")
        r = await c.post(f"{P}/prefixes/86170123/block", headers=h,
                         json={"reason": "snowshoe campaign", "ttl_s": 600})
        d = (await r.json())["decision"]
        assert r.status == 200
        assert (d["number"], d["scope"], d["target"], d["action"], d["policy"]) == \
            ("prefix:86170123", "prefix", "86170123", "block", "manual")
        assert d["covers"] == "every caller number starting 86170123" and d["in_force"]
        r = await c.post(f"{P}/prefixes/8617/block", headers=h, json={"reason": "x"})
        assert r.status == 400 and "at least 5 digits" in (await r.json())["error"]
        # 11x holds the emergency numbers 110/119/...: never blocked whole
        r = await c.post(f"{P}/prefixes/11000/unblock", headers=h, json={"reason": "x"})
        assert r.status == 200
        await c.post(f"{P}/allowlist", headers=h,
                     json={"number": "8610555", "prefix": True, "reason": "hospital"})
        r = await c.post(f"{P}/prefixes/86105/block", headers=h, json={"reason": "x"})
        assert r.status == 409 and "hospital" in (await r.json())["error"]
        await c.post(f"{P}/allowlist", headers=h, json={"trunk": "sw-1/bank", "reason": "bank"})
        r = await c.post(f"{P}/trunks/sw-1/bank/block", headers=h, json={"reason": "x"})
        assert r.status == 409 and "bank" in (await r.json())["error"]
        r = await c.post(f"{P}/trunks/sw-2/ent-7/block", headers=h, json={
            "reason": "neighbour spoofing", "match": {"neighbour_tail": 4}})
        d = (await r.json())["decision"]
        assert (d["number"], d["scope"], d["target"], d["switch"], d["match"]) == \
            ("trunk:sw-2/ent-7", "trunk", "sw-2/ent-7", "sw-2", {"neighbour_tail": 4})
        assert "neighbour spoofing" in d["covers"]
        r = await c.post(f"{P}/trunks/sw-2/ent-7/block", headers=h,
                         json={"reason": "x", "match": {"attest": "C"}})
        assert r.status == 400 and "match.attest" in (await r.json())["error"]
        r = await c.post(f"{P}/trunks/sw-2/ent%2F8/block", headers=h, json={"reason": "slash"})
        assert r.status == 200
        assert (await r.json())["decision"]["target"] == "sw-2/ent/8"
        r = await c.post(f"{P}/prefixes/86170123/block", headers=auth("vera"),
                         json={"reason": "x"})
        assert r.status == 403

        camp = await (await c.get(f"{P}/campaigns", headers=h)).json()
        assert [x["number"] for x in camp["campaigns"]] == \
            ["trunk:sw-2/ent/8", "trunk:sw-2/ent-7", "prefix:86170123"]
        trunks = await (await c.get(f"{P}/campaigns?scope=trunk", headers=h)).json()
        assert len(trunks["campaigns"]) == 2
        assert (await c.get(f"{P}/campaigns?scope=city", headers=h)).status == 400

        look = await (await c.get(f"{P}/numbers/8617012345678", headers=h)).json()
        assert [x["number"] for x in look["covered_by"]] == ["prefix:86170123"]
        assert look["current"] is None  # the number itself has no decision

        src = await (await c.get(f"{P}/trunks/sw-2/ent-7", headers=h)).json()
        assert src["key"] == "trunk:sw-2/ent-7" and src["current"]["action"] == "block"
        assert src["protected"] is None and src["decisions"][0]["match"] == {"neighbour_tail": 4}
        assert (await (await c.get(f"{P}/trunks/sw-1/bank", headers=h)).json())["protected"] \
            == "bank"

        r = await c.post(f"{P}/trunks/sw-2/ent-7/unblock", headers=h,
                         json={"reason": "operator fixed it", "allow_for_s": 3600})
        assert (await r.json())["decision"]["action"] == "unblock"
        src = await (await c.get(f"{P}/trunks/sw-2/ent-7", headers=h)).json()
        assert src["current"] is None and "operator fixed it" in src["protected"]
        r = await c.post(f"{P}/prefixes/86170123/unblock", headers=h,
                         json={"reason": "over", "allow_for_s": 60})
        assert r.status == 400 and "range is not" in (await r.json())["error"]
        r = await c.post(f"{P}/prefixes/86170123/unblock", headers=h, json={"reason": "over"})
        assert r.status == 200
        look = await (await c.get(f"{P}/numbers/8617012345678", headers=h)).json()
        assert look["covered_by"] == []
        audit = await (await c.get(f"{P}/audit?subject=trunk/sw-2/ent-7", headers=h)).json()
        assert [a["action"] for a in audit["records"]] == ["trunk.unblock", "trunk.block"]
    api.run(scenario)
    decisions = [Decision.decode(rec.value) for rec in api.writer.written
                 if rec.topic == DECISIONS.name]
    assert {d.number for d in decisions} == {"prefix:86170123", "prefix:11000",
                                            "trunk:sw-2/ent-7", "trunk:sw-2/ent/8"}
    keys = [rec.key for rec in api.writer.written if rec.topic == DECISIONS.name]
    assert keys == [d.number for d in decisions]  # keyed like the worker keys them
    assert all(rec.topic != AUDIT.name or rec.value for rec in api.writer.written)


def test_source_lookup_shows_score_and_features(tmp_path):
    api = Api(tmp_path)
    rec = score("prefix:86170123", 0.91, 1_800_000_000.0,
                {"attempts_1h": 500.0, "distinct_callers_1h": 300.0})
    api.views.apply("scores", rec.number, rec.encode(), 1_800_000_000.0)

    async def scenario(c):
        h = auth("vera")
        src = await (await c.get(f"{P}/prefixes/86170123", headers=h)).json()
        assert src["score"]["score"] == 0.91
        assert src["score"]["features"]["distinct_callers_1h"] == 300.0
        assert src["decisions"] == [] and src["current"] is None
        r = await c.get(f"{P}/prefixes/86x/", headers=h)
        assert r.status in (400, 404)
        r = await c.get(f"{P}/prefixes/86x", headers=h)
        assert r.status == 400
        r = await c.get(f"{P}/trunks/sw 1/t", headers=h)
        assert r.status == 400
    api.run(scenario)


def test_scopes_in_a_policy_are_validated_and_round_trip(tmp_path):
    async def scenario(c):
        h = auth("ana")
        for scopes, message in [({"city": {}}, "unknown scopes city"),
                                ({"trunk": {"thresholds": {"block": 2}}},
                                 "scopes.trunk.thresholds.block"),
                                ({"prefix": {"min_callers": -1}}, "scopes.prefix.min_callers"),
                                ({"prefix": {"colour": 1}}, "unknown fields colour"),
                                ({"trunk": "strict"}, "scopes.trunk must be an object")]:
            r = await c.put(f"{P}/policies/default", headers=h,
                            json={"policy": {"scopes": scopes}, "reason": "x"})
            body = await r.json()
            assert r.status == 422 and message in body["error"], (scopes, body)
        r = await c.put(f"{P}/policies/default", headers=h, json={"policy": {"scopes": {
            "trunk": {"thresholds": {"label": 0.6, "rate_limit": 0.8, "block": 0.9}}}},
            "reason": "stricter trunks"})
        p = (await r.json())["policy"]
        assert p["scopes"]["trunk"]["thresholds"]["block"] == 0.9
        assert p["scopes"]["prefix"]["thresholds"]["block"] == 0.85  # default kept
        r = await c.put(f"{P}/policies/default", headers=h, json={"policy": {},
                                                                  "reason": "defaults"})
        r = await c.post(f"{P}/policies/default/rollback", headers=h,
                         json={"version": 1, "reason": "back"})
        back = (await r.json())["policy"]
        assert back["version"] == 3 and back["scopes"]["trunk"]["thresholds"]["block"] == 0.9
    Api(tmp_path).run(scenario)


def test_cli_allows_blocks_and_lists_trunks_through_the_api(tmp_path, monkeypatch, capsys):
    import asyncio

    from services.cli import main
    from tests.unit.api_helpers import TOKENS

    api = Api(tmp_path)

    async def scenario(c):
        monkeypatch.setenv("DIALGUARD_API_URL", str(c.make_url("")).rstrip("/"))
        monkeypatch.setenv("DIALGUARD_API_TOKEN", TOKENS["ana"][1])
        loop = asyncio.get_running_loop()

        async def cli(*argv):
            return await loop.run_in_executor(None, main, list(argv))
        assert await cli("allow", "add", "--trunk", "sw-1/bank", "--reason", "bank") == 0
        assert await cli("source", "block", "trunk", "sw-1/bank", "--reason", "x") == 1
        assert await cli("source", "block", "trunk", "sw-2/ent-7", "--reason", "campaign",
                         "--attest", "B,C,none") == 0
        assert await cli("source", "block", "prefix", "86170123", "--reason", "range") == 0
        assert await cli("campaigns") == 0
        assert await cli("allow", "remove", "--trunk", "sw-1/bank", "--reason", "gone") == 0
    api.run(scenario)
    out, err = capsys.readouterr()
    assert "is protected" in err and "HTTP 409" in err
    assert "calls entering through trunk sw-2/ent-7 with attestation B/C/none" in out
    assert "every caller number starting 86170123" in out
    assert "removed trunk sw-1/bank" in out
    assert api.views.allow.entries == {}
