"""Waveform mixup (Zhang et al. 2018) as Serial-OE uses it: lambda ~ Beta(0.2, 0.2), the labels mixed alike, applied
to a mini-batch with a probability ramped linearly from 0 at the first update to 1 at mid-training."""

from __future__ import annotations

import numpy as np

ALPHA = 0.2
"""Beta(alpha, alpha) parameter of the mixing weight."""


def mixup_probability(step: int, total: int) -> float:
    """Probability that mini-batch ``step`` (0-based) of ``total`` is mixed: step / (total / 2), capped at 1."""
    return min(1.0, step / max(1.0, total / 2))


def mix(waves: np.ndarray, labels: list[np.ndarray], rng: np.random.Generator,
        lam: np.ndarray | None = None, perm: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mix each example with another of the batch: x_i' = lam_i x_i + (1 - lam_i) x_perm(i), labels alike.

    Args:
        waves: (n, N) float32 crops.
        labels: arrays with n rows each (e.g. y_machine (n,), y_product (n, n_ids)).
        lam: (n,) mixing weights; None: drawn from Beta(0.2, 0.2). perm: partner indices; None: a random permutation.
    Returns:
        (mixed waves (n, N) float32, mixed labels float32).
    """
    n = len(waves)
    lam = rng.beta(ALPHA, ALPHA, size=n) if lam is None else np.asarray(lam, np.float64)
    perm = rng.permutation(n) if perm is None else np.asarray(perm)

    def blend(a: np.ndarray) -> np.ndarray:
        w = lam.reshape((n,) + (1,) * (a.ndim - 1))
        return (w * a + (1 - w) * a[perm]).astype(np.float32)

    return blend(waves), [blend(np.asarray(y, np.float32)) for y in labels]
