"""``edge-train --method transfer-metric``: frozen YAMNet embeddings of the normal training clips, a Deep SVDD
head trained on them (:mod:`.head`) and the Ledoit-Wolf Mahalanobis comparator fitted on the same embeddings,
in one checkpoint; ``edge-convert`` writes its model files (:mod:`edge_asd.convert.transfer_metric`).

Checkpoint keys (schema 1, ``method = "transfer-metric"``): ``extractor`` (e.g. "yamnet:layer10" or
"onnx:PATH[:OUTPUT]"; a user ONNX also ``extractor_onnx``, its bytes, ``extractor_output``, ``extractor_sha256``),
``features`` {preset "yamnet", config}, ``normalization`` (mean 0, std 1 per band), ``head`` {kind "centre",
phi_state, in_dim, hidden, z, centre, epochs, heldout_curve}, ``mahalanobis`` {mean, precision}, ``arch``,
``loss``, ``machine_type``, ``machine_ids``, ``training_data``, ``train_patches``, ``kit_version``, ``created_at``;
``model_state`` holds phi's weights (what load_checkpoint asks for).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from edge_asd.core.commands import kit_version
from edge_asd.core.presets import get_preset
from edge_asd.core.provenance import sha256_bytes
from edge_asd.train.checkpoint import CHECKPOINT_SCHEMA, save_checkpoint
from edge_asd.train.data import fingerprint
from edge_asd.train.feature_cache import FeatureCache, default_cache_dir
from edge_asd.train.transfer_metric.comparators import fit_mahalanobis
from edge_asd.train.transfer_metric.compare import BUDGETS
from edge_asd.train.transfer_metric.extractor import OnnxExtractor, load_extractor, onnx_source, parse_extractor
from edge_asd.train.transfer_metric.features import PRESET, clip_embeddings

log = logging.getLogger("edge_asd")


def train_transfer_metric(data_dir: Path, machine_type: str, machine_ids: tuple[str, ...], out_path: Path,
                          extractor: str = "yamnet:layer10", seed: int = 0, cache_dir: Path | None = None,
                          use_cache: bool = True, budget: str = "short") -> dict:
    """Train and write the checkpoint at ``out_path``; returns it. EdgeAsdError for a bad extractor or no clips."""
    from edge_asd.train.run import normal_recordings
    from edge_asd.train.transfer_metric.head import fit_head

    kind, arg = parse_extractor(extractor)
    user = {}  # a user's ONNX extractor travels in the checkpoint: edge-convert appends the head to it
    if kind == "onnx":
        path, output = onnx_source(arg)
        run = OnnxExtractor(path, output)
        data = path.read_bytes()
        user = {"extractor_onnx": data, "extractor_output": run.output, "extractor_rank": run.rank,
                "extractor_sha256": sha256_bytes(data)}
    else:
        run = load_extractor(extractor)
    paths, ids = normal_recordings(data_dir, machine_type, machine_ids)
    cache = FeatureCache((cache_dir or default_cache_dir()) if use_cache else None)
    key = f"onnx:{user['extractor_sha256']}:{user['extractor_output']}" if user else extractor  # content, not path
    clips = clip_embeddings(paths, key, run, cache)
    log.info("%d clips, %d patches, embedding size %d (%s)", len(clips), sum(map(len, clips)), clips[0].shape[1], extractor)
    cfg = BUDGETS[budget]["head"]
    phi, centre, record = fit_head(clips, cfg, seed)
    log.info("Deep SVDD head: %d epochs (cross-fitted held-out loss)", record["epochs"])
    mean, precision = fit_mahalanobis(np.concatenate(clips))
    features = get_preset(PRESET)
    ckpt = {
        "schema": CHECKPOINT_SCHEMA, "method": "transfer-metric", "extractor": extractor,
        "model_state": phi.state_dict(),
        "features": {"preset": PRESET, "config": features.to_dict()},
        "normalization": {"axis": "mel band", "mean": [0.0] * features.n_mels, "std": [1.0] * features.n_mels},
        "head": {"kind": "centre", "phi_state": phi.state_dict(), "in_dim": int(clips[0].shape[1]), "hidden": cfg.hidden,
                 "z": cfg.z, "centre": torch.from_numpy(centre), **record},
        "mahalanobis": {"mean": torch.from_numpy(mean), "precision": torch.from_numpy(precision)},
        "arch": {"name": f"{'onnx' if user else 'yamnet-' + arg}+deep-svdd", "extractor": extractor,
                 "hidden": cfg.hidden, "z": cfg.z},
        "loss": {"name": "deep-svdd", "params": {"weight_decay": cfg.weight_decay, "lr": cfg.lr}},
        "machine_type": machine_type, "machine_ids": sorted(set(ids)),
        "training_data": fingerprint(paths), "train_patches": int(sum(map(len, clips))), "seed": seed,
        "kit_version": kit_version(), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **user,
    }
    save_checkpoint(ckpt, out_path)
    return ckpt
