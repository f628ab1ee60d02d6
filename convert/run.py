"""Write the requested model files of one conversion and measure each: parity, size, latency, and for
--to c-array the microcontroller figures (flash, tensor arena, tflite-micro vs LiteRT int8 tensors)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_asd.core.commands import kit_version
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import extract, standardize

from edge_asd.convert.pipeline import Conversion, write_model
from edge_asd.convert.report import Row, latencies

log = logging.getLogger("edge_asd")
_EXT = {"tflite": ".tflite", "onnx": ".onnx"}


def _held_out_vectors(conversion: Conversion, n: int = 64) -> np.ndarray:
    """Up to ``n`` standardized vectors from the held-out clips (else zeros, one vector)."""
    paths = conversion.parity_paths or conversion.calib_paths
    if not paths:
        return np.zeros((1, conversion.features.dim), np.float32)
    vectors = np.concatenate([extract(conversion.audio[p], conversion.features) for p in paths])
    pick = np.random.default_rng(0).choice(len(vectors), size=min(n, len(vectors)), replace=False)
    return standardize(vectors[pick], conversion.mean, conversion.std)


def convert_and_measure(conversion: Conversion, jobs: list[tuple[str, str, str]], out: Path, stem: str,
                        c_array: bool = False, measure_latency: bool = False) -> tuple[list[Row], list[str]]:
    """Write each (name, format, quantization) of ``jobs``; ``out`` is the file for one job, else a folder.

    Returns the report rows and extra lines (microcontroller figures) to print.
    """
    rows, extra, float_sizes = [], [], {}
    x = _held_out_vectors(conversion) if (measure_latency or c_array) else None
    for name, fmt, quant in jobs:
        path = out if len(jobs) == 1 and not c_array else Path(out) / f"{stem}.{name}{_EXT[fmt]}"
        if c_array:
            path = Path(out) / "model.tflite"
        log.info("converting %s -> %s", name, path)
        scorer = write_model(conversion, fmt, quant, path)
        data = Path(path).read_bytes()
        if quant == "float32":
            float_sizes[fmt] = len(data)
        elif fmt not in float_sizes and conversion.parity_paths:  # the reference the size target is against
            float_sizes[fmt] = len(conversion.model_bytes(fmt, "float32"))
        row = Row(name, Path(path), len(data), float_sizes.get(fmt) if quant != "float32" else None,
                  conversion.parity(scorer))
        if measure_latency:
            row.latency_us = latencies(scorer, data, x, quant)
        if c_array:
            extra += _microcontroller(data, scorer, x, Path(out))
        rows.append(row)
    return rows, extra


def _microcontroller(data: bytes, scorer, x: np.ndarray, out_dir: Path) -> list[str]:
    from edge_asd.convert.c_array import write_c_array
    from edge_asd.convert.micro import arena_bytes, int8_tensors_lsb_diff, micro_scores

    dim = scorer.features.dim
    arena = arena_bytes(data, dim)
    files = write_c_array(data, scorer.info, scorer.sha256, kit_version(), out_dir, arena)
    lsb, n_tensors = int8_tensors_lsb_diff(data, x)
    micro = micro_scores(data, x)
    lite = scorer.backend.score(x)
    rel = float(np.max(np.abs(micro - lite) / np.maximum(np.abs(lite), 1e-6)))
    if lsb > 1:
        raise EdgeAsdError(f"tflite-micro and LiteRT disagree by {lsb} LSB on an int8 tensor (more than 1)")
    return [f"wrote {', '.join(str(f) for f in files)}",
            f"microcontroller: flash {len(data)} bytes ({len(data) / 1024:.0f} KiB model_data), tensor arena "
            f"{arena} bytes ({arena / 1024:.1f} KiB) measured by tflite-micro; int8 tensors tflite-micro vs LiteRT: "
            f"max {lsb} LSB over {n_tensors} tensors x {len(x)} held-out frames; scores max relative difference {rel:.2e}"]
