"""The loudness reference: a clip's RMS level (dBFS) used as if it were the anomaly score.

On fan id_00 of the kit's data the anomalous clips are 4-5 dB louder than the normal ones, and the level
alone separates the 15 test clips perfectly (AUC 1.000). An AUC printed without this reference cannot
tell a fault detector from a level meter, so every evaluation shows the same metric with the level as
the score beside the model's.
"""

from __future__ import annotations

import numpy as np

from edge_asd.core.metrics import DEFAULT_MAX_FPR, auc_pauc

SILENCE_DBFS = -200.0
"""Level of digital silence (every sample 0), dBFS: the floor of :func:`clip_level_dbfs` (an RMS of 1e-10,
the same floor as the energy gate's 1e-20 in power)."""


def clip_level_dbfs(samples: np.ndarray) -> float:
    """RMS level of a recording, dBFS: 20 log10(sqrt(mean(x^2))), x the float samples in [-1, 1].

    0 dBFS is a full-scale square wave (all samples +-1); a full-scale sine is -3.01 dBFS; digital
    silence gives :data:`SILENCE_DBFS` (-200 dBFS), the floor.

    Args:
        samples: (N,) mono float samples, full scale = 1.
    Raises:
        ValueError: no samples.
    """
    x = np.asarray(samples, dtype=np.float64).ravel()
    if len(x) == 0:
        raise ValueError("no samples: the level of an empty recording is undefined")
    power = float(np.mean(x * x))
    return max(10.0 * np.log10(power), SILENCE_DBFS) if power > 0 else SILENCE_DBFS


def loudness_reference(is_anomaly: np.ndarray, levels_dbfs: np.ndarray,
                       max_fpr: float = DEFAULT_MAX_FPR) -> tuple[float, float]:
    """(AUC, pAUC) of the clips' levels (dBFS, from :func:`clip_level_dbfs`) taken as anomaly scores:
    the result a plain level meter gets on the same clips, to print beside the model's.

    An AUC near 0.5 says the level does not tell the labels apart (the model's AUC is its own); near 1,
    the anomalies are louder and the model's AUC may be the level's; near 0, they are quieter.

    Args:
        is_anomaly: (n_clips,) bool or 0/1. levels_dbfs: (n_clips,) dBFS. max_fpr: where pAUC stops.
    Raises:
        ValueError: as :func:`edge_asd.core.metrics.auc_pauc`.
    """
    return auc_pauc(is_anomaly, levels_dbfs, max_fpr)
