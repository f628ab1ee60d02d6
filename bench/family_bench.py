"""Device cost of each detector family's model file, side by side in one run, on one core.

For every --model NAME=FILE (a .tflite or .onnx model file of any family: autoencoder, serial OE,
transfer-metric): edge-monitor's loop (edge_bench.run_ours: the same Scorer and stream loop) on real
fan id_00 clips played back to back, and edge-monitor as a process fed the same stream as PCM on stdin.

Measured per model: file size; the score window and hop its model file declares; compute per second of audio
(the real-time factor, RTF) at edge-monitor's block; latency of one score window p50 / p99 (a call that brings
exactly one window hop of audio); peak RSS and cold start (spawn to the first score line) of the process. The
first --model is the reference: every other cell gets its ratio to it, measured in the same run on the same
core and stream, and the floor of any Python device program (python + import numpy) is measured alike. The
targets are issues 16 / 17's (RTF <= 0.05, peak RSS <= 150 MB).

Latency does not depend on what a network learned, only on its graph: a model file of a short training run
measures the same cost as the default one (docs/speed.md says which were used).

    python bench/family_bench.py --model bu=out/demo/fan.tflite --model serial-oe=fan-soe.tflite \\
        --model transfer-metric=fan_tm.tflite [--minutes 10] [--core 0] [--json out/family_bench.json]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # one core, as edge_bench

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from edge_bench import SR, load_clips, process_footprint, run_ours  # noqa: E402

TARGETS = {"rtf": "<= 0.05", "rss_mb": "<= 150"}


def measure(path: Path, clips, seconds: float, repeat: int) -> dict:
    """One model file's row: size, window / hop (s), RTF at edge-monitor's block, one-window latency, RSS, cold start."""
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.edge.runtime.stream_loop import BLOCK_HOPS

    f = Scorer(path).features
    per_window = f.vector_hop_samples // f.hop_samples  # frames of one score hop: one call = one new window
    best = lambda runs: min(runs, key=lambda r: r["rtf"])  # noqa: E731 - the run least disturbed by other load
    block = best([run_ours(path, clips, seconds, BLOCK_HOPS) for _ in range(repeat)])
    one = best([run_ours(path, clips, min(seconds, 300), per_window) for _ in range(repeat)])
    row = {"size_kib": path.stat().st_size / 1024, "window_s": f.samples_per_vector / SR,
           "hop_s": f.vector_hop_samples / SR, "rtf": block["rtf"], "ms_per_audio_s": 1e3 * block["rtf"],
           "window_p50_ms": one["p50_ms"], "window_p99_ms": one["p99_ms"],
           "ms_per_window": 1e-3 * block["per_hop_us"]}
    row.update(process_footprint([sys.executable, "-m", "edge_asd.edge.cli.monitor", "--model", str(path), "--phi", "0",
                                  "--input", "-", "--pcm-rate", str(SR), "-q"], clips, seconds))
    return row


ROWS = [("size_kib", "file size (KiB)", "{:.0f}"), ("window_s", "score window (s)", "{:.3f}"), ("hop_s", "score hop (s)", "{:.3f}"),
        ("ms_per_window", "compute per score window (ms)", "{:.3f}"),
        ("window_p50_ms", "latency of one window p50 (ms)", "{:.3f}"), ("window_p99_ms", "latency of one window p99 (ms)", "{:.3f}"),
        ("ms_per_audio_s", "compute per second of audio (ms)", "{:.2f}"), ("rtf", "real-time factor", "{:.5f}"),
        ("rss_mb", "peak RSS of edge-monitor (MB)", "{:.1f}"), ("cold_start_s", "cold start to first score (s)", "{:.3f}")]


def table(rows: dict) -> str:
    """Markdown: one column per model, each cell with its ratio to the first model (the reference)."""
    names = list(rows)
    ref = rows[names[0]]
    out = ["| measure | " + " | ".join(names) + " | target |", "|---" * (len(names) + 2) + "|"]
    for key, label, fmt in ROWS:
        cells = []
        for i, n in enumerate(names):
            v = rows[n].get(key)
            cell = "" if v is None else fmt.format(v)
            if i and v is not None and key in ref and ref[key] and n != "floor: python + import numpy":
                cell += f" ({v / ref[key]:.1f}x)"
            cells.append(cell)
        out.append(f"| {label} | " + " | ".join(cells) + f" | {TARGETS.get(key, '')} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=FILE",
                   help="a model file to measure (repeat; the first is the reference of the ratios)")
    p.add_argument("--minutes", type=float, default=10.0, help="audio per timed run, min (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per model; the fastest is reported (default: %(default)s)")
    p.add_argument("--core", type=int, default=0, help="CPU core to pin every process to (default: %(default)s)")
    p.add_argument("--data", type=Path, default=None, help="data root (default: $EDGE_ASD_DATA or ../shared/data)")
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args()
    from edge_asd.core.errors import EdgeAsdError
    from edge_asd.edge.runtime.scorer import Scorer

    models = {}
    for spec in args.model:
        name, sep, file = spec.partition("=")
        if not sep or not name:
            p.error(f"--model {spec!r}: expected NAME=FILE")
        if not Path(file).is_file():
            p.error(f"--model {spec!r}: no such file {file}")
        try:
            Scorer(file)  # a damaged, foreign or unreadable model file: the kit's one-line error
        except EdgeAsdError as e:
            p.error(f"--model {spec!r}: {e}")
        models[name] = Path(file)
    if args.minutes <= 0 or args.repeat < 1:
        p.error("--minutes must be > 0 and --repeat >= 1")
    os.sched_setaffinity(0, {args.core})

    seconds = 60 * args.minutes
    clips = load_clips(args.data)
    rows = {name: measure(path, clips, seconds, args.repeat) for name, path in models.items()}
    rows["floor: python + import numpy"] = process_footprint([sys.executable, "-c", "import numpy; print(1)"], clips, 0)
    load = os.getloadavg()
    print(f"family_bench: {args.minutes:g} min of real fan id_00 clips per run, core {args.core}, one thread, best of "
          f"{args.repeat}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs; "
          f"(Nx) = ratio to {next(iter(models))}\n")
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "load": load, "seconds": seconds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
