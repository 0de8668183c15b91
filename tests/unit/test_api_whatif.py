from services.api.whatif import judge, legit_numbers, source_of, what_if
from streams.policy import AllowList, BlockLimiter, Policy, Thresholds
from streams.schema import AllowEntry, Label
from tests.unit.api_helpers import score

NOW = 1_800_000_000.0
FEW = {"attempts_1h": 3.0, "distinct_1h": 3.0, "answered_1h": 1.0, "fail_ratio_1h": 0.5}


def records():
    return [score("8613000000001", 0.95, NOW - 60), score("8613000000002", 0.88, NOW - 50),
            score("8613000000003", 0.75, NOW - 40), score("8613000000004", 0.55, NOW - 30),
            score("8613000000005", 0.20, NOW - 20),
            # a person who looks odd but has made 3 calls: never enforced against
            score("8613000000006", 0.99, NOW - 10, FEW)]


def test_counts_false_positives_and_changes_between_policies():
    current = Policy()  # label 0.5, rate_limit 0.7, block 0.85
    candidate = Policy(version=2, thresholds=Thresholds(0.5, 0.7, 0.9))
    labels = {"8613000000002": [Label("8613000000002", "appeal_upheld", NOW - 5)],
              "8613000000003": [Label("8613000000003", "complaint", NOW - 5)]}
    r = what_if(records(), current, candidate, AllowList(), labels, NOW, 3600)
    assert r["numbers"] == 6
    assert r["current"] == {"label": 2, "rate_limit": 1, "block": 2}
    assert r["candidate"] == {"label": 2, "rate_limit": 2, "block": 1}
    # number 2 (legit) is blocked now and would be rate limited: still enforced, still an FP
    assert r["estimated_false_positives"] == {"current": 1, "candidate": 1}
    assert r["changed_total"] == 1
    assert r["changed"] == [{"number": "8613000000002", "scope": "number", "from": "block",
                             "to": "rate_limit",
                             "score": 0.88, "legit_label": True}]


def test_raising_the_label_bar_frees_the_legitimate_caller():
    candidate = Policy(version=2, thresholds=Thresholds(0.6, 0.9, 0.97))
    labels = {"8613000000002": [Label("8613000000002", "complaint", NOW - 500),
                                Label("8613000000002", "analyst_legit", NOW - 5)]}
    r = what_if(records(), Policy(), candidate, AllowList(), labels, NOW, 3600)
    assert r["estimated_false_positives"] == {"current": 1, "candidate": 0}
    assert r["candidate"]["block"] == 0
    assert {c["number"] for c in r["changed"]} == {"8613000000001", "8613000000002",
                                                    "8613000000003", "8613000000004"}


def test_allowlisted_and_dry_run_numbers_are_not_enforced():
    allow = AllowList()
    allow.apply("8613000000001", AllowEntry("8613000000001", "bank"))
    labels = {"8613000000001": [Label("8613000000001", "legit", NOW)]}
    r = what_if(records(), Policy(), Policy(version=2, dry_run=True), allow, labels, NOW, 60)
    assert r["current"]["block"] == 1  # number 1 is allowlisted: no action at all
    assert r["estimated_false_positives"] == {"current": 0, "candidate": 0}
    assert r["changed_total"] == 0  # dry-run keeps the actions, enforces none


def test_latest_record_per_number_wins_and_changed_list_is_capped():
    recs = [score(f"86130000{i:05d}", 0.9, NOW - 100) for i in range(30)]
    recs.append(score("8613000000000", 0.1, NOW - 10))  # newer, low: number 0 calmed down
    r = what_if(recs, Policy(), Policy(version=2, thresholds=Thresholds(0.5, 0.7, 0.95)),
                AllowList(), {}, NOW, 3600, changed_cap=5)
    assert r["numbers"] == 30
    assert r["changed_total"] == 29 and len(r["changed"]) == 5


def test_legit_numbers_uses_the_latest_label():
    labels = {"a": [Label("a", "legit", 1.0), Label("a", "complaint", 2.0)],
              "b": [Label("b", "complaint", 1.0), Label("b", "callback_ok", 2.0)], "c": []}
    assert legit_numbers(labels) == {"b"}


# -- sources (issue 10): ranges and trunks go through decide_source with the scope's policy -----
#: Feature names as streams/source_features.py writes them (per segment prefix "", "nb_",
#: "uv_"; callees for the whole source), covering the gates of decide_source.
SOURCE_FEATS = {"attempts_1h": 500.0, "distinct_callers_1h": 300.0,
                "distinct_callees_1h": 480.0, "settled_1h": 450.0,
                "conversation_share_1h": 0.0, "conversations_1h": 0.0, "protected_1h": 0.0,
                "heavy_caller_share_1h": 0.0, "talkers_1h": 0.0, "observed_s": 3600.0}
#: A trunk people talk on (whole trunk fails the conversation gate) whose unverified calls
#: are a robot's (segment "uv_" passes it); the source stage scored segment 2.
MIXED_TRUNK = {**SOURCE_FEATS, "conversation_share_1h": 0.3, "conversations_1h": 150.0,
               "uv_attempts_1h": 400.0, "uv_settled_1h": 380.0, "uv_distinct_callers_1h": 250.0,
               "uv_conversation_share_1h": 0.0, "uv_conversations_1h": 0.0,
               "uv_heavy_caller_share_1h": 0.0, "uv_protected_1h": 0.0, "uv_talkers_1h": 0.0,
               "decision_segment": 2.0}


def source_records():
    return [score("prefix:86170123", 0.9, NOW - 30, SOURCE_FEATS),
            score("trunk:sw-2/ent-7", 0.9, NOW - 20, MIXED_TRUNK),
            score("8613000000001", 0.95, NOW - 10)]


def test_sources_are_judged_by_the_scope_policy_and_counted_by_scope():
    from streams.policy import ScopePolicy

    lenient = Policy(version=2, scopes={
        "prefix": ScopePolicy(thresholds=Thresholds(0.5, 0.75, 0.95)),
        "trunk": ScopePolicy(thresholds=Thresholds(0.5, 0.75, 0.95))})
    r = what_if(source_records(), Policy(), lenient, AllowList(), {}, NOW, 3600)
    assert r["numbers"] == 1 and r["keys"] == 3
    assert r["keys_by_scope"] == {"number": 1, "prefix": 1, "trunk": 1}
    assert r["by_scope"]["prefix"] == {"current": {"label": 0, "rate_limit": 0, "block": 1},
                                       "candidate": {"label": 0, "rate_limit": 1, "block": 0}}
    assert r["by_scope"]["trunk"]["current"]["block"] == 1
    assert r["by_scope"]["number"]["current"] == r["by_scope"]["number"]["candidate"]
    assert r["current"]["block"] == 3 and r["candidate"]["block"] == 1
    assert {(c["number"], c["scope"], c["to"]) for c in r["changed"]} == \
        {("prefix:86170123", "prefix", "rate_limit"), ("trunk:sw-2/ent-7", "trunk", "rate_limit")}


def test_a_trunk_record_is_judged_on_the_segment_it_was_scored_for():
    limiters = {s: BlockLimiter() for s in ("number", "prefix", "trunk")}
    rec = source_records()[1]
    d = judge(Policy(), AllowList(), limiters, rec, NOW)
    assert (d.action, d.scope, d.target, d.switch) == ("block", "trunk", "sw-2/ent-7", "sw-2")
    assert d.match == {"attest": ["B", "C", "none"]}
    # without the segment the whole trunk is judged: people talk on it, a label at most
    whole = score(rec.number, 0.9, rec.ts, {k: v for k, v in MIXED_TRUNK.items()
                                            if k != "decision_segment"})
    d = judge(Policy(), AllowList(), limiters, whole, NOW)
    assert d.action == "label" and d.match is None
    assert any("conversations" in reason for reason in d.reasons)
    assert source_of(score("trunk:sw-2/ent-7", 0.9, NOW, {"decision_segment": 1.0}),
                     neighbour_tail=3)[0].match.neighbour_tail == 3
    assert source_of(score("trunk:sw-2/ent-7", 0.9, NOW, {"decision_segment": 9.0}))[1] == ""


def test_protected_sources_are_never_enforced_and_ranges_count_legit_numbers_inside():
    allow = AllowList()
    allow.apply("trunk:sw-2/ent-7", AllowEntry("sw-2/ent-7", "bank", trunk=True))
    labels = {"8617012345678": [Label("8617012345678", "analyst_legit", NOW)]}
    r = what_if(source_records(), Policy(), Policy(version=2), allow, labels, NOW, 3600)
    assert r["by_scope"]["trunk"]["current"] == {"label": 0, "rate_limit": 0, "block": 0}
    # the blocked range holds a caller labelled legitimate: an estimated false positive
    assert r["estimated_false_positives"] == {"current": 1, "candidate": 1}


def test_segments_agree_with_the_source_stage():
    """What-if rebuilds a trunk segment from ``decision_segment``; the source stage defines
    them (skipped where the source stage is not in the tree yet)."""
    import pytest

    features = pytest.importorskip("streams.source_features", exc_type=ImportError)
    detector = pytest.importorskip("streams.source_detector", exc_type=ImportError)
    from services.api import whatif

    assert [whatif.SEGMENT_PREFIXES[i] for i in range(len(features.SEGMENT_PREFIX))] == \
        list(features.SEGMENT_PREFIX)
    assert (features.SEG_ALL, features.SEG_NEIGHBOUR, features.SEG_UNVERIFIED) == \
        (whatif.SEGMENT_ALL, whatif.SEGMENT_NEIGHBOUR, whatif.SEGMENT_UNVERIFIED)
    assert detector.UNVERIFIED_MATCH.attest == whatif.UNVERIFIED_ATTEST
