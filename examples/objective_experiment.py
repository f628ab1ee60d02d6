"""The objective experiment of Koizumi et al. 2019 (sec. 4.2, Fig. 4) on real machine recordings.

    python examples/objective_experiment.py --machine-types fan --ids id_00 --archs fcn-small,dcase2020 \\
        --updates 500 --jobs 2 --out out/objective --report-dir docs/objective

Trains RE, SNP and BU (and the DCASE 2020 baseline AE with RE) with the same number of updates on every
machine type and ID of the data that has normal training clips, for each seed, and scores:

* the real test clips (AUC / pAUC at max FPR 0.1, clip score = max frame score, eq. 11, and the mean);
* paper-style mixtures: the paper's anomalous sounds (DCASE 2016 office events) mixed into the held-out
  normal clips at ANR -10, -15 and -20 dB, on whole clips and on 2-s segments;
* on every test set, the loudness reference: the same AUC / pAUC with each item's RMS level (dBFS) as
  the score, one row per machine ID in every table (at ANR -15 / -20 dB a mixture barely changes the
  level, so there the AUC measures the detector, not a level meter).

Audio is decoded and test features computed once per machine ID; every model meets the same mixtures.
Each finished run is one JSON line in OUT/runs.jsonl (with its per-clip scores): a rerun with the same
settings skips finished runs, so an interrupted experiment resumes. ``--report-only`` builds the
Markdown tables and the plot from that file. The same command runs on a full DCASE 2020 Task 2 or
MIMII download (``edge-data fetch``; ``--data``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import click

from edge_asd.core.commands import csv_list, script_help, setup_logging, user_errors
from edge_asd.core.errors import EdgeAsdError
from edge_asd.train.experiment import check_settings, evenly, find_machines, item_levels, sound_dir

log = logging.getLogger("edge_asd")
RUNS = "runs.jsonl"
SETTINGS = "settings.json"
_STATE: dict = {}  # the prepared machine IDs, inherited by forked workers


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=script_help(__doc__))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root (DCASE/MIMII layout). Default: $EDGE_ASD_DATA or ../shared/data.")
@click.option("--machine-types", callback=csv_list(), default=None, help="Comma-separated machine types (default: all).")
@click.option("--ids", callback=csv_list(), default=None, help="Comma-separated machine IDs, e.g. id_00,section_00 (default: all).")
@click.option("--losses", callback=csv_list(), default="re,snp,bu", show_default=True)
@click.option("--archs", callback=csv_list(), default="fcn-small,fcn-large,dcase2020", show_default=True,
              help="fcn-small / fcn-large (sec. 4.2.2, koizumi2019 features) and dcase2020 (the DCASE 2020 baseline "
                   "AE on its own features, trained with RE only).")
@click.option("--seeds", callback=csv_list(int), default="0,1,2", show_default=True)
@click.option("--updates", type=click.IntRange(min=1), default=1000, show_default=True,
              help="AMSGrad updates (mini-batches) per run, identical for every run.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--lambda", "lam", default="2D", show_default=True, help="lambda of eq. 10: 2M, 2D or a number.")
@click.option("--val-fraction", type=click.FloatRange(min=0, max=0.9), default=0.0, show_default=True,
              help="Hold out this share of the normal training clips for validation, as edge-train --val-fraction "
                   "does (0: train on all of them, the last weights).")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --val-fraction: the updates split into this many epochs, the unit of validation and early "
                   "stopping (the lr schedule depends only on the total).")
@click.option("--patience", type=click.IntRange(min=0), default=0, show_default=True,
              help="With --val-fraction: early stopping on the pseudo-anomaly AUC after this many epochs without a "
                   "better one, as edge-train --patience (0 = never).")
@click.option("--keep", type=click.Choice(["auto", "best", "last"]), default="auto", show_default=True,
              help="With --val-fraction: the weights scored, as edge-train --keep.")
@click.option("--sigma", type=float, default=None, help="KDE bandwidth of eq. 15 (default 1/(2D)).")
@click.option("--epsilon", type=float, default=1e-6, show_default=True, help="epsilon of eq. 16.")
@click.option("--anr-train", nargs=2, type=float, default=(-30.0, 10.0), show_default=True,
              help="ANR range of the training pseudo-anomalies, dB.")
@click.option("--segment-s", type=click.FloatRange(min=0.5), default=2.0, show_default=True,
              help="Segment length of the segment-level paper-style test, s.")
@click.option("--something-else", "something_else_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Something-else sounds for training (eq. 8). Default: DATA/something_else/train, else the kit's.")
@click.option("--anomaly-sounds", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Anomalous sounds for the paper-style mixtures. Default: DATA/something_else/test (the paper's "
                   "DCASE 2016 clips), else the kit's; none found: that part is skipped.")
@click.option("--max-anomaly-sounds", type=click.IntRange(min=1), default=None,
              help="Use at most this many anomalous sounds, evenly spaced over the sorted list (quick checks).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Runs in parallel (processes).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch threads per job (default: cores / jobs).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/objective"), show_default=True)
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where objective.md and objective.png go (default: --out).")
@click.option("--report-only", is_flag=True, help="Only build the table and plot from OUT/runs.jsonl.")
@click.option("--n-boot", type=click.IntRange(min=100), default=1000, show_default=True, help="Bootstrap replicates.")
@click.option("-q", "--quiet", is_flag=True)
@user_errors
def main(data, machine_types, ids, losses, archs, seeds, updates, lr, lam, val_fraction, epochs, patience, keep, sigma,
         epsilon, anr_train, segment_s, something_else_dir, anomaly_sounds, max_anomaly_sounds, device, jobs, threads, out, report_dir, report_only, n_boot, quiet):
    setup_logging(quiet=quiet)
    report_dir = report_dir or out
    if report_only:
        report(out, report_dir, n_boot)
        return
    from edge_asd.core.machine_id import normalize_machine_id
    from edge_asd.train.experiment import ARCH_PRESET
    from edge_asd.train.losses import LOSSES, resolve_lambda

    bad = [a for a in archs if a not in ARCH_PRESET] + [x for x in losses if x not in LOSSES]
    if bad:
        raise EdgeAsdError(f"unknown arch or loss {bad}; archs: {', '.join(ARCH_PRESET)}; losses: re, snp, bu")
    try:
        resolve_lambda(lam, 1344, 64)
    except ValueError as e:
        raise EdgeAsdError(f"--lambda: {e}") from None
    settings = {"updates": updates, "lr": lr, "lambda": lam, "sigma": sigma, "epsilon": epsilon,
                "anr_train_db": list(anr_train), "segment_s": segment_s, "mixture_seed": 0,
                "max_anomaly_sounds": max_anomaly_sounds}
    if val_fraction > 0:  # only then: the settings of earlier output folders stay comparable
        if updates % epochs:
            raise EdgeAsdError(f"--updates {updates} is not a multiple of --epochs {epochs}")
        settings.update(val_fraction=val_fraction, epochs=epochs, patience=patience, keep=keep)
    elif epochs != 1 or patience or keep != "auto":
        raise EdgeAsdError("--epochs, --patience and --keep act only on a validation split: add --val-fraction")
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out / SETTINGS, settings)

    data, machines = find_machines(data, machine_types, ids and [normalize_machine_id(i) for i in ids])
    done = {r["key"] for r in read_jsonl(out / RUNS)}
    specs = plan(machines, archs, losses, seeds)
    todo = [s for s in specs if s.key not in done]
    log.info("%d runs in the grid, %d already finished in %s, %d to do", len(specs), len(specs) - len(todo), out / RUNS,
             len(todo))
    if todo:
        prepare_all(data, machines, {(s.machine_type, s.machine_id) for s in todo}, {s.preset for s in todo},
                    something_else_dir, anomaly_sounds, max_anomaly_sounds, segment_s, out)
        failed = execute(todo, settings, device, jobs, threads or max(1, (os.cpu_count() or 1) // jobs), out / RUNS)
    else:
        failed = 0
    report(out, report_dir, n_boot)
    if failed:
        raise EdgeAsdError(f"{failed} run(s) failed (messages above); rerun the same command to retry them")


def validation_text(settings: dict, runs: list[dict]) -> str:
    """The report header's words on the validation split (empty without one)."""
    if not settings.get("val_fraction"):
        return ""
    kept = sorted({r["validation"]["kept_epoch"] for r in runs if r.get("validation")})
    return (f"validation split {settings['val_fraction']} of the normal training clips, {settings['epochs']} epochs, "
            f"patience {settings['patience']}, keep {settings['keep']} (kept epochs {kept}); ")


def read_jsonl(path: Path) -> list[dict]:
    from edge_asd.train.objective_report import read_runs

    return read_runs(path)


def plan(machines, archs, losses, seeds):
    """Every run, seed-major (an interrupted grid has all conditions of the first seeds)."""
    from edge_asd.train.experiment import BASELINE_ARCH, RunSpec

    specs = []
    for seed in seeds:
        for mtype, mid in machines:
            for arch in archs:
                for loss in (["re"] if arch == BASELINE_ARCH else losses):
                    specs.append(RunSpec(mtype, mid, arch, loss, seed))
    return list(dict.fromkeys(specs))


def prepare_all(data, machines, wanted, presets, something_else_dir, anomaly_dir, max_sounds, segment_s, out) -> None:
    from edge_asd.firmware_io.audio_file import audio_files
    from edge_asd.train.experiment import describe, item_names, load_audio, prepare
    from edge_asd.train.mixtures import anomaly_sound_files

    se_dir = sound_dir(something_else_dir, data, "train")
    if se_dir is None:
        log.warning("no something-else sounds found: coloured noise stands in for them in training (eq. 8)")
        _STATE["something_else"] = None
    else:
        _STATE["something_else"] = list(load_audio(audio_files(se_dir)).values())
        log.info("%d something-else sounds for training from %s", len(_STATE["something_else"]), se_dir)
    sounds = None
    an_dir = sound_dir(anomaly_dir, data, "test")
    if an_dir is None:
        log.warning("no anomalous sounds (--anomaly-sounds, DATA/something_else/test): paper-style mixtures skipped")
    else:
        try:
            sounds = load_audio(evenly(anomaly_sound_files(an_dir), max_sounds))
            log.info("%d anomalous sounds for the paper-style mixtures from %s", len(sounds), an_dir)
        except FileNotFoundError as e:
            log.warning("%s: paper-style mixtures skipped", e)
    _STATE["prepared"], _STATE["levels"] = {}, {}
    for key in sorted(wanted):
        t0 = time.perf_counter()
        paths = machines[key]
        normal, anomaly = load_audio(paths["test_normal"]), load_audio(paths["test_anomaly"])
        prep = prepare(*key, list(load_audio(paths["train"]).values()), normal, anomaly, sounds, sorted(presets),
                       segment_s=segment_s)
        _STATE["prepared"][key] = prep
        _STATE["levels"][key] = item_levels(prep, normal, anomaly, sounds, segment_s)
        (out / f"items_{key[0]}_{key[1]}.json").write_text(json.dumps(item_names(prep)) + "\n")
        log.info("%s (prepared in %.1f s)", describe(prep), time.perf_counter() - t0)
        if "real" not in prep.sets:
            log.info("%s %s: no anomalous test clip with a normal one: only paper-style mixtures", *key)


def _run(spec, settings, device) -> dict:
    from edge_asd.train.experiment import run_one

    key = (spec.machine_type, spec.machine_id)
    result = run_one(spec, _STATE["prepared"][key], _STATE["something_else"], settings, device)
    for name, levels in _STATE["levels"][key].items():  # the loudness reference's scores travel with the run
        result["sets"][name]["level_dbfs"] = levels
    return result


def _headline(result: dict) -> str:
    import numpy as np

    from edge_asd.train.bootstrap import weighted_auc_pauc

    parts = []
    for name in ("real", "segment_-15dB"):
        if name in result["sets"]:
            s = result["sets"][name]
            y = np.asarray(s["labels"], bool)
            auc, _ = weighted_auc_pauc(y, np.asarray(s["max"]), np.ones((1, (~y).sum())), np.ones((1, y.sum())))
            parts.append(f"{name} AUC {auc[0]:.3f}")
    return ", ".join(parts)


def execute(todo, settings, device, jobs, threads, runs_path: Path) -> int:
    """Run ``todo`` (:func:`edge_asd.train.grid.run_grid`); each result is a line of ``runs_path`` as soon as it
    finishes. Returns the number of failures."""
    from edge_asd.train.grid import run_grid

    t0 = time.perf_counter()

    def done(i, spec, result):
        print(f"[{i}/{len(todo)}] {spec.key}: {result['train_seconds']:.0f} s train, {_headline(result)} "
              f"({time.perf_counter() - t0:.0f} s elapsed)", file=sys.stderr, flush=True)

    return run_grid(todo, _run, (settings, device), jobs, threads, runs_path, done)[1]


def report(out: Path, report_dir: Path, n_boot: int) -> None:
    from edge_asd.train.objective_report import loudness_rows, markdown, paired, plot, summarize

    runs = read_jsonl(out / RUNS)
    if not runs:
        raise EdgeAsdError(f"{out / RUNS}: no finished runs to report")
    settings = json.loads((out / SETTINGS).read_text()) if (out / SETTINGS).is_file() else {}
    t0 = time.perf_counter()
    rows = summarize(runs, n_boot)
    pairs = paired(runs, n_boot=n_boot)
    loudness = loudness_rows(runs, n_boot)
    machines = sorted({f"{r['machine_type']} {r['machine_id']}" for r in runs})
    without = sorted(set(machines) - {f"{r['machine_type']} {r['machine_id']}" for r in loudness})
    if without:
        log.warning("%s: runs recorded without clip levels, so no loudness-reference row; a new --out records them",
                    ", ".join(without))
    devices = sorted({r["device"] for r in runs})
    train_s = sum(r["train_seconds"] for r in runs)
    header = (f"# Objective experiment (Koizumi et al. 2019, sec. 4.2 / Fig. 4) on real recordings\n\n"
              f"{len(runs)} runs; machines: {', '.join(machines)}; {settings.get('updates', '?')} updates per run, "
              f"lr {settings.get('lr', '?')}, lambda {settings.get('lambda', '?')}, sigma "
              f"{settings.get('sigma') or '1/(2D)'}, epsilon {settings.get('epsilon', '?')}, training ANR "
              f"{settings.get('anr_train_db', '?')} dB, segments {settings.get('segment_s', '?')} s; {validation_text(settings, runs)}"
              f"device {', '.join(devices)}; "
              f"total training time {train_s / 60:.1f} min. Generated by `examples/objective_experiment.py`.")
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "objective.md").write_text(markdown(rows, pairs, header, loudness))
    (report_dir / "objective_rows.json").write_text(
        json.dumps({"rows": rows, "paired": pairs, "loudness_reference": loudness}, indent=0) + "\n")
    plot(rows, report_dir / "objective.png")
    log.info("report: %s, %s (%.0f s)", report_dir / "objective.md", report_dir / "objective.png", time.perf_counter() - t0)
    click.echo(str(report_dir / "objective.md"))


if __name__ == "__main__":
    main()
