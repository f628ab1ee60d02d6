"""Validation without real anomalies: held-out normal audio vs the same audio with something-else sounds.

The user has only normal recordings, so the validation criterion is a pseudo-anomaly AUC: anomaly
scores (eq. 5) of the held-out normal context vectors against those of the vectors that overlap a
something-else sound mixed into the same held-out audio (eq. 8) at -15, -10, -5 and 0 dB ANR (the
paper tests at -20, -15 and -10 dB, sec. 4.2.1; at -20 dB under MIMII fan noise the AUC of our short
runs stayed near 0.5, which cannot rank epochs). The mean score of the held-out normal vectors breaks ties and is the
criterion of ``metric="score"``. Everything is computed once, before training; an epoch's validation
is one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_asd.core.batches import BatchBuilder, mix_in, overlapping_vectors
from edge_asd.core.features import extract, standardize

VAL_ANR_DB = (-15.0, -10.0, -5.0, 0.0)
"""ANRs of the validation mixtures, dB."""
MIN_CLIPS_FOR_CLIP_SPLIT = 5
"""With fewer normal clips, every clip gives its last ``fraction`` of time to validation instead."""
METRICS = ("auc", "score")


def split_normals(clips: list[np.ndarray], fraction: float, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """Hold out part of the normal training audio: (train clips, validation clips, "clips" | "time").

    With at least :data:`MIN_CLIPS_FOR_CLIP_SPLIT` clips, ``round(fraction * n)`` (>= 1) whole clips,
    chosen with ``seed``; with fewer (e.g. the 2 clips of a DCASE section), the last ``fraction`` of
    every clip's samples. ``fraction`` in (0, 1); raises ValueError otherwise.
    """
    return _divide(clips, fraction, held_out_clips(len(clips), fraction, seed))


def _divide(clips: list[np.ndarray], fraction: float,
            held: set[int] | None) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    if held is not None:
        return [c for i, c in enumerate(clips) if i not in held], [c for i, c in enumerate(clips) if i in held], "clips"
    cuts = [len(c) - round(fraction * len(c)) for c in clips]
    return [c[:k] for c, k in zip(clips, cuts)], [c[k:] for c, k in zip(clips, cuts)], "time"


def held_out_clips(n_clips: int, fraction: float, seed: int = 0) -> set[int] | None:
    """Indices of the whole clips :func:`split_normals` holds out of ``n_clips``, or None when it splits
    every clip in time instead (fewer than :data:`MIN_CLIPS_FOR_CLIP_SPLIT` clips).

    ``fraction`` in (0, 1); raises ValueError otherwise."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), not {fraction}")
    if n_clips < MIN_CLIPS_FOR_CLIP_SPLIT:
        return None
    n_val = max(1, round(fraction * n_clips))
    return set(np.random.default_rng(seed).permutation(n_clips)[:n_val].tolist())


@dataclass(frozen=True)
class RecordingSplit:
    """The normal training recordings, divided once into what is trained on and what validates."""

    how: str
    """"clips" (whole recordings held out) or "time" (the last part of every recording)."""
    train_clips: list[np.ndarray]
    """Audio the mini-batches are drawn from, mono float32."""
    val_clips: list[np.ndarray]
    """Held-out normal audio for validation, mono float32."""
    trained_paths: list[Path]
    """Recordings the model hears, whole or in part."""
    held_paths: list[Path]
    """Whole recordings the model never hears (empty for a "time" split)."""


def split_recordings(paths: list[Path], clips: list[np.ndarray], fraction: float, seed: int = 0) -> RecordingSplit:
    """:func:`split_normals` of ``clips`` (the audio of ``paths``, in the same order), applied to the paths too.

    Raises ValueError for ``fraction`` outside (0, 1) or paths and clips of different lengths."""
    if len(paths) != len(clips):
        raise ValueError(f"{len(paths)} paths but {len(clips)} clips")
    held = held_out_clips(len(clips), fraction, seed)
    train_clips, val_clips, how = _divide(clips, fraction, held)
    held = held or set()
    return RecordingSplit(how, train_clips, val_clips, [p for i, p in enumerate(paths) if i not in held],
                          [p for i, p in enumerate(paths) if i in held])


@dataclass
class ValidationSet:
    x_normal: np.ndarray
    """Held-out normal context vectors, (n, D) float32, standardized."""
    x_pseudo: np.ndarray
    """Vectors overlapping a something-else sound in the same audio, (m, D) float32, standardized."""


def build_validation(val_clips: list[np.ndarray], builder: BatchBuilder, mean: np.ndarray, std: np.ndarray,
                     seed: int = 0, mixes_per_clip: int = 8, max_vectors: int = 20000) -> ValidationSet:
    """The fixed validation set: each held-out clip as is, and ``mixes_per_clip`` copies with one
    something-else sound of ``builder`` (or its coloured noise) at the ANRs of :data:`VAL_ANR_DB`;
    at most ``max_vectors`` of each kind (a seeded random subset; 20000 x D=1344 float32 = 108 MB).

    Raises ValueError when the held-out audio is shorter than one context vector."""
    cfg = builder.cfg
    rng = np.random.default_rng([seed, 2019])
    normal, pseudo = [], []
    for clip in val_clips:
        if len(clip) < cfg.samples_per_vector:
            continue
        normal.append(extract(clip, cfg))
        for r in range(mixes_per_clip):
            sound = builder.draw_something_else(rng, len(clip))
            start = int(rng.integers(len(clip) - len(sound) + 1))
            mixture, span = mix_in(clip, sound, start, VAL_ANR_DB[r % len(VAL_ANR_DB)])
            vectors = extract(mixture, cfg)
            pseudo.append(vectors[overlapping_vectors(len(vectors), span, cfg)])
    if not normal:
        raise ValueError(f"the held-out normal audio is shorter than one context vector ({cfg.samples_per_vector} samples)")
    normal, pseudo = np.concatenate(normal), np.concatenate(pseudo)
    normal, pseudo = (x if len(x) <= max_vectors else x[np.sort(rng.choice(len(x), max_vectors, replace=False))]
                      for x in (normal, pseudo))
    return ValidationSet(standardize(normal, mean, std), standardize(pseudo, mean, std))


def validate(score_fn, vs: ValidationSet) -> dict:
    """{"val_auc", "val_score_u", "val_score_a"}: pseudo-anomaly AUC (scikit-learn) and mean scores.

    ``score_fn``: standardized vectors (n, D) float32 -> anomaly scores (n,) float."""
    from sklearn.metrics import roc_auc_score

    s_u, s_a = np.asarray(score_fn(vs.x_normal), np.float64), np.asarray(score_fn(vs.x_pseudo), np.float64)
    if not (np.all(np.isfinite(s_u)) and np.all(np.isfinite(s_a))):
        return {"val_auc": float("nan"), "val_score_u": float("nan"), "val_score_a": float("nan")}
    y = np.r_[np.zeros(len(s_u)), np.ones(len(s_a))]
    return {"val_auc": float(roc_auc_score(y, np.r_[s_u, s_a])), "val_score_u": float(s_u.mean()),
            "val_score_a": float(s_a.mean())}


def criterion(result: dict, metric: str) -> tuple[float, float]:
    """A key to maximise: "auc" = (AUC to 4 decimals, -normal score); "score" = (-normal score,).

    NaN (a diverged model) ranks below everything."""
    if not np.isfinite(result["val_score_u"]):
        return (-np.inf, -np.inf)
    if metric == "auc":
        return (round(result["val_auc"], 4), -result["val_score_u"])
    return (-result["val_score_u"], 0.0)
