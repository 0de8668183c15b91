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


# -- control.policy records as the worker applies them (streams/control.py) ------------------------
from dataclasses import dataclass  # noqa: E402

from prometheus_client import REGISTRY  # noqa: E402

from services.settings import Settings  # noqa: E402
from streams.control import ControlFeed, ControlState  # noqa: E402
from streams.policy import ControlSwitches, shadow_key  # noqa: E402
from streams.topics import POLICY  # noqa: E402


@dataclass
class Record:
    """The parts of a confluent-kafka Message the control feed reads."""

    key_: str
    value_: bytes | None
    topic_: str = POLICY.name

    def error(self):
        return None

    def topic(self):
        return self.topic_

    def key(self):
        return self.key_.encode()

    def value(self):
        return self.value_


def control_records(outcome):
    return REGISTRY.get_sample_value("dialguard_control_records_total",
                                     {"topic": POLICY.name, "outcome": outcome}) or 0.0


def test_effective_policy_is_recomputed_on_change_not_per_read():
    state = ControlState()
    state.apply_policy("default", Policy(version=3).encode())
    first = state.policy
    assert state.policy is first and not first.dry_run
    state.apply_policy("#switches", ControlSwitches(dry_run_all=True).encode())
    switched = state.policy
    assert switched is not first and switched.dry_run and switched.version == 3
    assert state.policy is switched
    assert not state.live_policy.dry_run  # the published policy itself is untouched
    state.apply_policy("#switches", ControlSwitches(dry_run_all=False).encode())
    assert not state.policy.dry_run


def test_shadow_records_and_their_checks():
    state = ControlState()
    state.apply_policy("default", Policy(version=3).encode())
    assert state.shadow is None
    state.apply_policy(shadow_key("default"), Policy(version=4, dry_run=False).encode())
    assert state.shadow.version == 4 and state.policy.version == 3
    with pytest.raises(PolicyError, match="live policy's name"):
        state.apply_policy(shadow_key("default"), Policy(name="other", version=5).encode())
    assert state.shadow.version == 4  # a rejected record changes nothing
    # promoted: the live key now carries v4, the tombstone is still on its way
    state.apply_policy("default", Policy(version=4).encode())
    assert state.shadow is None
    state.apply_policy(shadow_key("other"), Policy(name="other", version=2).encode())
    assert state.shadow is None  # another policy's candidate is not this worker's


def test_bad_control_records_are_counted_and_the_feed_carries_on():
    state = ControlState()
    feed = ControlFeed(Settings.from_env({}), state)
    rejected, applied = control_records("rejected"), control_records("applied")
    feed._handle(Record("#switches", b'{"dry_run_all": "yes"}'))
    feed._handle(Record("#switches", b'not json'))
    feed._handle(Record(shadow_key("default"), b'{"name": "default", "colour": 1}'))
    feed._handle(Record("default", Policy(name="other").encode()))
    assert control_records("rejected") == rejected + 4
    feed._handle(Record(shadow_key("default"), Policy(version=2).encode()))
    feed._handle(Record("#switches", ControlSwitches(dry_run_all=True).encode()))
    assert control_records("applied") == applied + 2
    assert state.shadow.version == 2 and state.policy.dry_run


def test_shadow_gauge_shows_the_candidate_evaluated():
    def gauge():
        return REGISTRY.get_sample_value("dialguard_shadow_policy_version",
                                         {"policy": "gauged"})

    state = ControlState("gauged")
    state.apply_policy("gauged", Policy(name="gauged", version=2).encode())
    assert gauge() == 0
    state.apply_policy(shadow_key("gauged"), Policy(name="gauged", version=3).encode())
    assert gauge() == 3
    state.apply_policy("gauged", Policy(name="gauged", version=3).encode())  # promoted
    assert gauge() == 0 and state.shadow is None
    state.apply_policy(shadow_key("gauged"), Policy(name="gauged", version=4).encode())
    state.apply_policy(shadow_key("gauged"), None)
    assert gauge() == 0
