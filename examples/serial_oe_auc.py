"""Clip AUC / pAUC of serial outlier exposure on one machine ID's test clips (the numbers in docs/serial-oe.md).

    python examples/serial_oe_auc.py ../shared/data fan 00 --seed 0 [--backbone cnn-small] [--updates 300]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from edge_asd.core.metrics import auc_pauc
from edge_asd.datasets.layout import normalize_machine_id, scan
from edge_asd.firmware_io.audio_file import read_audio
from edge_asd.train.serial_oe.fit import SerialOEOptions, fit_serial_oe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("machine_type")
    ap.add_argument("machine_id")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbone", default="cnn-small")
    ap.add_argument("--updates", type=int, default=None)
    ap.add_argument("--inlier-folds", type=int, default=2)
    a = ap.parse_args()
    mid = normalize_machine_id(a.machine_id)
    test = [c for c in scan(a.data_dir, machine_type=a.machine_type) if c.split == "test" and c.machine_id == mid]
    t0 = time.perf_counter()
    fitted = fit_serial_oe(SerialOEOptions(a.data_dir / "machines", a.machine_type, (mid,),
                                           a.data_dir / "something_else" / "train", a.backbone, updates=a.updates,
                                           inlier_folds=a.inlier_folds, seed=a.seed, progress=False))
    scores = [fitted.window_scores(read_audio(c.path, fitted.features.sample_rate)).mean() for c in test]
    auc, pauc = auc_pauc([c.label == "anomaly" for c in test], scores)
    print(f"{a.machine_type} {mid} {a.backbone} seed {a.seed} folds {a.inlier_folds}: clip AUC {auc:.3f} pAUC {pauc:.3f} "
          f"({len(test)} test clips, {time.perf_counter() - t0:.0f} s, updates {fitted.info['config']['updates']})")
    print("normal", np.round(sorted(s for s, c in zip(scores, test) if c.label == "normal"), 1).tolist())
    print("anomaly", np.round(sorted(s for s, c in zip(scores, test) if c.label == "anomaly"), 1).tolist())


if __name__ == "__main__":
    main()
