"""Clip-level evaluation as DCASE computes it: AUC and pAUC (max FPR 0.1) of clip anomaly scores, in numpy.

A clip's score is the max of its frame scores (Koizumi et al. 2019, eq. 11), or their mean. The metrics
need numpy only, so the device (the ``edge`` extra: numpy + LiteRT, no scikit-learn) evaluates too.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

DEFAULT_MAX_FPR = 0.1
"""The false-positive rate pAUC stops at, as in DCASE 2020-2024 Task 2."""


def clip_scores(frame_scores: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """{"max": (n_clips,), "mean": (n_clips,)} from each clip's frame scores."""
    scores = list(frame_scores)
    return {"max": np.array([s.max() for s in scores]), "mean": np.array([s.mean() for s in scores])}


def _check(is_anomaly, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(is_anomaly).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(y) != len(s):
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    if y.all() or not y.any():
        raise ValueError("AUC needs both normal and anomalous clips (one label only)")
    return y, s


def roc_auc(is_anomaly: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney U statistic of the scores, divided by n_pos * n_neg.

    AUC = (sum of the anomalies' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg), ranks 1..n of the scores
    in increasing order with tied scores given their average rank (a tie between an anomaly and a normal
    counts 1/2). Hanley & McNeil 1982, "The meaning and use of the area under a receiver operating
    characteristic (ROC) curve", Radiology 143(1), eq. 2; equal to scikit-learn's ``roc_auc_score``.

    Args:
        is_anomaly: (n,) bool or 0/1, True for an anomalous clip.
        scores: (n,) anomaly scores, higher = more anomalous.
    Raises:
        ValueError: lengths differ, a score is NaN or infinite, or only one label is present.
    """
    y, s = _check(is_anomaly, scores)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)  # rank of the last member of each group of tied scores
    average_rank = last_rank - (counts - 1) / 2.0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    u = average_rank[inverse][y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve_points(is_anomaly: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the ROC curve, both (k + 1,) from (0, 0) to (1, 1), one point per distinct score
    taken as threshold (clips with score >= threshold called anomalous), highest threshold first.

    Raises:
        ValueError: as :func:`roc_auc`.
    """
    y, s = _check(is_anomaly, scores)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last clip at each distinct score
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    fpr = np.r_[0.0, fp / fp[-1]]
    tpr = np.r_[0.0, tp / tp[-1]]
    return fpr, tpr


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def partial_auc(is_anomaly: np.ndarray, scores: np.ndarray, max_fpr: float = DEFAULT_MAX_FPR) -> float:
    """pAUC: the ROC area over FPR in [0, max_fpr], McClish-standardized to [0.5, 1] (0.5: chance, 1: perfect).

    The ROC curve (ties as straight segments) is cut at ``max_fpr`` by linear interpolation; its area A
    there (trapezoids) is standardized as 0.5 (1 + (A - A_min) / (A_max - A_min)), A_min = max_fpr^2 / 2 (the
    diagonal), A_max = max_fpr. McClish 1989, "Analyzing a portion of the ROC curve", Medical Decision
    Making 9(3):190-195, eq. 3. This is scikit-learn's ``roc_auc_score(y, s, max_fpr=...)`` exactly,
    which the DCASE 2020 Task 2 baseline (``01_test.py``: ``roc_auc_score(y_true, y_pred,
    max_fpr=param["max_fpr"])``, max_fpr 0.1) and the later DCASE evaluators use. (The task description
    writes pAUC as the unstandardized area divided by max_fpr; the baseline's code standardizes.)

    Args:
        is_anomaly: (n,) bool or 0/1. scores: (n,) anomaly scores, higher = more anomalous.
        max_fpr: in (0, 1]; 1 gives the plain AUC.
    Raises:
        ValueError: max_fpr outside (0, 1], or as :func:`roc_auc`.
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], not {max_fpr}")
    fpr, tpr = roc_curve_points(is_anomaly, scores)
    if max_fpr == 1:
        return _trapezoid(fpr, tpr)
    stop = int(np.searchsorted(fpr, max_fpr, side="right"))  # fpr[stop - 1] <= max_fpr < fpr[stop]
    cut_tpr = np.interp(max_fpr, fpr[stop - 1: stop + 1], tpr[stop - 1: stop + 1])
    area = _trapezoid(np.r_[fpr[:stop], max_fpr], np.r_[tpr[:stop], cut_tpr])
    min_area, max_area = 0.5 * max_fpr**2, max_fpr
    return 0.5 * (1.0 + (area - min_area) / (max_area - min_area))


def auc_pauc(is_anomaly: np.ndarray, scores: np.ndarray, max_fpr: float = DEFAULT_MAX_FPR) -> tuple[float, float]:
    """(AUC, pAUC) of clip anomaly scores, as DCASE 2020 Task 2 computes them (:func:`roc_auc`,
    :func:`partial_auc`; numpy only, equal to scikit-learn's ``roc_auc_score`` without and with ``max_fpr``).

    Args:
        is_anomaly: (n_clips,) bool or 0/1, True for an anomalous clip.
        scores: (n_clips,) clip anomaly scores, higher = more anomalous.
        max_fpr: where pAUC stops, in (0, 1].
    Raises:
        ValueError: lengths differ, a score is NaN or infinite, only one label is present, or max_fpr is
            outside (0, 1].
    """
    return roc_auc(is_anomaly, scores), partial_auc(is_anomaly, scores, max_fpr)
