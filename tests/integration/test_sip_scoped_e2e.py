"""Issue 10 end to end on real SIP: robots that show a new caller number on every call are
stopped at their trunk or their number range, while everybody else completes their calls.

SIPp callers -> Kamailio (dialguard.cfg) -> SIPp callee, with the HEP collector publishing the
events, a real switch adapter and the real test broker. The detector of sources is not part of
this test: the scoped decisions it would publish are published here (as the switch harness
does), so what is tested is enforcement, and that the switch and the ingest agree.

Traffic, one SIPp run, calls interleaved:

* a robot behind trunk group ``tg-robot`` (RFC 4904 ``tgrp`` in its Contact), a fresh caller
  number on every call: the whole trunk is blocked; its one call to 112 still goes through;
* a robot drawing caller numbers from one range (``86170555xxxx``) on the shared trunk (no
  tgrp: the trunk is the source address): the range is blocked;
* a neighbour spoofer on the shared trunk (caller = callee but the last 4 digits): the shared
  trunk is blocked for neighbour calls only;
* unsigned and C-attested robots on ``tg-mixed``, beside legitimate A-attested callers: that
  trunk is blocked for attestation B/C/none only;
* ordinary callers on ``tg-people`` (a trunk another switch blocked, and a decision with a match
  this switch does not understand: neither may touch them) and on the shared trunk.

Assertions: every call's final status as SIPp received it; every robot call 603 with the scope
and the redress contact in the Reason header, every other call answered; the acks; and, call by
call, that the events the ingest published (trunk, switch, attest) make ``Decision.covers``
(the one coverage rule) say exactly which calls the switch declined.
"""

from __future__ import annotations

import base64
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from services.broker import free_ports
from services.child_process import child_env
from services.kamailio_process import KamailioProcess
from services.settings import REPO_ROOT, Settings
from streams.schema import Decision, SignalingEvent
from streams.scope import decision_key, trunk_id
from streams.topics import ACKS, SIGNALING_EVENTS
from tests.integration.switch_harness import (AdapterProcess, SippUac, SippUas, acks_of,
                                              produce_decisions, stop_group, tail,
                                              wait_for_line)
from tests.integration.test_sip_e2e import (COLLECTOR_READY, COLLECTOR_STOP_TIMEOUT_S,
                                            READY_TIMEOUT_S, _final_codes)
from tests.integration.conftest import TEST_PARTITIONS
from tests.integration.worker_harness import TopicReader, events_in

pytestmark = pytest.mark.integration

ROBOT_CALLS = 20
RANGE_CALLS = 12
NEIGHBOUR_CALLS = 10
MIXED_ROBOT_CALLS = 10
PEOPLE_CALLS = 8
SHARED_PEOPLE_CALLS = 8
SIGNED_PEOPLE_CALLS = 8
RATE = 10
MAX_S = 120
ACK_TIMEOUT_S = 30.0
TTL_S = 3600
RANGE = "86170555"
SHARED_TRUNK = "127.0.0.1"  # no tgrp: the source address SIPp sends from
UNSIGNED = "X-Unsigned: yes"
#: SIPp stands in for interconnect peers that name their trunk groups: its tgrp is believed.
TGRP_PEERS = "127.0.0.1"


def passport_header(attest: str) -> str:
    """An Identity header with a SHAKEN PASSporT claiming ``attest`` (unsigned signature: the
    switch and the ingest read the claim, they do not verify it)."""
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()
    return (f"Identity: {b64({'alg': 'ES256', 'ppt': 'shaken', 'typ': 'passport'})}."
            f"{b64({'attest': attest, 'iat': 1, 'orig': {'tn': '1'}})}.c2ln")


def scoped(scope: str, target: str, switch: str | None = None, match: dict | None = None,
           action: str = "block") -> Decision:
    now = time.time()
    return Decision(number=decision_key(scope, target), action=action, ttl_s=TTL_S, score=0.97,
                    reasons=["e2e: scoped enforcement"], policy="e2e", policy_version=1,
                    decided_at=now, trigger_ts=now - 1, scope=scope, target=target,
                    switch=switch, match=match)


def test_rotating_robots_are_stopped_at_trunk_and_range(broker_settings: Settings,
                                                        tmp_path: Path) -> None:
    settings = broker_settings
    rng = random.Random(10)
    switch = f"kam-{uuid.uuid4().hex[:6]}"

    def num(head: str) -> str:
        return head + "".join(str(rng.randrange(10)) for _ in range(13 - len(head)))

    # (who, caller, callee, tgrp, extra header line), in call order.
    calls: list[tuple[str, str, str, str, str]] = []
    calls += [("robot", num("86"), num("86139"), "tg-robot", UNSIGNED)
              for _ in range(ROBOT_CALLS)]
    calls += [("emergency", num("86"), "112", "tg-robot", UNSIGNED)]
    calls += [("range", num(RANGE), num("86139"), "", UNSIGNED) for _ in range(RANGE_CALLS)]
    for _ in range(NEIGHBOUR_CALLS):
        callee = num("86138")
        calls.append(("neighbour", callee[:-4] + num("")[-4:], callee, "", UNSIGNED))
    calls += [("mixed-robot", num("86"), num("86139"), "tg-mixed",
               UNSIGNED if i % 2 else passport_header("C")) for i in range(MIXED_ROBOT_CALLS)]
    calls += [("people", num("86135"), num("86139"), "tg-people", UNSIGNED)
              for _ in range(PEOPLE_CALLS)]
    calls += [("shared-people", num("86136"), num("86137"), "", UNSIGNED)
              for _ in range(SHARED_PEOPLE_CALLS)]
    calls += [("signed-people", num("86158"), num("86139"), "tg-mixed", passport_header("A"))
              for _ in range(SIGNED_PEOPLE_CALLS)]
    rng.shuffle(calls)
    robots = {"robot", "range", "neighbour", "mixed-robot"}
    # Callers that differ in nothing but the call: a robot's fresh number is never reused.
    assert len({c[1] for c in calls}) == len(calls)

    decisions = [
        scoped("trunk", trunk_id(switch, "tg-robot"), switch),
        scoped("prefix", RANGE),
        scoped("trunk", trunk_id(switch, SHARED_TRUNK), switch, {"neighbour_tail": 4}),
        scoped("trunk", trunk_id(switch, "tg-mixed"), switch, {"attest": ["B", "C", "none"]}),
    ]
    not_here = [
        scoped("trunk", trunk_id("other-switch", "tg-people"), "other-switch"),
        scoped("trunk", trunk_id(switch, "tg-people"), switch, {"attest": ["C"], "asn": 64500}),
    ]

    hep_port = free_ports(1)[0]
    answer = SippUas("uas_answer.xml", tmp_path / "uas")
    kam = KamailioProcess(run_dir=tmp_path / "kamailio", hep_port=hep_port,
                          dest_uri=f"sip:127.0.0.1:{answer.port}",
                          redress=settings.redress_contact, tgrp_peers=TGRP_PEERS)
    adapter = AdapterProcess(settings, tmp_path / "adapter", kam.rpc_url, switch)
    collector_log = tmp_path / "collector.log"
    collector: subprocess.Popen | None = None
    uac = SippUac("trunk_uac.xml", tmp_path / "callers", kam.sip_address,
                  rows=[c[1:] for c in calls], calls=len(calls), rate=RATE, max_seconds=MAX_S)
    acks = TopicReader(settings, ACKS.name)
    events = TopicReader(settings, SIGNALING_EVENTS.name)
    try:
        env = child_env(settings, tmp_path / "collector-home", {"SIP_TGRP_PEERS": TGRP_PEERS})
        with collector_log.open("ab") as out:
            collector = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "ingest", "hep", "--host", "127.0.0.1",
                 "--port", str(hep_port), "--metrics-port", "0", "--switch", switch],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                start_new_session=True)
        wait_for_line(collector_log, COLLECTOR_READY, collector, READY_TIMEOUT_S, "HEP collector")
        answer.start()
        kam.start()
        adapter.start()
        produce_decisions(settings, decisions + not_here)
        keys = {d.number for d in decisions}
        assert acks.poll_until(lambda m: keys <= {a.number for a in acks_of(m)
                                                  if a.switch == switch
                                                  and a.status == "applied"}, ACK_TIMEOUT_S), \
            (acks_of(acks.messages)[-10:], adapter.tail())
        assert acks.poll_until(lambda m: len({a.number for a in acks_of(m)
                                              if a.switch == switch
                                              and a.status == "skipped"}) >= 2, ACK_TIMEOUT_S)
        skipped = {a.number: a.detail for a in acks_of(acks.messages)
                   if a.switch == switch and a.status == "skipped"}
        assert "other-switch" in skipped[not_here[0].number]
        assert "never wider" in skipped[not_here[1].number]

        uac.start()
        stats = uac.wait()
        assert stats.failed == 0, stats.errors

        # Every call's final status: row i is SIPp's call number i + 1 (Call-ID "<n>-...").
        finals = {int(cid.split("-", 1)[0]): code for cid, (_, code) in
                  _final_codes(stats).items()}
        outcome = {i: finals.get(i + 1, 0) for i in range(len(calls))}
        by_who: dict[str, list[int]] = {}
        for i, (who, *_rest) in enumerate(calls):
            by_who.setdefault(who, []).append(outcome[i])
        for who, codes in by_who.items():
            want = 603 if who in robots else 200
            assert codes == [want] * len(codes), (who, codes, kam.tail())
        for scope in ("trunk", "prefix"):
            assert f'Reason: SIP;cause=603;text="blocked as nuisance calls (scope {scope}); ' \
                   f'{settings.redress_contact}"' in stats.full_messages

        # The ingest names trunk and switch as the switch does: the one coverage rule over the
        # published events picks exactly the calls Kamailio declined.
        call_ids = {cid for cid in _final_codes(stats)}
        def published(messages) -> list[SignalingEvent]:
            return [SignalingEvent(**e) for x in messages
                    if x.value() is not None and x.value()[:1] in (b"{", b"[")
                    for e in events_in(x, TEST_PARTITIONS)]

        assert events.poll_until(
            lambda m: call_ids <= {e.call_id for e in published(m)}, ACK_TIMEOUT_S), \
            tail(collector_log)
        attempts = {}
        for ev in published(events.messages):
            if ev.call_id in call_ids and ev.kind == "attempt":
                attempts[int(ev.call_id.split("-", 1)[0]) - 1] = ev
        assert set(attempts) == set(outcome)
        for i, ev in attempts.items():
            assert ev.switch == switch
            assert ev.trunk == (calls[i][3] or SHARED_TRUNK), (calls[i], ev)
            covered = any(d.covers(ev.caller, ev.callee, ev.switch, ev.trunk, ev.attest)
                          for d in decisions)
            if calls[i][0] == "emergency":
                # Covered by the trunk block, and still put through: emergency calls pass.
                assert covered and outcome[i] == 200
            else:
                assert covered == (outcome[i] == 603), (calls[i], ev, outcome[i])

        placed = len(calls)
        blocked = sum(1 for c in outcome.values() if c == 603)
        stopped = ", ".join(f"{w} {len(c)}" for w, c in sorted(by_who.items()) if w in robots)
        through = ", ".join(f"{w} {len(c)}" for w, c in sorted(by_who.items())
                            if w not in robots)
        print(f"\nscoped e2e: {placed} calls placed, {blocked} got 603 ({stopped}), "
              f"{sum(1 for c in outcome.values() if c == 200)} completed ({through})")
    finally:
        uac.stop()
        acks.close()
        events.close()
        adapter.stop()
        kam.stop()
        answer.stop()
        stop_group(collector, COLLECTOR_STOP_TIMEOUT_S)
