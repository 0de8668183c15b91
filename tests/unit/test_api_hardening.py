"""Hardening of the control API (issue 12, control-plane side), in process.

Writes that Kafka takes only in part, bulk files that are too large or too bad, strict policy
types, timestamps the console cannot show, unhandled errors, log injection, security headers,
token names. The real-broker path of the same writes is tests/integration/test_api_hardening.py.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Iterable

import pytest

from services.api import routes_data
from services.api.writer import MemoryWriter, Record, Writer, WriteResult
from services.settings import Settings
from streams.topics import AUDIT, FEEDBACK
from tests.unit.api_helpers import Api, auth

P = "/api/v1"
CSV = {"Content-Type": "text/csv"}


# -- 1. writes Kafka takes only in part ------------------------------------------------------
class FlakyWriter:
    """A MemoryWriter that, while ``broken``, lands only the first ``lands`` records of a
    batch (like a producer whose queue stays full) and reports the rest as failed."""

    def __init__(self, inner: MemoryWriter, lands: int) -> None:
        self.inner = inner
        self.lands = lands
        self.broken = True

    def write(self, records: Iterable[Record]) -> WriteResult:
        records = list(records)
        if not self.broken:
            return self.inner.write(records)
        done = self.inner.write(records[:self.lands])
        result = WriteResult(records, landed=dict(done.landed))
        for i in range(self.lands, len(records)):
            result.failed[i] = "not sent: the producer's local queue stayed full for 1s"
        return result

    def health(self) -> dict[str, Any]:
        return {"ok": not self.broken, "queued": 0,
                **({"error": "3 of 5 records not published"} if self.broken else {})}


def test_writer_without_room_reports_what_it_could_not_publish_instead_of_raising(tmp_path):
    """librdkafka's local queue full (5 messages here, nobody to deliver to): the write waits
    for room until its deadline, then reports each record, and never raises BufferError."""
    settings = Settings.from_env(environ={}, home=tmp_path, api_write_timeout_s=1.0,
                                 kafka_bootstrap="127.0.0.1:9")
    writer = Writer(settings, {"queue.buffering.max.messages": 5, "message.timeout.ms": 60_000})
    records = [Record(FEEDBACK.name, str(i), b"{}") for i in range(20)]
    result = writer.write(records)
    assert not result.ok and not result.landed and len(result.failed) == 20
    assert "queue stayed full" in result.failed[19]
    health = writer.health()
    assert health["ok"] is False and "20 of 20 records not published" in health["error"]


def test_partial_bulk_is_reported_audited_and_health_follows_writes(tmp_path):
    api = Api(tmp_path)
    flaky = FlakyWriter(api.writer, lands=3)
    api.ops.writer = flaky
    rows = "".join(f"b{i},861380013{i:04d},robot\n" for i in range(5))

    async def scenario(c):
        r = await c.post(f"{P}/feedback/bulk", headers={**auth("ana"), **CSV},
                         data=f"id,number,label\n{rows}")
        body = await r.json()
        assert r.status == 503, body
        assert (body["accepted"], body["failed_total"]) == (3, 2)
        assert [f["id"] for f in body["failed"]] == ["b3", "b4"]
        assert "3 labels published, 2 not" in body["error"]
        r = await c.get("/healthz")
        health = await r.json()
        assert r.status == 503 and health["ok"] is False and health["writes"]["ok"] is False
        # A single write that lands nothing is a 503 that says so, and changes nothing.
        flaky.lands = 0
        r = await c.put(f"{P}/switches", headers=auth("adam"),
                        json={"dry_run_all": True, "reason": "incident"})
        assert r.status == 503 and "nothing was published" in (await r.json())["error"]
        flaky.broken = False
        r = await c.put(f"{P}/switches", headers=auth("adam"),
                        json={"dry_run_all": True, "reason": "incident"})
        assert r.status == 200
        r = await c.get("/healthz")
        assert r.status == 200 and (await r.json())["writes"]["ok"] is True
    api.run(scenario)
    audits = [r for r in api.writer.written if r.topic == AUDIT.name]
    bulk = [r for r in audits if r.key == "labels/bulk"]
    assert len(bulk) == 1 and b'"count":3' in bulk[0].value and b'"failed":2' in bulk[0].value
    assert b"partial: 3 of 5 published" in bulk[0].value
    assert [r.key for r in audits] == ["labels/bulk", "switches"]  # the failed one unaudited


# -- 8. bulk files too large or too bad ------------------------------------------------------
def test_bulk_rows_are_capped_and_the_rejections_listed_are_bounded(tmp_path):
    from services.api.feedback_io import MAX_BULK_ROWS, MAX_REPORTED_REJECTIONS

    too_many = "id,number,label\n" + "a,1,x\n" * (MAX_BULK_ROWS + 1)
    bad = "id,number,label\n" + "a,1,x\n" * (MAX_REPORTED_REJECTIONS * 3)

    async def scenario(c):
        r = await c.post(f"{P}/feedback/bulk", headers={**auth("ana"), **CSV}, data=too_many)
        body = await r.json()
        assert r.status == 413 and f"more than {MAX_BULK_ROWS:,} rows" in body["error"]
        r = await c.post(f"{P}/feedback/bulk", headers={**auth("ana"), **CSV}, data=bad)
        body = await r.json()
        assert r.status == 200
        assert len(body["rejected"]) == MAX_REPORTED_REJECTIONS
        assert body["rejected_total"] == MAX_REPORTED_REJECTIONS * 3
        assert body["rejected"][0]["line"] == 2  # the first ones, by line
    Api(tmp_path, api_max_bulk_bytes=64 * 1024 * 1024).run(scenario)


def test_a_bulk_file_is_parsed_off_the_event_loop(tmp_path, monkeypatch):
    """While a bulk file is being parsed, /healthz still answers: the parse is held until the
    health check came back, and the order of the two is what is asserted."""
    order: list[str] = []
    started, release = threading.Event(), threading.Event()
    real_parse = routes_data.parse_bulk

    def slow_parse(body: bytes, content_type: str):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(10)
        order.append("parsed")
        return real_parse(body, content_type)
    monkeypatch.setattr(routes_data, "parse_bulk", slow_parse)

    async def scenario(c):
        bulk = asyncio.ensure_future(c.post(f"{P}/feedback/bulk",
                                            headers={**auth("ana"), **CSV},
                                            data="id,number,label\nz1,8613800138000,robot\n"))
        # Once the parse is under way (on the loop, this wait only returns after it ended)...
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        r = await c.get("/healthz")
        order.append(f"healthz {r.status}")
        release.set()
        assert (await bulk).status == 200
    Api(tmp_path).run(scenario)
    assert order == ["healthz 200", "parsed"]


def test_a_csv_field_beyond_the_csv_limit_is_a_400_not_a_500(tmp_path):
    huge = "x" * 200_000

    async def scenario(c):
        r = await c.post(f"{P}/feedback/bulk", headers={**auth("ana"), **CSV},
                         data=f"id,number,label,note\nn1,8613800138000,robot,{huge}\n")
        body = await r.json()
        assert r.status == 400 and "line 2" in body["error"], body
    Api(tmp_path).run(scenario)


# -- 3. strict policy types ------------------------------------------------------------------
@pytest.mark.parametrize("policy, message", [
    ({"do_not_originate": "86400"}, "do_not_originate must be a list of prefix strings, got str"),
    ({"do_not_originate": {"86400": 1}}, "do_not_originate must be a list"),
    ({"do_not_originate": ["8"]}, "do_not_originate entry '8' must be 4-15 digits"),
    ({"do_not_originate": ["\u0668\u0666\u0664\u0660"]}, "digits 0-9"),
    ({"do_not_originate": [86400]}, "do_not_originate entry 86400"),
    ({"prefix_overrides": [["86", {"block": 0.9}]]}, "prefix_overrides must be an object"),
    ({"prefix_overrides": {"\u0668\u0666": {"block": 0.9}}}, "must be digits 0-9"),
    ({"ttl_s": [["block", 5]]}, "ttl_s must be an object keyed by label, rate_limit, block"),
    ({"ttl_s": {"block": 2**64 - 1}}, "ttl_s.block must be a whole number of seconds in 1..2592000"),
    ({"ttl_s": {"block": True}}, "ttl_s.block"),
    ({"ttl_s": {"block": 3600.5}}, "ttl_s.block"),
    ({"scopes": {"trunk": {"ttl_s": {"block": 2**64 - 1}}}}, "scopes.trunk.ttl_s.block"),
    ({"scopes": {"trunk": {"ttl_s": [["block", 60]]}}}, "scopes.trunk.ttl_s must be an object"),
    ({"scopes": {"trunk": {"ttl_s": {"forever": 60}}}}, "unknown actions forever"),
    ({"scopes": {"prefix": {"max_talkers": True}}}, "scopes.prefix.max_talkers"),
    ({"hysteresis": False}, "hysteresis must be a number"),
    ({"min_distinct": False}, "min_distinct"),
    ({"scopes": {"prefix": {"hysteresis": True}}}, "scopes.prefix.hysteresis"),
])
def test_policy_fields_have_strict_types(tmp_path, policy, message):
    async def scenario(c):
        r = await c.put(f"{P}/policies/default", headers=auth("ana"),
                        json={"policy": policy, "reason": "strict"})
        body = await r.json()
        assert r.status == 422 and message in body["error"], body
    api = Api(tmp_path)
    api.run(scenario)
    assert api.writer.written == []


@pytest.mark.parametrize("name", ["...", "a..b", ".hidden", "trailing.", "caf\u00e9", "x" * 65,
                                  "a%2Fb", "a%23shadow"])
def test_policy_names_are_plain_ascii(tmp_path, name):
    async def scenario(c):
        r = await c.put(f"{P}/policies/{name}", headers=auth("ana"),
                        json={"policy": {}, "reason": "name"})
        assert r.status == 400 and "policy name" in (await r.json())["error"]
        r = await c.post(f"{P}/whatif", headers=auth("ana"),
                         json={"policy": {"name": name.replace("%2F", "/")}})
        assert r.status == 400
    Api(tmp_path).run(scenario)


def test_well_typed_policies_and_names_still_pass(tmp_path):
    from streams.policy import Policy

    async def scenario(c):
        r = await c.put(f"{P}/policies/night.v2", headers=auth("ana"), json={
            "policy": {"do_not_originate": ["86400"], "ttl_s": {"block": 30 * 86_400},
                       "prefix_overrides": {"86138": {"block": 0.95}}, "hysteresis": 0},
            "reason": "typed"})
        assert r.status == 200, await r.json()
        assert (await r.json())["policy"]["do_not_originate"] == ["86400"]
    Api(tmp_path).run(scenario)
    assert Policy.decode(Policy(name="night.v2").encode()).name == "night.v2"


def test_allowlist_prefixes_need_five_digits_by_default(tmp_path):
    async def scenario(c):
        for digits, status in (("861", 400), ("8613", 400), ("86138", 201)):
            r = await c.post(f"{P}/allowlist", headers=auth("ana"),
                             json={"number": digits, "prefix": True, "reason": "range"})
            assert r.status == status, (digits, await r.json())
        r = await c.post(f"{P}/allowlist", headers=auth("ana"),
                         json={"number": "\u0668\u0666\u0661\u0663\u0668", "prefix": True,
                               "reason": "range"})
        assert r.status == 400 and "digits" in (await r.json())["error"]
    Api(tmp_path).run(scenario)


# -- 4. timestamps the console cannot show ---------------------------------------------------
@pytest.mark.parametrize("expires_at", [1e13, -1, 0.5, True, "2030-01-01", 2**63])
def test_allowlist_expiry_must_be_a_sane_future_time(tmp_path, expires_at):
    async def scenario(c):
        r = await c.post(f"{P}/allowlist", headers=auth("ana"),
                         json={"number": "8613800138000", "reason": "x",
                               "expires_at": expires_at})
        body = await r.json()
        assert r.status == 400 and "expires_at must be an epoch time" in body["error"], body
    api = Api(tmp_path)
    api.run(scenario)
    assert api.writer.written == []


def test_allowlist_expiry_within_the_horizon_and_label_times_not_in_the_future(tmp_path):
    import time

    async def scenario(c):
        r = await c.post(f"{P}/allowlist", headers=auth("ana"),
                         json={"number": "8613800138000", "reason": "x",
                               "expires_at": time.time() + 86_400})
        assert r.status == 201
        for ts in (1e13, float("inf"), -3):
            r = await c.post(f"{P}/feedback", headers=auth("ana"), data=(
                '{"id": "t1", "number": "8613800138000", "label": "robot", "ts": %s}'
                % ("1e999" if ts == float("inf") else repr(ts))).encode())
            assert r.status in (400, 422), ts
    Api(tmp_path).run(scenario)


# -- 9. unhandled errors, token names, headers -----------------------------------------------
@pytest.mark.parametrize("body, status, message", [
    ({"name": "eve", "role": ["admin"]}, 400, "role must be one of"),
    ({"name": "eve", "role": {"admin": 1}}, 400, "role must be one of"),
    ({"name": ["eve"], "role": "viewer"}, 400, "token name must be"),
    ({"name": "guard", "role": "admin"}, 400, "reserved"),
    ({"name": "Guard", "role": "admin"}, 400, "reserved"),
    ({"name": "gu4rd".replace("4", "a").replace("a", "\u0430"), "role": "admin"}, 400,
     "token name must be"),  # Cyrillic a
    ({"name": "adam", "role": "viewer"}, 400, "read-only"),
    ({"name": "ad4m", "role": "viewer"}, 201, ""),
    ({"name": "vera.ops", "role": "viewer"}, 201, ""),
])
def test_token_create_refuses_bad_roles_and_names_with_a_400(tmp_path, body, status, message):
    async def scenario(c):
        r = await c.post(f"{P}/tokens", headers=auth("adam"), json=body)
        answer = await r.json()
        assert r.status == status, answer
        if message:
            assert message in answer["error"]
    Api(tmp_path).run(scenario)


def test_token_names_that_look_like_existing_ones_are_refused(tmp_path):
    async def scenario(c):
        assert (await c.post(f"{P}/tokens", headers=auth("adam"),
                             json={"name": "alice", "role": "viewer"})).status == 201
        for alike in ("aIice", "ALICE", "al1ce", "a1ice"):
            r = await c.post(f"{P}/tokens", headers=auth("adam"),
                             json={"name": alike, "role": "admin"})
            assert r.status == 400 and "looks like the existing 'alice'" in \
                (await r.json())["error"], alike
        r = await c.post(f"{P}/tokens", headers=auth("adam"),
                         json={"name": "5ystem", "role": "admin"})
        assert r.status == 400 and "reserved" in (await r.json())["error"]
    Api(tmp_path).run(scenario)


def test_security_headers_are_sent_on_every_answer(tmp_path):
    from services.api.app import SECURITY_HEADERS

    async def scenario(c):
        for path, headers, status in (("/", {}, 200), ("/console/app.js", {}, 200),
                                      ("/healthz", {}, 200), (f"{P}/whoami", {}, 401),
                                      (f"{P}/whoami", auth("vera"), 200),
                                      ("/no/such/page", {}, 404)):
            r = await c.get(path, headers=headers)
            assert r.status == status, path
            for name, value in SECURITY_HEADERS.items():
                assert r.headers.get(name) == value, (path, name)
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
            if path.startswith(P):
                assert r.headers["Cache-Control"] == "no-store"
    Api(tmp_path).run(scenario)
