"""The parity report: every converted file against the float torch model on held-out real clips (with the
clip AUC beside the loudness reference), its size and per-frame latency on each runtime that can run it,
checked against the issue's targets."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_asd.convert.parity import Parity
from edge_asd.edge.runtime.scorer import Scorer

SPEARMAN_MIN = 0.999
AUC_DROP_MAX = 0.005
"""0.5 AUC point."""
INT8_SIZE_RATIO_MAX = 0.3
"""Full-integer int8 file size / float32 file size of the same format."""


@dataclass
class Row:
    target: str
    path: Path
    size_bytes: int
    float_size_bytes: int | None
    parity: Parity | None
    latency_us: dict[str, float | None] = field(default_factory=dict)
    """Median per-frame latency at batch 1, microseconds, per runtime (None: not installed)."""
    notes: list[str] = field(default_factory=list)

    @property
    def quantization(self) -> str:
        return self.target.split("-", 1)[1]

    def missed(self) -> list[str]:
        """The targets this file misses, as short sentences."""
        out = []
        p = self.parity
        if p is not None and p.spearman < SPEARMAN_MIN:
            out.append(f"{self.target}: Spearman {p.spearman:.5f} < {SPEARMAN_MIN}")
        if p is not None and p.auc_float is not None and p.auc_float - p.auc_converted > AUC_DROP_MAX:
            out.append(f"{self.target}: AUC drop {100 * (p.auc_float - p.auc_converted):.2f} points > {100 * AUC_DROP_MAX:g}")
        if self.quantization == "int8-static" and self.float_size_bytes:
            ratio = self.size_bytes / self.float_size_bytes
            if ratio > INT8_SIZE_RATIO_MAX:
                out.append(f"{self.target}: size {ratio:.3f}x float > {INT8_SIZE_RATIO_MAX}x")
        return out


def per_frame_latency_us(run_one, x: np.ndarray, repeats: int = 300) -> float:
    """Median wall time of ``run_one(v)`` over ``repeats`` vectors of ``x`` (after 20 warm-up calls), microseconds."""
    rows = [x[i % len(x)][None] for i in range(repeats + 20)]
    for v in rows[:20]:
        run_one(v)
    times = []
    for v in rows[20:]:
        t = time.perf_counter()
        run_one(v)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e6)


def _tflite_runtime_one(data: bytes):
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:
        return None
    it = Interpreter(model_content=data, num_threads=1)
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def run(v):
        it.set_tensor(i, v)
        it.invoke()
        return it.get_tensor(o)

    return run


def _micro_one(data: bytes):
    try:
        from edge_asd.convert.micro import micro_interpreter
    except ImportError:  # pragma: no cover
        return None
    try:
        it = micro_interpreter(data)
    except Exception:
        return None

    def run(v):
        it.set_input(v, 0)
        it.invoke()
        return it.get_output(0)

    return run


def latencies(scorer: Scorer, data: bytes, x: np.ndarray, quantization: str) -> dict[str, float | None]:
    """Per-frame latency (µs, batch 1, one thread) on each runtime that applies; None where not installed."""
    out: dict[str, float | None] = {}
    if scorer.kind == "onnx":
        out["onnxruntime"] = per_frame_latency_us(scorer.backend.score_one, x)
        return out
    out["litert"] = per_frame_latency_us(scorer.backend.score_one, x)
    run = _tflite_runtime_one(data)
    out["tflite-runtime"] = per_frame_latency_us(run, x) if run else None
    if quantization == "int8-static":
        run = _micro_one(data)
        out["tflite-micro"] = per_frame_latency_us(run, x, repeats=100) if run else None
    return out


def _f(v, fmt=".3f"):
    return "-" if v is None else format(v, fmt)


def render(rows: list[Row], title: str, context: list[str]) -> str:
    """The Markdown report: one table row per target, then the targets missed (or that all were met)."""
    lines = [f"# {title}", "", *context, ""]
    runtimes = list(dict.fromkeys(k for r in rows for k in r.latency_us))
    head = ["target", "size KiB", "x float", "Spearman", "Pearson", "max abs err", "AUC float", "AUC conv.",
            "pAUC float", "pAUC conv."] + [f"{k} µs/frame" for k in runtimes]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p = r.parity
        cells = [r.target, f"{r.size_bytes / 1024:.0f}",
                 _f(r.size_bytes / r.float_size_bytes if r.float_size_bytes else None, ".3f"),
                 _f(p and p.spearman, ".5f"), _f(p and p.pearson, ".5f"), _f(p and p.max_abs_error, ".4g"),
                 _f(p and p.auc_float), _f(p and p.auc_converted), _f(p and p.pauc_float), _f(p and p.pauc_converted)]
        cells += [_f(r.latency_us.get(k), ".0f") if k in r.latency_us else "" for k in runtimes]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if rows and rows[0].parity is not None:
        p = rows[0].parity
        lines.append(f"Parity on {p.n_clips} held-out clips ({p.n_frames} frames); AUC/pAUC(0.1) over {p.n_auc_clips} "
                     "labelled test clips, clip score = max frame score (eq. 11). Latency: median of single-frame "
                     "invokes, one thread; '-': runtime not installed.")
        if p.auc_level is not None:
            lines.append("")
            lines.append(f"Loudness reference on the same {p.n_auc_clips} test clips (clip RMS level in dBFS as the score, "
                         f"what a level meter alone gets): AUC {p.auc_level:.3f}, pAUC(0.1) {p.pauc_level:.3f}. "
                         "A model AUC at or below it may measure loudness, not the machine's condition.")
    notes = [n for r in rows for n in r.notes]
    lines += [""] + [f"- {n}" for n in notes] if notes else []
    missed = [m for r in rows for m in r.missed()]
    targets = (f"Targets: Spearman >= {SPEARMAN_MIN}, AUC drop <= {100 * AUC_DROP_MAX:g} point, "
               f"full-int8 size <= {INT8_SIZE_RATIO_MAX}x float.")
    lines += ["", targets, ""] + ([f"- MISSED {m}" for m in missed] if missed else ["All targets met."])
    return "\n".join(lines) + "\n"
