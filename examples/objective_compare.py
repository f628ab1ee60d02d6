"""Compare two runs of the objective experiment that differ in one setting (e.g. lambda or sigma).

    python examples/objective_compare.py out/objective_sigma4 out/objective --labels "sigma 4/(2D)" "sigma 1/(2D)"

For every model and seed both folders hold, prints the seed-mean AUC (clip score = max frame score) of
each and their paired bootstrap difference on the same clips, as a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_asd.train.objective_report import compare, compare_markdown, read_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="experiment folder A (its runs.jsonl)")
    parser.add_argument("b", type=Path, help="experiment folder B")
    parser.add_argument("--labels", nargs=2, default=("A", "B"))
    parser.add_argument("--pooling", choices=("max", "mean"), default="max")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    runs_a, runs_b = read_runs(args.a / "runs.jsonl"), read_runs(args.b / "runs.jsonl")
    if not runs_a or not runs_b:
        raise SystemExit(f"Error: no finished runs in {args.a if not runs_a else args.b}")
    print(compare_markdown(compare(runs_a, runs_b, args.pooling, args.n_boot), *args.labels), end="")


if __name__ == "__main__":
    main()
