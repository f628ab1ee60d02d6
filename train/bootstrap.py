"""95 % bootstrap confidence intervals of clip AUC / pAUC, and of the difference between two scorings.

Clips are resampled with replacement within each class (stratified), so every replicate has both classes.
With few clips the interval is wide: it says how much the test set can show, not how good the model is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_asd.train.evaluate import auc_pauc


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile interval [low, high]."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _classes(is_anomaly) -> np.ndarray:
    y = np.asarray(is_anomaly, dtype=bool)
    if y.all() or not y.any():
        raise ValueError("AUC needs both normal and anomalous clips")
    return y


def _replicates(y: np.ndarray, n_boot: int, seed: int):
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.concatenate([rng.choice(neg, len(neg)), rng.choice(pos, len(pos))])


def _interval(value: float, samples: list[float], level: float) -> Interval:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return Interval(float(value), float(low), float(high))


def auc_ci(is_anomaly, scores, max_fpr: float = 0.1, n_boot: int = 1000, level: float = 0.95,
           seed: int = 0) -> tuple[Interval, Interval]:
    """(AUC, pAUC) of clip ``scores`` (n_clips,) against labels ``is_anomaly`` (n_clips,) with intervals.

    Raises:
        ValueError: only one class present.
    """
    y, s = _classes(is_anomaly), np.asarray(scores, dtype=np.float64)
    auc, pauc = auc_pauc(y, s, max_fpr)
    reps = [auc_pauc(y[idx], s[idx], max_fpr) for idx in _replicates(y, n_boot, seed)]
    return _interval(auc, [r[0] for r in reps], level), _interval(pauc, [r[1] for r in reps], level)


def paired_difference_ci(is_anomaly, scores_a, scores_b, max_fpr: float = 0.1, n_boot: int = 1000,
                         level: float = 0.95, seed: int = 0) -> tuple[Interval, Interval]:
    """(AUC_a - AUC_b, pAUC_a - pAUC_b) of two scorings of the same clips, resampled together (paired).

    An interval that excludes 0 means the test set separates the two; one that includes 0 means it cannot.

    Raises:
        ValueError: only one class present, or the score arrays differ in length.
    """
    y = _classes(is_anomaly)
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if not len(a) == len(b) == len(y):
        raise ValueError("both scorings must score the same clips")

    def diff(idx):
        (auc_a, pauc_a), (auc_b, pauc_b) = auc_pauc(y[idx], a[idx], max_fpr), auc_pauc(y[idx], b[idx], max_fpr)
        return auc_a - auc_b, pauc_a - pauc_b

    point = diff(np.arange(len(y)))
    reps = [diff(idx) for idx in _replicates(y, n_boot, seed)]
    return _interval(point[0], [r[0] for r in reps], level), _interval(point[1], [r[1] for r in reps], level)
