"""The ``edge_asd`` metadata a model file carries (schema: ``edge_asd.core.model_file``)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import numpy as np

from edge_asd.core.commands import kit_version
from edge_asd.core.heads import Head
from edge_asd.core.model_file import DIGEST_KEY, FORMAT, SCHEMA_VERSION, unsealed_digest
from edge_asd.core.oof import ENCODING, encode_scores
from edge_asd.core.provenance import PREFIX_CHARS, prefixes

log = logging.getLogger("edge_asd")

MAX_OOF_CHARS = 4_000_000
"""Encoded out-of-fold scores above this (4 MB, about 1.5 million frames: some 2 500 10-s clips of the
koizumi2019 preset) stay out of the model file, with a warning: the metadata is read at every model load
and travels to the device."""


def model_metadata(ckpt: dict, target: str, quantization: dict) -> dict:
    """Everything the device needs besides the graph, from a checkpoint dict.

    Args:
        target: "tflite" or "onnx".
        quantization: e.g. {"mode": "float32"} or {"mode": "int8-static", "weights": "per-channel", ...}.
    """
    meta = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "kit_version": kit_version(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": target,
        "io": {
            "input": "standardized context vector, shape (1, D), float32: (psi - mean[band]) / std[band]",
            "output": "anomaly score A(x) = ||x - D(E(x))||^2 (Koizumi et al. 2019, eq. 5), shape (1,), float32",
        },
        "machine_type": ckpt.get("machine_type"),
        "machine_ids": ckpt.get("machine_ids"),
        "features": ckpt["features"],
        "normalization": ckpt["normalization"],
        "architecture": ckpt["arch"],
        "loss": ckpt["loss"],
        "training_data": training_data(ckpt.get("training_data", {})),
        "trained_with_kit_version": ckpt.get("kit_version"),
        "quantization": quantization,
        DIGEST_KEY: unsealed_digest(),  # filled in by edge.model_file.seal once the file's bytes exist
    }
    if ckpt.get("head") is not None:  # an embedding model (serial-oe): the head turns e into the anomaly score
        head = Head.from_meta(ckpt["head"], "checkpoint")
        meta["head"] = head.to_meta()  # float32 base64, also for checkpoints that hold JSON lists
        meta["method"] = ckpt.get("method")
        meta["io"]["output"] = (f"embedding e, shape (1, {head.dim}), float32; anomaly score = the {head.kind} head "
                                "of e (edge_asd.core.heads)")
    oof = out_of_fold(ckpt["oof"]) if ckpt.get("oof") else None
    if oof is not None:
        meta["oof"] = oof
    return meta


def training_data(fingerprint: dict) -> dict:
    """The checkpoint's training-data fingerprint for the model file: the total sha256 and file count, and
    the files' short digests (``edge.provenance``) instead of their names and full digests."""
    out = {k: v for k, v in fingerprint.items() if k != "files"}
    short = prefixes((fingerprint.get("files") or {}).values())
    if short is not None:
        out["file_sha256_prefixes"] = short
    return out


def out_of_fold(oof: dict) -> dict | None:
    """The checkpoint's out-of-fold frame scores (``edge-train --oof-folds``) for the model file: per clip the
    short file digest, the fold, the number of frames and the scores as float16 (layout:
    :mod:`edge_asd.core.oof`); None, with a warning, when they would take more than :data:`MAX_OOF_CHARS`."""
    clips = [{"file_sha256_prefix": c["sha256"][:PREFIX_CHARS], "fold": int(c["fold"]),
              **encode_scores(np.asarray(c["scores"], np.float32))} for c in oof["clips"]]
    size = sum(len(c["scores"]) for c in clips)
    if size > MAX_OOF_CHARS:
        log.warning("the out-of-fold scores of %d clips take %.1f MB, over %.0f MB: left out of the model file "
                    "(edge-calibrate scores the training clips with the model)", len(clips), size / 1e6, MAX_OOF_CHARS / 1e6)
        return None
    return {"folds": int(oof["folds"]), "seed": oof.get("seed"), "encoding": ENCODING, "clips": clips}
