"""Pure parts of the switch adapter: what to do with a decision, remaining TTL, rebuild fold,
backoff; plus the shipped Kamailio configuration passing Kamailio's own syntax check."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from services.kamailio_process import KamailioProcess, RpcError, kamailio_string
from services.switch_adapter import (BLOCKED_VALUE, SKIP_DRY_RUN, SKIP_LABEL, SKIP_OLDER,
                                     SKIP_UNKNOWN, RpcOp, Tables, backoff_delays, fold_latest,
                                     plan_decision, rebuild_plan, remaining_ttl, version_of)
from services.system import system_tool
from streams.schema import Ack, Decision

NOW = 1_800_000_000.0
TABLES = Tables(blocked="blocked", ratelimit="ratelimit", rate_limit_calls=6)
SWITCH = "sw-1"
NUMBER = "8613800138000"


def decision(action: str = "block", ttl_s: int = 3600, decided_at: float = NOW - 100,
             trigger_ts: float = NOW - 101, dry_run: bool = False,
             number: str = NUMBER) -> Decision:
    return Decision(number=number, action=action, ttl_s=ttl_s, score=0.9, reasons=["r"],
                    policy="default", policy_version=1, decided_at=decided_at,
                    trigger_ts=trigger_ts, dry_run=dry_run)


def test_remaining_ttl_counts_from_decided_at() -> None:
    assert remaining_ttl(decision(ttl_s=3600, decided_at=NOW - 100), NOW) == 3500
    assert remaining_ttl(decision(ttl_s=60, decided_at=NOW - 100), NOW) == -40


def test_block_sets_blocked_with_remaining_ttl_and_drops_rate_limit() -> None:
    plan = plan_decision(decision("block", ttl_s=3600, decided_at=NOW - 100.5), None, NOW,
                         TABLES, SWITCH)
    assert plan.applies
    assert plan.ops == (RpcOp("htable.setxs", ("blocked", NUMBER, BLOCKED_VALUE, 3500)),
                        RpcOp("htable.delete", ("ratelimit", NUMBER)))
    assert plan.expires_at == NOW + 3500


def test_rate_limit_sets_ratelimit_entry_and_drops_block() -> None:
    plan = plan_decision(decision("rate_limit", ttl_s=1800, decided_at=NOW), None, NOW,
                         TABLES, SWITCH)
    assert plan.ops == (RpcOp("htable.setxi", ("ratelimit", NUMBER, 6, 1800)),
                        RpcOp("htable.delete", ("blocked", NUMBER)))


def test_unblock_removes_both_entries() -> None:
    plan = plan_decision(decision("unblock", ttl_s=0), None, NOW,
                         TABLES, SWITCH)
    assert set(plan.ops) == {RpcOp("htable.delete", ("blocked", NUMBER)),
                             RpcOp("htable.delete", ("ratelimit", NUMBER))}
    assert plan.expires_at == 0


def test_expired_block_is_not_set_but_clears_entries() -> None:
    plan = plan_decision(decision("block", ttl_s=60, decided_at=NOW - 600), None, NOW,
                         TABLES, SWITCH)
    assert plan.applies
    assert all(op.method == "htable.delete" for op in plan.ops)
    assert "expired" in plan.detail


def test_a_second_left_is_still_a_one_second_entry() -> None:
    plan = plan_decision(decision("block", ttl_s=60, decided_at=NOW - 59.9), None, NOW,
                         TABLES, SWITCH)
    assert plan.ops[0].params[-1] == 1


@pytest.mark.parametrize("kwargs,why", [
    ({"dry_run": True}, SKIP_DRY_RUN),
    ({"action": "label"}, SKIP_LABEL),
    ({"action": "quarantine"}, SKIP_UNKNOWN),
])
def test_never_applied(kwargs: dict, why: str) -> None:
    plan = plan_decision(decision(**kwargs), None, NOW,
                         TABLES, SWITCH)
    assert not plan.applies and plan.skip == why and plan.ops == ()


def test_never_older_over_newer() -> None:
    newer = decision("unblock", decided_at=NOW - 10)
    older = decision("block", decided_at=NOW - 20)
    assert plan_decision(older, version_of(newer), NOW, TABLES, SWITCH).skip == SKIP_OLDER
    # The same decision again (a replay) is not newer either.
    assert plan_decision(newer, version_of(newer), NOW, TABLES, SWITCH).skip == SKIP_OLDER
    # Same decided_at, later event time: newer.
    tie = decision("block", decided_at=NOW - 10, trigger_ts=newer.trigger_ts + 1)
    assert plan_decision(tie, version_of(newer), NOW, TABLES, SWITCH).applies


def test_fold_keeps_newest_enforcing_decision_by_version_not_by_offset() -> None:
    a, b = "8613800000001", "8613800000002"
    records = [
        (a, decision("block", decided_at=NOW - 50, number=a)),
        (a, decision("unblock", decided_at=NOW - 60, number=a)),      # older, arrives later
        (a, decision("block", decided_at=NOW - 40, number=a, dry_run=True)),
        (a, decision("label", decided_at=NOW - 30, number=a)),
        (b, decision("rate_limit", decided_at=NOW - 50, number=b)),
        (b, None),                                                    # tombstone
    ]
    latest = fold_latest(records)
    assert list(latest) == [a]
    assert latest[a].action == "block" and latest[a].decided_at == NOW - 50


def test_rebuild_plan_skips_expired_keeps_unblocks() -> None:
    live = decision("block", ttl_s=3600, decided_at=NOW - 10, number="8613800000001")
    gone = decision("block", ttl_s=60, decided_at=NOW - 600, number="8613800000002")
    lifted = decision("unblock", ttl_s=0, decided_at=NOW - 600, number="8613800000003")
    todo = rebuild_plan({d.number: d for d in (live, gone, lifted)}, NOW)
    assert {d.number for d in todo} == {live.number, lifted.number}


def test_backoff_doubles_up_to_the_cap() -> None:
    assert backoff_delays(5, 0.2, 1.0) == [0.2, 0.4, 0.8, 1.0]
    assert backoff_delays(1, 0.2, 1.0) == []


def test_ack_round_trips_and_old_acks_still_decode() -> None:
    ack = Ack(number=NUMBER, action="block", status="applied", latency_s=0.25, detail="d",
              switch="sw", decided_at=NOW, trigger_ts=NOW - 1, applied_at=NOW + 0.25,
              attempts=2, expires_at=NOW + 3600, policy="default", policy_version=3)
    assert Ack.decode(ack.encode()) == ack
    old = Ack.decode(b'{"number":"1","action":"block","status":"failed","latency_s":0.0}')
    assert old.switch == "" and old.attempts == 0


def test_kamailio_string_escapes_quotes() -> None:
    assert kamailio_string('call "us" \\ now') == '"call \\"us\\" \\\\ now"'


def test_shipped_kamailio_cfg_passes_kamailio_syntax_check(tmp_path: Path) -> None:
    kam = KamailioProcess(run_dir=tmp_path, hep_port=9060, dest_uri="sip:127.0.0.1:5080",
                          redress='appeal at "https://x.example/appeal"',
                          unalloc_prefix="8699", unalloc_uri="sip:127.0.0.1:5081")
    cmd = kam.command(system_tool("kamailio")) + ["-c"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "config file ok" in out
    assert f"127.0.0.1 [127.0.0.1]:{kam.sip_port}" in out


def test_make_run_kamailio_follows_the_settings(tmp_path: Path) -> None:
    from services.settings import Settings

    settings = Settings.from_env(environ={}, home=tmp_path, kamailio_sip_port=5999,
                                 kamailio_rpc_url="http://127.0.0.1:5998/RPC", hep_port=9061,
                                 country_code="44")
    kam = KamailioProcess.for_settings(settings)
    assert (kam.sip_port, kam.http_port, kam.rpc_url) == (5999, 5998, settings.kamailio_rpc_url)
    defines = kam.defines()
    assert defines["HEP_URI"] == '"sip:127.0.0.1:9061"' and defines["COUNTRY_CODE"] == '"44"'
    assert kam.run_dir == settings.run_dir / "kamailio"
    with pytest.raises(ValueError, match="loopback"):
        KamailioProcess.for_settings(Settings.from_env(
            environ={}, kamailio_rpc_url="http://10.0.0.5/RPC"))


def test_cfg_never_screens_the_policys_emergency_numbers() -> None:
    """The cfg's default EMERGENCY and the define kamailio_process passes are the emergency
    numbers of the policy's built-in allowlist: worker and switch protect the same callees."""
    import re

    from services.kamailio_process import CONFIG, emergency_regex
    from streams.policy import BUILTIN_ALLOW

    default = re.search(r'#!define EMERGENCY "([^"]+)"', CONFIG.read_text()).group(1)
    assert default == emergency_regex()
    pattern = re.compile(emergency_regex())
    for number, why in BUILTIN_ALLOW.items():
        assert bool(pattern.match(number)) == why.startswith("emergency"), number
    assert not pattern.match("1120") and not pattern.match("8611012345678")
    kam = KamailioProcess(run_dir=Path("/tmp"), hep_port=9060, dest_uri="sip:x",
                          redress="r", prefix_min_digits=6)
    assert kam.defines()["EMERGENCY"] == kamailio_string(emergency_regex())
    assert kam.defines()["PREFIX_MIN_DIGITS"] == "6"


class FakeKamailio:
    """A Kamailio's htables and uptime, driven through the adapter's RPC interface."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, object]] = {}
        self.up_since = "Sun Nov 29 09:00:00 2026"
        self.uptime = 100.0
        self.down = False
        #: Table writes fail (the switch went away between the uptime and the writes).
        self.refuse_writes = False

    def call(self, method: str, *params: object) -> object:
        if self.down:
            raise RpcError(f"{method}: connection refused")
        if method == "core.uptime":
            return {"now": "", "up_since": self.up_since, "uptime": self.uptime}
        raise AssertionError(method)

    def run(self, op) -> None:
        if self.down or self.refuse_writes:
            raise RpcError(f"{op.method}: connection refused")
        table, key = op.params[0], op.params[1]
        if op.method == "htable.delete":
            self.tables.get(table, {}).pop(key, None)
        else:
            self.tables.setdefault(table, {})[key] = op.params[2]

    def restart(self) -> None:
        self.tables.clear()
        self.up_since = "Sun Nov 29 10:00:00 2026"
        self.uptime = 1.0


def resync_adapter(kam: FakeKamailio):
    from services.settings import Settings
    from services.switch_adapter import SwitchAdapter

    settings = Settings.from_env(environ={}, kafka_bootstrap="127.0.0.1:1",
                                 adapter_retry_attempts=1)
    return SwitchAdapter(settings, rpc=kam, clock=lambda: NOW, progress=None)  # type: ignore[arg-type]


def test_a_restarted_switch_gets_the_decisions_in_force_again():
    from services.switch_adapter import RESYNCS

    kam = FakeKamailio()
    adapter = resync_adapter(kam)
    blocked, limited, lifted, lapsed = "8613800000001", "8613800000002", "8613800000003", \
        "8613800000004"
    adapter.handle(decision("block", number=blocked))
    adapter.handle(decision("rate_limit", number=limited))
    adapter.handle(decision("block", number=lifted))
    adapter.handle(decision("unblock", number=lifted, decided_at=NOW - 50))
    adapter.handle(decision("block", number=lapsed, ttl_s=120, decided_at=NOW - 100))
    assert not adapter.check_switch(force=True)  # first look: nothing to compare with
    kam.uptime += 30
    assert not adapter.check_switch(force=True)  # same Kamailio, older
    assert set(kam.tables["blocked"]) == {blocked, lapsed}

    before = RESYNCS._value.get()
    kam.restart()
    assert adapter.check_switch(force=True)
    assert RESYNCS._value.get() == before + 1
    assert set(kam.tables["blocked"]) == {blocked, lapsed}  # lapsed: 20 s left at NOW
    assert set(kam.tables["ratelimit"]) == {limited}


def test_a_switch_restarted_while_unreachable_or_mid_resync_is_healed_at_the_next_look():
    kam = FakeKamailio()
    adapter = resync_adapter(kam)
    adapter.handle(decision("block", number="8613800000001"))
    adapter.check_switch(force=True)
    kam.restart()
    kam.down = True
    assert not adapter.check_switch(force=True)  # down: cannot even tell
    kam.down = False
    kam.refuse_writes = True
    assert not adapter.check_switch(force=True)  # restart seen, the writes fail
    assert "blocked" not in kam.tables
    kam.refuse_writes = False
    assert adapter.check_switch(force=True)  # same Kamailio now, the resync is finished
    assert set(kam.tables["blocked"]) == {"8613800000001"}
