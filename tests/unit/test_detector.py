"""The worker's behaviour without Kafka: events in, decisions out."""

import itertools

import orjson

from online_models.scorer import NuisanceScorer
from services.settings import Settings
from streams.control import ControlState
from streams.detector import DictStore, Detector, MemorySink, Origin
from streams.features import CallerState
from streams.policy import Policy
from streams.schema import Label
from tests.unit.helpers import T0, call, ordered

ROBOT = "8617012345678"
BANK = "8695500000001"
ORIGIN = Origin("signaling.events", 0, 0)
#: Record offsets: a worker never reads two records at one offset (replays are skipped).
OFFSETS = itertools.count(1)


def make(policy=None, store=None, scorer=None):
    control = ControlState()
    if policy:
        control.policies[policy.name] = policy
    sink = MemorySink()
    det = Detector(Settings.from_env({}), scorer or NuisanceScorer(), control, sink,
                   store or DictStore(), wall_clock=lambda: T0 + 10_000)
    return det, sink, control


def robot_burst(number=ROBOT, n=150, start=T0, seed=1):
    import random
    rnd = random.Random(seed)
    evs = []
    for i in range(n):
        evs += call(number, f"86139{rnd.randrange(10**8):08d}", start + 6 * i,
                    answered=rnd.random() < 0.1, duration=3,
                    code=404 if rnd.random() < 0.3 else 480)
    return ordered(evs)


def call_center(number=BANK, n=150, start=T0, seed=2):
    import random
    rnd = random.Random(seed)
    evs = []
    for i in range(n):
        evs += call(number, f"86139{rnd.randrange(10**8):08d}", start + 6 * i,
                    answered=rnd.random() < 0.65, duration=rnd.uniform(60, 300), code=480)
    return ordered(evs)


def feed(det, events, now=T0 + 10_000):
    """Each event as its own record at the next offset, as a worker reads them."""
    for ev in events:
        det.ingest(ev.encode(), Origin(ORIGIN.topic, ORIGIN.partition, next(OFFSETS)),
                   now=now)
    return det.flush()


def attempts_before(events, number, ts):
    return sum(1 for e in events if e.caller == number and e.kind == "attempt" and e.ts <= ts)


def test_robot_blocked_within_bounded_calls_and_call_center_left_alone():
    det, sink, _ = make()
    evs = ordered(robot_burst() + call_center())
    decisions = feed(det, evs)
    blocks = [d for d in decisions if d.number == ROBOT and d.action == "block"]
    assert blocks, [d.action for d in decisions]
    assert attempts_before(evs, ROBOT, blocks[0].trigger_ts) <= 60
    assert not [d for d in decisions if d.number == BANK and d.action != "label"]


def test_decisions_do_not_depend_on_batching():
    evs = ordered(robot_burst() + call_center())
    det1, _, _ = make()
    one_batch = [(d.number, d.action, d.trigger_ts) for d in feed(det1, evs)]
    det2, _, _ = make()
    many = []
    for i in range(0, len(evs), 7):
        many += [(d.number, d.action, d.trigger_ts) for d in feed(det2, evs[i:i + 7])]
    assert one_batch == many


def test_bad_records_go_to_dead_letters_and_processing_continues():
    det, sink, _ = make()
    det.ingest(b"\xff\xfe not json", ORIGIN)
    det.ingest(orjson.dumps({"v": 1, "ts": T0}), ORIGIN)
    det.ingest(None, ORIGIN)
    decisions = feed(det, robot_burst())
    assert [r for _, r, _, _ in sink.dead] == ["not_json", "missing_field", "missing_field"]
    assert sink.dead[0][0] == b"\xff\xfe not json"  # original bytes kept
    assert any(d.action == "block" for d in decisions)


def test_emergency_callback_is_never_blocked():
    det, sink, _ = make()
    decisions = feed(det, robot_burst(number="120"))
    assert decisions == []


def test_policy_change_applies_without_restart():
    det, sink, control = make()
    control.policies["default"] = Policy(version=2, dry_run=True)
    decisions = feed(det, robot_burst())
    assert decisions and all(d.dry_run for d in decisions)
    control.policies["default"] = Policy(version=3)
    more = feed(det, robot_burst(start=T0 + 901, seed=3))
    live = [d for d in more if d.action == "block"]
    assert live and not live[0].dry_run and live[0].policy_version == 3


def test_state_survives_a_new_detector_on_the_same_store():
    store = DictStore()
    det, _, _ = make(store=store)
    evs = robot_burst(n=20)
    feed(det, evs)
    det2, sink2, _ = make(store=store)
    feed(det2, robot_burst(n=20, start=T0 + 200, seed=9))
    # the new detector's very first score already counts the 20 attempts made before it
    first = sink2.scores[0]
    assert first.features["attempts_1h"] > 20 + 0 and first.features["attempts_1h"] <= 25
    assert sink2.scores[-1].features["attempts_1h"] == 38  # scored every 5 attempts


def test_state_written_once_per_number_per_batch():
    store = DictStore()
    det, _, _ = make(store=store)
    feed(det, robot_burst() + call_center())
    assert store.writes == 2


def test_states_pushed_out_of_the_hot_cache_are_written_only_at_the_commit(monkeypatch):
    """The commit writes a state only after the outputs of its events are delivered
    (streams.microbatch); a touched state evicted before that is kept aside, not written, and
    found there when its number calls again before the commit."""
    import streams.detector

    monkeypatch.setattr(streams.detector, "HOT_CACHE", 1)
    store = DictStore()
    det, _, _ = make(store=store)
    for ev in robot_burst(n=3) + call_center(n=2) + robot_burst(n=2, start=T0 + 100):
        det.ingest(ev.encode(), Origin(ORIGIN.topic, ORIGIN.partition, next(OFFSETS)),
                   now=T0 + 10_000)
    assert store.writes == 0
    det.persist()
    assert store.writes == 2 and det.native.aside_count == 0
    assert CallerState.from_bytes(store.data[ROBOT]).attempts_total == 5
    assert CallerState.from_bytes(store.data[BANK]).attempts_total == 2


def test_labels_teach_the_classifier():
    scorer = NuisanceScorer(classifier_min_labels=3)
    det, sink, control = make(scorer=scorer)
    feed(det, call_center())
    for i in range(5):
        control.labels.put(Label(number=BANK, label="complaint", ts=T0, id=f"a{i}"))
        control.labels.put(Label(number=ROBOT, label="legit", ts=T0, id=f"b{i}"))
    feed(det, robot_burst(n=30))
    assert scorer.labels_seen == {0: 5, 1: 5}


def test_idle_pool_aggregates_are_swept():
    import streams.detector as detector_module
    det, _, _ = make()
    feed(det, robot_burst(n=10))
    assert det.native.prefix_pools
    later = robot_burst(number="8695500000002", n=10, start=T0 + 3 * 3600)
    feed(det, later, now=T0 + 5 * 3600)
    det.flushes = detector_module.POOL_SWEEP_EVERY - 1
    det.flush()
    assert det.native.prefix_pools == ["8695500"]


def test_trunk_pools_are_per_switch_and_a_number_reads_its_newest_attempts_trunk():
    """Trunk names are unique per switch only: tk-1 of two switches are two pools."""
    det, _, _ = make()
    evs = []
    for i in range(6):
        evs += call(f"86130000000{i:02d}", f"86139{i:08d}", T0 + i, answered=False,
                    code=480, trunk="tk-1", switch="sw-1")
    evs += call("8613999999999", "8613900000099", T0 + 10, answered=False, code=480,
                trunk="tk-1", switch="sw-2")
    feed(det, ordered(evs))
    assert sorted(det.native.trunk_pools) == ["sw-1/tk-1", "sw-2/tk-1"]
    raw = det.store.get("8613999999999")
    feats = det.feature_vector("8613999999999", CallerState.from_bytes(raw))
    assert feats["trunk_callers"] == 1.0
    feats = det.feature_vector("8613000000000",
                               CallerState.from_bytes(det.store.get("8613000000000")))
    assert feats["trunk_callers"] == 6.0


def test_feedback_on_enforced_numbers_counts_true_and_false_positives():
    from prometheus_client import REGISTRY

    def value(name):
        return REGISTRY.get_sample_value(name, {"policy": "default", "scope": "number"}) or 0.0

    det, sink, control = make()
    feed(det, robot_burst() + robot_burst(number="8617012340000", seed=4))
    tp0 = value("dialguard_true_positives_total")
    fp0 = value("dialguard_false_positives_total")
    control.labels.put(Label(number=ROBOT, label="complaint", ts=T0, id="c1"))
    control.labels.put(Label(number="8617012340000", label="appeal_upheld", ts=T0, id="c2"))
    control.labels.put(Label(number=BANK, label="appeal_upheld", ts=T0, id="c3"))  # never acted
    det.flush()
    assert value("dialguard_true_positives_total") == tp0 + 1
    assert value("dialguard_false_positives_total") == fp0 + 1
    assert REGISTRY.get_sample_value("dialguard_calls_before_block_count") >= 2
    for _ in range(10):
        det.flush()
    assert REGISTRY.get_sample_value("dialguard_blocks_active", {"scope": "number"}) >= 2


def test_do_not_originate_caller_blocked_on_first_attempt():
    det, sink, _ = make(policy=Policy(version=4, do_not_originate=("8640012",)))
    decisions = feed(det, call("86400123456", "8613900000001", T0, answered=False))
    assert [(d.number, d.action) for d in decisions] == [("86400123456", "block")]
    assert "do-not-originate" in decisions[0].reasons[0]


# -- guarded rollout: shadow candidate and kill switch ---------------------------------------------
from prometheus_client import REGISTRY  # noqa: E402

from streams.policy import ControlSwitches, Thresholds, shadow_key  # noqa: E402

#: A live policy that never reaches block on a robot's score (~0.95), so only a shadow can.
TIMID = Policy(version=1, thresholds=Thresholds(label=0.97, rate_limit=0.98, block=0.99))


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def with_shadow(live=TIMID, candidate=None):
    det, sink, control = make(policy=live)
    control.apply_policy(shadow_key("default"),
                         (candidate or Policy(version=live.version + 1)).encode())
    return det, sink, control


def test_shadow_decisions_are_recorded_apart_and_never_published_as_live():
    before = sample("dialguard_shadow_decisions_total", action="block", policy="default")
    det, sink, control = with_shadow()
    decisions = feed(det, robot_burst())
    assert not [d for d in decisions if d.action == "block"]
    assert not [d for d in sink.decisions if d.action == "block" or d.policy_version == 2]
    shadow_blocks = [d for d in sink.shadow_decisions if d.action == "block"]
    assert shadow_blocks and {d.policy_version for d in sink.shadow_decisions} == {2}
    assert all(not d.dry_run and d.number == ROBOT for d in shadow_blocks)
    assert sample("dialguard_shadow_decisions_total", action="block",
                  policy="default") == before + len(shadow_blocks)
    assert sample("dialguard_shadow_policy_version", policy="default") == 2
    blocked_at = shadow_blocks[0].trigger_ts
    after = [s for s in sink.scores if s.ts >= blocked_at]
    assert after and all(s.shadow_action == "block" and s.shadow_version == 2 for s in after)
    assert all(s.action != "block" for s in sink.scores)


def test_a_shadow_does_not_change_what_the_live_policy_decides():
    evs = ordered(robot_burst() + call_center())
    plain, plain_sink, _ = make(policy=Policy(version=1))
    live = [(d.number, d.action, d.trigger_ts, d.dry_run) for d in feed(plain, evs)]
    # a stricter candidate with a tiny limiter: it must not spend the live limiter's budget
    shadowed, sink, _ = with_shadow(live=Policy(version=1), candidate=Policy(
        version=2, thresholds=Thresholds(0.2, 0.3, 0.4), max_blocks_per_min=1))
    assert [(d.number, d.action, d.trigger_ts, d.dry_run) for d in feed(shadowed, evs)] == live
    assert [s.action for s in sink.scores] == [s.action for s in plain_sink.scores]
    assert sink.shadow_decisions and all(s.shadow_version == 2 for s in sink.scores)
    assert all(s.shadow_action is None for s in plain_sink.scores)


def test_tombstone_removes_the_shadow():
    det, sink, control = with_shadow()
    feed(det, robot_burst(n=60))
    assert sink.shadow_decisions
    control.apply_policy(shadow_key("default"), None)
    assert control.shadow is None
    assert sample("dialguard_shadow_policy_version", policy="default") == 0
    seen = len(sink.shadow_decisions)
    feed(det, robot_burst(n=90, start=T0 + 400, seed=5))
    assert len(sink.shadow_decisions) == seen
    assert sink.scores[-1].shadow_action is None and sink.scores[-1].shadow_version is None


def test_a_new_candidate_version_starts_with_an_empty_memory():
    det, sink, control = with_shadow()
    feed(det, robot_burst(n=60))
    first = [d for d in sink.shadow_decisions if d.action == "block"]
    assert first
    control.apply_policy(shadow_key("default"), Policy(version=3).encode())
    feed(det, robot_burst(n=10, start=T0 + 400, seed=6))
    # v2's fresh block would have suppressed a repeat; v3 decides on its own
    assert [d.policy_version for d in sink.shadow_decisions if d.action == "block"][-1] == 3


def test_kill_switch_makes_every_live_decision_dry_run_and_lifting_it_reissues_for_real():
    det, sink, control = make(policy=Policy(version=1))
    trips = sample("dialguard_block_limiter_trips_total")
    control.apply_policy("#switches", ControlSwitches(
        dry_run_all=True, author="noc", reason="suspected model fault").encode())
    assert sample("dialguard_dry_run_all") == 1
    under_switch = feed(det, robot_burst())
    assert under_switch and all(d.dry_run for d in under_switch)
    assert any(d.action == "block" for d in under_switch)
    assert all("kill switch on (dry_run_all by noc: suspected model fault)" in d.reasons[-1]
               for d in under_switch)
    assert sample("dialguard_block_limiter_trips_total") == trips  # not the limiter's doing
    control.apply_policy("#switches", ControlSwitches(dry_run_all=False).encode())
    assert sample("dialguard_dry_run_all") == 0
    # the dry-run block is still fresh, yet the next score re-issues it for real
    lifted = feed(det, robot_burst(n=10, start=T0 + 901, seed=3))
    assert lifted and lifted[0].action == "block" and not lifted[0].dry_run
    assert all("kill switch" not in r for r in lifted[0].reasons)


def test_kill_switch_applies_to_the_shadow_too():
    det, sink, control = with_shadow()
    control.apply_policy("#switches", ControlSwitches(dry_run_all=True).encode())
    feed(det, robot_burst())
    assert sink.shadow_decisions and all(d.dry_run for d in sink.shadow_decisions)
    control.apply_policy("#switches", None)  # tombstone: switches back to their defaults
    assert not control.dry_run_all and not control.policy.dry_run
