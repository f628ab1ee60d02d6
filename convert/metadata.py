"""The ``edge_asd`` metadata a model file carries (schema: ``edge_asd.core.model_file``)."""

from __future__ import annotations

from datetime import datetime, timezone

from edge_asd.core.commands import kit_version
from edge_asd.core.model_file import DIGEST_KEY, FORMAT, SCHEMA_VERSION, unsealed_digest
from edge_asd.core.provenance import prefixes


def model_metadata(ckpt: dict, target: str, quantization: dict) -> dict:
    """Everything the device needs besides the graph, from a checkpoint dict.

    Args:
        target: "tflite" or "onnx".
        quantization: e.g. {"mode": "float32"} or {"mode": "int8-static", "weights": "per-channel", ...}.
    """
    return {
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


def training_data(fingerprint: dict) -> dict:
    """The checkpoint's training-data fingerprint for the model file: the total sha256 and file count, and
    the files' short digests (``edge.provenance``) instead of their names and full digests."""
    out = {k: v for k, v in fingerprint.items() if k != "files"}
    short = prefixes((fingerprint.get("files") or {}).values())
    if short is not None:
        out["file_sha256_prefixes"] = short
    return out
