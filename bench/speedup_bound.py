"""How fast the device path can get relative to librosa + onnxruntime, over model sizes and feature presets.

``edge_bench.py`` measures the kit's model against the reference. This script asks whether *any*
model of the kit's families could reach the issue's ">= 20x faster than librosa per 10-s clip +
onnxruntime float32" target. For every (feature preset, architecture) pair it trains a throwaway
model (one mini-batch: weights do not change the time of a dense layer), converts it to full-int8
.tflite and float32 .onnx, and times the two halves of a hop apart on real fan clips, one core:

    features: our streaming numpy log-mel context vectors  vs  librosa melspectrogram per 10-s clip
    model:    LiteRT int8, one call per edge-monitor block  vs  onnxruntime float32, one call per clip

The whole hop's ratio (a + b) / (c + d) lies between the two halves' ratios, so it reaches 20x only if
at least one half does; the table shows each half's ratio for every model.

    python bench/speedup_bound.py [--seconds 120] [--core 0] [--work out/speedup_bound]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from edge_bench import TARGETS, load_clips, run_breakdown, run_reference_breakdown  # noqa: E402

MODELS = [  # (feature preset, architecture)
    ("koizumi2019", "fcn-small"),  # the kit's default (make demo), D = 1344
    ("koizumi2019", "fcn-large"),
    ("dcase2020", "dcase2020"),  # the DCASE 2020 Task 2 baseline AE, D = 640
    ("dcase2020", "fcn-small"),
]


def macs_per_frame(arch: dict) -> int:
    """Multiply-adds of one context vector through the FCN autoencoder (encoder and mirrored decoder)."""
    dims = [arch["dim"]] + [arch["units"]] * (arch["hidden_layers"] + 1) + [arch["bottleneck"]]
    return 2 * sum(a * b for a, b in zip(dims, dims[1:]))


def build(preset: str, arch: str, data: Path, work: Path) -> tuple[Path, Path]:
    """A throwaway checkpoint of this preset and architecture, as int8 .tflite and float32 .onnx."""
    stem = work / f"{preset}_{arch}"
    tflite, onnx = stem.with_suffix(".tflite"), stem.with_suffix(".onnx")
    if tflite.exists() and onnx.exists():
        return tflite, onnx
    bin_dir = Path(sys.executable).parent
    run = lambda *cmd: subprocess.run([str(c) for c in cmd], check=True, capture_output=True)  # noqa: E731
    ckpt = stem.with_suffix(".pt")
    fan = data / "machines" / "fan"
    run(bin_dir / "edge-train", fan, "--machine-type", "fan", "--machine-id", "00", "--preset", preset, "--arch", arch,
        "--loss", "re", "--epochs", "1", "--batches-per-epoch", "1", "--no-cache", "--device", "cpu", "--out", ckpt)
    run(bin_dir / "edge-convert", ckpt, "--to", "tflite", "--int8", "--calibration", fan, "--calibration-frames", "500",
        "--allow-degraded", "--out", tflite)
    run(bin_dir / "edge-convert", ckpt, "--to", "onnx", "--out", onnx)
    return tflite, onnx


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0, help="audio streamed through each half, s")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each half; the fastest is reported")
    p.add_argument("--core", type=int, default=0)
    p.add_argument("--data", type=Path, default=None, help="data root (default: $EDGE_ASD_DATA or ../shared/data)")
    p.add_argument("--work", type=Path, default=Path("out/speedup_bound"), help="where the throwaway models go")
    args = p.parse_args()

    from edge_asd.core.model_file import read_model_file
    from edge_asd.datasets.locate import require_data_root
    from edge_asd.edge.runtime.stream_loop import BLOCK_HOPS

    data = args.data or require_data_root()
    args.work.mkdir(parents=True, exist_ok=True)
    clips = load_clips(data)
    os.sched_setaffinity(0, {args.core})
    fastest = lambda runs: min(runs, key=lambda r: r["features_us"] + r["model_us"])  # noqa: E731

    print(f"speedup_bound: {args.seconds:g} s of real fan id_00 clips per half, core {args.core}, one thread, "
          f"best of {args.repeat}; ours: {BLOCK_HOPS} hops per call; reference: one call per 10-s clip\n")
    print("| preset | arch | D | MAC / frame | ours features / model (us per hop) | reference features / model | "
          "features ratio | model ratio | whole hop ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    best = 0.0
    for preset, arch in MODELS:
        tflite, onnx = build(preset, arch, data, args.work)
        info = read_model_file(tflite)[2]
        a = info.meta["architecture"]
        ours = fastest([run_breakdown(tflite, clips, args.seconds, BLOCK_HOPS) for _ in range(args.repeat)])
        ref = fastest([run_reference_breakdown(onnx, clips, args.seconds) for _ in range(args.repeat)])
        whole = (ref["features_us"] + ref["model_us"]) / (ours["features_us"] + ours["model_us"])
        best = max(best, whole)
        print(f"| {preset} | {arch} | {a['dim']} | {macs_per_frame(a) / 1e3:.0f} k | {ours['features_us']:.2f} / "
              f"{ours['model_us']:.2f} | {ref['features_us']:.2f} / {ref['model_us']:.2f} | "
              f"{ref['features_us'] / ours['features_us']:.1f}x | {ref['model_us'] / ours['model_us']:.1f}x | {whole:.1f}x |",
              flush=True)
    print(f"\nbest whole-hop ratio: {best:.1f}x (target >= {TARGETS['speedup']:g}x)")


if __name__ == "__main__":
    main()
