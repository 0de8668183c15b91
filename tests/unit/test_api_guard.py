from services.api.auth import Identity
from services.api.guard import Guard, evaluate, previous_version
from services.api.views import SeenLabel
from streams.policy import Policy, Thresholds
from streams.schema import Decision, Label
from streams.topics import DECISIONS, FEEDBACK
from tests.unit.api_helpers import Api

T = 1_800_000_000.0


def seen(number, kind, arrived):
    return SeenLabel(Label(number, kind, arrived), arrived)


def test_verdict_counts_only_fresh_labels_of_enforced_numbers():
    policy = Policy(fp_target=0.2, fp_min_labels=4)
    enforced = {f"n{i}": T for i in range(10)}
    labels = {"n0": [seen("n0", "legit", T + 10)], "n1": [seen("n1", "legit", T + 10)],
              "n2": [seen("n2", "complaint", T + 10)],
              "n3": [seen("n3", "legit", T - 10)],          # before the version: not fresh
              "other": [seen("other", "legit", T + 10)]}    # never enforced against
    v = evaluate(policy, T, enforced, labels)
    assert (v.enforced, v.labelled, v.legit, v.rollback) == (10, 3, 2, False)  # 3 < 4 labels
    labels["n4"] = [seen("n4", "complaint", T + 20)]
    v = evaluate(policy, T, enforced, labels)
    assert (v.labelled, v.legit, v.rollback) == (4, 2, True)
    assert "50.0%" in v.describe(policy.fp_target)


def test_no_rollback_at_or_below_target():
    policy = Policy(fp_target=0.5, fp_min_labels=2)
    labels = {"a": [seen("a", "legit", T + 1)], "b": [seen("b", "robot", T + 1)]}
    assert not evaluate(policy, T, {"a": T, "b": T}, labels).rollback


def test_latest_fresh_label_decides():
    policy = Policy(fp_target=0.0, fp_min_labels=1)
    labels = {"a": [seen("a", "legit", T + 1), seen("a", "appeal_denied", T + 2)]}
    assert not evaluate(policy, T, {"a": T}, labels).rollback


def test_previous_version():
    versions = [Policy(version=v) for v in (5, 3, 2)]
    assert previous_version(versions, Policy(version=5)).version == 3
    assert previous_version(versions, Policy(version=2)) is None


def test_guard_rolls_back_audits_and_counts(tmp_path):
    from services.api import metrics

    api = Api(tmp_path)
    ops = api.ops
    analyst = Identity("ana", "analyst")
    ops.put_policy(analyst, "default", Policy().to_dict(), "baseline")
    ops.put_policy(analyst, "default", {"thresholds": {"label": 0.3, "rate_limit": 0.4,
                                                      "block": 0.5},
                                        "fp_target": 0.1, "fp_min_labels": 3}, "aggressive")
    assert api.views.live["default"].version == 2
    for i in range(4):
        number = f"861300000000{i}"
        d = Decision(number, "block", 3600, 0.6, ["x"], "default", 2, T, T)
        api.views.apply(DECISIONS.name, number, d.encode(), api.views.live_since["default"] + 1)
        kind = "appeal_upheld" if i < 2 else "complaint"
        api.views.apply(FEEDBACK.name, number, Label(number, kind, T, id=f"l{i}").encode(),
                        api.views.live_since["default"] + 2)
    before = metrics.AUTO_ROLLBACKS.labels("default")._value.get()
    rolled = Guard(ops, 1.0).check_once()
    assert len(rolled) == 1 and rolled[0].legit == 2 and rolled[0].labelled == 4
    live = api.views.live["default"]
    assert live.version == 3 and live.author == "guard"
    assert live.thresholds == Thresholds() and "automatic rollback of v2" in live.reason
    assert metrics.AUTO_ROLLBACKS.labels("default")._value.get() == before + 1
    audit = api.views.audit_records("policy/default", 1)[0]
    assert audit.actor == "guard" and audit.before["version"] == 2 and \
        audit.after["version"] == 3
    # the new version has no evidence yet: a second pass does nothing
    assert Guard(ops, 1.0).check_once() == []


def test_a_version_the_guard_rolled_back_is_never_returned_to():
    from services.api.guard import rolled_back_versions
    from streams.schema import AuditRecord

    audit = [AuditRecord("1", T, "guard", "admin", "policy.rollback", "policy/default",
                         before={"version": 5}, after={"version": 6}),
             AuditRecord("2", T, "ana", "analyst", "policy.rollback", "policy/default",
                         before={"version": 3}, after={"version": 4}),
             AuditRecord("3", T, "guard", "admin", "policy.rollback", "policy/other",
                         before={"version": 2}, after={"version": 3})]
    failed = rolled_back_versions(audit, "default")
    assert failed == {5}
    versions = [Policy(version=v) for v in (7, 6, 5, 4)]
    assert previous_version(versions, Policy(version=7), failed).version == 6
    assert previous_version(versions, Policy(version=6), failed).version == 4


def test_labels_inside_an_enforced_range_judge_the_version_but_not_behind_a_trunk():
    policy = Policy(fp_target=0.2, fp_min_labels=2)
    enforced = {"prefix:86170123": T, "trunk:sw-2/ent-7": T}
    labels = {"8617012345678": [seen("8617012345678", "legit", T + 1)],
              "8617012399999": [seen("8617012399999", "callback_ok", T + 1)],
              "8617099999999": [seen("8617099999999", "legit", T + 1)]}  # outside the range
    v = evaluate(policy, T, enforced, labels)
    assert (v.enforced, v.labelled, v.legit, v.rollback) == (2, 2, 2, True)
