"""95 % bootstrap confidence intervals of clip AUC / pAUC, and of the difference between two scorings.

Clips are resampled with replacement within each class (stratified), so every replicate has both classes.
With few clips the interval is wide: it says how much the test set can show, not how good the model is.

Scores may be one scoring, shape (n_clips,), or several seeds' scorings of the same clips, shape
(n_seeds, n_clips). With several seeds the statistic is the mean over seeds of each seed's AUC, and every
replicate applies one resample of the clips to all seeds (the clips are the sampling unit; the seeds
share them), so the interval is that of the seed-averaged AUC under clip sampling.

A replicate is a vector of clip multiplicities (multinomial counts), and AUC / pAUC of a weighted
sample come from one matrix product: all replicates at once, no per-replicate sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    if y.ndim != 1 or y.all() or not y.any():
        raise ValueError("AUC needs both normal and anomalous clips")
    return y


def _seeds(scores, n_clips: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    s = s[None, :] if s.ndim == 1 else s
    if s.ndim != 2 or s.shape[1] != n_clips:
        raise ValueError(f"scores must have shape (n_clips,) or (n_seeds, n_clips) with n_clips = {n_clips}, not {s.shape}")
    return s


def _multiplicities(y: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified resampling with replacement as counts: (n_boot, n_neg), (n_boot, n_pos) float."""
    rng = np.random.default_rng(seed)
    n_neg, n_pos = int((~y).sum()), int(y.sum())
    w_neg = rng.multinomial(n_neg, np.full(n_neg, 1.0 / n_neg), size=n_boot)
    w_pos = rng.multinomial(n_pos, np.full(n_pos, 1.0 / n_pos), size=n_boot)
    return w_neg.astype(np.float64), w_pos.astype(np.float64)


def weighted_auc_pauc(y: np.ndarray, scores: np.ndarray, w_neg: np.ndarray, w_pos: np.ndarray,
                      max_fpr: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """AUC and pAUC (McClish-standardized, as scikit-learn and DCASE 2020) of weighted clip samples.

    Args:
        y: (n_clips,) bool, True = anomalous. scores: (n_clips,) float.
        w_neg / w_pos: (n_rep, n_neg) / (n_rep, n_pos) multiplicities of the normal / anomalous clips,
            in clip order; each row sums to the number of clips of its class. Rows of ones give the
            plain AUC.
    Returns:
        (auc, pauc), each (n_rep,). The ROC of a sample is a staircase: between the k-th and (k+1)-th
        highest normal score the true-positive rate is the share of anomalies scoring above it (ties
        count 1/2), so AUC = sum of TPR x step width, and the partial area sums the steps below
        ``max_fpr``. Equals ``sklearn.metrics.roc_auc_score`` (with ``max_fpr``) whenever no normal clip
        ties an anomalous one.
    """
    neg, pos = scores[~y], scores[y]
    order = np.argsort(-neg, kind="stable")
    neg, w_neg = neg[order], w_neg[:, order]
    n_neg, n_pos = w_neg.sum(1, keepdims=True), w_pos.sum(1, keepdims=True)
    above = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # (n_pos, n_neg)
    tpr = (w_pos @ above) / n_pos  # TPR on the step of each normal clip, (n_rep, n_neg)
    width = w_neg / n_neg
    auc = (tpr * width).sum(1)
    end = np.cumsum(width, 1)
    step = np.clip(np.minimum(end, max_fpr) - (end - width), 0.0, None)
    area = (tpr * step).sum(1)
    min_area, max_area = 0.5 * max_fpr**2, max_fpr
    return auc, 0.5 * (1.0 + (area - min_area) / (max_area - min_area))


def _seed_mean(y, s, w_neg, w_pos, max_fpr) -> tuple[np.ndarray, np.ndarray]:
    per_seed = [weighted_auc_pauc(y, row, w_neg, w_pos, max_fpr) for row in s]
    return np.mean([a for a, _ in per_seed], 0), np.mean([p for _, p in per_seed], 0)


def _interval(value: float, samples: np.ndarray, level: float) -> Interval:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return Interval(float(value), float(low), float(high))


def auc_ci(is_anomaly, scores, max_fpr: float = 0.1, n_boot: int = 1000, level: float = 0.95,
           seed: int = 0) -> tuple[Interval, Interval]:
    """(AUC, pAUC) of clip ``scores`` against labels ``is_anomaly`` (n_clips,) with percentile intervals.

    ``scores``: (n_clips,), or (n_seeds, n_clips) for the seed-mean AUC (module docstring).

    Raises:
        ValueError: only one class present, or scores of the wrong shape.
    """
    y = _classes(is_anomaly)
    s = _seeds(scores, len(y))
    ones = np.ones((1, int((~y).sum()))), np.ones((1, int(y.sum())))
    auc, pauc = _seed_mean(y, s, *ones, max_fpr)
    boot_auc, boot_pauc = _seed_mean(y, s, *_multiplicities(y, n_boot, seed), max_fpr)
    return _interval(auc[0], boot_auc, level), _interval(pauc[0], boot_pauc, level)


def paired_difference_ci(is_anomaly, scores_a, scores_b, max_fpr: float = 0.1, n_boot: int = 1000,
                         level: float = 0.95, seed: int = 0) -> tuple[Interval, Interval]:
    """(AUC_a - AUC_b, pAUC_a - pAUC_b) of two scorings of the same clips, resampled together (paired).

    ``scores_a`` / ``scores_b``: (n_clips,) or (n_seeds, n_clips) each (seed-mean AUC; the two may have
    different numbers of seeds). An interval that excludes 0 means the test set separates the two; one
    that includes 0 means it cannot.

    Raises:
        ValueError: only one class present, or the score arrays do not score the same clips.
    """
    y = _classes(is_anomaly)
    try:
        a, b = _seeds(scores_a, len(y)), _seeds(scores_b, len(y))
    except ValueError:
        raise ValueError("both scorings must score the same clips") from None
    ones = np.ones((1, int((~y).sum()))), np.ones((1, int(y.sum())))
    reps = _multiplicities(y, n_boot, seed)
    (pa, ppa), (pb, ppb) = _seed_mean(y, a, *ones, max_fpr), _seed_mean(y, b, *ones, max_fpr)
    (ra, rpa), (rb, rpb) = _seed_mean(y, a, *reps, max_fpr), _seed_mean(y, b, *reps, max_fpr)
    return _interval(pa[0] - pb[0], ra - rb, level), _interval(ppa[0] - ppb[0], rpa - rpb, level)
