"""How uniform are the batch-uniformization weights on real mini-batches? (Koizumi et al. 2019, eqs. 15-16)

    python examples/bu_weights.py --machine-type fan --machine-id id_00 --batches 8

Draws mini-batches of sec. 4.2.1 from one machine ID's normal training clips, standardizes them as the
trainer does, and prints, for several KDE bandwidths sigma, the spread of w_i = 1 / (K(x_i) + eps):
the effective sample size ESS = (sum w)^2 / sum w^2 as a share of M_u (1 = uniform weights, BU = SNP),
the ratio of the largest to the median weight, and the share of the total weight held by the 5 %
largest weights. No model is trained.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from edge_asd.core.batches import BatchBuilder
from edge_asd.core.features import standardize
from edge_asd.core.presets import get_preset
from edge_asd.datasets.layout import assign_mimii_split, scan
from edge_asd.datasets.locate import require_data_root
from edge_asd.firmware_io.audio_file import audio_files
from edge_asd.train.data import band_statistics, load_clips
from edge_asd.train.losses import kde_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None)
    parser.add_argument("--machine-type", default="fan")
    parser.add_argument("--machine-id", default="id_00")
    parser.add_argument("--preset", default="koizumi2019")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--epsilon", type=float, default=1e-6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = args.data or require_data_root()
    cfg = get_preset(args.preset)
    clips = assign_mimii_split(scan(data, machine_type=args.machine_type, machine_id=args.machine_id))
    normals = load_clips([c.path for c in clips if c.split == "train" and c.label == "normal"], cfg)
    mean, std = band_statistics(normals, cfg)
    builder = BatchBuilder(normals, load_clips(audio_files(f"{data}/something_else/train")[::4], cfg), cfg)
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(standardize(builder.draw(rng).x_u, mean, std)) for _ in range(args.batches)]
    d = cfg.dim
    print(f"{args.machine_type} {args.machine_id}, {args.preset} (D = {d}), {args.batches} mini-batches of "
          f"M_u = {np.mean([len(b) for b in batches]):.0f} normal vectors; eps = {args.epsilon:g}")
    print("| sigma | ESS / M_u | max / median weight | weight share of top 5 % |")
    print("|---|---|---|---|")
    for name, sigma in (("1/(2D) (sec. 4.2.2)", 1 / (2 * d)), ("4/(2D)", 4 / (2 * d)), ("16/(2D)", 16 / (2 * d)),
                        ("1/(8D)", 1 / (8 * d))):
        ess, ratio, top = [], [], []
        for x in batches:
            w = kde_weights(x, sigma, args.epsilon).double().numpy()
            ess.append(w.sum() ** 2 / (w**2).sum() / len(w))
            ratio.append(w.max() / np.median(w))
            k = max(1, len(w) // 20)
            top.append(np.sort(w)[-k:].sum() / w.sum())
        print(f"| {name} = {sigma:.3g} | {np.mean(ess):.3f} | {np.mean(ratio):.1f} | {np.mean(top):.3f} |")


if __name__ == "__main__":
    main()
