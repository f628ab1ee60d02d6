"""The comparison hook (examples/compare_methods.py calls every method through one such function)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_asd.firmware_io.audio_file import read_audio
from edge_asd.train.serial_oe.fit import SerialOEOptions, fit_serial_oe

OPT_IN = ("efficientnet_lite0",)
"""Variants the comparison runs only when named (``--methods serial-oe/efficientnet_lite0``): about 6.6x
cnn-small's cost per update (its default edge-train run: 12 min at two torch threads on the project's 2-core VM)."""


def fit_score(*, data_dir: Path, machine_type: str, machine_id: str, train_clips: list[Path], test_clips: list[Path],
              something_else_dir: Path | None, seed: int, budget: str = "short", backbone: str = "cnn-small") -> np.ndarray:
    """Serial outlier exposure: one anomaly score per test clip, float64 (n_test,), higher = more anomalous.

    The networks train on ``train_clips`` (the ID's normals) and the other IDs' normal ``train/`` clips of
    ``machine_type`` as positives, and on the other machine types' normal ``train/`` clips and the sounds of
    ``something_else_dir`` as negatives; no test clip is heard (:mod:`.data`'s leakage rule; ``test_clips`` are
    excluded outright). Cross-fitted in 2 folds of ``train_clips`` with a Ledoit-Wolf Mahalanobis inlier model
    per network (:mod:`.fit`); a clip's score is the mean of its window scores. ``budget``: "short" (300 updates
    of 32 crops per network) or "smoke" (2 updates of 4 crops); ``backbone``: cnn-small or efficientnet-lite0.
    """
    opts = SerialOEOptions(Path(data_dir), machine_type, (machine_id,), something_else_dir, budget=budget, seed=seed,
                           progress=False, exclude=tuple(test_clips), inlier_paths=tuple(train_clips),
                           inlier_folds=min(2, len(train_clips)), backbone=backbone)
    fitted = fit_serial_oe(opts)
    sr = fitted.features.sample_rate
    return np.array([fitted.window_scores(read_audio(p, sr)).mean() for p in test_clips], np.float64)


def fit_score_efficientnet_lite0(**kwargs) -> np.ndarray:
    """:func:`fit_score` with the EfficientNet-Lite0 backbone (ImageNet weights; about 6.6x cnn-small's cost per
    update on a CPU): the comparison's method ``serial-oe/efficientnet_lite0``."""
    return fit_score(**kwargs, backbone="efficientnet-lite0")
