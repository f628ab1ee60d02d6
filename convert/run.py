"""``edge-convert`` as a Python function: write the requested model files of one checkpoint and measure
each (parity with the clip AUC beside the loudness reference, size, latency, and for --to c-array the
microcontroller figures: flash, tensor arena, tflite-micro vs LiteRT int8 tensors), with the parity report.

:func:`write_model_files` takes a :class:`ConvertOptions` and does the whole job; ``edge-convert`` only
parses its options into one, calls it and prints the result. Example::

    from pathlib import Path
    from edge_asd.convert.run import ConvertOptions, write_model_files

    result = write_model_files(ConvertOptions(Path("fan.pt"), "tflite", Path("fan.tflite"),
                                              quantize="int8-static", calibration_dir=Path("data")))
    for row in result.rows:
        print(row.path, row.size_bytes, row.parity.spearman if row.parity else None)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_asd.convert.parity import with_loudness_reference
from edge_asd.convert.pipeline import TARGETS, Conversion, Options, write_model
from edge_asd.convert.report import Row, latencies, render
from edge_asd.core.atomic_io import atomic_write_bytes
from edge_asd.core.commands import kit_version
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import extract, standardize

log = logging.getLogger("edge_asd")
_EXT = {"tflite": ".tflite", "onnx": ".onnx"}


COMMAND_TARGETS = ("tflite", "onnx", "all", "c-array")
"""What ``edge-convert --to`` accepts: one file of a format, every format x quantization, or tflite-micro sources."""


@dataclass(frozen=True)
class ConvertOptions:
    """Everything ``edge-convert`` takes (``edge-convert --help`` explains each option; defaults are its defaults)."""

    checkpoint: Path
    """An edge-train checkpoint (.pt)."""
    target: str
    """One of :data:`COMMAND_TARGETS`."""
    out_path: Path
    """The model file for tflite / onnx; a folder (created) for all / c-array."""
    quantize: str | None = None
    """float32, int8-dynamic or int8-static; None: float32 (all / c-array choose their own)."""
    calibration_dir: Path | None = None
    """Recordings to calibrate int8 on and measure parity on (a DCASE/MIMII folder or any folder of audio)."""
    calibration_frames: int = 2000
    pseudo_fraction: float = 0.25
    something_else_dir: Path | None = None
    calibrate_method: str = "minmax"
    float_output_layer: bool = False
    report_path: Path | None = None
    """Where to write the Markdown parity report; None: none (and no latency measurements)."""

    def quantization_options(self) -> Options:
        return Options(calibration_frames=self.calibration_frames, pseudo_fraction=self.pseudo_fraction,
                       calibrate_method=self.calibrate_method, float_output_layer=self.float_output_layer,
                       something_else_dir=self.something_else_dir)


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`write_model_files` wrote and measured."""

    rows: list[Row]
    """One per model file: path, size, parity (None without calibration clips), latency."""
    extra: list[str]
    """Further lines to show (c-array: the C sources written and the microcontroller figures)."""
    report_path: Path | None
    """The parity report written, if one was asked for."""

    @property
    def missed(self) -> list[str]:
        """The parity and size targets the files miss, as short sentences (empty: all met)."""
        return [m for row in self.rows for m in row.missed()]


def plan_jobs(target: str, quantize: str | None) -> list[tuple[str, str, str]]:
    """The (name, format, quantization) of each file ``--to target`` writes.

    Raises EdgeAsdError for an unknown target or a quantization the target does not take."""
    if target == "all":
        if quantize:
            raise EdgeAsdError("--to all writes every quantization; leave out --quantize/--int8")
        return [(name, fmt, q) for name, (fmt, q) in TARGETS.items()]
    if target == "c-array":
        if quantize not in (None, "int8-static"):
            raise EdgeAsdError("--to c-array is full-integer int8 (tflite-micro); leave out --quantize")
        return [("tflite-int8-static", "tflite", "int8-static")]
    if target not in COMMAND_TARGETS:
        raise EdgeAsdError(f"unknown target {target!r}: use one of {', '.join(COMMAND_TARGETS)}")
    return [(f"{target}-{quantize or 'float32'}", target, quantize or "float32")]


def write_model_files(options: ConvertOptions) -> ConvertResult:
    """Convert ``options.checkpoint`` into the files of ``options.target``; measure them; write the report.

    Missed parity or size targets do not raise: the files are written and :attr:`ConvertResult.missed`
    lists them (edge-convert exits 1 on them unless --allow-degraded).
    Raises:
        EdgeAsdError: a bad target/quantization pair, int8-static without ``calibration_dir``, a bad
            checkpoint, unreadable audio, tflite-micro and LiteRT disagreeing by more than 1 LSB (c-array).
    """
    o = options
    from edge_asd.train.checkpoint import check_complete, load_checkpoint

    check_complete(load_checkpoint(o.checkpoint), o.checkpoint)
    if _is_transfer_metric(o.checkpoint):
        from edge_asd.convert.transfer_metric import write_model_files as transfer_metric_files

        return ConvertResult([], transfer_metric_files(o), o.report_path)
    jobs = plan_jobs(o.target, o.quantize)
    if any(q == "int8-static" for _, _, q in jobs) and o.calibration_dir is None:
        raise EdgeAsdError("int8-static (--int8, --to all, --to c-array) needs --calibration DATA_DIR: "
                           "int8 ranges are calibrated on normal recordings")
    quantization = o.quantization_options()
    conversion = Conversion(o.checkpoint, o.calibration_dir, quantization)
    if o.target in ("all", "c-array"):
        o.out_path.mkdir(parents=True, exist_ok=True)
    rows, extra = convert_and_measure(conversion, jobs, o.out_path, o.checkpoint.stem, o.target == "c-array",
                                      measure_latency=o.report_path is not None)
    if o.report_path is not None:
        ckpt = conversion.ckpt
        context = [f"Checkpoint `{o.checkpoint.name}`: {ckpt['arch']['name']}, preset "
                   f"{ckpt['features']['preset']} (D = {conversion.features.dim}), loss "
                   f"{ckpt['loss']['name']}; calibration: {o.calibration_dir or 'none'}; options: "
                   f"{quantization.describe()}."] + [f"- {line}" for line in extra]
        atomic_write_bytes(o.report_path, render(rows, f"edge-convert parity report: {o.checkpoint.name}", context).encode())
    return ConvertResult(rows, extra, o.report_path)


def _is_transfer_metric(checkpoint: Path) -> bool:
    """An ``edge-train --method transfer-metric`` checkpoint (its files: edge_asd.train.transfer_metric)."""
    from edge_asd.train.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint).get("method") == "transfer-metric"


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
        parity = with_loudness_reference(conversion.parity(scorer), [conversion.audio[p] for p in conversion.parity_paths],
                                         conversion.labels)
        row = Row(name, Path(path), len(data), float_sizes.get(fmt) if quant != "float32" else None, parity)
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
