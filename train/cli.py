"""``edge-train``: train an autoencoder on the normal clips of one machine type."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from edge_asd.core.commands import CONTEXT_SETTINGS, kit_version, setup_logging, user_errors
from edge_asd.core.presets import PRESETS

log = logging.getLogger("edge_asd")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("data_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--machine-type", required=True, help="Machine type folder, e.g. fan.")
@click.option("--machine-id", "machine_ids", multiple=True,
              help="Train on this machine ID (00, id_00, section_00); repeatable. Default: every ID with normal training clips.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="koizumi2019", show_default=True,
              help="Feature preset: koizumi2019 (paper FCN64, D=1344) or dcase2020 (D=640).")
@click.option("--arch", type=click.Choice(["fcn-small", "fcn-large", "dcase2020"]), default="fcn-small", show_default=True,
              help="Sec. 4.2.2: fcn-small H=2, U=128, Z=40; fcn-large H=4, U=512, Z=128. dcase2020: the DCASE 2020 "
                   "baseline AE (128 x 4, Z=8, BatchNorm; use with --preset dcase2020 --loss re).")
@click.option("--loss", type=click.Choice(["bu", "snp", "re"]), default="bu", show_default=True,
              help="bu: batch uniformization (eq. 16); snp: eq. 9; re: reconstruction error (eq. 7).")
@click.option("--something-else", "something_else_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of something-else sounds a for pseudo-anomalies (eq. 8). Default: coloured noise.")
@click.option("--schedule", type=click.Choice(["short", "paper"]), default="short", show_default=True,
              help="Named budget. short: 20 epochs x 50 mini-batches at lr 1e-3 (minutes on a laptop); paper: "
                   "200 x 500 at 1e-4 (sec. 4.2.2, ~4 h on the paper's GPU). Both: lr fixed for the first half, then "
                   "linear decay to lr/100. --epochs, --batches-per-epoch and --lr override it.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs, the unit of validation and early stopping (short: 20, paper: 200).")
@click.option("--batches-per-epoch", type=click.IntRange(min=1), default=None,
              help="Mini-batches (updates) per epoch, one 30-s mixture each (short: 50, paper: 500).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Initial AMSGrad step size (sec. 4.2.2), fixed for half the run, then linear decay to 1/100 (short: 1e-3, paper: 1e-4).")
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True), default=None,
              help="sigma, KDE bandwidth of eq. 15, 1/(squared standardized distance). Default 1/(2D) (sec. 4.2.2), D = input dimension.")
@click.option("--lambda", "lam", default="2M", show_default=True,
              help="lambda, clipping level of eq. 10, in units of the anomaly score A(x): 2M (sec. 4.2.2, M = mel bands), "
                   "2D (sec. 4.1.1; far less tanh saturation with standardized features, see README) or a number.")
@click.option("--epsilon", type=click.FloatRange(min=0, min_open=True), default=1e-6, show_default=True,
              help="epsilon of eq. 16, w_i = 1/(K(x_i) + epsilon), dimensionless.")
@click.option("--kde", type=click.Choice(["frames", "vectors"]), default="frames", show_default=True,
              help="How K(x) of eq. 15 is computed: frames = from the log-mel frames' distances (L times less work, "
                   "batch normalized per mel band); vectors = Gram matrix of the D-dim vectors, normalized per dimension.")
@click.option("--anr-min", default=-30.0, show_default=True, help="Lowest ANR of the pseudo-anomalies a (eq. 8, sec. 4.2.1), dB.")
@click.option("--anr-max", default=10.0, show_default=True, help="Highest ANR of the pseudo-anomalies a (eq. 8, sec. 4.2.1), dB.")
@click.option("--val-fraction", type=click.FloatRange(min=0, max=0.9), default=0.2, show_default=True,
              help="Share of the normal training audio held out for validation: whole clips when there are at least 5, "
                   "else the last part of every clip (time split). 0 = no validation, no early stopping, last weights.")
@click.option("--val-metric", type=click.Choice(["auc", "score"]), default="auc", show_default=True,
              help="Validation criterion, maximised: auc = pseudo-anomaly AUC (held-out normal vectors vs the same audio with "
                   "something-else sounds at -15 to 0 dB ANR), ties to the lower normal score; score = lowest mean A(x) "
                   "of the held-out normal vectors.")
@click.option("--patience", type=click.IntRange(min=0), default=0, show_default=True,
              help="Early stopping: stop after this many epochs without a better validation criterion (0 = never; "
                   "off by default: on MIMII fan the pseudo-anomaly AUC did not track the real AUC, see README).")
@click.option("--keep", type=click.Choice(["auto", "best", "last"]), default="auto", show_default=True,
              help="Which epoch's weights the checkpoint holds: best (validation criterion), last, or auto = best "
                   "with early stopping, else last.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from OUT's .state.pt (written after every epoch), with the same options.")
@click.option("--seed", default=0, show_default=True, help="Seed for the weights, the validation split and the mini-batches.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto = cuda when torch sees a GPU, else cpu.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto = bf16 autocast on CUDA GPUs that support it, else fp16 with a GradScaler; fp32 on the CPU.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch intra-op threads. Default: all cores but one, which prepares the mini-batches.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache of decoded audio and log-mel frames (default: $EDGE_ASD_CACHE_DIR or the user cache dir).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the feature cache.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (.pt); next to it: .log.csv (per update), .epochs.csv, .curves.png, .state.pt.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; only warnings and errors.")
@click.version_option(kit_version(), "--version")
@user_errors
def main(data_dir, machine_type, machine_ids, preset, arch, loss, something_else_dir, schedule, epochs, batches_per_epoch, lr,
         sigma, lam, epsilon, kde, anr_min, anr_max, val_fraction, val_metric, patience, keep, resume, seed, device, precision,
         threads, cache_dir, no_cache, out_path, quiet):
    """Train on the normal training clips of DATA_DIR (DCASE or MIMII layout) and write a checkpoint.

    Mini-batches follow Koizumi et al. 2019 sec. 4.2.1: ten 3-s normal segments, one something-else
    sound mixed in at a random ANR; frames that contain it are the pseudo-anomalies x^(a).
    """
    setup_logging(quiet=quiet)
    import torch

    from edge_asd.datasets.layout import assign_mimii_split, normalize_machine_id, scan
    from edge_asd.core.errors import EdgeAsdError
    from edge_asd.core.features import LogMel
    from edge_asd.core.presets import get_preset
    from edge_asd.firmware_io.audio_file import audio_files

    from edge_asd.core.batches import BatchConfig
    from edge_asd.train.checkpoint import save_checkpoint, write_history_csv
    from edge_asd.train.data import band_statistics, fingerprint, load_clips
    from edge_asd.train.feature_cache import FeatureCache, default_cache_dir
    from edge_asd.train.losses import resolve_lambda
    from edge_asd.train.trainer import SCHEDULES, TrainConfig, train
    from edge_asd.train.validation import MIN_CLIPS_FOR_CLIP_SPLIT, split_normals

    budget = SCHEDULES[schedule]
    epochs = epochs or budget["epochs"]
    batches_per_epoch = batches_per_epoch or budget["batches_per_epoch"]
    lr = lr or budget["lr"]
    if anr_min > anr_max:
        raise EdgeAsdError("--anr-min must not exceed --anr-max")
    features = get_preset(preset)
    try:
        lam = resolve_lambda(lam, features.dim, features.n_mels)
    except ValueError as e:
        raise EdgeAsdError(f"--lambda: {e}; use 2M, 2D or a positive number") from None
    clips = assign_mimii_split(scan(data_dir, machine_type=machine_type))
    wanted = {normalize_machine_id(m) for m in machine_ids}
    normals = [c for c in clips if c.split == "train" and c.label == "normal" and (not wanted or c.machine_id in wanted)]
    if not normals:
        found = sorted({c.machine_id for c in clips if c.split == "train" and c.label == "normal"})
        raise EdgeAsdError(f"no normal training clips of {machine_type} {sorted(wanted) or ''} in {data_dir}; IDs with training clips: {found or 'none'}")
    ids = sorted({c.machine_id for c in normals})
    paths = [c.path for c in normals]
    log.info("training on %d normal clips of %s %s", len(paths), machine_type, ", ".join(ids))
    # one core is left to the thread that prepares the mini-batches
    torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0)) - 1))
    cache = FeatureCache(None if no_cache else (cache_dir or default_cache_dir()))
    normal_audio = load_clips(paths, features, cache)
    if something_else_dir is None:
        log.warning("no --something-else directory: coloured noise stands in for something-else sounds (eq. 8)")
        other = None
    else:
        other_paths = audio_files(something_else_dir)
        if not other_paths:
            raise EdgeAsdError(f"{something_else_dir}: no .wav/.flac files for --something-else")
        other = load_clips(other_paths, features, cache)
        log.info("%d something-else sounds from %s", len(other), something_else_dir)
    fn = LogMel(features)
    mean, std = band_statistics(normal_audio, features, [cache.logmel(p, a, features, fn) for p, a in zip(paths, normal_audio)])
    if cache.root is not None:
        log.info("feature cache %s: %d hits, %d new entries", cache.root, cache.hits, cache.misses)
    cfg = TrainConfig(machine_type=machine_type, machine_ids=ids, preset=preset, arch=arch, loss=loss, epochs=epochs,
                      batches_per_epoch=batches_per_epoch, lr=lr, seed=seed, device=device, sigma=sigma, lam=lam,
                      epsilon=epsilon, batch=BatchConfig(anr_db=(anr_min, anr_max)), precision=precision,
                      val_fraction=val_fraction, patience=patience, keep=keep, val_metric=val_metric, kde=kde)
    state_path = out_path.with_suffix(".state.pt")
    if resume and not state_path.is_file():
        raise EdgeAsdError(f"--resume: no training state {state_path} (it is written after every epoch)")
    try:
        ckpt = train(cfg, features, normal_audio, other, mean, std, progress=not quiet, state_path=state_path, resume=resume)
    except ValueError as e:  # too little audio for a segment or a validation split
        raise EdgeAsdError(f"{e}; use longer clips or --val-fraction 0") from None
    except KeyboardInterrupt:
        saved = f"the state after the last whole epoch is in {state_path}; add --resume to continue" if state_path.is_file() else "nothing was saved"
        raise EdgeAsdError(f"interrupted: {saved}") from None
    trained, held = paths, []
    if val_fraction > 0 and len(paths) >= MIN_CLIPS_FOR_CLIP_SPLIT:  # whole clips held out: the trainer's split,
        trained, held, _ = split_normals(paths, val_fraction, seed)  # redone on the paths (same n, fraction, seed)
    ckpt["training_data"] = fingerprint(trained)  # what the model heard; edge-calibrate warns on these recordings
    ckpt["validation_data"] = fingerprint(held) if held else None  # not trained on: fit for calibrating phi
    ckpt["something_else"] = {"dir": str(something_else_dir) if something_else_dir else None,
                              "n_sounds": len(other) if other else 0}
    ckpt["kit_version"] = kit_version()
    save_checkpoint(ckpt, out_path)
    log_path = out_path.with_suffix(".log.csv")
    write_history_csv(ckpt["history"], log_path)
    write_history_csv(ckpt["epochs"], out_path.with_suffix(".epochs.csv"))
    try:
        from edge_asd.train.plots import write_curves

        write_curves(ckpt, out_path.with_suffix(".curves.png"))
    except ImportError:
        log.warning("matplotlib is not installed: no .curves.png (pip install matplotlib)")
    log.info("training log: %s, %s, %s", log_path, out_path.with_suffix(".epochs.csv").name, out_path.with_suffix(".curves.png").name)
    click.echo(str(out_path))


if __name__ == "__main__":
    main()
