"""The float (torch) model's frame scores, computed exactly as the device computes them.

Clip scores, AUC and pAUC live in :mod:`edge_asd.core.metrics` (the device's edge-report uses them too).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def torch_frame_scorer(ae, mean: np.ndarray, std: np.ndarray, features) -> Callable[[np.ndarray], np.ndarray]:
    """A function: mono audio (N,) -> float model frame scores (n_vectors,), standardizing like the device."""
    import torch

    from edge_asd.core.features import extract, standardize

    def score(samples: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(standardize(extract(samples, features), mean, std))
        with torch.no_grad():
            return (x - ae(x)).pow(2).sum(-1).numpy()

    return score
