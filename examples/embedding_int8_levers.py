"""int8 vs float window-score parity of the embedding models under the field's cheap levers (docs/serial-oe.md,
docs/transfer-metric.md): calibration size and variety, the ONNX calibration method, float global pooling, float
head. Every variant states all its options, so the figures do not move when a default does.

    python examples/embedding_int8_levers.py serial-oe fan-soe.pt ../shared/data/machines [--only 0 3]
    python examples/embedding_int8_levers.py transfer-metric fan_tm.pt ../shared/data [--only 0 5]

serial-oe: Spearman of the model file's window scores against the float checkpoint's on the test clips of its
machine IDs (edge_asd.convert.pipeline); transfer-metric: the same per YAMNet patch (edge_asd.convert.transfer_metric,
something-else sounds from DATA/something_else/train).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

SOE = [  # (format, label, Options keywords)
    ("tflite", "2000 windows, 25 % pseudo-anomalous, int8 pooling", {"float_pooling": False}),
    ("tflite", "4000 windows, 25 %, int8 pooling", {"calibration_frames": 4000, "float_pooling": False}),
    ("tflite", "2000 windows, 50 %, int8 pooling", {"pseudo_fraction": 0.5, "float_pooling": False}),
    ("tflite", "2000 windows, 25 %, float pooling (default)", {"float_pooling": True}),
    ("tflite", "2000 windows, 50 %, float pooling", {"pseudo_fraction": 0.5, "float_pooling": True}),
    ("onnx", "2000 windows, 25 %, minmax (default)", {"calibrate_method": "minmax"}),
    ("onnx", "2000 windows, 25 %, entropy", {"calibrate_method": "entropy"}),
    ("onnx", "2000 windows, 25 %, percentile", {"calibrate_method": "percentile"}),
    ("onnx", "2000 windows, 50 %, percentile", {"calibrate_method": "percentile", "pseudo_fraction": 0.5}),
]
TM = [  # (label, every n-th patch, something-else mixtures per clip, float head, float pooling)
    ("every 2nd patch + 1 mixture, all int8", 2, 1, False, False),
    ("every patch + 1 mixture, all int8", 1, 1, False, False),
    ("every patch + 3 mixtures, all int8", 1, 3, False, False),
    ("every 2nd patch + 1 mixture, float pooling (default)", 2, 1, False, True),
    ("every 2nd patch + 1 mixture, float head", 2, 1, True, False),
    ("every 2nd patch + 1 mixture, float pooling + head", 2, 1, True, True),
    ("every patch + 3 mixtures, float head", 1, 3, True, False),
]


def serial_oe(checkpoint: Path, data: Path, only: list[int]) -> None:
    from edge_asd.convert.pipeline import Conversion, Options, write_model

    conv, tmp = Conversion(checkpoint, data), Path(tempfile.mkdtemp())
    for i, (fmt, label, kw) in enumerate(SOE):
        if only and i not in only:
            continue
        conv.set_options(Options(**kw))
        t = time.time()
        scorer = write_model(conv, fmt, "int8-static", tmp / f"v{i}.{fmt}")
        p = conv.parity(scorer)
        print(f"{i} {fmt} {label}: window-score Spearman {p.spearman:.5f}, Pearson {p.pearson:.5f}, "
              f"{scorer.size_bytes / 1024:.0f} KiB ({time.time() - t:.0f} s)", flush=True)


def transfer_metric(checkpoint: Path, data: Path, only: list[int]) -> None:
    from edge_asd.convert import transfer_metric as tm
    from edge_asd.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    for i, (label, every, mixtures, float_head, float_pooling) in enumerate(TM):
        if only and i not in only:
            continue
        t = time.time()
        cal = tm.calibration_patches(data, ckpt, data / "something_else" / "train", every=every, mixtures=mixtures)
        b = tm.model_bytes(ckpt, "tflite", "int8-static", cal, float_head=float_head, float_pooling=float_pooling)
        print(f"{i} tflite {label}: {len(cal)} calibration patches, {len(b) / 1024:.0f} KiB; "
              + "; ".join(tm.parity(ckpt, b, "tflite", data)) + f" ({time.time() - t:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("method", choices=["serial-oe", "transfer-metric"])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--only", type=int, nargs="*", default=[], help="variant numbers to run (default: all)")
    args = ap.parse_args()
    (serial_oe if args.method == "serial-oe" else transfer_metric)(args.checkpoint, args.data, args.only)


if __name__ == "__main__":
    main()
