"""The source stage without Kafka: campaigns that rotate their number are stopped at the
narrowest scope that holds them, and people, PBXs and OTP services are left alone."""

import random

import pytest
from prometheus_client import REGISTRY

from online_models.scorer import NuisanceScorer
from online_models.source_scorer import SourceScorer
from services.settings import Settings
from streams.control import ControlState
from streams.detector import Detector, DictStore, MemorySink, Origin
from streams.policy import ENFORCING, Policy, PolicyError
from streams.schema import AllowEntry, Label, SignalingEvent, SourceEvent
from streams.scope import SCOPE_NUMBER, SCOPE_PREFIX, SCOPE_TRUNK, decision_key
from streams.source_detector import SourceDetector
from streams.source_features import SourceState
from tests.unit.helpers import T0, ordered
from tests.unit.source_traffic import Line, fresh_numbers, mobile, people_calls, robot_calls

INTERCONNECT = Line("sw-2", "ic-1")
GATEWAY = Line("sw-9", "gw-7")
ACCESS = Line("sw-1", "acc-3")


class Stages:
    """Number stage feeding the source stage in process, as `make eval` runs them."""

    def __init__(self, settings: Settings | None = None, control: ControlState | None = None):
        self.settings = settings or Settings.from_env({})
        self.control = control or ControlState()
        self.src_sink = MemorySink()
        self.sources = SourceDetector(self.settings, SourceScorer(), self.control,
                                      self.src_sink, DictStore(), wall_clock=lambda: T0)
        self.sink = MemorySink(on_source=self.sources.fold)
        self.numbers = Detector(self.settings, NuisanceScorer(), self.control, self.sink,
                                DictStore(), wall_clock=lambda: T0)

    def feed(self, events):
        for i, ev in enumerate(events, 1):
            self.numbers.fold(ev)
            if i % 500 == 0:
                self.flush()
        self.flush()

    def flush(self):
        self.numbers.flush()
        self.sources.flush()

    def enforcing(self, scope=None):
        out = [d for d in self.sink.decisions + self.src_sink.decisions
               if d.action in ENFORCING and not d.dry_run]
        return [d for d in out if scope is None or d.scope == scope]

    def stopped(self, ev):
        """The enforcing decision in force that covers this attempt, if any."""
        for d in self.enforcing():
            if d.trigger_ts <= ev.ts < d.trigger_ts + d.ttl_s and \
                    d.covers(ev.caller, ev.callee, ev.switch, ev.trunk, ev.attest):
                return d
        return None


def attempts(events):
    return [e for e in events if e.kind == "attempt"]


def test_rotating_campaign_on_its_own_trunk_is_stopped_at_the_trunk():
    rnd = random.Random(1)
    robots = robot_calls(GATEWAY, rnd, 600, 3.0, fresh_numbers(rnd))
    s = Stages()
    s.feed(ordered(robots))
    trunk = s.enforcing(SCOPE_TRUNK)
    assert trunk, "a rotating campaign on its own trunk must be stopped"
    d = trunk[0]
    assert d.target == "sw-9/gw-7" and d.switch == "sw-9"
    assert d.number == decision_key(SCOPE_TRUNK, "sw-9/gw-7")
    assert "distinct numbers" in d.reasons[0] and "answered" in d.reasons[0]
    late = [e for e in attempts(robots) if e.ts >= T0 + 600]
    share = sum(1 for e in late if s.stopped(e)) / len(late)
    assert share >= 0.9
    assert not s.enforcing(SCOPE_NUMBER), "no single number of it is worth a number block"


def test_neighbour_spoofing_inside_a_shared_interconnect_is_narrowed_to_its_calls():
    rnd = random.Random(2)
    callees = [mobile(rnd) for _ in range(800)]
    neighbours = [c[:-4] + f"{rnd.randrange(10_000):04d}" for c in callees]
    robots = robot_calls(INTERCONNECT, rnd, 800, 3.0, neighbours, callees, attest="A")
    people = [mobile(rnd) for _ in range(300)]
    humans = people_calls(INTERCONNECT, rnd, 800, 3.0, people, attest="A")
    s = Stages()
    s.feed(ordered(robots, humans))
    trunk = s.enforcing(SCOPE_TRUNK)
    assert trunk and all(d.match == {"neighbour_tail": 4} for d in trunk)
    assert any("not blocked" in r for r in trunk[0].reasons)
    assert not any(s.stopped(e) for e in attempts(humans)), "people on the trunk keep calling"
    late = [e for e in attempts(robots) if e.ts >= T0 + 600]
    assert sum(1 for e in late if s.stopped(e)) / len(late) >= 0.9


def test_pool_in_one_range_on_a_shared_trunk_is_stopped_by_range_not_trunk():
    rnd = random.Random(3)
    pool = [f"8617055{rnd.randrange(10_000):04d}" for _ in range(300)]
    robots = robot_calls(ACCESS, rnd, 1800, 2.0, (rnd.choice(pool) for _ in range(1800)),
                         attest="A")
    humans = people_calls(ACCESS, rnd, 1200, 3.0, [mobile(rnd) for _ in range(400)])
    s = Stages()
    s.feed(ordered(robots, humans))
    prefix = s.enforcing(SCOPE_PREFIX)
    assert prefix and {d.target for d in prefix} == {"8617055"}
    assert not [d for d in s.enforcing(SCOPE_TRUNK) if d.match is None], \
        "a trunk that carries people is never blocked whole"
    assert not any(s.stopped(e) for e in attempts(humans))
    late = [e for e in attempts(robots) if e.ts >= T0 + 600]
    assert sum(1 for e in late if s.stopped(e)) / len(late) >= 0.9


@pytest.mark.parametrize("name", ["pbx", "otp", "interconnect_people", "collections"])
def test_legitimate_look_alikes_are_never_enforced(name):
    rnd = random.Random(4)
    line = Line("sw-3", "ent-1")
    if name == "pbx":  # hundreds of DIDs in one block, people talking
        dids = [f"8621555{i:04d}" for i in range(300)]
        events = people_calls(line, rnd, 3000, 1.5, dids, attest="B")
    elif name == "otp":  # a bank's voice OTP: short, but answered; every callee once
        pool = [f"8695566{i:04d}" for i in range(200)]
        events = people_calls(line, rnd, 3000, 1.2, pool, attest="A", duration=(12, 35),
                              answer=0.85)
    elif name == "interconnect_people":  # other carriers' subscribers, unsigned
        events = people_calls(line, rnd, 3000, 1.5, [mobile(rnd) for _ in range(2500)],
                              attest=None, answer=0.6)
    else:  # debt collection: few answer, but those who do talk
        pool = [f"8640012{i:04d}" for i in range(50)]
        events = people_calls(line, rnd, 3000, 1.5, pool, attest="B", answer=0.35,
                              duration=(20, 200))
    s = Stages()
    s.feed(ordered(events))
    assert not [d for d in s.enforcing() if d.scope != SCOPE_NUMBER]


def test_single_number_robot_among_people_is_left_to_the_number_view():
    rnd = random.Random(5)
    robot = mobile(rnd)
    robots = robot_calls(ACCESS, rnd, 400, 6.0, (robot for _ in range(400)), attest="C")
    humans = people_calls(ACCESS, rnd, 300, 8.0, [mobile(rnd) for _ in range(200)], attest="B")
    s = Stages()
    s.feed(ordered(robots, humans))
    assert {d.target for d in s.enforcing(SCOPE_NUMBER)} == {robot}
    assert not s.enforcing(SCOPE_TRUNK) and not s.enforcing(SCOPE_PREFIX)
    assert not any(s.stopped(e) for e in attempts(humans))


def test_allowlisted_trunk_and_range_holding_a_protected_number_are_not_enforced():
    rnd = random.Random(6)
    control = ControlState()
    control.allowlist.apply("trunk:sw-9/gw-7", AllowEntry("sw-9/gw-7", "hospital", trunk=True))
    control.allowlist.apply("8617055000", AllowEntry("8617055000", "bank hotline"))
    pool = [f"8617055{rnd.randrange(10_000):04d}" for _ in range(300)]
    s = Stages(control=control)
    s.feed(ordered(robot_calls(GATEWAY, rnd, 1500, 2.0,
                               (rnd.choice(pool) for _ in range(1500)))))
    assert not [d for d in s.enforcing() if d.scope != SCOPE_NUMBER]


def test_calls_without_a_trunk_are_never_enforced_without_a_switch_on_any_switch():
    rnd = random.Random(7)
    s = Stages()
    s.feed(ordered(robot_calls(Line(None, None), rnd, 600, 3.0, fresh_numbers(rnd))))
    labels = [d for d in s.src_sink.decisions if d.scope == SCOPE_TRUNK]
    assert labels and {d.action for d in labels} == {"label"}
    assert labels[0].target == "-/-" and "unknown" in " ".join(labels[0].reasons)
    s2 = Stages()
    s2.feed(ordered(robot_calls(Line(None, "gw-5"), rnd, 600, 3.0, fresh_numbers(rnd))))
    blocks = s2.enforcing(SCOPE_TRUNK)
    assert blocks and blocks[0].target == "-/gw-5" and "any switch" in " ".join(blocks[0].reasons)


def test_real_subscriber_spoofed_on_a_second_trunk_is_never_blocked_as_a_number():
    rnd = random.Random(8)
    victim = mobile(rnd)
    own = people_calls(ACCESS, rnd, 5, 600.0, [victim])
    spoofed = robot_calls(GATEWAY, rnd, 300, 5.0, (victim for _ in range(300)),
                          start=T0 + 4 * 3600)
    s = Stages()
    before = REGISTRY.get_sample_value("dialguard_spoofed_number_holds_total") or 0.0
    s.feed(ordered(own, spoofed))
    assert not s.enforcing(SCOPE_NUMBER)
    held = [d for d in s.sink.decisions if d.number == victim]
    assert held and all(d.action == "label" for d in held)
    assert REGISTRY.get_sample_value("dialguard_spoofed_number_holds_total") > before


def test_labels_on_a_source_teach_its_model_and_judge_range_enforcement():
    rnd = random.Random(9)
    pool = [f"8617055{rnd.randrange(10_000):04d}" for _ in range(300)]
    s = Stages()
    s.feed(ordered(robot_calls(ACCESS, rnd, 1500, 2.0, (rnd.choice(pool) for _ in range(1500)),
                               attest="A")))
    assert s.enforcing(SCOPE_PREFIX)
    fp = REGISTRY.get_sample_value("dialguard_false_positives_total",
                                   {"policy": "default", "scope": "prefix"}) or 0.0
    s.control.add_label(Label(pool[0], "appeal_upheld", T0).encode())
    s.control.add_label(Label("prefix:8617055", "analyst_robot", T0).encode())
    s.flush()
    assert s.sources.scorer.labels_seen == {0: 0, 1: 1}
    assert REGISTRY.get_sample_value("dialguard_false_positives_total",
                                     {"policy": "default", "scope": "prefix"}) == fp + 1


def test_source_state_round_trips_and_rejects_unknown_versions():
    st = SourceState(3)
    ev = SourceEvent("trunk:sw/tk", T0, "attempt", "sip", "c1", "8613800000001",
                     "8613800005678", attest=None, caller_new=True, caller_trunks=2)
    from streams.source_features import SourceConfig, features
    st.add(ev, SourceConfig())
    back = SourceState.from_bytes(st.to_bytes())
    assert features(back) == features(st)
    with pytest.raises(ValueError, match="unknown version"):
        SourceState.from_bytes(b"[99]")


def test_source_events_from_the_sources_topic_decode_or_go_to_the_dlq():
    s = Stages()
    origin = Origin("signaling.sources", 0, 5)
    good = SourceEvent("trunk:sw/tk", T0, "attempt", "sip", "c1", "8613800000001",
                       "8613900000002")
    assert s.sources.ingest(good.encode(), origin) == 1
    assert s.sources.ingest(b"{not json", origin) == 0
    assert s.sources.ingest(b'{"key": "trunk:x/y"}', origin) == 0
    assert [r for _, r, _, _ in s.src_sink.dead] == ["not_json", "missing_field"]


def test_number_stage_rekeys_every_accepted_event_by_trunk_and_range():
    sink = MemorySink()
    det = Detector(Settings.from_env({"DIALGUARD_SOURCE_RANGE_STRIP": "3,4"}), NuisanceScorer(),
                   ControlState(), sink, DictStore())
    rnd = random.Random(10)
    det.fold(robot_calls(ACCESS, rnd, 1, 1.0, ["8613812345678"])[0])
    assert [e.key for e in sink.source_events] == [
        "trunk:sw-1/acc-3", "prefix:8613812345", "prefix:861381234"]
    assert sink.source_events[0].caller_new and sink.source_events[0].caller_trunks == 1


def test_policy_scopes_are_validated():
    with pytest.raises(PolicyError, match="scopes: unknown scopes"):
        Policy.from_dict({"scopes": {"city": {}}})
    with pytest.raises(PolicyError, match=r"scopes.trunk.min_attempts"):
        Policy.from_dict({"scopes": {"trunk": {"min_attempts": -1}}})
    with pytest.raises(PolicyError, match=r"scopes.prefix.thresholds"):
        Policy.from_dict({"scopes": {"prefix": {"thresholds": {"block": 0.1}}}})
    p = Policy.from_dict({"scopes": {"trunk": {"min_attempts": 500}}})
    assert p.scope("trunk").min_attempts == 500 and p.scope("prefix").min_attempts == 50
    assert Policy.from_dict(p.to_dict()) == p


def test_a_hold_reason_keeps_a_scoring_number_at_a_label():
    from streams.policy import AllowList, BlockLimiter, CurrentAction, decide
    feats = {"attempts_1h": 200, "distinct_1h": 200, "answered_1h": 10, "fail_ratio_1h": 0.9}
    d, held = decide(Policy(), AllowList(), BlockLimiter(), "8613800000001", 0.99, feats,
                     CurrentAction(), T0, T0, hold="probably spoofed")
    assert (d.action, held) == ("label", "label")
    assert "block held back to a label: probably spoofed" in d.reasons
    d2, _ = decide(Policy(), AllowList(), BlockLimiter(), "8613800000001", 0.99, feats,
                   CurrentAction(), T0, T0)
    assert d2.action == "block"


def test_events_reaching_the_source_stage_out_of_order_still_count():
    """The number stage re-keys from many partitions at their own pace: a backlog arrives
    shuffled by minutes. Everything inside the window must still count."""
    rnd = random.Random(11)
    robots = ordered(robot_calls(GATEWAY, rnd, 600, 3.0, fresh_numbers(rnd)))
    chunks = [robots[i:i + 400] for i in range(0, len(robots), 400)]
    shuffled = [ev for pair in zip(chunks[1::2], chunks[0::2]) for chunk in pair for ev in chunk]
    s = Stages()
    s.feed(shuffled)
    assert s.enforcing(SCOPE_TRUNK)
    assert s.sources.native.cached("trunk:sw-9/gw-7").attempts() == len(
        [e for e in shuffled if e.kind == "attempt"])


def test_robot_number_on_two_trunks_of_its_own_is_still_blocked_as_a_number():
    """Spread over two gateways (load balancing), a robot has no owner talking anywhere:
    only a number whose owner talks on another trunk is held as probably spoofed."""
    rnd = random.Random(12)
    robot = mobile(rnd)
    calls = ordered(robot_calls(GATEWAY, rnd, 200, 6.0, (robot for _ in range(200))),
                    robot_calls(Line("sw-9", "gw-8"), rnd, 200, 6.0, (robot for _ in range(200)),
                                start=T0 + 3))
    s = Stages()
    s.feed(calls)
    assert {d.target for d in s.enforcing(SCOPE_NUMBER) if d.action == "block"} == {robot}


def test_shadow_candidate_judges_sources_on_decisions_shadow_only():
    rnd = random.Random(13)
    control = ControlState()
    live = Policy(version=1)
    import dataclasses
    from streams.policy import ScopePolicy, Thresholds
    candidate = dataclasses.replace(live, version=2, scopes={
        **live.scopes, "trunk": ScopePolicy(thresholds=Thresholds(0.5, 0.99, 1.0))})
    control.policies["default"] = live
    control.shadows["default"] = candidate
    s = Stages(control=control)
    s.feed(ordered(robot_calls(GATEWAY, rnd, 600, 3.0, fresh_numbers(rnd))))
    assert s.enforcing(SCOPE_TRUNK), "the live policy blocks the campaign's trunk"
    shadow = [d for d in s.src_sink.shadow_decisions if d.scope == SCOPE_TRUNK]
    assert shadow and {d.action for d in shadow} == {"label"}
    assert all(d.policy_version == 2 for d in shadow)
    records = [r for r in s.src_sink.scores if r.number.startswith("trunk:")]
    assert records[-1].shadow_version == 2 and records[-1].shadow_action == "label"


def test_a_few_people_inside_a_campaign_segment_protect_it():
    """Thousands of robot calls and a handful of people with the same (B) attestation: the
    share of conversations is tiny, but the people who talk ("talkers") are there."""
    rnd = random.Random(14)
    robots = robot_calls(ACCESS, rnd, 1500, 2.0, fresh_numbers(rnd), attest="B")
    few = people_calls(ACCESS, rnd, 40, 70.0, [mobile(rnd) for _ in range(30)], attest="B")
    many = people_calls(ACCESS, rnd, 600, 5.0, [mobile(rnd) for _ in range(300)], attest="A")
    s = Stages()
    s.feed(ordered(robots, few, many))
    assert not any(s.stopped(e) for e in attempts(few + many))
    held = [r for r in s.src_sink.decisions if r.scope == SCOPE_TRUNK]
    assert held and any("real conversations" in " ".join(d.reasons) for d in held)


def test_a_source_block_is_lifted_when_people_show_up_on_it():
    rnd = random.Random(15)
    robots = robot_calls(GATEWAY, rnd, 1200, 3.0, fresh_numbers(rnd), attest=None)
    later = people_calls(GATEWAY, rnd, 200, 6.0, [mobile(rnd) for _ in range(100)],
                         attest=None, start=T0 + 1800)
    s = Stages()
    s.feed(ordered(robots, later))
    trunk = [d for d in s.src_sink.decisions if d.scope == SCOPE_TRUNK]
    actions = [d.action for d in trunk]
    assert "block" in actions and "unblock" in actions
    assert actions.index("unblock") > actions.index("block")
    lifted = trunk[actions.index("unblock")]
    assert any("lifted" in r and "conversations" in r for r in lifted.reasons)


def test_withheld_callers_count_for_their_trunk_and_are_never_a_caller():
    s = Stages()
    evs = []
    for i in range(40):
        common = dict(proto="sip", call_id=f"w{i}", caller="anonymous", callee=f"86139{i:08d}",
                      trunk="gw-9", switch="sw", caller_class="withheld")
        evs += [SignalingEvent(ts=T0 + 10 * i, kind="attempt", **common),
                SignalingEvent(ts=T0 + 10 * i + 2, kind="fail", code=480, **common)]
    s.feed(evs)
    assert s.numbers.native.cached("anonymous") is None and not s.numbers.store.data
    state = s.sources.native.cached("trunk:sw/gw-9")
    assert state.attempts_total == 40
    assert state.callers == {}  # "anonymous" is not one caller, nor forty
    assert s.sources.native.cached_kinds() == (1, 0)  # the trunk, no range
