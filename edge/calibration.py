"""Choosing the threshold phi from normal recordings.

Rule ``clip-max-quantile``: score each normal recording, take its clip score as the max frame score
(Koizumi et al. 2019, eq. 11), and set ``phi = margin * quantile_q(clip scores)``. With q = 1 (the
default) phi sits ``margin`` above the worst normal recording seen, which is the right choice for the
few minutes of normal sound a calibration usually has; a false-alarm budget rule (extreme-value fit)
comes with more data.
"""

from __future__ import annotations

import numpy as np

from .errors import EdgeAsdError

DEFAULT_QUANTILE = 1.0
DEFAULT_MARGIN = 1.1


def phi_from_clip_maxima(clip_maxima: np.ndarray, quantile: float = DEFAULT_QUANTILE, margin: float = DEFAULT_MARGIN) -> float:
    """phi = margin * quantile(clip_maxima, q), clip_maxima shape (n_clips,), same unit as the score.

    Raises EdgeAsdError when there is no clip, a score is not finite, or q / margin are out of range.
    """
    maxima = np.asarray(clip_maxima, dtype=np.float64)
    if maxima.size == 0:
        raise EdgeAsdError("no normal recording to calibrate on")
    if not np.all(np.isfinite(maxima)):
        raise EdgeAsdError("a normal recording got a non-finite anomaly score; check the audio and the model")
    if not 0.0 < quantile <= 1.0:
        raise EdgeAsdError(f"--quantile must be in (0, 1], not {quantile}")
    if margin <= 0:
        raise EdgeAsdError(f"--margin must be positive, not {margin}")
    return float(margin * np.quantile(maxima, quantile))
