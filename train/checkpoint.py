"""Checkpoints: one plain dict (nanoGPT style), saved with torch.save and loaded with weights_only=True.

This module owns the file: :data:`CHECKPOINT_SCHEMA`, atomic saving, loading with checks, and
restoring the autoencoder. :func:`edge_asd.train.trainer.train` fills the model's part and
:func:`edge_asd.train.run.train_checkpoint` adds what the model was trained on. Keys:

- from the trainer: ``schema``, ``model_state``, ``arch``, ``features`` {preset, config},
  ``normalization`` {axis, mean, std}, ``loss`` {name, params}, ``machine_type``, ``machine_ids``,
  ``train_config``, ``history`` (per update), ``epochs`` (per epoch), ``validation`` {split, metric,
  n_normal, n_pseudo, best_epoch, stopped_early, kept_epoch} or None, ``train_seconds``,
  ``train_frames``, ``device``, ``precision``, ``created_at``;
- from ``train_checkpoint``: ``training_data`` (fingerprint of the recordings trained on),
  ``validation_data`` (of the whole recordings held out for validation, or None), ``something_else``
  {dir, n_sounds}, ``kit_version``; with ``edge-train --oof-folds K`` also ``oof`` {folds, seed, clips:
  [{sha256 (hex digest of the file), name, fold, scores (frame scores, float32 tensor (n_frames,))}]}
  (:mod:`edge_asd.train.oof`). Keys added since schema 1 was fixed (``oof``) are optional: older
  checkpoints load as before.

A training-state file (``.state.pt``, for ``edge-train --resume``) has the same schema and
``kind = "train_state"``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from edge_asd.core.atomic_io import atomic_write_bytes
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.presets import FeatureConfig
from edge_asd.train.model import FCNAutoencoder, build_autoencoder

CHECKPOINT_SCHEMA = 1
"""Version of the checkpoint dict's layout; :func:`load_checkpoint` refuses any other."""


def save_checkpoint(ckpt: dict, path: str | Path) -> None:
    """Write atomically: a crash leaves the previous file, never half a checkpoint."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


METHOD_KEYS = {
    "autoencoder": ("arch", "features", "normalization", "loss"),
    "serial-oe": ("arch", "features", "normalization", "loss", "head", "machine_type"),
    "transfer-metric": ("arch", "features", "normalization", "head", "extractor", "machine_type"),
}
"""Entries every checkpoint of each ``edge-train --method`` holds (a checkpoint without ``method``: an autoencoder)."""


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by edge-train; EdgeAsdError for missing, damaged or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise EdgeAsdError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EdgeAsdError(f"{path}: not a readable edge-asd checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("schema") != CHECKPOINT_SCHEMA or "model_state" not in ckpt:
        raise EdgeAsdError(f"{path}: not an edge-asd checkpoint (schema {CHECKPOINT_SCHEMA})")
    return ckpt


def check_complete(ckpt: dict, path: str | Path) -> dict:
    """``ckpt`` when it names a known method and holds every entry that method's conversion reads
    (:data:`METHOD_KEYS`; a training state file holds fewer); EdgeAsdError otherwise."""
    method = ckpt.get("method", "autoencoder")
    if method not in METHOD_KEYS:
        raise EdgeAsdError(f"{path}: unknown training method {method!r} (this kit converts {', '.join(METHOD_KEYS)})")
    missing = [k for k in METHOD_KEYS[method] if not ckpt.get(k)]
    if missing:
        raise EdgeAsdError(f"{path}: damaged {method} checkpoint (no {', '.join(missing)}); train it again")
    return ckpt


def restore(ckpt: dict) -> tuple[FCNAutoencoder, FeatureConfig, np.ndarray, np.ndarray]:
    """(autoencoder in eval mode, feature config, mean, std) from a checkpoint dict."""
    ae = build_autoencoder(ckpt["arch"])
    ae.load_state_dict(ckpt["model_state"])
    ae.eval()
    features = FeatureConfig.from_dict(ckpt["features"]["config"])
    norm = ckpt["normalization"]
    return ae, features, np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)


def write_history_csv(history: list[dict], path: str | Path) -> None:
    """The per-update training log (step, lr, loss, mean scores of x^(u) and x^(a)) as CSV, atomically."""
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]) if history else ["step"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(Path(path), buf.getvalue().encode())
