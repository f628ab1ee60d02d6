"""Clip AUC / pAUC of serial outlier exposure on one machine ID's test clips (the numbers in docs/serial-oe.md).

    python examples/serial_oe_auc.py ../shared/data fan 00 --seed 0 [--backbone cnn-small] [--updates 300]
    python examples/serial_oe_auc.py ../shared/data fan 00 --checkpoint fan-soe.pt [--model fan-soe.int8.tflite]

With --checkpoint: the float model of an edge-train --method serial-oe checkpoint (no training); with --model as
well: that model file's window scores through the runtime's Scorer (one window per invoke) beside the float
ones (Spearman over all windows).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from edge_asd.core.metrics import auc_pauc
from edge_asd.core.presets import get_preset
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
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--model", type=Path, default=None)
    a = ap.parse_args()
    mid = normalize_machine_id(a.machine_id)
    test = [c for c in scan(a.data_dir, machine_type=a.machine_type) if c.split == "test" and c.machine_id == mid]
    t0 = time.perf_counter()
    if a.checkpoint:
        checkpoint_scores(a, test)
        return
    fitted = fit_serial_oe(SerialOEOptions(a.data_dir / "machines", a.machine_type, (mid,),
                                           a.data_dir / "something_else" / "train", a.backbone, updates=a.updates,
                                           inlier_folds=a.inlier_folds, seed=a.seed, progress=False))
    scores = [fitted.window_scores(read_audio(c.path, fitted.features.sample_rate)).mean() for c in test]
    auc, pauc = auc_pauc([c.label == "anomaly" for c in test], scores)
    print(f"{a.machine_type} {mid} {a.backbone} seed {a.seed} folds {a.inlier_folds}: clip AUC {auc:.3f} pAUC {pauc:.3f} "
          f"({len(test)} test clips, {time.perf_counter() - t0:.0f} s, updates {fitted.info['config']['updates']})")
    print("normal", np.round(sorted(s for s, c in zip(scores, test) if c.label == "normal"), 1).tolist())
    print("anomaly", np.round(sorted(s for s, c in zip(scores, test) if c.label == "anomaly"), 1).tolist())



def checkpoint_scores(a, test) -> None:
    from scipy.stats import spearmanr

    from edge_asd.core.heads import Head
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.train.checkpoint import load_checkpoint
    from edge_asd.train.serial_oe.data import windows
    from edge_asd.train.serial_oe.fit import restore_embedder, window_scorer

    ckpt = load_checkpoint(a.checkpoint)
    cfg = get_preset("serial-oe")
    mean, std = (np.asarray(ckpt["normalization"][k], np.float32) for k in ("mean", "std"))
    score = window_scorer(restore_embedder(ckpt), Head.from_meta(ckpt["head"]), mean, std, cfg)
    audio = [read_audio(c.path, cfg.sample_rate) for c in test]
    labels = [c.label == "anomaly" for c in test]
    floats = [score(x) for x in audio]
    auc, pauc = auc_pauc(labels, [f.mean() for f in floats])
    print(f"{a.checkpoint.name} float: clip AUC {auc:.3f} pAUC {pauc:.3f} ({len(test)} test clips, mean window score)")
    if a.model:
        scorer = Scorer(a.model)
        conv = []
        for x in audio:
            w = windows(x, cfg, mean, std)
            conv.append(np.concatenate([scorer.score_inputs(w[i:i + 1]) for i in range(len(w))]))
        auc_c, pauc_c = auc_pauc(labels, [c.mean() for c in conv])
        rho = spearmanr(np.concatenate(floats), np.concatenate(conv))[0]
        print(f"{a.model.name}: window-score Spearman vs float {rho:.5f} ({sum(map(len, conv))} windows); "
              f"clip AUC {auc_c:.3f} pAUC {pauc_c:.3f}")


if __name__ == "__main__":
    main()
