"""``edge-train`` as a Python function: a data folder and typed options in, a checkpoint file out.

:func:`train_checkpoint` is the whole of what ``edge-train`` does, and the one place its checkpoint is
assembled: it finds the normal training recordings of one machine type, decodes them (through the
feature cache), computes the per-mel-band normalization, divides the recordings once into training and
validation (:func:`validation.split_recordings`), trains (:func:`trainer.train`: weights, features,
normalization, loss, history, validation), adds what the model was trained on (fingerprints of the
trained and the held-out recordings, the something-else sounds, the kit version), and writes the
checkpoint with its training log next to it. With ``oof_folds`` K, the same normalization, split and
training first runs K times on K-1 folds of the clips (:mod:`.oof`), and the checkpoint keeps each clip's
out-of-fold frame scores (``oof``). ``edge-train`` only parses its options into :class:`TrainOptions`,
calls it and prints the path.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from edge_asd.core.batches import BatchConfig
from edge_asd.core.commands import kit_version
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import LogMel
from edge_asd.core.presets import LEVEL_NORMS, PRESETS, FeatureConfig, get_preset
from edge_asd.datasets.layout import assign_mimii_split, normalize_machine_id, scan
from edge_asd.firmware_io.audio_file import audio_files
from edge_asd.train.checkpoint import save_checkpoint, write_history_csv
from edge_asd.train.data import band_statistics, fingerprint, load_clips
from edge_asd.train.feature_cache import FeatureCache, default_cache_dir
from edge_asd.train.losses import resolve_lambda
from edge_asd.train.model import ARCHS
from edge_asd.train.oof import out_of_fold
from edge_asd.train.trainer import SCHEDULES, TrainConfig, train
from edge_asd.train.validation import METRICS, split_recordings

log = logging.getLogger("edge_asd")

CHOICES = {"preset": tuple(sorted(PRESETS)), "arch": tuple(ARCHS), "loss": ("bu", "snp", "re"),
           "schedule": tuple(SCHEDULES), "kde": ("frames", "vectors"), "val_metric": METRICS,
           "keep": ("auto", "best", "last"), "device": ("auto", "cpu", "cuda"),
           "precision": ("auto", "fp32", "bf16", "fp16"), "level_norm": LEVEL_NORMS}
"""The allowed values of :class:`TrainOptions`' named choices (edge-train's click choices)."""
MAX_GAIN_AUGMENT_DB = 20.0
"""Largest gain augmentation, dB (x10 in amplitude either way)."""


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``edge-train`` takes (``edge-train --help`` explains each option; defaults are its defaults)."""

    data_dir: Path
    """DCASE or MIMII folder holding the machine type's normal training clips."""
    machine_type: str
    """Machine type folder, e.g. "fan"."""
    out_path: Path
    """Checkpoint to write (.pt); next to it: .log.csv, .epochs.csv, .curves.png, .state.pt."""
    machine_ids: tuple[str, ...] = ()
    """Machine IDs to train on (00, id_00, section_00); empty: every ID with normal training clips."""
    preset: str = "koizumi2019"
    arch: str = "fcn-small"
    loss: str = "bu"
    """bu (eq. 16), snp (eq. 9) or re (eq. 7)."""
    something_else_dir: Path | None = None
    """Something-else sounds for the pseudo-anomalies (eq. 8); None: coloured noise."""
    schedule: str = "short"
    """Named budget of :data:`trainer.SCHEDULES`; ``epochs``, ``batches_per_epoch`` and ``lr`` override it."""
    epochs: int | None = None
    batches_per_epoch: int | None = None
    lr: float | None = None
    """Initial AMSGrad step size."""
    sigma: float | None = None
    """KDE bandwidth of eq. (15); None = 1/(2D)."""
    lam: float | str = "D"
    """lambda of eq. (10) in units of the anomaly score: "D" (default, measured best: docs/defaults.md), "2D",
    "2M" (the paper's printed value) or a positive number."""
    epsilon: float = 1e-6
    """epsilon of eq. (16), dimensionless."""
    kde: str = "frames"
    anr_db: tuple[float, float] = (-30.0, 10.0)
    """Lowest and highest ANR of the pseudo-anomalies (eq. 8, sec. 4.2.1), dB."""
    gain_augment_db: float = 0.0
    """G, dB: every normal segment of a mini-batch is scaled by a random gain uniform in [-G, +G] dB
    (:class:`edge_asd.core.batches.BatchConfig`); 0 = off. The normalization stays that of the unscaled audio."""
    level_norm: str = "none"
    """:attr:`edge_asd.core.presets.FeatureConfig.level_norm` of the preset: "none" or "context" (each
    context vector minus its own mean); frozen into the checkpoint and the model file."""
    val_fraction: float = 0.0
    """Share of the normal training audio held out for validation; 0 = none (last weights; the default,
    measured: docs/defaults/updates.md)."""
    val_metric: str = "auc"
    patience: int = 0
    """Early stopping after this many epochs without a better validation criterion; 0 = never."""
    keep: str = "auto"
    resume: bool = False
    """Continue an interrupted run from :attr:`state_path`, with the same options."""
    seed: int = 0
    """Seed of the weights, the validation split, the mini-batches and the out-of-fold folds."""
    oof_folds: int = 0
    """K >= 2: first train K models, each on K-1 folds of the clips with these same options, and keep each
    clip's frame scores from the model that did not train on it (the checkpoint's ``oof``, :mod:`.oof`);
    0 = none."""
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    """torch intra-op threads; None: all cores but one (which prepares the mini-batches)."""
    cache_dir: Path | None = None
    """Feature cache folder; None: $EDGE_ASD_CACHE_DIR or the user cache dir."""
    use_cache: bool = True
    """False: neither read nor write the feature cache."""
    progress: bool = True
    """Show a progress bar on stderr."""

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise EdgeAsdError(f"{name} {getattr(self, name)!r}: use one of {', '.join(allowed)}")
        if not 0.0 <= self.gain_augment_db <= MAX_GAIN_AUGMENT_DB:
            raise EdgeAsdError(f"--gain-augment-db {self.gain_augment_db}: use 0 (off) to {MAX_GAIN_AUGMENT_DB:g} dB")

    @property
    def state_path(self) -> Path:
        """The training state written after every epoch (for ``resume``)."""
        return Path(self.out_path).with_suffix(".state.pt")


def train_checkpoint(options: TrainOptions) -> dict:
    """Train on the normal training clips of ``options.data_dir``; write and return the checkpoint.

    Returns the checkpoint dict (keys: :mod:`edge_asd.train.checkpoint`), also written atomically to
    ``options.out_path`` with ``.log.csv`` (per update), ``.epochs.csv``, ``.curves.png`` (when
    matplotlib is installed) and ``.state.pt`` (after every epoch) next to it. Example::

        from pathlib import Path
        from edge_asd.train.run import TrainOptions, train_checkpoint

        ckpt = train_checkpoint(TrainOptions(Path("data"), "fan", Path("fan.pt"), machine_ids=("00",),
                                             epochs=2, batches_per_epoch=10, device="cpu", progress=False))
        print(ckpt["validation"]["split"], ckpt["training_data"]["n_files"])

    Raises:
        EdgeAsdError: no normal training clips of that machine type / ID, a bad lambda or ANR range, a
            --something-else folder without audio, audio too short for a segment or the validation
            split, a missing or mismatched resume state, a diverged loss, unreadable files, ``oof_folds`` not
            0 and not in 2..number of clips, or ``oof_folds`` with ``resume``.
    """
    o = options
    budget = SCHEDULES[o.schedule]
    if o.anr_db[0] > o.anr_db[1]:
        raise EdgeAsdError("--anr-min must not exceed --anr-max")
    if o.resume and o.oof_folds:
        raise EdgeAsdError("--resume cannot continue the out-of-fold models (--oof-folds): run again without --resume")
    features = replace(get_preset(o.preset), level_norm=o.level_norm)
    try:
        lam = resolve_lambda(o.lam, features.dim, features.n_mels)
    except ValueError as e:
        raise EdgeAsdError(f"--lambda: {e}; use D, 2D, 2M or a positive number") from None
    paths, clip_ids = normal_recordings(o.data_dir, o.machine_type, o.machine_ids)
    ids = sorted(set(clip_ids))
    log.info("training on %d normal clips of %s %s", len(paths), o.machine_type, ", ".join(ids))
    # one core is left to the thread that prepares the mini-batches
    torch.set_num_threads(o.threads or max(1, len(os.sched_getaffinity(0)) - 1))
    cache = FeatureCache((o.cache_dir or default_cache_dir()) if o.use_cache else None)
    normal_audio = load_clips(paths, features, cache)
    other = _something_else(o.something_else_dir, features, cache)
    fn = LogMel(features)
    frames = [cache.logmel(p, a, features, fn) for p, a in zip(paths, normal_audio)]
    if cache.root is not None:
        log.info("feature cache %s: %d hits, %d new entries", cache.root, cache.hits, cache.misses)
    cfg = TrainConfig(machine_type=o.machine_type, machine_ids=ids, preset=o.preset, arch=o.arch, loss=o.loss,
                      epochs=o.epochs or budget["epochs"],
                      batches_per_epoch=o.batches_per_epoch or budget["batches_per_epoch"],
                      lr=o.lr or budget["lr"], seed=o.seed, device=o.device, sigma=o.sigma, lam=lam, epsilon=o.epsilon,
                      batch=BatchConfig(anr_db=tuple(o.anr_db), gain_db=float(o.gain_augment_db)),
                      precision=o.precision, val_fraction=o.val_fraction,
                      patience=o.patience, keep=o.keep, val_metric=o.val_metric, kde=o.kde)
    if o.resume and not o.state_path.is_file():
        raise EdgeAsdError(f"--resume: no training state {o.state_path} (it is written after every epoch)")

    def fit(idx: list[int], state_path: Path | None = None, resume: bool = False) -> dict:
        """Normalization, validation split and training on the clips ``idx`` (all: the final model; K-1 folds: an
        out-of-fold model); the checkpoint with what it trained on."""
        clips = [normal_audio[i] for i in idx]
        mean, std = band_statistics(clips, features, [frames[i] for i in idx])
        try:
            split = split_recordings([paths[i] for i in idx], clips, o.val_fraction, o.seed) if o.val_fraction > 0 else None
            ckpt = train(cfg, features, split.train_clips if split else clips, other, mean, std, progress=o.progress,
                         val_clips=split.val_clips if split else None, val_split=split.how if split else None,
                         state_path=state_path, resume=resume)
        except ValueError as e:  # too little audio for a segment or a validation split
            raise EdgeAsdError(f"{e}; use longer clips or --val-fraction 0") from None
        held = split.held_paths if split else []
        trained = split.trained_paths if split else [paths[i] for i in idx]
        ckpt["training_data"] = fingerprint(trained)  # edge-calibrate warns on these
        ckpt["validation_data"] = fingerprint(held) if held else None  # never trained on: fit for calibrating phi
        return ckpt

    t_start = time.perf_counter()
    oof = out_of_fold(paths, normal_audio, clip_ids, o.oof_folds, o.seed, fit) if o.oof_folds else None
    ckpt = fit(list(range(len(paths))), state_path=o.state_path, resume=o.resume)
    if oof is not None:
        ckpt["oof"] = oof
        log.info("%d out-of-fold models and the final model trained in %.1f s", o.oof_folds, time.perf_counter() - t_start)
    ckpt["something_else"] = {"dir": str(o.something_else_dir) if o.something_else_dir else None,
                              "n_sounds": len(other) if other else 0}
    ckpt["kit_version"] = kit_version()
    write_checkpoint_files(ckpt, Path(o.out_path))
    return ckpt


def normal_recordings(data_dir: Path, machine_type: str, machine_ids=()) -> tuple[list[Path], list[str]]:
    """(paths of the normal training clips, the machine ID of each) of ``machine_type`` below ``data_dir``.

    ``machine_ids``: 00, id_00 or section_00 spellings; empty = every ID. MIMII folders get the kit's
    train/test assignment. Raises EdgeAsdError when there is none (naming the IDs that have some)."""
    clips = assign_mimii_split(scan(data_dir, machine_type=machine_type))
    wanted = {normalize_machine_id(m) for m in machine_ids}
    normals = [c for c in clips if c.split == "train" and c.label == "normal" and (not wanted or c.machine_id in wanted)]
    if not normals:
        found = sorted({c.machine_id for c in clips if c.split == "train" and c.label == "normal"})
        raise EdgeAsdError(f"no normal training clips of {machine_type} {sorted(wanted) or ''} in {data_dir}; "
                           f"IDs with training clips: {found or 'none'}")
    return [c.path for c in normals], [c.machine_id for c in normals]


def _something_else(folder: Path | None, features: FeatureConfig, cache: FeatureCache) -> list[np.ndarray] | None:
    """The something-else sounds of ``folder`` (mono float32), or None for coloured noise."""
    if folder is None:
        log.warning("no --something-else directory: coloured noise stands in for something-else sounds (eq. 8)")
        return None
    paths = audio_files(folder)
    if not paths:
        raise EdgeAsdError(f"{folder}: no .wav/.flac files for --something-else")
    sounds = load_clips(paths, features, cache)
    log.info("%d something-else sounds from %s", len(sounds), folder)
    return sounds


def write_checkpoint_files(ckpt: dict, out_path: Path) -> None:
    """The checkpoint at ``out_path`` and next to it .log.csv, .epochs.csv and .curves.png (atomic writes)."""
    save_checkpoint(ckpt, out_path)
    log_path = out_path.with_suffix(".log.csv")
    write_history_csv(ckpt["history"], log_path)
    write_history_csv(ckpt["epochs"], out_path.with_suffix(".epochs.csv"))
    try:
        from edge_asd.train.plots import write_curves

        write_curves(ckpt, out_path.with_suffix(".curves.png"))
    except ImportError:
        log.warning("matplotlib is not installed: no .curves.png (pip install matplotlib)")
    log.info("training log: %s, %s, %s", log_path, out_path.with_suffix(".epochs.csv").name,
             out_path.with_suffix(".curves.png").name)
