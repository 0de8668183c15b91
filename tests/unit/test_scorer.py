from pathlib import Path

from online_models.scorer import NuisanceScorer, model_input, prior_score

ROBOT = {"attempts_10m": 200, "attempts_1h": 600, "distinct_1h": 580, "answered_1h": 60,
         "released_1h": 60, "short_1h": 52, "unallocated_ratio_1h": 0.25,
         "answer_ratio_1h": 0.1, "short_ratio_1h": 0.87, "breadth_1h": 0.97}
CALL_CENTER = {"attempts_10m": 200, "attempts_1h": 600, "distinct_1h": 580, "answered_1h": 390,
               "released_1h": 380, "short_1h": 30, "unallocated_ratio_1h": 0.01,
               "answer_ratio_1h": 0.65, "short_ratio_1h": 0.08, "mean_duration_1h": 180,
               "breadth_1h": 0.97}
QUIET_HUMAN = {"attempts_10m": 2, "attempts_1h": 3, "distinct_1h": 2, "answered_1h": 0,
               "released_1h": 0}


def test_prior_separates_robot_from_call_center():
    assert prior_score(ROBOT) > 0.9
    assert prior_score(CALL_CENTER) < 0.15
    # a few unanswered calls are not evidence of anything
    assert prior_score(QUIET_HUMAN) < 0.5


def test_model_input_is_in_unit_range():
    for feats in (ROBOT, CALL_CENTER, QUIET_HUMAN, {}):
        assert all(0.0 <= v <= 1.0 for v in model_input(feats).values())


def test_classifier_learns_from_labels_and_changes_scores():
    s = NuisanceScorer(classifier_min_labels=5)
    before = s.score(CALL_CENTER, learn=False)
    assert before.classifier is None
    for _ in range(50):  # analysts say this kind of profile is a robot after all
        s.learn_label(CALL_CENTER, 1)
        s.learn_label(QUIET_HUMAN, 0)
    after = s.score(CALL_CENTER, learn=False)
    assert after.classifier is not None and after.classifier > 0.8
    assert after.score > before.score


def test_checkpoint_roundtrip(tmp_path: Path):
    s = NuisanceScorer()
    for _ in range(300):
        s.score(ROBOT)
        s.score(CALL_CENTER)
    path = tmp_path / "m.pkl"
    s.save(path)
    restored, ok = NuisanceScorer.load_or_new(path)
    assert ok and restored.scored == s.scored
    assert restored.score(ROBOT, learn=False) == s.score(ROBOT, learn=False)
    fresh, ok2 = NuisanceScorer.load_or_new(tmp_path / "missing.pkl")
    assert not ok2 and fresh.scored == 0


def test_label_quality_is_measured_before_learning():
    s = NuisanceScorer()
    for _ in range(40):
        s.learn_label(ROBOT, 1)
        s.learn_label(CALL_CENTER, 0)
    assert s.roc_auc.get() > 0.9
    assert 0 < s.log_loss.get() < 0.7
