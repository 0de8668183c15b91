from services.api.whatif import legit_numbers, what_if
from streams.policy import AllowList, Policy, Thresholds
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
    assert r["changed"] == [{"number": "8613000000002", "from": "block", "to": "rate_limit",
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
