"""Does the validation criterion pick the epoch that detects the real anomalies best?

    python examples/validation_tracking.py --machine-type fan --machine-id id_00 --loss bu \\
        --epochs 60 --batches-per-epoch 50 --out out/validation_tracking.csv

Trains one model with a validation split (held-out normal clips plus pseudo-anomalies made from them,
``train.validation``) and, after every epoch, also scores the machine ID's real test clips (AUC and
pAUC at max FPR 0.1, clip score = max frame score, eq. 11). The test clips are never used for any
decision. Writes one CSV row per epoch and prints, for each validation criterion of ``edge-train
--val-metric`` and each patience, the epoch early stopping would keep and its real AUC, beside the
last epoch's and the best possible (oracle) epoch's. The question it answers: can ``--patience`` be on by
default?
"""

from __future__ import annotations

import csv
from pathlib import Path

import click
import numpy as np

from edge_asd.core.commands import script_help, setup_logging, user_errors


def kept_epoch(rows: list[dict], metric: str, patience: int) -> int:
    """The epoch (1-based) edge-train keeps with ``--val-metric metric --patience patience --keep best``."""
    from edge_asd.train.validation import criterion

    best, best_key, bad = 0, None, 0
    for i, row in enumerate(rows):
        key = list(criterion(row, metric))
        if best_key is None or key > best_key:
            best, best_key, bad = i, key, 0
        else:
            bad += 1
            if patience and bad >= patience:
                break
    return best + 1


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=script_help(__doc__))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root (DCASE/MIMII layout). Default: $EDGE_ASD_DATA or ../shared/data.")
@click.option("--machine-type", default="fan", show_default=True)
@click.option("--machine-id", default="id_00", show_default=True)
@click.option("--arch", type=click.Choice(["fcn-small", "fcn-large", "dcase2020"]), default="fcn-small", show_default=True)
@click.option("--loss", type=click.Choice(["re", "snp", "bu"]), default="bu", show_default=True)
@click.option("--epochs", type=click.IntRange(min=2), default=60, show_default=True)
@click.option("--batches-per-epoch", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--lambda", "lam", default="2D", show_default=True)
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("out/validation_tracking.csv"),
              show_default=True)
@user_errors
def main(data, machine_type, machine_id, arch, loss, epochs, batches_per_epoch, lr, lam, val_fraction, seed, threads, out):
    setup_logging()
    import torch

    from edge_asd.core.errors import EdgeAsdError
    from edge_asd.core.machine_id import normalize_machine_id
    from edge_asd.core.metrics import auc_pauc
    from edge_asd.core.presets import get_preset
    from edge_asd.datasets.layout import assign_mimii_split, scan
    from edge_asd.datasets.locate import require_data_root
    from edge_asd.firmware_io.audio_file import audio_files, read_audio
    from edge_asd.train.data import band_statistics
    from edge_asd.train.evaluate import torch_frame_scorer
    from edge_asd.train.experiment import ARCH_PRESET
    from edge_asd.train.trainer import TrainConfig, train

    if threads:
        torch.set_num_threads(threads)
    data = data or require_data_root()
    machine_id = normalize_machine_id(machine_id)
    clips = [c for c in assign_mimii_split(scan(data, machine_type, machine_id))]
    train_paths = [c.path for c in clips if c.split == "train" and c.label == "normal"]
    test = [(c.path, c.label == "anomaly") for c in clips if c.split == "test"]
    if not train_paths or len({y for _, y in test}) < 2:
        raise EdgeAsdError(f"{machine_type} {machine_id}: needs normal training clips and normal + anomalous test clips")
    preset = ARCH_PRESET[arch]
    features = get_preset(preset)
    normals = [read_audio(p, features.sample_rate) for p in train_paths]
    tests = [read_audio(p, features.sample_rate) for p, _ in test]
    labels = np.array([y for _, y in test])
    se_dir = Path(data) / "something_else" / "train"
    others = [read_audio(p, features.sample_rate) for p in audio_files(se_dir)] if se_dir.is_dir() else None
    mean, std = band_statistics(normals, features)
    rows: list[dict] = []

    def on_epoch(row: dict, ae) -> None:
        ae.eval()
        score = torch_frame_scorer(ae, mean, std, features)
        clip_max = np.array([score(x).max() for x in tests])
        ae.train()
        auc, pauc = auc_pauc(labels, clip_max)
        rows.append({**row, "test_auc": auc, "test_pauc": pauc})
        click.echo(f"epoch {row['epoch']:3d}: val AUC {row['val_auc']:.3f}, val normal score {row['val_score_u']:9.0f}, "
                   f"test AUC {auc:.3f}, pAUC {pauc:.3f}", err=True)

    cfg = TrainConfig(machine_type=machine_type, machine_ids=[machine_id], preset=preset, arch=arch, loss=loss,
                      epochs=epochs, batches_per_epoch=batches_per_epoch, lr=lr, seed=seed, lam=lam,
                      val_fraction=val_fraction, device="cpu")
    train(cfg, features, normals, others, mean, std, progress=False, on_epoch=on_epoch)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    test_auc = [r["test_auc"] for r in rows]
    oracle = int(np.argmax(test_auc))
    click.echo(f"\n{machine_type} {machine_id}, {arch} {loss.upper()}, {epochs} x {batches_per_epoch} updates, seed {seed}: "
               f"{len(normals)} train clips (val fraction {val_fraction}), {len(labels)} test clips")
    click.echo(f"  last epoch {len(rows)}: test AUC {test_auc[-1]:.3f}; best possible: epoch {oracle + 1}, {test_auc[oracle]:.3f}")
    for metric in ("auc", "score"):
        for patience in (0, 3, 5, 10):
            e = kept_epoch(rows, metric, patience)
            click.echo(f"  --val-metric {metric:5s} --patience {patience:2d} --keep best: epoch {e:3d}, "
                       f"test AUC {test_auc[e - 1]:.3f}, pAUC {rows[e - 1]['test_pauc']:.3f}")
    click.echo(f"  per-epoch rows: {out}")


if __name__ == "__main__":
    main()
