"""The parity tables of docs/convert/parity.md: every conversion target of each checkpoint against its float
torch model on the held-out real test clips, plus the microcontroller figures of its full-int8 file.

    python examples/convert_parity.py CKPT [CKPT ...] [--data DATA_DIR] [--out docs/convert/parity.md]

Runs, per checkpoint, exactly what a user runs:
    edge-convert CKPT --to all --calibration DATA --out DIR --report REPORT --allow-degraded
    edge-convert CKPT --to c-array --calibration DATA --out DIR/firmware --allow-degraded
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge_asd.datasets.locate import local_data_root

BIN = Path(sys.executable).parent


def run(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{args[0]} failed:\n{proc.stderr[-2000:]}")
    return proc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("docs/convert/parity.md"))
    args = ap.parse_args()
    data = args.data or local_data_root()
    work = Path(tempfile.mkdtemp())
    sections = []
    for ckpt in args.checkpoints:
        t = time.perf_counter()
        report = work / f"{ckpt.stem}.md"
        run("edge-convert", ckpt, "--to", "all", "--calibration", data, "--out", work / ckpt.stem, "--report", report,
            "--allow-degraded", "-q")
        fw = run("edge-convert", ckpt, "--to", "c-array", "--calibration", data, "--out", work / ckpt.stem / "firmware",
                 "--allow-degraded", "-q")
        mcu = [line for line in fw.stdout.splitlines() if line.startswith("microcontroller:")]
        body = report.read_text().split("\n", 1)[1]  # without its title
        sections.append(f"## {ckpt.stem}\n{body}\n" + "".join(f"- {m}\n" for m in mcu))
        print(f"{ckpt.stem}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Parity of the converted files (produced by examples/convert_parity.py)\n\n" + "\n".join(sections))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
