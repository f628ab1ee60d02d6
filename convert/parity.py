"""Parity of a converted model file against the float torch model, on real clips."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Parity:
    n_clips: int
    n_frames: int
    pearson: float
    spearman: float
    max_abs_error: float
    """Largest |converted - float| frame score, in score units."""
    n_auc_clips: int = 0
    auc_float: float | None = None
    auc_converted: float | None = None
    pauc_float: float | None = None
    pauc_converted: float | None = None

    def lines(self) -> list[str]:
        out = [f"frame scores on {self.n_clips} clips ({self.n_frames} frames): Pearson {self.pearson:.5f}, "
               f"Spearman {self.spearman:.5f}, max |error| {self.max_abs_error:.3f}"]
        if self.auc_float is not None:
            out.append(f"clip AUC on {self.n_auc_clips} test clips (max frame score, eq. 11): float {self.auc_float:.3f}, converted {self.auc_converted:.3f}; "
                       f"pAUC(0.1): float {self.pauc_float:.3f}, converted {self.pauc_converted:.3f}")
        return out


def parity(float_scores: list[np.ndarray], converted_scores: list[np.ndarray], is_anomaly: list[bool | None] | None) -> Parity:
    """Compare per-clip frame scores; clip AUC/pAUC over the clips labelled True/False in ``is_anomaly``
    (None: a clip used for the score comparison only, e.g. a training normal) when both classes occur."""
    from scipy.stats import pearsonr, spearmanr

    from edge_asd.core.metrics import auc_pauc

    a, b = np.concatenate(float_scores), np.concatenate(converted_scores)
    result = Parity(len(float_scores), len(a), float(pearsonr(a, b)[0]), float(spearmanr(a, b)[0]),
                    float(np.abs(a - b).max()))
    labelled = [i for i, y in enumerate(is_anomaly or []) if y is not None]
    y = [is_anomaly[i] for i in labelled]
    if 0 < sum(y) < len(y):
        result.n_auc_clips = len(y)
        result.auc_float, result.pauc_float = auc_pauc(y, [float_scores[i].max() for i in labelled])
        result.auc_converted, result.pauc_converted = auc_pauc(y, [converted_scores[i].max() for i in labelled])
    return result
