"""The analyst console in a real headless Chromium, against the real API, worker and broker.

An analyst logs in, watches robots get blocked, moves the block threshold, reads the what-if
preview, applies it with a reason, and the worker's next decisions on fresh robot numbers
follow the new threshold (checked on the decisions topic, not in the page). A viewer sees no
write controls and the API refuses its writes; a revoked token sends the page back to the login
box. The other panels (lookup, feedback, allowlist, appeals, shadow, rollback) are driven once
each. Screenshots go to ``tests/output/`` and their paths are printed.
"""

from __future__ import annotations

import random
import re
import time
import uuid

import orjson
import pytest
from selenium.webdriver.common.keys import Keys

from services.worker_process import scrape
from streams.policy import Policy
from streams.schema import Decision, SignalingEvent
from tests.integration.api_harness import ApiHarness
from tests.integration.browser_harness import Browser
from tests.integration.worker_harness import (DECISIONS, HarnessWorker, TopicReader,
                                              decisions_of, produce_events)

pytestmark = pytest.mark.integration

POLICY = "default"
#: Robots score about 0.9 here: blocked at the default 0.85, only rate-limited at 0.99.
NEW_BLOCK = 0.99
SLIDER_STEP = 0.01
ROBOTS_PER_WAVE = 5
ROBOT_CALLS = 120
#: Waits for things that happen asynchronously (decisions, the worker reading a policy).
DECISION_WAIT_S = 120.0
POLICY_WAIT_S = 30.0
UI_WAIT_S = 30.0
ENFORCING = ("rate_limit", "block")
#: Token names (they become policy authors and audit actors) and their roles.
ANALYST, VIEWER, ADMIN = "console-analyst", "console-viewer", "console-admin"
ROLES = {ANALYST: "analyst", VIEWER: "viewer", ADMIN: "admin"}


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def worker(model_broker_settings, tmp_path_factory):
    w = HarnessWorker(model_broker_settings, tmp_path_factory.mktemp("console-worker"),
                      app_id=f"dg-console-{uuid.uuid4().hex[:6]}")
    w.start()
    yield w
    w.stop()
    print(f"\n--- worker log tail ---\n{w.tail(10)}")


@pytest.fixture(scope="module")
def api(model_broker_settings, tmp_path_factory):
    """The real ``dialguard api`` process, with one token per role."""
    harness = ApiHarness(model_broker_settings, tmp_path_factory.mktemp("console-api"), ROLES)
    harness.start()
    try:
        yield harness
    finally:
        # Leave the session's other tests the built-in thresholds, whatever happened here.
        try:
            publish_baseline(harness)
        finally:
            harness.stop()
    print(f"\n--- API log tail ---\n{harness.tail(10)}")


def call(api: ApiHarness, name: str, method: str, path: str, body: object = None):
    """(status, JSON) of one API request made with token ``name``."""
    return api.raw(method, path, None if body is None else orjson.dumps(body),
                   token=api.tokens[name])


@pytest.fixture
def browser():
    b = Browser()
    try:
        yield b
    finally:
        b.close()


# -- traffic and reading -------------------------------------------------------------------
def fresh_robots(n: int) -> list[str]:
    """Numbers no other test uses (a random 8-digit tail under the 86172 test range)."""
    rnd = random.Random(uuid.uuid4().int)
    return [f"86172{rnd.randrange(10**8):08d}" for _ in range(n)]


def robot_calls(number: str, start: float, seed: int) -> list[SignalingEvent]:
    """A plain robot: a call every 5 s, 10% answered for 3 s, a third of failures unallocated."""
    rnd = random.Random(seed)
    events: list[SignalingEvent] = []
    for i in range(ROBOT_CALLS):
        ts = start + 5 * i
        callee = f"86139{rnd.randrange(10**8):08d}"
        cid = f"{number}-{i}"
        events.append(SignalingEvent(ts=ts, proto="sip", kind="attempt", call_id=cid,
                                     caller=number, callee=callee))
        if rnd.random() < 0.1:
            events.append(SignalingEvent(ts=ts + 4, proto="sip", kind="answer", call_id=cid,
                                         caller=number, callee=callee, code=200))
            events.append(SignalingEvent(ts=ts + 7, proto="sip", kind="release", call_id=cid,
                                         caller=number, callee=callee, duration_s=3.0))
        else:
            events.append(SignalingEvent(ts=ts + 2, proto="sip", kind="fail", call_id=cid,
                                         caller=number, callee=callee,
                                         code=404 if rnd.random() < 0.3 else 480))
    return events


def produce_robots(settings, numbers: list[str]) -> None:
    """Event times two hours back: in the past for the validator, one hour window each."""
    start = time.time() - 2 * 3600
    events = [e for i, n in enumerate(numbers) for e in robot_calls(n, start, seed=i)]
    produce_events(settings, sorted(events, key=lambda e: e.ts))


def decisions_for(settings, numbers: set[str], until) -> list[Decision]:
    reader = TopicReader(settings, DECISIONS.name)
    try:
        reader.poll_until(lambda msgs: until([d for d in decisions_of(msgs)
                                              if d.number in numbers]),
                          timeout=DECISION_WAIT_S, quiet_s=3.0)
        return [d for d in decisions_of(reader.messages) if d.number in numbers]
    finally:
        reader.close()


def all_enforced(numbers: set[str]):
    return lambda ds: numbers <= {d.number for d in ds if d.action in ENFORCING}


def wait_worker_policy(worker: HarnessWorker, version: int) -> None:
    """Until the worker reports ``version`` of the policy in force (its metrics say so)."""
    pattern = re.compile(rf'^dialguard_policy_version\{{policy="{POLICY}"\}} (\S+)$', re.M)
    deadline = time.monotonic() + POLICY_WAIT_S
    seen = None
    while time.monotonic() < deadline:
        m = pattern.search(scrape(worker.metrics_port) or "")
        seen = float(m.group(1)) if m else None
        if seen == version:
            return
        time.sleep(0.3)
    raise AssertionError(f"worker still applies {POLICY} v{seen}, expected v{version}")


def publish_baseline(api: ApiHarness) -> int:
    """Built-in thresholds as the live policy (earlier tests of the session may have left a
    dry-run or stricter one): the starting point the analyst edits."""
    body = {k: v for k, v in Policy().to_dict().items()
            if k not in ("name", "version", "author", "reason")}
    status, reply = call(api, ANALYST, "PUT", f"/api/v1/policies/{POLICY}",
                         {"policy": body, "reason": "console test baseline", "stage": "live"})
    assert status == 200, reply
    return reply["policy"]["version"]


# -- the browser ---------------------------------------------------------------------------
def log_in(browser: Browser, api: ApiHarness, token: str) -> None:
    browser.driver.get(api.url + "/")
    browser.wait_for("the login box", lambda: browser.find("token").is_displayed())
    browser.find("token").send_keys(token)
    browser.find("login").click()
    browser.wait_for("the console after login", lambda: browser.find("app").is_displayed(),
                     timeout=UI_WAIT_S)


def decision_rows(browser: Browser) -> dict[str, set[str]]:
    """number -> actions shown in the live decisions table."""
    rows: dict[str, set[str]] = {}
    for tr in browser.css("#decisions tr[data-number]"):
        rows.setdefault(tr.get_attribute("data-number"), set()).add(
            tr.get_attribute("data-action"))
    return rows


def move_slider(browser: Browser, action: str, target: float) -> None:
    """With the keyboard, as a person would (each step fires an input event)."""
    slider = browser.find(f"slider-{action}")
    steps = round((target - float(slider.get_attribute("value"))) / SLIDER_STEP)
    key = Keys.ARROW_RIGHT if steps > 0 else Keys.ARROW_LEFT
    slider.send_keys(*([key] * abs(steps)))
    assert float(slider.get_attribute("value")) == pytest.approx(target)
    assert browser.text(f"value-{action}") == f"{target:.2f}"


def whatif_view(browser: Browser) -> dict[str, object] | None:
    """The preview as shown, once it is the preview of the editor's current values (every
    slider move marks it pending until the answer to the last move is rendered)."""
    if not browser.text("whatif-status").startswith("preview of") or \
            not browser.css("#whatif-counts"):
        return None
    cells = {i: int(browser.text(i)) for i in ("whatif-current-block", "whatif-candidate-block",
                                               "whatif-current-rate_limit",
                                               "whatif-candidate-rate_limit")}
    changed = {tr.get_attribute("data-number"): (tr.get_attribute("data-from"),
                                                 tr.get_attribute("data-to"))
               for tr in browser.css("#whatif-changed tr[data-number]")}
    return {**cells, "changed": changed}


def latest_score(api: ApiHarness, number: str) -> float:
    status, found = call(api, VIEWER, "GET", f"/api/v1/numbers/{number}")
    assert status == 200 and found["score"], found
    return found["score"]["score"]


# -- tests ---------------------------------------------------------------------------------
def test_analyst_moves_the_block_threshold_and_the_worker_follows(
        model_broker_settings, worker, api, browser):
    base_version = publish_baseline(api)
    wait_worker_policy(worker, base_version)

    # 1. Robots under the baseline policy are blocked, and the live view shows it.
    first = fresh_robots(ROBOTS_PER_WAVE)
    produce_robots(model_broker_settings, first)
    before = decisions_for(model_broker_settings, set(first),
                           until=lambda ds: set(first) <= {d.number for d in ds
                                                           if d.action == "block"})
    blocked_scores = {d.number: d.score for d in before if d.action == "block"}
    assert set(first) <= set(blocked_scores), [(d.number, d.action, d.score) for d in before]
    # What-if replays each number's latest score: those below the new threshold must move.
    latest = {n: latest_score(api, n) for n in first}
    # What-if judges each latest score afresh (no held action): the robots whose latest score
    # the baseline blocks but the new threshold does not are the ones that must move.
    base_block = Policy().thresholds.block
    below_new = {n for n, s in latest.items() if base_block <= s < NEW_BLOCK}
    assert below_new, f"robots must score in [{base_block}, {NEW_BLOCK}) for this test: {latest}"

    log_in(browser, api, api.tokens[ANALYST])
    assert browser.text("whoami-role") == "analyst"
    browser.wait_for("the first robots blocked in the live view",
                     lambda: all("block" in decision_rows(browser).get(n, ()) for n in first),
                     timeout=UI_WAIT_S)
    browser.wait_for(f"the editor loaded with v{base_version}",
                     lambda: browser.text("policy-title") == f"{POLICY} v{base_version}")
    assert browser.text("value-block") == f"{Policy().thresholds.block:.2f}"
    browser.screenshot("console-1-live-decisions")

    # 2. Raise the block threshold: the preview says those robots would only be rate-limited.
    move_slider(browser, "block", NEW_BLOCK)
    preview = browser.wait_for("the what-if preview of block " + str(NEW_BLOCK),
                               lambda: whatif_view(browser), timeout=UI_WAIT_S)
    for n in below_new:
        assert preview["changed"].get(n) == ("block", "rate_limit"), (n, preview)
    assert preview["whatif-candidate-block"] <= preview["whatif-current-block"] - len(below_new)
    assert preview["whatif-candidate-rate_limit"] >= len(below_new)
    print(f"\nwhat-if at block {NEW_BLOCK}: block {preview['whatif-current-block']} -> "
          f"{preview['whatif-candidate-block']}, rate_limit "
          f"{preview['whatif-current-rate_limit']} -> {preview['whatif-candidate-rate_limit']}; "
          f"changed {len(preview['changed'])}")
    browser.screenshot("console-2-whatif-preview")

    # 3. Apply needs a reason; then it publishes the next version, authored by the token.
    browser.find("apply").click()
    browser.wait_for("the missing-reason message",
                     lambda: "reason is required" in browser.text("policy-error"))
    browser.find("apply-reason").send_keys("robots here score ~0.9; rate-limit, don't block")
    browser.find("apply").click()
    new_version = base_version + 1
    browser.wait_for(f"the apply confirmation for v{new_version}",
                     lambda: f"{POLICY} v{new_version}" in browser.text("policy-message"),
                     timeout=UI_WAIT_S)
    browser.wait_for("the new version in the history",
                     lambda: browser.css(f'#versions tr[data-version="{new_version}"]'))
    status, live = call(api, VIEWER, "GET", f"/api/v1/policies/{POLICY}")
    assert status == 200
    assert live["live"]["version"] == new_version
    assert live["live"]["thresholds"]["block"] == pytest.approx(NEW_BLOCK)
    assert live["live"]["author"] == ANALYST
    browser.screenshot("console-3-applied")

    # 4. The worker's next decisions, on fresh robot numbers, follow the new threshold.
    wait_worker_policy(worker, new_version)
    second = fresh_robots(ROBOTS_PER_WAVE)
    produce_robots(model_broker_settings, second)
    after = decisions_for(model_broker_settings, set(second), until=all_enforced(set(second)))
    assert after and all(d.policy == POLICY and d.policy_version == new_version for d in after), \
        [(d.number, d.policy_version) for d in after]
    wrongly_blocked = [(d.number, d.score) for d in after
                       if d.action == "block" and d.score < NEW_BLOCK]
    assert not wrongly_blocked, f"blocked below the new threshold: {wrongly_blocked}"
    for n in second:
        mine = [d for d in after if d.number == n]
        top = max(mine, key=lambda d: d.score)
        implied = "block" if top.score >= NEW_BLOCK else "rate_limit"
        assert implied in {d.action for d in mine}, (n, [(d.action, d.score) for d in mine])
    assert any(d.action == "rate_limit" for d in after)
    browser.wait_for("the new decisions in the live view, under the new version",
                     lambda: any(n in decision_rows(browser) for n in second),
                     timeout=UI_WAIT_S)
    shown = browser.find("decisions").text
    assert f"{POLICY} v{new_version}" in shown
    print(f"\nfirst wave (v{base_version}) blocked at scores "
          f"{sorted(round(s, 2) for s in blocked_scores.values())}; second wave "
          f"(v{new_version}): " + ", ".join(sorted({f'{d.action} {d.score:.2f}' for d in after})))
    browser.screenshot("console-4-after-apply")
    assert not browser.js_errors(), browser.console_log()


def test_viewer_sees_no_write_controls_and_cannot_apply(api, browser):
    # A bad token: the login box says why and stays.
    browser.driver.get(api.url + "/")
    browser.find("token").send_keys("not-a-token")
    browser.find("login").click()
    browser.wait_for("the 401 message", lambda: "invalid" in browser.text("login-error"))
    assert not browser.find("app").is_displayed()

    log_in(browser, api, api.tokens[VIEWER])
    assert browser.text("whoami-role") == "viewer"
    browser.wait_for("the live view polling", lambda: browser.text("decisions-status"))
    for element_id in ("apply", "apply-reason", "start-shadow", "allow-add", "fb-submit",
                       "rollback-reason", "promote", "discard"):
        assert not browser.find(element_id).is_displayed(), f"{element_id} shown to a viewer"
    assert not [b for b in browser.css("button.rollback, button.allow-remove") if b.is_displayed()]
    browser.find("lookup-number").send_keys("8613800138000")
    browser.find("lookup").click()
    browser.wait_for("the viewer's lookup", lambda: browser.text("lookup-title") == "8613800138000")
    assert not browser.css("#manual-block, #manual-unblock"), "manual block offered to a viewer"
    # The read side works for a viewer: the allowlist (built-in entries at least) is listed.
    browser.wait_for("the allowlist", lambda: browser.css("#allowlist tr.builtin"))
    browser.screenshot("console-viewer")

    # The page hides the controls; the API is what refuses. Same request the Apply button sends,
    # from the page, with the viewer's token from sessionStorage.
    reply = browser.driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/api/v1/policies/default', {method: 'PUT', headers: {
              'Authorization': 'Bearer ' + sessionStorage.getItem('dialguard.token'),
              'Content-Type': 'application/json'},
            body: JSON.stringify({policy: {thresholds: {label: 0.5, rate_limit: 0.7,
                                  block: 0.95}}, reason: 'viewer tries', stage: 'live'})})
          .then(async r => done({status: r.status, body: await r.json()}))
          .catch(e => done({status: 0, body: String(e)}));""")
    assert reply["status"] == 403, reply
    assert "viewer" in reply["body"]["error"]


def test_a_revoked_token_sends_the_console_back_to_the_login_box(api, browser):
    """A session whose token is revoked meanwhile: the next poll's 401 shows the login box
    again with the API's message, and the token is gone from sessionStorage."""
    name = f"console-tmp-{uuid.uuid4().hex[:6]}"
    status, created = call(api, ADMIN, "POST", "/api/v1/tokens", {"name": name, "role": "viewer"})
    assert status in (200, 201), created
    log_in(browser, api, created["token"])
    assert browser.text("whoami-name") == name
    status, reply = call(api, ADMIN, "DELETE", f"/api/v1/tokens/{name}")
    assert status == 200, reply
    browser.wait_for("the login box after the token was revoked",
                     lambda: browser.find("login-panel").is_displayed()
                     and "revoked" in browser.text("login-error"), timeout=UI_WAIT_S)
    assert not browser.find("app").is_displayed()
    assert browser.driver.execute_script(
        "return sessionStorage.getItem('dialguard.token')") is None


def click_and_wait(browser: Browser, button_id: str, what: str, check) -> None:
    browser.find(button_id).click()
    browser.wait_for(what, check, timeout=UI_WAIT_S)


def test_lookup_feedback_allowlist_appeal_shadow_and_rollback(model_broker_settings, worker, api,
                                                              browser):
    v0 = publish_baseline(api)
    robot = fresh_robots(1)[0]
    produce_robots(model_broker_settings, [robot])
    decisions_for(model_broker_settings, {robot}, until=all_enforced({robot}))
    log_in(browser, api, api.tokens[ANALYST])
    browser.wait_for(f"the editor loaded with v{v0}",
                     lambda: browser.text("policy-title") == f"{POLICY} v{v0}")

    # Number lookup: what is in force, every decision with its reasons, the last features.
    browser.find("lookup-number").send_keys(robot)
    click_and_wait(browser, "lookup", "the lookup result",
                   lambda: browser.css("#lookup-decisions tbody tr"))
    assert browser.text("lookup-title") == robot
    assert "score" in browser.text("lookup-decisions")
    assert "attempts_1h" in browser.text("lookup-features")
    assert re.search(r"now: (rate_limit|block)", browser.text("lookup-current"))

    # Feedback: one label, then the lookup shows it.
    browser.find("fb-number").send_keys(robot)
    browser.find("fb-note").send_keys("<b>called my mother 40 times</b>")
    click_and_wait(browser, "fb-submit", "the label confirmation",
                   lambda: "recorded" in browser.text("fb-result"))

    def label_shown() -> bool:
        browser.find("lookup").click()
        time.sleep(0.5)
        return bool(browser.css("#lookup-labels")) and \
            "<b>called my mother 40 times</b>" in browser.text("lookup-labels")
    browser.wait_for("the label in the lookup, as text", label_shown, timeout=UI_WAIT_S)
    assert not browser.css("#lookup-labels b"), "a note from the network became markup"

    # Allowlist: add an entry (needs a reason), see it, remove it.
    protected = fresh_robots(1)[0]
    browser.find("allow-number").send_keys(protected)
    browser.find("allow-reason").send_keys("hospital switchboard")
    click_and_wait(browser, "allow-add", "the new allowlist entry",
                   lambda: browser.css(f'#allowlist tr[data-number="{protected}"]'))
    browser.find("allow-reason").send_keys("switchboard moved")
    browser.css(f'button.allow-remove[data-number="{protected}"]')[0].click()
    browser.wait_for("the entry gone", lambda: not browser.css(
        f'#allowlist tr[data-number="{protected}"]'), timeout=UI_WAIT_S)
    assert browser.css('#allowlist tr.builtin[data-number="110"]'), "emergency numbers listed"

    # Appeal: filed through the API (the redress line), decided in the console.
    status, filed = call(api, ANALYST, "POST", "/api/v1/appeals",
                         {"number": robot, "appellant": "Li Wei", "contact": "+8613800000000",
                          "note": "this is my shop's line"})
    assert status in (200, 201), filed
    appeal_id = filed["appeal"]["id"]
    browser.wait_for("the pending appeal in the list",
                     lambda: browser.css(f'#appeals tr[data-id="{appeal_id}"]'), timeout=UI_WAIT_S)
    browser.find("appeal-reason").send_keys("shop confirmed by callback")
    browser.css(f'button.appeal-upheld[data-id="{appeal_id}"]')[0].click()
    browser.wait_for("the appeal leaving the pending list",
                     lambda: not browser.css(f'#appeals tr[data-id="{appeal_id}"]'),
                     timeout=UI_WAIT_S)
    status, upheld = call(api, VIEWER, "GET", "/api/v1/appeals?status=upheld")
    assert status == 200 and appeal_id in {a["id"] for a in upheld["appeals"]}, upheld

    # Manual block and unblock from the lookup (a number nobody has seen).
    manual = fresh_robots(1)[0]
    browser.find("lookup-number").clear()
    browser.find("lookup-number").send_keys(manual)
    click_and_wait(browser, "lookup", "the lookup of a fresh number",
                   lambda: browser.text("lookup-title") == manual)
    assert "no action in force" in browser.text("lookup-current")
    browser.find("manual-reason").send_keys("scam campaign reported by police")
    click_and_wait(browser, "manual-block", "the manual block in force",
                   lambda: "now: block" in browser.text("lookup-current")
                   and "manual v0" in browser.text("lookup-current"))
    browser.find("manual-reason").send_keys("police withdrew the report")
    click_and_wait(browser, "manual-unblock", "the block lifted",
                   lambda: "no action in force" in browser.text("lookup-current"))
    manual_actions = [d.action for d in decisions_for(
        model_broker_settings, {manual}, until=lambda ds: {"block", "unblock"} <= {d.action for d in ds})]
    assert {"block", "unblock"} <= set(manual_actions), manual_actions

    # An invalid candidate: the preview and Apply show the API's own message, nothing changes.
    status, before = call(api, VIEWER, "GET", f"/api/v1/policies/{POLICY}")
    assert status == 200 and before["live"]["version"] == v0, before
    move_slider(browser, "block", 0.6)
    invalid = "must satisfy label <= rate_limit <= block"
    browser.wait_for("the what-if error", lambda: invalid in browser.text("whatif-error"),
                     timeout=UI_WAIT_S)
    browser.find("apply-reason").send_keys("typo")
    click_and_wait(browser, "apply", "the apply error",
                   lambda: invalid in browser.text("policy-error"))
    assert call(api, VIEWER, "GET", f"/api/v1/policies/{POLICY}")[1]["live"]["version"] == v0
    browser.find("apply-reason").clear()
    browser.find("reset-policy").click()
    assert browser.text("value-block") == f"{before['live']['thresholds']['block']:.2f}"

    # Shadow: start a candidate, discard it; start another, promote it.
    move_slider(browser, "block", 0.9)
    browser.find("apply-reason").send_keys("try 0.90 in shadow")
    click_and_wait(browser, "start-shadow", "the shadow candidate",
                   lambda: browser.find("shadow-box").is_displayed()
                   and "0.90" in browser.text("shadow-info"))
    browser.find("shadow-reason").send_keys("not now")
    click_and_wait(browser, "discard", "the shadow gone",
                   lambda: not browser.find("shadow-box").is_displayed())
    assert call(api, VIEWER, "GET", f"/api/v1/policies/{POLICY}")[1]["shadow"] is None
    browser.find("apply-reason").send_keys("try 0.90 in shadow again")
    click_and_wait(browser, "start-shadow", "the second shadow candidate",
                   lambda: browser.find("shadow-box").is_displayed())
    browser.find("shadow-reason").send_keys("shadow looked right")
    click_and_wait(browser, "promote", "the promoted version live",
                   lambda: f"{POLICY} v" in browser.text("policy-title")
                   and int(browser.text("policy-title").split(" v")[-1]) > v0
                   and not browser.find("shadow-box").is_displayed())
    promoted = call(api, VIEWER, "GET", f"/api/v1/policies/{POLICY}")[1]["live"]
    assert promoted["thresholds"]["block"] == pytest.approx(0.9)
    assert browser.text("value-block") == "0.90"

    # Rollback: back to the version before, republished as the next one.
    browser.find("rollback-reason").send_keys("back to what we had")
    browser.wait_for("the rollback button of the old version", lambda: browser.css(
        f'button.rollback[data-version="{v0}"]'))
    browser.css(f'button.rollback[data-version="{v0}"]')[0].click()
    browser.wait_for("the rollback confirmation",
                     lambda: "rolled back" in browser.text("policy-message"), timeout=UI_WAIT_S)
    rolled = call(api, VIEWER, "GET", f"/api/v1/policies/{POLICY}")[1]["live"]
    assert rolled["version"] == promoted["version"] + 1
    assert rolled["thresholds"] == before["live"]["thresholds"]
    old_block = f"{before['live']['thresholds']['block']:.2f}"
    browser.wait_for("the editor showing the rolled-back thresholds",
                     lambda: browser.text("value-block") == old_block)
    browser.screenshot("console-5-panels")
    assert not browser.js_errors(), browser.console_log()


def test_campaigns_trunk_allowlist_and_campaign_thresholds(api, browser):
    """Issue 10 in the console: a trunk decision in the campaigns view (its match in words, a
    link to the trunk's lookup), a trunk on the allowlist, and the per-scope thresholds edited
    and applied."""
    v0 = publish_baseline(api)
    tag = uuid.uuid4().hex[:6]
    trunk = f"sw-console/ent-{tag}"
    status, reply = call(api, ANALYST, "POST", f"/api/v1/trunks/sw-console/ent-{tag}/block",
                         {"reason": "<i>spoofed neighbour calls</i>", "ttl_s": 3600,
                          "match": {"attest": ["B", "C", "none"]}})
    assert status == 200, reply
    key = f"trunk:{trunk}"
    log_in(browser, api, api.tokens[ANALYST])
    browser.wait_for("the trunk decision in the campaigns view",
                     lambda: browser.css(f'#campaigns tr[data-key="{key}"]'), timeout=UI_WAIT_S)
    row = browser.css(f'#campaigns tr[data-key="{key}"]')[0]
    assert row.get_attribute("data-scope") == "trunk" and row.get_attribute("data-action") == "block"
    assert f"calls entering through trunk {trunk} with attestation B/C/none" in row.text
    assert "<i>spoofed neighbour calls</i>" in row.text and not row.find_elements("css selector", "i")
    assert browser.css(f'#decisions tr[data-number="{key}"]'), "scoped decision in the live view"
    browser.screenshot("console-6-campaigns")

    # Its link opens the trunk's lookup: scope, what it covers, the decision and its reasons.
    row.find_elements("css selector", "a.number")[0].click()
    browser.wait_for("the trunk lookup", lambda: browser.text("lookup-title") == key,
                     timeout=UI_WAIT_S)
    assert "now: block" in browser.text("lookup-current")
    assert "attestation B/C/none" in browser.text("lookup-decisions")

    # A trunk on the allowlist, then off it again.
    bank = f"sw-console/bank-{tag}"
    browser.find("allow-number").send_keys(bank)
    browser.find("allow-trunk").click()
    browser.find("allow-reason").send_keys("bank's trunk")
    click_and_wait(browser, "allow-add", "the trunk entry",
                   lambda: browser.css(f'#allowlist tr[data-number="{bank}"][data-kind="trunk"]'))
    status, found = call(api, VIEWER, "GET", f"/api/v1/trunks/sw-console/bank-{tag}")
    assert status == 200 and found["protected"] == "bank's trunk", found
    browser.find("allow-reason").send_keys("bank moved")
    browser.css(f'button.allow-remove[data-number="{bank}"]')[0].click()
    browser.wait_for("the trunk entry gone", lambda: not browser.css(
        f'#allowlist tr[data-number="{bank}"]'), timeout=UI_WAIT_S)

    # Campaign thresholds: the trunk block bar raised in the editor, previewed and applied.
    browser.wait_for(f"the editor loaded with v{v0}",
                     lambda: browser.text("policy-title") == f"{POLICY} v{v0}")
    field = browser.find("scope-trunk-block")
    assert float(field.get_attribute("value")) == pytest.approx(
        Policy().scope("trunk").thresholds.block)
    field.clear()
    field.send_keys("0.97")
    browser.wait_for("the preview of the new trunk threshold",
                     lambda: browser.text("whatif-status").startswith("preview of"),
                     timeout=UI_WAIT_S)
    assert not browser.text("whatif-error")
    browser.find("apply-reason").send_keys("fewer whole-trunk blocks")
    click_and_wait(browser, "apply", "the new version applied",
                   lambda: "applied" in browser.text("policy-message"))
    live = call(api, VIEWER, "GET", f"/api/v1/policies/{POLICY}")[1]["live"]
    assert live["version"] > v0
    assert live["scopes"]["trunk"]["thresholds"]["block"] == pytest.approx(0.97)
    assert live["scopes"]["prefix"]["thresholds"] == \
        Policy().to_dict()["scopes"]["prefix"]["thresholds"]
    assert live["thresholds"] == Policy().to_dict()["thresholds"]
    status, _ = call(api, ANALYST, "POST", f"/api/v1/trunks/sw-console/ent-{tag}/unblock",
                     {"reason": "test over"})
    assert status == 200
    publish_baseline(api)
    assert not browser.js_errors(), browser.console_log()
