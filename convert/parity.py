"""Parity of a converted model file against the float torch model, on real clips, with the clip AUC of
both beside the loudness reference (the clip's RMS level as the score, :mod:`edge_asd.core.loudness`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass
class Parity:
    n_clips: int
    n_frames: int
    pearson: float
    spearman: float
    max_abs_error: float
    """Largest |converted - float| frame score, in score units."""
    max_float: float | None = None
    """Largest |float score|: the scale of ``max_abs_error``."""
    unit: str = "frame"
    """What one score covers (``FeatureConfig.score_unit``): frame or window."""
    n_auc_clips: int = 0
    auc_float: float | None = None
    auc_converted: float | None = None
    pauc_float: float | None = None
    pauc_converted: float | None = None
    auc_level: float | None = None
    """Loudness reference: AUC of the same labelled clips with their RMS level (dBFS) as the score."""
    pauc_level: float | None = None

    def lines(self) -> list[str]:
        u = self.unit
        scale = f" ({100 * self.max_abs_error / self.max_float:.2g} % of the largest float score)" if self.max_float else ""
        out = [f"{u} scores on {self.n_clips} clips ({self.n_frames} {u}s): Pearson {self.pearson:.5f}, "
               f"Spearman {self.spearman:.5f}, max |error| {self.max_abs_error:.3f}{scale}"]
        if self.auc_float is not None:
            out.append(f"clip AUC on {self.n_auc_clips} test clips (max {u} score, eq. 11): float {self.auc_float:.3f}, converted {self.auc_converted:.3f}; "
                       f"pAUC(0.1): float {self.pauc_float:.3f}, converted {self.pauc_converted:.3f}")
        if self.auc_level is not None:
            out.append(f"loudness reference on the same {self.n_auc_clips} clips (clip RMS level as the score): "
                       f"AUC {self.auc_level:.3f}, pAUC(0.1) {self.pauc_level:.3f}")
        return out


def parity(float_scores: list[np.ndarray], converted_scores: list[np.ndarray], is_anomaly: list[bool | None] | None,
           unit: str = "frame") -> Parity:
    """Compare per-clip frame scores; clip AUC/pAUC over the clips labelled True/False in ``is_anomaly``
    (None: a clip used for the score comparison only, e.g. a training normal) when both classes occur."""
    from scipy.stats import pearsonr, spearmanr

    from edge_asd.core.metrics import auc_pauc

    a, b = np.concatenate(float_scores), np.concatenate(converted_scores)
    result = Parity(len(float_scores), len(a), float(pearsonr(a, b)[0]), float(spearmanr(a, b)[0]),
                    float(np.abs(a - b).max()), float(np.abs(a).max()), unit)
    labelled = [i for i, y in enumerate(is_anomaly or []) if y is not None]
    y = [is_anomaly[i] for i in labelled]
    if 0 < sum(y) < len(y):
        result.n_auc_clips = len(y)
        result.auc_float, result.pauc_float = auc_pauc(y, [float_scores[i].max() for i in labelled])
        result.auc_converted, result.pauc_converted = auc_pauc(y, [converted_scores[i].max() for i in labelled])
    return result


def with_loudness_reference(result: Parity | None, audio: list[np.ndarray],
                            is_anomaly: list[bool | None] | None) -> Parity | None:
    """``result`` with the loudness reference of its labelled clips: AUC / pAUC (max FPR 0.1) of their RMS
    level (dBFS, :func:`edge_asd.core.loudness.clip_level_dbfs`) as the score. Unchanged when it has no
    clip AUC (no clips, or not both labels).

    Args:
        audio: the held-out clips of the parity, mono float samples, in the order of ``is_anomaly``.
        is_anomaly: True / False per clip, None for a clip without a label (not in the AUC).
    """
    if result is None or result.auc_float is None:
        return result
    from edge_asd.core.loudness import clip_level_dbfs, loudness_reference

    labelled = [i for i, y in enumerate(is_anomaly or []) if y is not None]
    auc, pauc = loudness_reference([is_anomaly[i] for i in labelled], [clip_level_dbfs(audio[i]) for i in labelled])
    return replace(result, auc_level=auc, pauc_level=pauc)
