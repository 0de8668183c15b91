import orjson
import pytest

from streams.policy import (AllowList, BlockLimiter, CurrentAction, Policy, PolicyError,
                            Thresholds, decide)
from streams.schema import AllowEntry

T = 1_800_000_000.0
ROBOT = "8613800138000"
FEATS = {"attempts_10m": 300, "attempts_1h": 400, "distinct_1h": 390, "answered_1h": 30,
         "fail_ratio_1h": 0.9, "answer_ratio_1h": 0.07, "short_ratio_1h": 0.9,
         "unallocated_ratio_1h": 0.3}


def run(policy=Policy(), score=0.95, feats=FEATS, number=ROBOT, current=None, allow=None,
        limiter=None):
    return decide(policy, allow or AllowList(), limiter or BlockLimiter(), number, score, feats,
                  current or CurrentAction(), T, T + 1)


def test_block_above_threshold_with_readable_reasons():
    d, held = run()
    assert d.action == "block" and held == "block" and not d.dry_run
    text = "; ".join(d.reasons)
    assert "300 attempts in 10 min" in text and "7% answered" in text and "30% unallocated" in text
    assert "score 0.95 >= block 0.85" in text and "policy default v1" in text
    assert d.trigger_ts == T and d.ttl_s == 3600


def test_thresholds_pick_the_action():
    assert run(score=0.75)[0].action == "rate_limit"
    assert run(score=0.55)[0].action == "label"
    assert run(score=0.2)[0] is None


def test_emergency_numbers_are_never_blocked():
    for number in ("110", "112", "911", "120"):
        assert run(number=number, score=1.0)[0] is None


def test_allowlist_entry_and_prefix_and_expiry():
    allow = AllowList()
    allow.apply(ROBOT, AllowEntry(number=ROBOT, reason="bank outbound"))
    assert run(allow=allow)[0] is None
    allow.apply(ROBOT, None)
    assert run(allow=allow)[0].action == "block"
    allow.apply("86138", AllowEntry(number="86138", reason="hospital", prefix=True,
                                    expires_at=T - 1))
    assert run(allow=allow)[0].action == "block"  # expired


def test_low_volume_is_never_blocked_however_robotic():
    feats = dict(FEATS, attempts_1h=12, distinct_1h=12, answered_1h=0, fail_ratio_1h=1.0)
    d, _ = run(score=0.99, feats=feats)
    assert d.action == "label" and "not enough evidence" in d.reasons[-1]


def test_do_not_originate_blocks_on_first_attempt():
    policy = Policy(do_not_originate=("8640000",))
    d, _ = run(policy=policy, number="86400001234", score=0.0, feats={"attempts_1h": 1})
    assert d.action == "block" and "do-not-originate" in d.reasons[0]


def test_hysteresis_keeps_a_block_while_score_dips_a_little():
    current = CurrentAction("block", T + 3000, 0.9)
    assert run(score=0.8, current=current) == (None, "block")
    d, held = run(score=0.6, current=current)
    assert held == "block" and d is None  # never downgrades a live block by itself


def test_refresh_when_ttl_half_spent():
    current = CurrentAction("block", T + 1000, 0.9)
    d, _ = run(current=current)
    assert d is not None and d.action == "block"


def test_dry_run_policy_and_limiter():
    d, _ = run(policy=Policy(dry_run=True))
    assert d.dry_run
    limiter = BlockLimiter()
    policy = Policy(max_blocks_per_min=2)
    results = [decide(policy, AllowList(), limiter, f"86138000000{i:02d}", 0.95, FEATS,
                      CurrentAction(), T, T)[0] for i in range(4)]
    assert [r.dry_run for r in results] == [False, False, True, True]
    assert "limiter tripped" in results[-1].reasons[-1] and limiter.trips == 2


def test_prefix_override():
    policy = Policy(prefix_overrides={"86138": Thresholds(0.5, 0.9, 0.99)})
    d, _ = run(policy=policy, score=0.95)
    assert d.action == "rate_limit" and "override for prefix 86138" in d.reasons[1]


def test_policy_wire_roundtrip_and_validation():
    p = Policy(version=3, thresholds=Thresholds(0.4, 0.6, 0.9), do_not_originate=("8640",))
    assert Policy.decode(p.encode()) == p
    for bad in ({"thresholds": {"label": 0.9, "rate_limit": 0.5, "block": 0.95}},
                {"thresholds": {"block": float("nan")}}, {"colour": "red"},
                {"min_attempts": -1}, {"ttl_s": {"block": 0}}, {"version": 0},
                {"prefix_overrides": {"abc": {}}}):
        with pytest.raises(PolicyError):
            Policy.from_dict(bad)
    with pytest.raises(PolicyError):
        Policy.decode(b"{nope")
    assert orjson.loads(p.encode())["thresholds"] == {"label": 0.4, "rate_limit": 0.6,
                                                      "block": 0.9}
