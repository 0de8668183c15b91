"""How robot-like is what a trunk or a number range sends? A prior plus River models, per source.

The same three layers as :mod:`online_models.scorer`, over source features
(:mod:`streams.source_features`):

* ``prior``: what a dialing campaign cannot help doing, whatever number it shows: the people
  it calls mostly do not answer, those who answer hang up within seconds, its purchased lists
  hold dead numbers, and almost nobody holds a real conversation with it. Caller churn (a new
  number every call) is *not* in the prior: it is why the per-number view is blind, not proof
  of a robot; a company PBX or an interconnect trunk also shows many distinct numbers.
* ``anomaly``: River ``HalfSpaceTrees`` learning what sources on this network look like;
  weighted lightly, because an unusual source (a bank's OTP service) is not a robot.
* ``classifier``: River ``LogisticRegression`` learning from labels on source keys
  (``trunk:...``, ``prefix:...``: analyst verdicts on a campaign), trusted once it has seen
  enough labels of both classes.

Volume is a gate in the policy (:func:`streams.policy.source_evidence_ok`), never a score.

Parameters
----------
anomaly_weight
    Weight of the anomaly score once HalfSpaceTrees has filled its first window.
classifier_min_labels
    Labels of each class before the classifier counts at all.
seed
    Random seed of HalfSpaceTrees.

Examples
--------
>>> scorer = SourceScorer()
>>> robots = {"attempts_1h": 1500, "answered_1h": 120, "released_1h": 110, "short_1h": 100,
...           "conversations_1h": 3, "unallocated_ratio_1h": 0.2}
>>> people = {"attempts_1h": 1500, "answered_1h": 1050, "released_1h": 1000, "short_1h": 80,
...           "conversations_1h": 800, "unallocated_ratio_1h": 0.02}
>>> scorer.score_one(robots).score > 0.85, scorer.score_one(people).score < 0.05
(True, True)
>>> scorer.learn_one(robots)

References
----------
Tan, Ting & Liu, "Fast anomaly detection for streaming data", IJCAI 2011 (HalfSpaceTrees).
"""

from __future__ import annotations

import math

from online_models.scorer import (HST_WINDOW, Checkpointed, ScoreParts, answer_and_short,
                                  label_weight, new_models, squash_count)

# Prior: a logistic function of smoothed ratios over the source's last hour.
PRIOR_BIAS = -5.5
PRIOR_W_UNANSWERED = 5.0
PRIOR_W_SHORT = 3.5
PRIOR_W_UNALLOCATED = 3.0
PRIOR_W_REJECTED = 1.0
#: Real conversations pull hard the other way: people talk to people, not to robots.
PRIOR_W_CONVERSATION = 15.0
VOLUME_SCALE = 20_000.0
CALLER_SCALE = 2_000.0
DURATION_HALF_S = 60.0

CLASSIFIER_HALF_LABELS = 50.0
CLASSIFIER_MAX_WEIGHT = 0.6


def prior_score(feats: dict[str, float]) -> float:
    """Robot-likeness of a source from first principles; pure and deterministic."""
    attempts = feats.get("attempts_1h", 0.0)
    answer, short = answer_and_short(feats)
    conversation = feats.get("conversations_1h", 0.0) / (attempts + 1.0)
    z = (PRIOR_BIAS + PRIOR_W_UNANSWERED * (1.0 - answer) + PRIOR_W_SHORT * short
         + PRIOR_W_UNALLOCATED * feats.get("unallocated_ratio_1h", 0.0)
         + PRIOR_W_REJECTED * feats.get("rejected_ratio_1h", 0.0)
         - PRIOR_W_CONVERSATION * conversation)
    return 1.0 / (1.0 + math.exp(-z))


def model_input(feats: dict[str, float]) -> dict[str, float]:
    """Squash source features into [0, 1] so HalfSpaceTrees' fixed limits fit them."""
    dur = feats.get("mean_duration_1h", 0.0)
    return {
        "volume": squash_count(feats.get("attempts_1h", 0.0), VOLUME_SCALE),
        "callers": squash_count(feats.get("distinct_callers_1h", 0.0), CALLER_SCALE),
        "callers_once": feats.get("callers_once_share_1h", 0.0),
        "new_callers": feats.get("new_caller_share_1h", 0.0),
        "spoofed": feats.get("spoofed_share_1h", 0.0),
        "answer_ratio": feats.get("answer_ratio_1h", 0.0),
        "short_ratio": feats.get("short_ratio_1h", 0.0),
        "conversation_share": feats.get("conversation_share_1h", 0.0),
        "unallocated_ratio": feats.get("unallocated_ratio_1h", 0.0),
        "duration": dur / (dur + DURATION_HALF_S),
        "attest_a": feats.get("attest_a_ratio_1h", 0.0),
        "attest_none": feats.get("attest_none_ratio_1h", 0.0),
        "range_spread": feats.get("caller_range_spread_1h", 0.0),
    }


class SourceScorer(Checkpointed):
    """Scores source feature vectors; learns what sources look like and from labels.

    ``score_one`` never changes the models; ``learn_one`` (unsupervised) and ``learn_label``
    (supervised) do, so a detector can judge several parts of a trunk and learn once.
    Picklable as a whole for checkpoints (see :class:`online_models.scorer.NuisanceScorer`).
    """

    def __init__(self, anomaly_weight: float = 0.1, classifier_min_labels: int = 10,
                 seed: int = 43) -> None:
        self.anomaly_weight = anomaly_weight
        self.classifier_min_labels = classifier_min_labels
        self.detector, self.classifier = new_models(seed)
        self.labels_seen = {0: 0, 1: 0}
        self.learned = 0

    @property
    def classifier_weight(self) -> float:
        return label_weight(self.labels_seen, self.classifier_min_labels,
                            CLASSIFIER_HALF_LABELS, CLASSIFIER_MAX_WEIGHT)

    def score_one(self, feats: dict[str, float]) -> ScoreParts:
        x = model_input(feats)
        prior = prior_score(feats)
        anomaly_score = float(self.detector.score_one(x))
        robot, clf = prior, None
        weight = self.classifier_weight
        if weight > 0:
            clf = float(self.classifier.predict_proba_one(x).get(True, 0.0))
            robot = (1.0 - weight) * prior + weight * clf
        weight_a = self.anomaly_weight if self.learned > HST_WINDOW else 0.0
        score = (1.0 - weight_a) * robot + weight_a * anomaly_score
        return ScoreParts(min(max(score, 0.0), 1.0), prior, anomaly_score, clf)

    def learn_one(self, feats: dict[str, float]) -> None:
        self.detector.learn_one(model_input(feats))
        self.learned += 1

    def learn_label(self, feats: dict[str, float], target: int) -> None:
        """One verdict on a source: 1 = a robot campaign, 0 = legitimate traffic."""
        self.classifier.learn_one(model_input(feats), bool(target))
        self.labels_seen[int(bool(target))] += 1
