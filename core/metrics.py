"""Clip-level evaluation as DCASE computes it: AUC and pAUC (max FPR 0.1) of clip anomaly scores.

A clip's score is the max of its frame scores (Koizumi et al. 2019, eq. 11), or their mean.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def clip_scores(frame_scores: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """{"max": (n_clips,), "mean": (n_clips,)} from each clip's frame scores."""
    scores = list(frame_scores)
    return {"max": np.array([s.max() for s in scores]), "mean": np.array([s.mean() for s in scores])}


def auc_pauc(is_anomaly: np.ndarray, scores: np.ndarray, max_fpr: float = 0.1) -> tuple[float, float]:
    """(AUC, pAUC) with scikit-learn's ``roc_auc_score`` (pAUC McClish-standardized, as DCASE 2020)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(is_anomaly, dtype=int)
    return float(roc_auc_score(y, scores)), float(roc_auc_score(y, scores, max_fpr=max_fpr))
