"""``edge-train --method serial-oe``: cross-fitted networks, their inlier model, the checkpoint.

With K inlier folds (``inlier_folds``, default 2) the normal training clips of the inlier machine IDs are split
into K folds; network k trains on every positive except fold k's clips (plus all negatives) and its inlier model
is fitted on the windows of fold k, which it never heard. The exported graph runs the K networks side by side and
the head sums their Mahalanobis distances (:mod:`.inlier`). K = 1 trains one network on everything and fits the
inlier model on its own training clips (the authors' way; the scores of those clips are then optimistic).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from edge_asd.core.commands import kit_version
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.heads import Head
from edge_asd.core.presets import get_preset
from edge_asd.train.data import band_statistics, fingerprint, load_clips
from edge_asd.train.serial_oe.data import CropSampler, inlier_clips, training_sets, windows
from edge_asd.train.serial_oe.inlier import fit_inlier, fit_mahalanobis, stack_mahalanobis
from edge_asd.train.serial_oe.network import BACKBONES, EMBEDDING_DIM, Embedder, SerialOENet
from edge_asd.train.serial_oe.trainer import BUDGETS, NetConfig, embed, train_network

log = logging.getLogger("edge_asd")

METHOD = "serial-oe"
PRESET = "serial-oe"


@dataclass(frozen=True)
class SerialOEOptions:
    """What ``edge-train --method serial-oe`` takes (``edge-train --help`` explains each)."""

    data_dir: Path
    machine_type: str
    machine_ids: tuple[str, ...] = ()
    """The IDs the inlier model is for; empty: every ID of the type with training clips."""
    something_else_dir: Path | None = None
    backbone: str = "cnn-small"
    budget: str = "short"
    updates: int | None = None
    batch_size: int | None = None
    lr: float = 1e-3
    inlier_folds: int = 2
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    pretrained: bool = True
    exclude: tuple[Path, ...] = ()
    """Clips never used (the test clips of a comparison)."""
    inlier_paths: tuple[Path, ...] | None = None
    """The inlier IDs' clips to use (a comparison's training clips); None: all of them in ``train/``."""

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise EdgeAsdError(f"--backbone {self.backbone!r}: use one of {', '.join(BACKBONES)}")
        if self.budget not in BUDGETS:
            raise EdgeAsdError(f"budget {self.budget!r}: use one of {', '.join(BUDGETS)}")
        if self.inlier_folds < 1:
            raise EdgeAsdError("--inlier-folds must be 1 or more")


@dataclass
class Fitted:
    """The trained networks, their stacked inlier head and what the windows need."""

    nets: list[SerialOENet]
    head: Head
    features: object
    mean: np.ndarray
    std: np.ndarray
    info: dict = field(default_factory=dict)

    def embedder(self) -> Embedder:
        return Embedder(self.nets).eval()

    def window_scores(self, audio: np.ndarray) -> np.ndarray:
        """Float anomaly scores (n_windows,) float64 of one recording."""
        x = windows(audio, self.features, self.mean, self.std)
        return self.head.score(np.concatenate([embed(n, x) for n in self.nets], axis=1)).astype(np.float64)


def fit_serial_oe(o: SerialOEOptions) -> Fitted:
    """Train the K cross-fitted networks and fit the inlier head (module docstring).

    Raises:
        EdgeAsdError: no clips or negatives (:func:`.data.training_sets`), fewer inlier clips than folds.
    """
    features = get_preset(PRESET)
    budget = BUDGETS[o.budget]
    torch.set_num_threads(o.threads or max(1, len(os.sched_getaffinity(0))))
    sets = training_sets(o.data_dir, o.machine_type, o.something_else_dir, list(o.exclude))
    inlier = inlier_clips(sets, o.machine_ids)
    ids = sorted({sets.positive_ids[i] for i in inlier})
    if o.inlier_paths is not None:  # the comparison's own training clips stand for the inlier IDs' clips
        keep = [i for i, m in enumerate(sets.positive_ids) if m not in ids]
        positives = [sets.positives[i] for i in keep] + list(o.inlier_paths)
        positive_ids = [sets.positive_ids[i] for i in keep] + [ids[0]] * len(o.inlier_paths)
        inlier = list(range(len(keep), len(positives)))
    else:
        positives, positive_ids = sets.positives, sets.positive_ids
    if o.inlier_folds > len(inlier):
        raise EdgeAsdError(f"--inlier-folds {o.inlier_folds}: only {len(inlier)} normal clips of {', '.join(ids)}")
    classes = sorted(set(positive_ids))
    log.info("serial-oe %s: %d positive clips (IDs %s; inlier %s: %d), %d negatives (%s), %d fold(s)",
             o.machine_type, len(positives), ", ".join(classes), ", ".join(ids), len(inlier), len(sets.negatives),
             ", ".join(sorted(set(sets.negative_kinds))), o.inlier_folds)
    if len(classes) == 1:
        log.info("one machine ID: L_product only repeats L_machine's positive class, so this is binary outlier exposure")
    pos_audio = load_clips(positives, features)
    neg_audio = load_clips(sets.negatives, features)
    mean, std = band_statistics(pos_audio, features)
    cfg = NetConfig(o.backbone, o.updates or budget["updates"], o.batch_size or budget["batch_size"], o.lr, o.seed,
                    o.pretrained)
    rng = np.random.default_rng(o.seed)
    folds = np.array_split(rng.permutation(inlier), o.inlier_folds)
    nets, blocks, histories, n_windows, t0 = [], [], [], [], time.perf_counter()
    for k, fold in enumerate(folds):
        held = set(fold.tolist()) if o.inlier_folds > 1 else set()
        train_idx = [i for i in range(len(positives)) if i not in held]
        sampler = CropSampler([pos_audio[i] for i in train_idx], [classes.index(positive_ids[i]) for i in train_idx],
                              len(classes), neg_audio, features.samples_per_vector)
        net, history = train_network(NetConfig(**{**cfg.__dict__, "seed": o.seed + k}), features, mean, std, sampler,
                                     len(classes), o.progress)
        fit_on = sorted(fold.tolist()) if o.inlier_folds > 1 else inlier
        emb = embed(net, np.concatenate([windows(pos_audio[i], features, mean, std) for i in fit_on]))
        blocks.append(fit_mahalanobis(emb) if o.inlier_folds > 1 else fit_inlier(emb, o.seed))
        nets.append(net)
        histories.append(history)
        n_windows.append(len(emb))
        log.info("network %d/%d: %d updates, inlier model on %d windows of %d clips, %.0f s", k + 1, o.inlier_folds,
                 cfg.updates, len(emb), len(fit_on), time.perf_counter() - t0)
    head = stack_mahalanobis(blocks) if len(blocks) > 1 else blocks[0]
    info = {"config": cfg.__dict__, "classes": classes, "inlier_ids": ids, "folds": [sorted(f.tolist()) for f in folds],
            "inlier_windows": n_windows, "histories": histories, "positives": positives, "negatives": sets.negatives,
            "negative_kinds": sets.negative_kinds, "seconds": time.perf_counter() - t0}
    return Fitted(nets, head, features, mean, std, info)


def checkpoint(fitted: Fitted, o: SerialOEOptions) -> dict:
    """The checkpoint dict (``edge_asd.train.checkpoint`` keys; ``method`` = "serial-oe" tells edge-convert to
    build the :class:`.network.Embedder` and write ``head`` into the model file)."""
    info, cfg = fitted.info, fitted.info["config"]
    net_config = fitted.nets[0].config
    kinds = {k: info["negative_kinds"].count(k) for k in sorted(set(info["negative_kinds"]))}
    return {
        "schema": 1,
        "method": METHOD,
        "model_state": fitted.embedder().state_dict(),
        "arch": {"name": f"serial-oe/{cfg['backbone']}", "network": net_config, "n_networks": len(fitted.nets),
                 "embedding_dim": EMBEDDING_DIM * len(fitted.nets)},
        "features": {"preset": PRESET, "config": fitted.features.to_dict()},
        "normalization": {"axis": "mel_band", "mean": fitted.mean.tolist(), "std": fitted.std.tolist()},
        "loss": {"name": "serial-oe", "params": {"l_machine": 1.0, "l_product": 10.0, "mixup_alpha": 0.2,
                                                 "product_classes": info["classes"]}},
        "head": fitted.head.to_meta(),
        "inlier": {"folds": len(fitted.nets), "fold_clips": info["folds"], "windows": info["inlier_windows"],
                   "kind": fitted.head.kind},
        "machine_type": o.machine_type,
        "machine_ids": info["inlier_ids"],
        "train_config": {**cfg, "budget": o.budget, "inlier_folds": o.inlier_folds},
        "history": [dict(row, network=k) for k, h in enumerate(info["histories"]) for row in h],
        "epochs": [],
        "validation": None,
        "train_seconds": info["seconds"],
        "device": "cpu",
        "precision": "fp32",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "training_data": fingerprint(info["positives"]),
        "validation_data": None,
        "negatives": {"n_clips": len(info["negatives"]), "kinds": kinds},
        "something_else": {"dir": str(o.something_else_dir) if o.something_else_dir else None,
                           "n_sounds": kinds.get("something_else", 0)},
        "kit_version": kit_version(),
    }


def restore_embedder(ckpt: dict) -> Embedder:
    """The exported graph of a serial-oe checkpoint, in eval mode."""
    from edge_asd.train.serial_oe.network import build_network

    nets = [build_network(ckpt["arch"]["network"]) for _ in range(ckpt["arch"]["n_networks"])]
    embedder = Embedder(nets)
    embedder.load_state_dict(ckpt["model_state"])
    return embedder.eval()


def train_serial_oe(o: SerialOEOptions, out_path: Path) -> dict:
    """``edge-train --method serial-oe``: fit and write the checkpoint (and its .log.csv) to ``out_path``."""
    from edge_asd.train.checkpoint import save_checkpoint, write_history_csv

    ckpt = checkpoint(fit_serial_oe(o), o)
    save_checkpoint(ckpt, out_path)
    write_history_csv(ckpt["history"], Path(out_path).with_suffix(".log.csv"))
    return ckpt


def window_scorer(embedder: torch.nn.Module, head: Head, mean: np.ndarray, std: np.ndarray, features):
    """A function: mono audio (N,) -> the float model's window anomaly scores (n_windows,) float32."""

    def scores(samples: np.ndarray) -> np.ndarray:
        return head.score(embed_batches(embedder, windows(samples, features, mean, std)))

    return scores


def embed_batches(embedder: torch.nn.Module, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """``embedder``'s output for standardized windows (n, D), in batches: (n, K E) float32."""
    with torch.no_grad():
        return np.concatenate([embedder(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])
