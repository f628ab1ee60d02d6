"""Representative frames for int8 calibration: normal frames, plus pseudo-anomalous ones.

Activation ranges calibrated on normal frames only are too narrow for anomalous sound: a frame scoring
10x a normal one saturates the int8 reconstruction and its score is flattened. Mixing in frames of
normal audio with a something-else sound added (the pseudo-anomalies x^(a) of Koizumi et al. 2019,
eq. 8, drawn exactly as the trainer draws them) widens the ranges to what anomalies reach.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edge_asd.core.batches import BatchBuilder
from edge_asd.core.features import extract, standardize
from edge_asd.core.presets import FeatureConfig


def representative_vectors(normal_audio: list[np.ndarray], something_else: list[np.ndarray] | None,
                           features: FeatureConfig, mean: np.ndarray, std: np.ndarray, n_frames: int = 2000,
                           pseudo_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, int]:
    """Standardized calibration vectors and how many of them are pseudo-anomalous.

    Args:
        normal_audio: mono float32 clips at ``features.sample_rate`` (normal machine sound).
        something_else: mono float32 sounds to mix in (eq. 8); None: coloured noise, as the trainer.
        n_frames: vectors in all.
        pseudo_fraction: share of pseudo-anomalous vectors, in [0, 1].
    Returns:
        ((n, D) float32, n_pseudo), n <= n_frames when the clips hold fewer normal vectors.
    """
    rng = np.random.default_rng(seed)
    n_pseudo = int(round(n_frames * pseudo_fraction))
    # every frame offset, not only the score hop: windows K frames apart (a 2-s window every second) would leave
    # ten 10-s clips 90 calibration vectors; their ranges are the same, the sample 31 times larger
    every = replace(features, context_hop_frames=1)
    normals = np.concatenate([extract(a, every) for a in normal_audio])
    pick = rng.choice(len(normals), size=min(n_frames - n_pseudo, len(normals)), replace=False)
    parts = [normals[pick]]
    if n_pseudo:
        builder = BatchBuilder(normal_audio, something_else, features)
        got, pseudo = 0, []
        while got < n_pseudo:
            x_a = builder.draw(rng).x_a
            pseudo.append(x_a[: n_pseudo - got])
            got += len(pseudo[-1])
        parts.append(np.concatenate(pseudo))
    vectors = np.concatenate(parts)
    return standardize(vectors, mean, std), len(vectors) - len(pick)
