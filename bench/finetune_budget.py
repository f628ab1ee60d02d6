"""Time and peak RSS of `edge-finetune` on 5 minutes of audio, pinned to 2 cores, against references
measured in the same run: `edge-calibrate` on the same audio (one scoring pass of the model in service)
and the bare interpreters (`import numpy, ai_edge_litert` vs `import torch`, the runtime not chosen).

    python bench/finetune_budget.py --model fan_int8.tflite [--cores 0,1] [--minutes 1.5]

Needs /usr/bin/time (GNU time) and taskset (util-linux). Prints one line per measurement and the ratios;
the load average is printed too, because on shared cores it changes every figure.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent


def measure(cmd: list[str], cores: str) -> tuple[float, float, str]:
    """(wall s, peak RSS MiB, stdout) of ``cmd`` under taskset -c ``cores`` and GNU time -v; the CPU
    seconds (user + system) are printed, since on shared cores the wall time mostly measures the others."""
    proc = subprocess.run(["taskset", "-c", cores, "/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd[:2])} failed:\n{proc.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    h, m, s = (float(g or 0) for g in wall.groups())
    rss = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", proc.stderr).group(1)) for k in ("User", "System"))
    print(f"  {Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 and cmd[1] == '-c' else ''}: {cpu:.1f} CPU s", flush=True)
    return 3600 * h + 60 * m + s, rss, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="an int8 .tflite from edge-convert")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--cores", default="0,1")
    ap.add_argument("--minutes", type=float, default=1.25, help="edge-finetune's training time cap")
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()

    from edge_asd.datasets.layout import scan
    from edge_asd.datasets.locate import local_data_root

    root = args.data or local_data_root()
    normals = [c.path for c in scan(root, machine_type="fan", label="normal")]
    files = [normals[i % len(normals)] for i in range(30)]  # 30 x 10 s = 5 min (the local set repeats clips)
    with tempfile.TemporaryDirectory() as tmp:
        model, store = Path(tmp) / "m.tflite", Path(tmp) / "phi.json"
        shutil.copy(args.model, model)
        print(f"load average before: {os.getloadavg()}; cores {args.cores}; {len(files)} clips, 300 s of audio")
        # a time budget, not a calibration: every fan normal of the local set, whatever its machine ID
        same = ["--machine-id", "00", "--store", str(store), "--accept-other-machines", "-q"]
        t_cal, rss_cal, _ = measure([str(BIN / "edge-calibrate"), *map(str, files), "--model", str(model), *same],
                                    args.cores)
        t_ft, rss_ft, out = measure([str(BIN / "edge-finetune"), *map(str, files), "--model", str(model), *same,
                                     "--steps", str(args.steps), "--minutes", str(args.minutes)], args.cores)
        t_np, rss_np, _ = measure([sys.executable, "-c", "import numpy, ai_edge_litert.interpreter"], args.cores)
        t_torch, rss_torch, _ = measure([sys.executable, "-c", "import torch"], args.cores)
    print(f"edge-calibrate (reference, 1 scoring pass): {t_cal:.1f} s, peak RSS {rss_cal:.0f} MiB")
    print(f"edge-finetune: {t_ft:.1f} s, peak RSS {rss_ft:.0f} MiB; {out.strip()}")
    print(f"import numpy + ai_edge_litert: {t_np:.1f} s, {rss_np:.0f} MiB; import torch: {t_torch:.1f} s, {rss_torch:.0f} MiB")
    print(f"ratios: finetune/calibrate time {t_ft / t_cal:.1f}x, RSS {rss_ft / rss_cal:.2f}x; "
          f"torch/numpy import RSS {rss_torch / rss_np:.1f}x; budget: {t_ft:.0f} s of 120 s, {rss_ft:.0f} of 1536 MiB")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
