from services.api.views import Bounded, Views
from streams.policy import SWITCHES_KEY, ControlSwitches, Policy, shadow_key
from streams.schema import AuditRecord, Decision, Label
from streams.topics import AUDIT, DECISIONS, FEEDBACK, POLICY, POLICY_HISTORY, SCORES
from tests.unit.api_helpers import score

T = 1_800_000_000.0


def test_policy_records_fold_into_live_shadow_switches_and_history():
    v = Views(100)
    v.apply(POLICY.name, "default", Policy(version=1).encode(), T)
    v.apply(POLICY.name, "default", Policy(version=1).encode(), T + 5)  # same version again
    assert v.live_since["default"] == T
    v.apply(POLICY.name, "default", Policy(version=2).encode(), T + 10)
    assert v.live["default"].version == 2 and v.live_since["default"] == T + 10
    v.apply(POLICY.name, shadow_key("default"), Policy(version=3).encode(), T + 11)
    v.apply(POLICY_HISTORY.name, "default:1", Policy(version=1).encode(), T)
    assert [p.version for p in v.versions("default")] == [3, 2, 1]
    assert v.next_version("default") == 4
    v.apply(POLICY.name, shadow_key("default"), None, T + 12)
    assert "default" not in v.shadow
    v.apply(POLICY.name, SWITCHES_KEY, ControlSwitches(True, "adam").encode(), T)
    assert v.switches.dry_run_all
    v.apply(POLICY.name, "other", Policy(name="default").encode(), T)  # key/name mismatch
    assert v.rejected == 1 and "other" not in v.live


def test_decisions_labels_scores_and_appeals():
    v = Views(100)
    for i, action in enumerate(("label", "block")):
        d = Decision("861", action, 60, 0.9, ["r"], "default", 2, T + i, T + i)
        v.apply(DECISIONS.name, "861", d.encode(), T + i)
    dry = Decision("862", "block", 60, 0.9, ["r"], "default", 2, T, T, dry_run=True)
    v.apply(DECISIONS.name, "862", dry.encode(), T)
    assert [d.action for d in v.number_decisions("861")] == ["block", "label"]
    assert v.enforced_by("default", 2) == {"861": T + 1}  # dry-run and labels do not count
    assert [d.number for d in v.recent_decisions(2)] == ["862", "861"]
    v.apply(FEEDBACK.name, "861", Label("861", "legit", T, id="x").encode(), T + 3)
    assert v.has_label_id("x") and v.number_labels("861")[0].arrived == T + 3
    v.apply(SCORES.name, "861", score("861", 0.9, T).encode(), 100.0)
    v.apply(SCORES.name, "863", score("863", 0.5, T).encode(), 200.0)
    assert [r.number for r in v.recent_scores(150.0)] == ["863"]
    appeal = {"id": "a1", "number": "861", "status": "pending"}
    v.apply(AUDIT.name, "appeal/a1", AuditRecord("1", T, "ana", "analyst", "appeal.create",
                                                 "appeal/a1", after=appeal).encode(), T)
    assert v.appeals.get("a1") == appeal
    assert [r.subject for r in v.audit_records("appeal", 10)] == ["appeal/a1"]
    assert v.audit_records("policy", 10) == []


def test_bounded_forgets_the_oldest():
    b: Bounded[str, int] = Bounded(2)
    b.put("a", 1)
    b.put("b", 2)
    b.put("a", 3)  # rewritten: now the newest
    b.put("c", 4)
    assert dict(b.items()) == {"a": 3, "c": 4}


def test_wait_for_sees_applied_offsets():
    v = Views(10)
    assert not v.wait_for(POLICY.name, 0, 0, timeout=0.01)
    v.apply(POLICY.name, "default", Policy().encode(), T, partition=0, offset=4)
    assert v.wait_for(POLICY.name, 0, 4, timeout=0.01)
