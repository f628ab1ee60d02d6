"""Reproduce the verification experiment of Koizumi et al. 2019 (sec. 4.1, Table 1, Figs. 2-3).

    python examples/ring_verification.py --seeds 3 --out docs/ring_verification

Prints D(p || q_theta) and D(U || q_theta) of RE, SNP and BU (mean and std over seeds) beside the
paper's Table 1, and draws Fig. 2-style maps of q_theta and a Fig. 3-style profile of the anomaly
score along x2 = 0. The experiment itself is ``edge_asd.train.verification``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from edge_asd.train.verification import PAPER_TABLE1, RingConfig, grid_points, run

NAMES = {"re": "RE (eq. 7)", "snp": "SNP (eq. 9)", "bu": "BU (eq. 16)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=RingConfig.updates)
    parser.add_argument("--out", type=Path, default=Path("out/ring_verification"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny network: threads only add overhead
    cfg = RingConfig(updates=args.updates)
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    runs = [run(seed, cfg) for seed in range(args.seeds)]
    table = ["| loss | D(p‖q) ours | D(p‖q) paper | D(U‖q) ours | D(U‖q) paper |", "|---|---|---|---|---|"]
    for loss in ("re", "snp", "bu"):
        kp = np.array([r[loss]["kl_p"] for r in runs])
        ku = np.array([r[loss]["kl_u"] for r in runs])
        paper = PAPER_TABLE1[loss]
        table.append(f"| {NAMES[loss]} | {kp.mean():.3f} ± {kp.std():.3f} | {paper[0]:.3f} | "
                     f"{ku.mean():.3f} ± {ku.std():.3f} | {paper[1]:.3f} |")
    header = (f"Ring verification experiment: {args.seeds} seeds, {cfg.updates} AMSGrad updates, M_u = M_a = "
              f"{cfg.batch}, sigma = lambda = {cfg.sigma:g}, grid {cfg.grid}x{cfg.grid} on [-3, 3]^2 "
              f"({time.perf_counter() - t0:.0f} s). Mean ± std over seeds.")
    text = header + "\n\n" + "\n".join(table) + "\n"
    print(text)
    (args.out / "table1.md").write_text(text)
    plot(runs[0], cfg, args.out)
    print(f"figures: {args.out / 'fig2_q_theta.png'}, {args.out / 'fig3_anomaly_score.png'}")


def plot(result: dict, cfg: RingConfig, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis, _, _ = grid_points(cfg)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), constrained_layout=True)
    circle = np.linspace(0, 2 * np.pi, 200)
    for ax, loss in zip(axes, ("re", "snp", "bu")):
        im = ax.pcolormesh(axis, axis, result[loss]["q"], shading="auto", cmap="viridis")
        ax.plot(2 * np.cos(circle), 2 * np.sin(circle), "w:", lw=1)
        ax.set(title=f"{NAMES[loss]}: q_theta(x)", xlabel="x1", ylabel="x2", aspect="equal")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(out / "fig2_q_theta.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    row = len(axis) // 2  # x2 = 0
    for loss, style in (("re", "g:"), ("snp", "b--"), ("bu", "r-")):
        ax.plot(axis, result[loss]["score"][row], style, label=NAMES[loss])
    for lo, hi in ((-3, -2), (2, 3)):
        ax.axvspan(lo, hi, color="yellow", alpha=0.3)
    ax.set(xlabel="x1 (x2 = 0)", ylabel="anomaly score A(x)", title="Anomaly score; yellow: anomalous area")
    ax.legend()
    fig.savefig(out / "fig3_anomaly_score.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
