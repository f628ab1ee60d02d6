"""Loading training audio: normal clips, something-else sounds, normalization statistics, fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edge_asd.core.features import LogMel, context_vectors, logmel
from edge_asd.core.presets import FeatureConfig
from edge_asd.core.provenance import file_sha256
from edge_asd.firmware_io.audio_file import read_audio
from edge_asd.train.feature_cache import FeatureCache


def load_clips(paths: list[Path], cfg: FeatureConfig, cache: FeatureCache | None = None) -> list[np.ndarray]:
    """Each file as mono float32 at ``cfg.sample_rate`` (resampled/mixed down with a log line); with a
    ``cache``, decoded once and memory-mapped from then on."""
    if cache is not None:
        return [cache.audio(p, cfg.sample_rate) for p in paths]
    return [read_audio(p, cfg.sample_rate) for p in paths]


def band_statistics(clips: list[np.ndarray], cfg: FeatureConfig,
                    frames: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of psi per mel band over all frames of ``clips``: 2 x (n_mels,) float32.

    With ``cfg.level_norm == "context"``: over the values the model is given before standardization,
    every context vector minus its own mean (:func:`edge_asd.core.features.context_vectors`), pooled over
    the L frame slots of every vector. ``frames``: the clips' log-mel frames when already at hand (e.g.
    from :class:`FeatureCache`)."""
    fn = LogMel(cfg)
    frames = frames if frames is not None else [logmel(c, cfg, fn) for c in clips]
    if cfg.level_norm == "context":
        return _context_statistics(frames, cfg)
    frames = np.concatenate(frames).astype(np.float64)
    return frames.mean(0).astype(np.float32), np.maximum(frames.std(0), 1e-3).astype(np.float32)


def _context_statistics(frames: list[np.ndarray], cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of the mean-removed context vectors, one clip at a time (float64 sums)."""
    total, total_sq, n = np.zeros(cfg.n_mels), np.zeros(cfg.n_mels), 0
    for psi in frames:
        values = context_vectors(np.asarray(psi, np.float32), cfg).reshape(-1, cfg.n_mels).astype(np.float64)
        total += values.sum(0)
        total_sq += (values ** 2).sum(0)
        n += len(values)
    if n == 0:
        raise ValueError("no context vector in the normal training audio")
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)


def fingerprint(paths: list[Path]) -> dict:
    """sha256 over the training files' names and contents, and the per-file digests."""
    files = {p.name: file_sha256(p) for p in sorted(paths, key=lambda q: q.name)}
    total = hashlib.sha256("".join(f"{n}:{d}\n" for n, d in files.items()).encode()).hexdigest()
    return {"sha256": total, "n_files": len(files), "files": files}
