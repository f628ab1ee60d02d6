"""Out-of-fold frame scores (``edge-train --oof-folds K``): every normal training clip scored by a model that
never heard it, so that phi can be set on all the clips and the final model still trains on all of them.

The cross-conformal / CV+ construction (Vovk 2015, "Cross-conformal predictors", Ann. Math. Artif. Intell.
74; Barber, Candes, Ramdas, Tibshirani 2021, "Predictive inference with the jackknife+", Ann. Statist.
49(1)): the clips are divided into K folds (whole clips), K models are trained, each on K-1 folds with the
final model's options and budget, and each scores the frames of the fold it did not train on. The final
model is then trained on every clip as without the option; edge-calibrate sets phi on the out-of-fold
scores of the clips it is given (docs/calibration.md). Cost: K + 1 trainings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.provenance import file_sha256
from edge_asd.train.checkpoint import restore
from edge_asd.train.evaluate import torch_frame_scorer

log = logging.getLogger("edge_asd")


def assign_folds(groups: Sequence[str], k: int, seed: int) -> list[int]:
    """The fold (0 .. k-1) of each clip: per group (machine ID), in sorted group order, the group's clips in a
    random order drawn from ``seed`` are dealt to the folds in turn, continuing where the previous group stopped,
    so every fold gets n/k clips (rounded) and every group n_group/k of them.

    ``groups``: each clip's machine ID, in the clips' order. Raises EdgeAsdError unless 2 <= k <= len(groups).
    """
    if not 2 <= k <= len(groups):
        raise EdgeAsdError(f"--oof-folds {k}: use 2 to {len(groups)} (the number of normal training clips), or 0 for none")
    rng = np.random.default_rng(seed)
    folds, dealt = [0] * len(groups), 0
    for group in sorted(set(groups)):
        for i in rng.permutation([i for i, g in enumerate(groups) if g == group]):
            folds[int(i)] = dealt % k
            dealt += 1
    return folds


def out_of_fold(paths: Sequence[Path], audio: Sequence[np.ndarray], groups: Sequence[str], k: int, seed: int,
                fit: Callable[[list[int]], dict]) -> dict:
    """Train k fold models with ``fit`` and score every clip with the one that did not train on it.

    Args:
        paths / audio: the normal training clips and their samples (mono float32 at the model's rate).
        groups: each clip's machine ID (folds are balanced per ID, :func:`assign_folds`).
        fit: trains one model on the clips of the given indices and returns its checkpoint dict (edge-train's
            own training: :func:`edge_asd.train.run.train_checkpoint` passes it, with every option of the
            final model).
    Returns:
        The checkpoint's ``oof`` entry: ``{"folds": k, "seed": seed, "clips": [{"sha256": hex digest of the
        file, "name": file name, "fold": i, "scores": frame scores (n_frames,) float32 tensor}]}``, in the
        clips' order; a frame score is the float (torch) model's anomaly score A(x) of one context vector
        (:func:`edge_asd.train.evaluate.torch_frame_scorer`, eq. 5), as edge-calibrate's model gives it.
    Raises:
        EdgeAsdError: a bad k, or whatever ``fit`` raises.
    """
    folds = assign_folds(groups, k, seed)
    scores: list[np.ndarray | None] = [None] * len(paths)
    t_start = time.perf_counter()
    for fold in range(k):
        held = [i for i, f in enumerate(folds) if f == fold]
        log.info("out-of-fold model %d/%d: training on %d clips, scoring the %d held out (%s)", fold + 1, k,
                 len(paths) - len(held), len(held), ", ".join(Path(paths[i]).name for i in held))
        ae, features, mean, std = restore(fit([i for i, f in enumerate(folds) if f != fold]))
        score = torch_frame_scorer(ae, mean, std, features)
        for i in held:
            scores[i] = score(audio[i]).astype(np.float32)
    log.info("out-of-fold scores of %d clips (%d frames) from %d fold models in %.1f s", len(paths),
             sum(map(len, scores)), k, time.perf_counter() - t_start)
    return {"folds": k, "seed": seed,
            "clips": [{"sha256": file_sha256(p), "name": Path(p).name, "fold": f, "scores": torch.from_numpy(s)}
                      for p, f, s in zip(paths, folds, scores)]}
