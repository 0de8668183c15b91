"""Range and trunk decisions on the switch: where they land, the htable entry the cfg reads,
another switch's trunks, matches the switch does not know, and never older over newer per key."""

from __future__ import annotations

import pytest

from services.settings import Settings
from services.switch_adapter import (SKIP_OLDER, RpcOp, fold_latest, plan_decision,
                                     rebuild_plan, unblock_of_key, version_of)
from services.switch_entries import (SKIP_BAD_TARGET, SKIP_OTHER_SWITCH, SKIP_UNKNOWN_SCOPE,
                                     SKIP_UNSUPPORTED_MATCH, Tables, entry_value)
from streams.schema import Decision
from streams.scope import CallMatch, decision_key, trunk_id

NOW = 1_800_000_000.0
SWITCH = "kam-7"
TABLES = Tables(prefix="prefix", trunk="trunk", prefix_rate_limit_calls=30,
                trunk_rate_limit_calls=60, prefix_min_digits=5)


def scoped(scope: str, target: str, action: str = "block", ttl_s: int = 3600,
           decided_at: float = NOW - 100, match: dict | None = None,
           switch: str | None = None, dry_run: bool = False) -> Decision:
    return Decision(number=decision_key(scope, target), action=action, ttl_s=ttl_s, score=0.9,
                    reasons=["r"], policy="default", policy_version=1, decided_at=decided_at,
                    trigger_ts=decided_at - 1, dry_run=dry_run, scope=scope, target=target,
                    switch=switch, match=match)


def trunk(name: str, switch: str = SWITCH, **kw) -> Decision:
    return scoped("trunk", trunk_id(switch, name), switch=switch, **kw)


def plan(decision: Decision, last=None):
    return plan_decision(decision, last, NOW, TABLES, SWITCH)


def test_entry_value_encodes_action_calls_attest_and_tail() -> None:
    assert entry_value("block", 60, None) == "block:0:*:0"
    assert entry_value("rate_limit", 60, None) == "rate_limit:60:*:0"
    assert entry_value("block", 0, CallMatch(attest=("C", "none", "B"))) == "block:0:BCN:0"
    assert entry_value("block", 0, CallMatch(neighbour_tail=4)) == "block:0:*:4"
    assert entry_value("block", 0, CallMatch(attest=("none",), neighbour_tail=3)) == \
        "block:0:N:3"


def test_prefix_block_sets_one_entry_with_the_remaining_ttl() -> None:
    p = plan(scoped("prefix", "86170555", decided_at=NOW - 100.5))
    assert p.applies
    assert p.ops == (RpcOp("htable.setxs", ("prefix", "86170555", "block:0:*:0", 3500)),)
    assert p.expires_at == NOW + 3500
    assert p.detail == "blocked for 3500s: caller range 86170555"


def test_prefix_rate_limit_uses_the_range_allowance() -> None:
    p = plan(scoped("prefix", "86170555", action="rate_limit", decided_at=NOW))
    assert p.ops == (RpcOp("htable.setxs", ("prefix", "86170555", "rate_limit:30:*:0", 3600)),)


def test_unblock_and_expired_delete_the_entry() -> None:
    for d in (scoped("prefix", "86170555", action="unblock", ttl_s=0),
              scoped("prefix", "86170555", ttl_s=60, decided_at=NOW - 600)):
        p = plan(d)
        assert p.applies and p.ops == (RpcOp("htable.delete", ("prefix", "86170555")),)
        assert p.expires_at == 0


def test_trunk_block_is_keyed_by_the_trunk_of_this_switch() -> None:
    p = plan(trunk("tg-robot", decided_at=NOW))
    assert p.ops == (RpcOp("htable.setxs", ("trunk", "tg-robot", "block:0:*:0", 3600)),)
    assert "trunk tg-robot" in p.detail


def test_trunk_rate_limit_and_narrowed_trunk_blocks() -> None:
    p = plan(trunk("10.0.0.9", action="rate_limit", decided_at=NOW))
    assert p.ops[0].params == ("trunk", "10.0.0.9", "rate_limit:60:*:0", 3600)
    p = plan(trunk("tg-1", match={"attest": ["B", "C", "none"]}))
    assert p.ops[0].params[2] == "block:0:BCN:0"
    assert "only calls with attestation B/C/none" in p.detail
    p = plan(trunk("tg-1", match={"neighbour_tail": 4}))
    assert p.ops[0].params[2] == "block:0:*:4"
    assert "neighbour spoofing" in p.detail


def test_a_prefix_decision_may_be_narrowed_too() -> None:
    p = plan(scoped("prefix", "86170555", match={"attest": ["none"]}))
    assert p.ops[0].params[2] == "block:0:N:0"


def test_other_switch_trunk_is_skipped_with_why() -> None:
    p = plan(trunk("tg-robot", switch="kam-8"))
    assert p.skip == SKIP_OTHER_SWITCH and p.ops == ()
    assert "kam-8" in p.detail and SWITCH in p.detail
    # An unblock of another switch's trunk touches nothing here either.
    assert plan(trunk("tg-robot", switch="kam-8", action="unblock")).skip == SKIP_OTHER_SWITCH


def test_a_trunk_of_no_named_switch_applies_on_this_switch_too() -> None:
    """``-/<trunk>`` (learnt from events without a switch): the coverage rule takes it as that
    trunk on any switch, so this adapter applies it like its own."""
    d = scoped("trunk", trunk_id(None, "gw-1"))
    assert d.covers("8613800138000", "8613900139000", SWITCH, "gw-1", None)
    p = plan(d)
    assert p.ops == (RpcOp("htable.setxs", ("trunk", "gw-1", "block:0:*:0", 3500)),)
    assert "of any switch" in p.detail
    assert rebuild_plan({d.number: d}, NOW, SWITCH, TABLES) == [d]


@pytest.mark.parametrize("match", [
    {"attest": ["B"], "ratio": 0.5},          # a field this switch does not know
    {"attest": "C"},                          # not a list
    {"attest": ["X"]},                        # not an attestation
    {"neighbour_tail": 12},                   # out of range
    {},                                       # neither field
    "all",                                    # not an object
])
def test_a_match_not_understood_is_never_widened(match) -> None:
    p = plan(trunk("tg-1", match=match))
    assert p.skip == SKIP_UNSUPPORTED_MATCH and p.ops == ()
    assert "never wider" in p.detail


def test_a_number_decision_with_a_match_is_not_applied_wider() -> None:
    d = Decision(number="8613800138000", action="block", ttl_s=60, score=0.9, reasons=[],
                 policy="p", policy_version=1, decided_at=NOW, trigger_ts=NOW,
                 match={"attest": ["C"]})
    assert plan(d).skip == SKIP_UNSUPPORTED_MATCH


@pytest.mark.parametrize("decision,why", [
    (scoped("prefix", "8617"), SKIP_BAD_TARGET),                      # shorter than 5 digits
    (scoped("prefix", "86x70555"), SKIP_BAD_TARGET),                  # not digits
    (scoped("trunk", "no-slash"), SKIP_BAD_TARGET),                   # not <switch>/<trunk>
    (trunk("-"), SKIP_BAD_TARGET),                                    # unknown trunk
    (scoped("trunk", trunk_id(SWITCH, "tg"), switch="kam-8"), SKIP_BAD_TARGET),
    (Decision(number="prefix:8617055", action="block", ttl_s=60, score=0.9, reasons=[],
              policy="p", policy_version=1, decided_at=NOW, trigger_ts=NOW, scope="prefix",
              target="86170555"), SKIP_BAD_TARGET),                   # key and target differ
    (Decision(number="x:1", action="block", ttl_s=60, score=0.9, reasons=[], policy="p",
              policy_version=1, decided_at=NOW, trigger_ts=NOW, scope="cell"),
     SKIP_UNKNOWN_SCOPE),
])
def test_decisions_that_do_not_fit_their_scope_are_skipped(decision, why) -> None:
    p = plan(decision)
    assert p.skip == why and p.ops == ()


def test_never_older_over_newer_per_key() -> None:
    newer = trunk("tg-1", match={"neighbour_tail": 4}, decided_at=NOW - 10)
    older = trunk("tg-1", decided_at=NOW - 20)
    assert plan(older, version_of(newer)).skip == SKIP_OLDER
    assert plan(newer, version_of(newer)).skip == SKIP_OLDER
    # A narrowed block escalated to the whole trunk: a newer decision on the same key
    # overwrites the one entry (no second entry, nothing to delete first).
    escalated = trunk("tg-1", decided_at=NOW - 5)
    p = plan(escalated, version_of(newer))
    assert p.ops == (RpcOp("htable.setxs", ("trunk", "tg-1", "block:0:*:0", 3595)),)


def test_fold_keeps_newest_per_key_across_scopes() -> None:
    a = trunk("tg-1", decided_at=NOW - 50)
    a_late_older = trunk("tg-1", action="unblock", decided_at=NOW - 60)
    b = scoped("prefix", "86170555", decided_at=NOW - 40)
    n = Decision(number="86170555", action="block", ttl_s=60, score=0.9, reasons=[],
                 policy="p", policy_version=1, decided_at=NOW - 30, trigger_ts=NOW)
    latest = fold_latest([(d.number, d) for d in (a, a_late_older, b, n)])
    assert set(latest) == {"trunk:kam-7/tg-1", "prefix:86170555", "86170555"}
    assert latest["trunk:kam-7/tg-1"].action == "block"


def test_rebuild_leaves_what_this_switch_does_not_apply_alone() -> None:
    mine, theirs = trunk("tg-1"), trunk("tg-1", switch="kam-8")
    unknown = trunk("tg-2", match={"asn": 1})
    todo = rebuild_plan({d.number: d for d in (mine, theirs, unknown)}, NOW, SWITCH, TABLES)
    assert todo == [mine]


def test_tombstone_of_a_scoped_key_lifts_that_entry() -> None:
    d = unblock_of_key("trunk:kam-7/tg-1", NOW)
    assert (d.scope, d.target, d.switch, d.action) == ("trunk", "kam-7/tg-1", "kam-7", "unblock")
    assert plan(d).ops == (RpcOp("htable.delete", ("trunk", "tg-1")),)
    d = unblock_of_key("prefix:86170555", NOW)
    assert plan(d).ops == (RpcOp("htable.delete", ("prefix", "86170555")),)
    d = unblock_of_key("8613800138000", NOW)
    assert {op.params[0] for op in plan(d).ops} == {"blocked", "ratelimit"}


def test_tables_follow_the_settings() -> None:
    t = Tables.of(Settings.from_env(environ={}, adapter_trunk_rate_limit_calls=90,
                                    adapter_htable_trunk="trk"))
    assert (t.trunk, t.trunk_rate_limit_calls, t.calls("trunk")) == ("trk", 90, 90)


class _Rpc:
    """A switch that records the JSON-RPC calls it is given."""

    def __init__(self) -> None:
        self.ops: list[RpcOp] = []

    def run(self, op: RpcOp) -> None:
        self.ops.append(op)


def _adapter(log_only: bool):
    from services.switch_adapter import SwitchAdapter

    settings = Settings.from_env(environ={}, switch_name=SWITCH,
                                 kafka_bootstrap="127.0.0.1:1")
    rpc = _Rpc()
    adapter = SwitchAdapter(settings, rpc=rpc,  # type: ignore[arg-type]
                            clock=lambda: NOW, progress=None, log_only=log_only)
    acks: list[tuple[str, str, str]] = []

    def ack(d: Decision, status: str, detail: str, **_: object) -> None:
        acks.append((d.number, status, detail))

    adapter._ack = ack  # type: ignore[method-assign]
    return adapter, rpc, acks


def test_adapter_applies_scoped_decisions_and_acks_by_key() -> None:
    adapter, rpc, acks = _adapter(log_only=False)
    try:
        adapter.handle(trunk("tg-1", match={"attest": ["none"]}))
        adapter.handle(trunk("tg-1", switch="kam-8"))
        adapter.handle(trunk("tg-1", decided_at=NOW - 200))  # older than the one applied
        assert rpc.ops == [RpcOp("htable.setxs", ("trunk", "tg-1", "block:0:N:0", 3500))]
        assert [(k, s) for k, s, _ in acks] == [("trunk:kam-7/tg-1", "applied"),
                                                ("trunk:kam-8/tg-1", "skipped"),
                                                ("trunk:kam-7/tg-1", "skipped")]
        assert adapter.blocked_until == {"trunk:kam-7/tg-1": NOW + 3500}
    finally:
        adapter.consumer.close()


def test_log_only_adapter_says_what_a_scoped_decision_would_do() -> None:
    adapter, rpc, acks = _adapter(log_only=True)
    try:
        adapter.handle(scoped("prefix", "86170555", action="rate_limit", decided_at=NOW))
        assert rpc.ops == []
        [(key, status, detail)] = acks
        assert (key, status) == ("prefix:86170555", "skipped")
        assert detail == ("log only, no switch attached: would be rate limited to 30 INVITEs "
                          "per window for 3600s: caller range 86170555")
    finally:
        adapter.consumer.close()
