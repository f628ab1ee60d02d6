"""Which int8 quantization options keep parity with the float model: the field's usual remedies tried
on one checkpoint (calibration set size and content, pseudo-anomalous frames, output layer in float,
ONNX calibration method), each measured on the held-out real clips.

    python examples/int8_options.py CHECKPOINT [DATA_DIR] [--out docs/convert/int8_options.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from edge_asd.convert.pipeline import Conversion, Options, write_model
from edge_asd.convert.report import AUC_DROP_MAX, INT8_SIZE_RATIO_MAX, SPEARMAN_MIN
from edge_asd.datasets.locate import local_data_root

VARIANTS = [  # (format, label, options)
    ("tflite", "normal frames only, 2000", Options(pseudo_fraction=0.0)),
    ("tflite", "normal frames only, 8000", Options(pseudo_fraction=0.0, calibration_frames=8000)),
    ("tflite", "normal frames only, output layer float", Options(pseudo_fraction=0.0, float_output_layer=True)),
    ("tflite", "25 % pseudo-anomalous, 2000 (default)", Options()),
    ("tflite", "50 % pseudo-anomalous, 2000", Options(pseudo_fraction=0.5)),
    ("onnx", "normal frames only, minmax", Options(pseudo_fraction=0.0)),
    ("onnx", "25 % pseudo-anomalous, minmax (default)", Options()),
    ("onnx", "25 % pseudo-anomalous, entropy", Options(calibrate_method="entropy")),
    ("onnx", "25 % pseudo-anomalous, percentile", Options(calibrate_method="percentile")),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("data", type=Path, nargs="?", default=None)
    ap.add_argument("--out", type=Path, default=Path("docs/convert/int8_options.md"))
    args = ap.parse_args()
    data = args.data or local_data_root()
    conv = Conversion(args.checkpoint, data)
    tmp = Path(tempfile.mkdtemp())
    float_size = {fmt: len(conv.model_bytes(fmt, "float32")) for fmt in ("tflite", "onnx")}
    rows = []
    for i, (fmt, label, opt) in enumerate(VARIANTS):
        conv.set_options(dataclasses.replace(opt))
        t = time.perf_counter()
        scorer = write_model(conv, fmt, "int8-static", tmp / f"v{i}.{fmt}")
        p = conv.parity(scorer)
        ratio = scorer.size_bytes / float_size[fmt]
        ok = p.spearman >= SPEARMAN_MIN and p.auc_float - p.auc_converted <= AUC_DROP_MAX and ratio <= INT8_SIZE_RATIO_MAX
        rows.append(f"| {fmt} | {label} | {p.spearman:.5f} | {p.pearson:.5f} | {p.max_abs_error:.0f} | "
                    f"{p.auc_converted:.3f} / {p.pauc_converted:.3f} | {ratio:.2f} | {'yes' if ok else 'no'} |")
        print(rows[-1], f"({time.perf_counter() - t:.0f} s)", flush=True)
    ckpt = conv.ckpt
    text = "\n".join([
        "# int8 options: what keeps parity with the float model",
        "",
        f"Checkpoint: {ckpt['arch']['name']}, preset {ckpt['features']['preset']} (D = {conv.features.dim}), loss "
        f"{ckpt['loss']['name']}, {ckpt['machine_type']} {', '.join(ckpt['machine_ids'])}. Calibration: the "
        f"{len(conv.calib_paths)} normal training clips (+ pseudo-anomalous frames: the same audio with a "
        "something-else sound mixed in at ANR -30..10 dB, eq. 8); parity: the "
        f"{len(conv.parity_paths)} held-out test clips. Float model: AUC / pAUC(0.1) "
        f"{p.auc_float:.3f} / {p.pauc_float:.3f}. Weights are per-channel symmetric int8 everywhere; the "
        "squared-error sum of eq. 5 is float in every variant.",
        "",
        f"Produced by `python examples/int8_options.py {args.checkpoint.name}` (2 shared CPU cores).",
        "",
        "| format | calibration | Spearman | Pearson | max abs err | AUC / pAUC int8 | size x float | targets met |",
        "|---|---|---|---|---|---|---|---|",
        *rows, ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
