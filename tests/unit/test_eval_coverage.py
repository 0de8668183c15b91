"""make eval's coverage bookkeeping: which published decisions stop which calls, and when."""

from __future__ import annotations

from streams.schema import Decision
from streams.scope import decision_key

from services.eval_coverage import CoverageIndex, in_force

T0 = 1_800_000_000.0
CALLER = "8613812345678"
CALLEE = "8613912340000"


def decision(scope: str, target: str, action: str = "block", ts: float = T0,
             ttl_s: int = 600, dry_run: bool = False, match: dict | None = None,
             switch: str | None = None) -> Decision:
    return Decision(number=decision_key(scope, target), action=action, ttl_s=ttl_s, score=0.9,
                    reasons=["test"], policy="default", policy_version=1, decided_at=0.0,
                    trigger_ts=ts, dry_run=dry_run, scope=scope, target=target, switch=switch,
                    match=match)


def stopped(index: CoverageIndex, ts: float = T0 + 1, caller: str = CALLER,
            callee: str = CALLEE, switch: str = "sw-01", trunk: str = "tk-01-0",
            attest: str | None = "A") -> Decision | None:
    return index.stopped(ts, caller, callee, switch, trunk, attest)


def test_number_decision_covers_its_caller_only():
    index = CoverageIndex()
    d = decision("number", CALLER)
    index.apply(d)
    assert stopped(index) is d
    assert stopped(index, caller="8613812345679") is None


def test_prefix_decisions_cover_their_range_longest_first():
    index = CoverageIndex()
    wide, narrow = decision("prefix", "86138"), decision("prefix", "861381234")
    index.apply(wide)
    index.apply(narrow)
    assert stopped(index) is narrow
    assert stopped(index, caller="8613800000000") is wide
    assert stopped(index, caller="8613900000000") is None


def test_trunk_decision_covers_calls_of_that_trunk_of_that_switch():
    index = CoverageIndex()
    d = decision("trunk", "sw-01/tk-01-0", switch="sw-01")
    index.apply(d)
    assert stopped(index) is d
    assert stopped(index, switch="sw-02") is None  # same trunk name, other switch
    assert stopped(index, trunk="tk-01-1") is None


def test_trunk_match_narrows_to_unverified_or_neighbour_calls():
    index = CoverageIndex()
    index.apply(decision("trunk", "sw-01/tk-01-0", switch="sw-01",
                         match={"attest": ["C", "none"]}))
    assert stopped(index, attest="A") is None
    assert stopped(index, attest="C") is not None and stopped(index, attest=None) is not None
    index.apply(decision("trunk", "sw-01/tk-01-0", switch="sw-01",
                         match={"neighbour_tail": 4}))
    assert stopped(index, caller="8613912349999", attest="A") is not None
    assert stopped(index, caller="8613812349999", attest="C") is None


def test_ttl_counts_in_event_time_from_the_trigger():
    index = CoverageIndex()
    d = decision("number", CALLER, ts=T0, ttl_s=600)
    index.apply(d)
    assert stopped(index, ts=T0 - 1) is None  # before the decision existed
    assert stopped(index, ts=T0) is d
    assert stopped(index, ts=T0 + 599.9) is d
    assert stopped(index, ts=T0 + 600) is None  # expired
    assert in_force(d, T0) and not in_force(d, T0 + 600)


def test_unblock_and_label_end_enforcement_and_a_later_block_replaces():
    index = CoverageIndex()
    index.apply(decision("number", CALLER))
    index.apply(decision("number", CALLER, action="unblock", ts=T0 + 10))
    assert stopped(index, ts=T0 + 20) is None and len(index) == 0
    index.apply(decision("prefix", "86138", ts=T0 + 30))
    index.apply(decision("prefix", "86138", action="label", ts=T0 + 40))
    assert stopped(index, ts=T0 + 50) is None
    limit = decision("number", CALLER, action="rate_limit", ts=T0 + 60, ttl_s=100)
    index.apply(limit)
    assert stopped(index, ts=T0 + 70) is limit
    later = decision("number", CALLER, ts=T0 + 80, ttl_s=1000)
    index.apply(later)
    assert stopped(index, ts=T0 + 500) is later and len(index) == 1


def test_dry_run_and_labels_stop_nothing_and_dry_run_leaves_a_live_block():
    index = CoverageIndex()
    index.apply(decision("number", CALLER, dry_run=True))
    index.apply(decision("trunk", "sw-01/tk-01-0", action="label"))
    assert stopped(index) is None
    live = decision("number", CALLER)
    index.apply(live)
    index.apply(decision("number", CALLER, action="unblock", dry_run=True))
    assert stopped(index) is live


def test_number_scope_is_credited_before_prefix_and_trunk():
    index = CoverageIndex()
    index.apply(decision("trunk", "sw-01/tk-01-0", switch="sw-01"))
    index.apply(decision("prefix", "86138"))
    number = decision("number", CALLER)
    index.apply(number)
    assert stopped(index) is number
    assert stopped(index, caller="8613800000001").scope == "prefix"
    assert stopped(index, caller="8613900000001").scope == "trunk"
