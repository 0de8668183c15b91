"""How robot-like is a caller right now? River models plus a prior built from the phenomenon.

Three parts, blended into one score in [0, 1]:

* ``prior``: what dialing robots cannot help doing, written down: people hang up on them within
  seconds, few people answer, they dial numbers that do not exist and dial in number order, and
  they reach many distinct callees. It needs no training, so it works on the first burst, and it
  is deliberately *not* a volume detector: a bank's call center dials as much as a robot, but its
  calls are answered and last minutes.
* ``anomaly``: River ``HalfSpaceTrees`` over the same squashed features, learning what active
  callers look like on this network; unusual vectors score high. Unsupervised, useful from the
  first minutes, weighted lightly because "unusual" is not "robot".
* ``classifier``: River ``LogisticRegression`` learning from delayed feedback labels
  (complaints, appeals, analyst verdicts). It starts to count once it has seen enough labels of
  both classes and its weight grows with the number of labels.

Volume is a gate in the policy (minimum evidence), not a score: a low-volume human is never
blocked however odd their calls look.
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from river import anomaly, drift, linear_model, metrics, optim, preprocessing, utils

#: Counts are squashed as log1p(count) / log1p(scale) and capped at 1.
VOLUME_SCALE_10M = 1000.0
VOLUME_SCALE_1H = 5000.0
POOL_SCALE = 1000.0
#: Mean durations are squashed as d / (d + DURATION_HALF_S).
DURATION_HALF_S = 60.0

# Prior: a logistic function of smoothed ratios over the 1 h window. Pseudo-counts keep a
# handful of calls from producing extreme ratios.
PRIOR_BIAS = -5.5
PRIOR_W_UNANSWERED = 3.0
PRIOR_W_SHORT = 3.5
PRIOR_W_UNALLOCATED = 6.0
PRIOR_W_SEQUENTIAL = 4.0
PRIOR_W_BREADTH = 1.5
PRIOR_W_REJECTED = 1.0
ANSWER_PSEUDO = (1.0, 2.0)   # (answered, attempts) added before dividing
SHORT_PSEUDO = (0.5, 2.0)    # (short, releases)
RATIO_PSEUDO_ATTEMPTS = 5.0  # added to attempts for unallocated / sequential / rejected ratios

#: Classifier weight = n / (n + CLASSIFIER_HALF_LABELS), at most CLASSIFIER_MAX_WEIGHT.
CLASSIFIER_HALF_LABELS = 200.0
CLASSIFIER_MAX_WEIGHT = 0.8

#: Labels in the rolling log-loss window.
LOG_LOSS_WINDOW = 500
HST_TREES = 25
HST_HEIGHT = 8
HST_WINDOW = 250


@dataclass(frozen=True)
class ScoreParts:
    score: float
    prior: float
    anomaly: float
    classifier: float | None


def squash_count(value: float, scale: float) -> float:
    return min(math.log1p(max(value, 0.0)) / math.log1p(scale), 1.0)


def model_input(feats: dict[str, float]) -> dict[str, float]:
    """Squash raw features into [0, 1] so HalfSpaceTrees' fixed limits fit them."""
    dur = feats.get("mean_duration_1h", 0.0)
    cv = feats.get("gap_cv_10m", 1.0)
    return {
        "volume_10m": squash_count(feats.get("attempts_10m", 0.0), VOLUME_SCALE_10M),
        "volume_1h": squash_count(feats.get("attempts_1h", 0.0), VOLUME_SCALE_1H),
        "breadth_1h": feats.get("breadth_1h", 0.0),
        "answer_ratio_1h": feats.get("answer_ratio_1h", 0.0),
        "short_ratio_1h": feats.get("short_ratio_1h", 0.0),
        "unallocated_ratio_1h": feats.get("unallocated_ratio_1h", 0.0),
        "sequential_ratio_1h": feats.get("sequential_ratio_1h", 0.0),
        "rejected_ratio_1h": feats.get("rejected_ratio_1h", 0.0),
        "duration_1h": dur / (dur + DURATION_HALF_S),
        "rhythm_10m": cv / (1.0 + cv),
        "attest_a_1h": feats.get("attest_a_ratio_1h", 0.0),
        "attest_c_1h": feats.get("attest_c_ratio_1h", 0.0),
        "pool_callers": squash_count(feats.get("pool_callers", 0.0), POOL_SCALE),
        "pool_answer_ratio": feats.get("pool_answer_ratio", 0.0),
        "pool_short_ratio": feats.get("pool_short_ratio", 0.0),
    }


def answer_and_short(feats: dict[str, float]) -> tuple[float, float]:
    """Smoothed answer ratio (per attempt) and short-call ratio (per release) over the hour:
    the two things people do to robots, read the same way for numbers and sources."""
    attempts = feats.get("attempts_1h", 0.0)
    answered = min(feats.get("answered_1h", 0.0), attempts)
    answer = (answered + ANSWER_PSEUDO[0]) / (attempts + ANSWER_PSEUDO[1])
    short = (feats.get("short_1h", 0.0) + SHORT_PSEUDO[0]) / \
        (feats.get("released_1h", 0.0) + SHORT_PSEUDO[1])
    return answer, short


def prior_score(feats: dict[str, float]) -> float:
    """Robot-likeness from first principles (see module docstring); pure and deterministic."""
    attempts = feats.get("attempts_1h", 0.0)
    answer, short = answer_and_short(feats)
    den = attempts + RATIO_PSEUDO_ATTEMPTS
    unallocated = feats.get("unallocated_ratio_1h", 0.0) * attempts / den
    sequential = feats.get("sequential_ratio_1h", 0.0) * attempts / den
    rejected = feats.get("rejected_ratio_1h", 0.0) * attempts / den
    breadth = feats.get("distinct_1h", 0.0) / (attempts + 1.0)
    z = (PRIOR_BIAS + PRIOR_W_UNANSWERED * (1.0 - answer) + PRIOR_W_SHORT * short
         + PRIOR_W_UNALLOCATED * unallocated + PRIOR_W_SEQUENTIAL * sequential
         + PRIOR_W_BREADTH * breadth + PRIOR_W_REJECTED * rejected)
    return 1.0 / (1.0 + math.exp(-z))


class Checkpointed:
    """A model saved and restored whole (pickle): River estimators are plain Python objects."""

    def save(self, path: Path) -> None:
        """Atomic write: a crash mid-checkpoint leaves the previous checkpoint intact."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)

    @classmethod
    def load_or_new(cls, path: Path, **kwargs: float) -> tuple[Any, bool]:
        """Restore a checkpoint if there is one (returns it and True), else a fresh model."""
        if path.exists():
            with path.open("rb") as fh:
                model = pickle.load(fh)
            if isinstance(model, cls):
                return model, True
        return cls(**kwargs), False  # type: ignore[arg-type]


def new_models(seed: int) -> tuple[anomaly.HalfSpaceTrees, Any]:
    """The two River models every scorer layers over its prior: HalfSpaceTrees (unsupervised)
    and a scaled LogisticRegression (from labels)."""
    return (anomaly.HalfSpaceTrees(n_trees=HST_TREES, height=HST_HEIGHT,
                                   window_size=HST_WINDOW, seed=seed),
            preprocessing.StandardScaler() | linear_model.LogisticRegression(
                optimizer=optim.SGD(0.05)))


def label_weight(labels_seen: dict[int, int], min_labels: int, half_labels: float,
                 max_weight: float) -> float:
    """Weight of the classifier in a score: 0 until it has seen ``min_labels`` of each class,
    then n / (n + half_labels), at most ``max_weight``."""
    if min(labels_seen.values()) < min_labels:
        return 0.0
    n = sum(labels_seen.values())
    return min(n / (n + half_labels), max_weight)


class NuisanceScorer(Checkpointed):
    """Scores feature vectors and learns online; picklable as a whole for checkpoints."""

    def __init__(self, anomaly_weight: float = 0.15, classifier_min_labels: int = 20,
                 seed: int = 42) -> None:
        self.anomaly_weight = anomaly_weight
        self.classifier_min_labels = classifier_min_labels
        self.detector, self.classifier = new_models(seed)
        self.labels_seen = {0: 0, 1: 0}
        self.scored = 0
        # Prequential quality on labels: each label scores the model before it learns from it.
        self.roc_auc = metrics.ROCAUC()
        self.log_loss = utils.Rolling(metrics.LogLoss, window_size=LOG_LOSS_WINDOW)
        self.drift = drift.ADWIN()
        self.drift_alarms = 0

    @property
    def classifier_weight(self) -> float:
        return label_weight(self.labels_seen, self.classifier_min_labels,
                            CLASSIFIER_HALF_LABELS, CLASSIFIER_MAX_WEIGHT)

    def score(self, feats: dict[str, float], learn: bool = True) -> ScoreParts:
        x = model_input(feats)
        prior = prior_score(feats)
        anomaly_score = float(self.detector.score_one(x))
        if learn:
            self.detector.learn_one(x)
            self.scored += 1
        clf: float | None = None
        robot = prior
        weight = self.classifier_weight
        if weight > 0:
            clf = float(self.classifier.predict_proba_one(x).get(True, 0.0))
            robot = (1.0 - weight) * prior + weight * clf
        # HalfSpaceTrees scores 0 until it has filled its first reference window; counting that
        # as "perfectly normal" would hold back the first blocks of a fresh deployment.
        weight_a = self.anomaly_weight if self.scored > HST_WINDOW else 0.0
        score = (1.0 - weight_a) * robot + weight_a * anomaly_score
        if learn:
            self.drift.update(score)
            if self.drift.drift_detected:
                self.drift_alarms += 1
        return ScoreParts(score=min(max(score, 0.0), 1.0), prior=prior, anomaly=anomaly_score,
                          classifier=clf)

    def learn_label(self, feats: dict[str, float], target: int) -> None:
        """One feedback label: 1 = nuisance robot, 0 = legitimate caller."""
        x = model_input(feats)
        proba = self.classifier.predict_proba_one(x)
        if proba:
            self.roc_auc.update(bool(target), proba)
            self.log_loss.update(bool(target), proba)
        self.classifier.learn_one(x, bool(target))
        self.labels_seen[int(bool(target))] += 1
