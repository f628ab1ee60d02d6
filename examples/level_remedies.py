"""Scores that follow the machine, not the microphone gain: two remedies, measured against the baseline.

    nice python examples/level_remedies.py --ids id_00 --updates 600 --seeds 0 --out out/level_remedies.json

For every machine ID with normal training clips and every configuration

* ``baseline``: edge-train's features and batches (koizumi2019, fcn-small, BU, lambda D);
* ``gain1``, ``gain3``: gain augmentation, every normal 3-s segment of a mini-batch scaled by a random
  gain uniform in [-G, +G] dB, G = 1 or 3 (``edge-train --gain-augment-db G``);
* ``context``: each context vector minus the mean of its log-mel values (``edge-train --level-norm context``);
* ``gain3+context``: both;

a model is trained with the trainer's API (``--updates`` AMSGrad updates, identical for all) and scored
with the float model in torch:

(a) the gain sweep of ``examples/gain_sweep.py`` on the normal test clips (-6 ... +6 dB): the clips whose
    max frame score reaches phi, phi set by edge-calibrate's default rule (1.1 x the largest clip max
    score) on the normal training clips held out of training (20 % of them, as ``examples/demo.py`` keeps
    out, when there are at least 20), else on the training clips themselves (the local fan's 10);
(b) clip AUC / pAUC (max FPR 0.1) of the real anomalous test clips and of the paper-style ANR mixtures at
    -10 / -15 / -20 dB (``train/experiment.py``: the same items and mixtures as
    ``examples/objective_experiment.py``), with 95 % bootstrap intervals over clips, beside the loudness
    reference (each item's RMS level as its score).

A Markdown table goes to stdout, every figure (per-clip scores included) to ``--out`` as JSON. Runs
unchanged on a full DCASE 2020 Task 2 or MIMII download (``--data``). Results: docs/level.md.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import click
import numpy as np
from gain_sweep import GAINS_DB, sweep

from edge_asd.core.commands import csv_list, script_help, setup_logging, user_errors
from edge_asd.core.errors import EdgeAsdError
from edge_asd.train.experiment import evenly, find_machines, item_levels, sound_dir
from edge_asd.train.grid import run_grid

log = logging.getLogger("edge_asd")

CONFIGS = {"baseline": (0.0, "none"), "gain1": (1.0, "none"), "gain3": (3.0, "none"), "context": (0.0, "context"),
           "gain3+context": (3.0, "context")}
"""Configuration -> (gain augmentation G in dB, level_norm)."""
PRESET = "koizumi2019"
HOLD_OUT_MIN_CLIPS = 20
"""With at least this many normal training clips, 20 % are held out and phi is set on them (examples/demo.py)."""
TARGET_DB = 1.0
"""Issue 14, sec. 2: a gain change within +-1 dB raises no alarm ..."""
TARGET_AUC_DROP = 0.02
"""... while the AUC on the ANR mixtures stays within 2 points of the baseline's."""
_STATE: dict = {}  # prepared machine IDs, inherited by forked workers


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=script_help(__doc__))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root (DCASE/MIMII layout). Default: $EDGE_ASD_DATA or ../shared/data.")
@click.option("--machine-types", callback=csv_list(), default=None, help="Comma-separated machine types (default: all).")
@click.option("--ids", callback=csv_list(), default=None, help="Comma-separated machine IDs, e.g. id_00 (default: all).")
@click.option("--configs", callback=csv_list(), default=",".join(CONFIGS), show_default=True,
              help="Configurations to train.")
@click.option("--seeds", callback=csv_list(int), default="0", show_default=True)
@click.option("--updates", type=click.IntRange(min=1), default=600, show_default=True,
              help="AMSGrad updates (mini-batches) per model, identical for every model.")
@click.option("--lambda", "lam", default="D", show_default=True, help="lambda of eq. 10 (edge-train's default).")
@click.option("--max-anomaly-sounds", type=click.IntRange(min=1), default=None,
              help="Mix at most this many of the paper's anomalous sounds, evenly spaced (quick checks).")
@click.option("--segment-s", type=click.FloatRange(min=0.5), default=2.0, show_default=True,
              help="Segment length of the segment-level mixtures, s.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Models trained in parallel.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch threads per job (default: cores / jobs).")
@click.option("--n-boot", type=click.IntRange(min=100), default=1000, show_default=True, help="Bootstrap replicates.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("out/level_remedies.json"),
              show_default=True, help="JSON with every figure.")
@click.option("-q", "--quiet", is_flag=True)
@user_errors
def main(data, machine_types, ids, configs, seeds, updates, lam, max_anomaly_sounds, segment_s, jobs, threads, n_boot,
         out, quiet):
    setup_logging(quiet=quiet)
    from edge_asd.core.machine_id import normalize_machine_id

    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise EdgeAsdError(f"unknown configuration(s) {bad}; known: {', '.join(CONFIGS)}")
    data, machines = find_machines(data, machine_types, ids and [normalize_machine_id(i) for i in ids])
    settings = {"updates": updates, "lambda": lam, "segment_s": segment_s, "max_anomaly_sounds": max_anomaly_sounds}
    runs_path = out.with_suffix(".runs.jsonl")  # one line per finished model: a rerun skips those
    runs = [r for r in read_runs(runs_path) if r["settings"] == settings]
    done = {(r["machine_type"], r["machine_id"], r["config"], r["seed"]) for r in runs}
    tasks = [(key, c, s) for s in seeds for c in configs for key in machines if (*key, c, s) not in done]
    log.info("%d models to train, %d finished in %s", len(tasks), len(done), runs_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if tasks:
        prepare_all(data, machines, max_anomaly_sounds, segment_s, {CONFIGS[c][1] for c in configs})
    finished, failed = run_grid(tasks, _run, (settings,), jobs, threads or max(1, (os.cpu_count() or 1) // jobs), runs_path)
    if failed:
        raise EdgeAsdError(f"{failed} model(s) failed (messages above); rerun the same command to retry them")
    runs += finished
    runs = [r for r in runs if r["config"] in configs and r["seed"] in seeds and (r["machine_type"], r["machine_id"]) in machines]
    doc = {"settings": settings, "configs": {c: dict(zip(("gain_augment_db", "level_norm"), CONFIGS[c])) for c in configs},
           "gains_db": list(GAINS_DB), "runs": runs, "summary": summarize(runs, n_boot)}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    click.echo(markdown(doc["summary"], configs))
    log.info("figures: %s", out)


def prepare_all(data: Path, machines: dict, max_sounds: int | None, segment_s: float, level_norms: set[str]) -> None:
    """Decode every machine ID's audio once; test features once per level_norm (train.experiment.prepare)."""
    from edge_asd.firmware_io.audio_file import audio_files
    from edge_asd.train.experiment import describe, load_audio, prepare
    from edge_asd.train.mixtures import anomaly_sound_files

    se_dir = sound_dir(None, data, "train")
    _STATE["something_else"] = list(load_audio(audio_files(se_dir)).values()) if se_dir else None
    an_dir = sound_dir(None, data, "test")
    sounds = load_audio(evenly(anomaly_sound_files(an_dir), max_sounds)) if an_dir else None
    if sounds is None:
        log.warning("no anomalous sounds (DATA/something_else/test): no ANR mixtures")
    configs = {norm: prep_config(norm) for norm in sorted(level_norms)}
    _STATE["prepared"], _STATE["levels"], _STATE["test_normal"] = {}, {}, {}
    for key, paths in machines.items():
        normal, anomaly = load_audio(paths["test_normal"]), load_audio(paths["test_anomaly"])
        prep = prepare(*key, list(load_audio(paths["train"]).values()), normal, anomaly, sounds, configs,
                       segment_s=segment_s)
        _STATE["prepared"][key] = prep
        _STATE["levels"][key] = item_levels(prep, normal, anomaly, sounds, segment_s)
        _STATE["test_normal"][key] = list(normal.values())
        log.info("%s", describe(prep))


def run(key: tuple[str, str], config: str, seed: int, settings: dict) -> dict:
    """Train one model, set phi, sweep the gains and score every test set: a JSON-able dict."""
    import torch

    from edge_asd.core.batches import BatchConfig
    from edge_asd.core.features import LogMel, logmel
    from edge_asd.edge.calibrate.rules import DEFAULT_MARGIN
    from edge_asd.train.checkpoint import restore
    from edge_asd.train.experiment import frame_scorer, score_items
    from edge_asd.train.trainer import TrainConfig, train
    from edge_asd.train.validation import held_out_clips

    gain_db, norm = CONFIGS[config]
    prep = _STATE["prepared"][key]
    feats = prep.features[norm]
    cfg = prep_config(norm)
    clips = prep.train_audio
    held = held_out_clips(len(clips), 0.2, seed) if len(clips) >= HOLD_OUT_MIN_CLIPS else set()
    trained = [c for i, c in enumerate(clips) if i not in held]
    phi_clips = [c for i, c in enumerate(clips) if i in held] or trained
    tcfg = TrainConfig(machine_type=key[0], machine_ids=[key[1]], preset=PRESET, epochs=1,
                       batches_per_epoch=settings["updates"], lr=1e-3, seed=seed, device="cpu", lam=settings["lambda"],
                       batch=BatchConfig(gain_db=gain_db))
    t0 = time.perf_counter()
    ckpt = train(tcfg, cfg, trained, _STATE["something_else"], feats["mean"], feats["std"], progress=False)
    ae = restore(ckpt)[0].eval()
    scorer = frame_scorer(ae, feats["mean"], feats["std"], cfg, torch.device("cpu"))
    fn = LogMel(cfg)

    def score_audio(samples: np.ndarray) -> np.ndarray:
        return scorer([logmel(samples, cfg, fn)])[0]

    phi = DEFAULT_MARGIN * max(float(score_audio(c).max()) for c in phi_clips)
    rows = sweep(score_audio, _STATE["test_normal"][key], GAINS_DB, phi)
    scores = score_items(prep, norm, scorer)
    sets = {}
    for name, ts in prep.sets.items():
        idx = np.asarray(ts.items)
        sets[name] = {"labels": ts.labels, "max": [float(f"{v:.6g}") for v in scores["max"][idx]],
                      "level_dbfs": _STATE["levels"][key][name]}
    log.info("%s %s %s seed %d: phi %.1f, %.0f s", *key, config, seed, phi, time.perf_counter() - t0)
    return {"machine_type": key[0], "machine_id": key[1], "config": config, "seed": seed,
            "phi_on": "held-out training clips" if held else "training clips", "n_phi_clips": len(phi_clips),
            "n_trained_clips": len(trained), "phi": phi, "train_seconds": round(ckpt["train_seconds"], 1),
            "gains": [asdict(r) for r in rows], "sets": sets}


def prep_config(norm: str):
    """The koizumi2019 preset with ``level_norm`` = ``norm``."""
    from edge_asd.core.presets import get_preset

    return replace(get_preset(PRESET), level_norm=norm)


def _run(task, settings):
    key, config, seed = task
    return {**run(key, config, seed, settings), "settings": settings, "key": f"{key[0]}/{key[1]}/{config}/{seed}"}


def read_runs(path: Path) -> list[dict]:
    from edge_asd.train.objective_report import read_runs as read_lines

    return read_lines(path)


def summarize(runs: list[dict], n_boot: int) -> list[dict]:
    """Per machine ID and configuration (seeds pooled): false alarms per gain, AUC / pAUC per test set with
    95 % bootstrap CIs of the seed mean, the loudness reference, and whether the target holds."""
    from edge_asd.core.loudness import loudness_reference
    from edge_asd.train.bootstrap import auc_ci

    out = []
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["machine_type"], r["machine_id"], r["config"]), []).append(r)
    for (mtype, mid, config), seeds in groups.items():
        n_clips = len(seeds[0]["gains"][0]["max_scores"])
        alarms = {g["gain_db"]: 0 for g in seeds[0]["gains"]}
        for r in seeds:
            for g in r["gains"]:
                alarms[g["gain_db"]] += g["n_over_phi"]
        sets = {}
        for name, s in seeds[0]["sets"].items():
            y = np.asarray(s["labels"], bool)
            auc, pauc = auc_ci(y, np.array([r["sets"][name]["max"] for r in seeds]), n_boot=n_boot)
            l_auc, l_pauc = loudness_reference(y, s["level_dbfs"])
            ci_level, _ = auc_ci(y, np.asarray(s["level_dbfs"], np.float64), n_boot=n_boot)
            sets[name] = {"n_normal": int((~y).sum()), "n_anomalous": int(y.sum()), "auc": auc.value,
                          "auc_ci": [auc.low, auc.high], "pauc": pauc.value, "pauc_ci": [pauc.low, pauc.high],
                          "level_auc": l_auc, "level_auc_ci": [ci_level.low, ci_level.high], "level_pauc": l_pauc}
        out.append({"machine_type": mtype, "machine_id": mid, "config": config, "n_seeds": len(seeds),
                    "n_clips": n_clips, "phi_on": seeds[0]["phi_on"], "phi": [r["phi"] for r in seeds],
                    "alarms": {f"{g:+g}": n for g, n in alarms.items()},
                    "raised_within_1db": sum(raised_by_gain(r, TARGET_DB) for r in seeds), "sets": sets,
                    "mixture_auc": _mixture_auc(sets)})
    for row in out:  # the target is relative to the baseline of the same machine ID
        base = next((b for b in out if b["config"] == "baseline" and b["machine_id"] == row["machine_id"]
                     and b["machine_type"] == row["machine_type"]), None)
        quiet = row["raised_within_1db"] == 0
        drop = None if base is None or row["mixture_auc"] is None else base["mixture_auc"] - row["mixture_auc"]
        row["mixture_auc_drop"] = drop
        row["target_met"] = quiet and drop is not None and drop <= TARGET_AUC_DROP
    return out


def raised_by_gain(run: dict, max_db: float) -> int:
    """Normal clips of one run that reach phi at some gain within +-max_db dB but not at 0 dB: the alarms
    the gain change raises (a clip over phi at 0 dB already alarms without it)."""
    rows = {g["gain_db"]: g["max_scores"] for g in run["gains"]}
    at_zero = [m >= run["phi"] for m in rows[0.0]]
    near = [g for g in rows if g != 0.0 and abs(g) <= max_db]
    return sum(not z and any(rows[g][i] >= run["phi"] for g in near) for i, z in enumerate(at_zero))


def _mixture_auc(sets: dict) -> float | None:
    """Mean AUC of the 2-s segment mixtures at -10, -15 and -20 dB (the target's 'AUC on the ANR mixtures')."""
    names = [n for n in sets if n.startswith("segment_")]
    return float(np.mean([sets[n]["auc"] for n in names])) if names else None


def markdown(summary: list[dict], configs: list[str]) -> str:
    """Per machine ID: the gain sweep (normal clips >= phi per gain) and the AUC table with the loudness reference."""
    lines = []
    for mtype, mid in dict.fromkeys((r["machine_type"], r["machine_id"]) for r in summary):
        rows = sorted((r for r in summary if (r["machine_type"], r["machine_id"]) == (mtype, mid)),
                      key=lambda r: configs.index(r["config"]))
        gains = list(rows[0]["alarms"])
        n = rows[0]["n_clips"] * rows[0]["n_seeds"]
        lines += [f"### {mtype} {mid}", "", f"Normal test clips whose max frame score reaches phi (of {n}; phi = 1.1 x the "
                  f"largest clip max on the {rows[0]['phi_on']}; float model):", "",
                  "| config | phi | " + " | ".join(f"{g} dB" for g in gains) + " | raised by a gain within +-1 dB |",
                  "|---|---|" + "---|" * (len(gains) + 1)]
        for r in rows:
            phi = " / ".join(f"{p:.0f}" for p in r["phi"])
            lines.append(f"| {r['config']} | {phi} | " + " | ".join(str(r["alarms"][g]) for g in gains)
                         + f" | {r['raised_within_1db']} |")
        sets = list(rows[0]["sets"])
        lines += ["", "Clip AUC [95 % bootstrap CI over clips] (clip score = max frame score); mixtures: mean of the "
                  "three segment AUCs and its change from the baseline:", "",
                  "| config | " + " | ".join(sets) + " | segment mean | change |", "|---|" + "---|" * (len(sets) + 2)]
        counts = rows[0]["sets"]
        lines.append("| clips (normal / anomalous) | " + " | ".join(
            f"{counts[s]['n_normal']} / {counts[s]['n_anomalous']}" for s in sets) + " | | |")
        lines.append("| loudness reference | " + " | ".join(
            f"{counts[s]['level_auc']:.3f} [{counts[s]['level_auc_ci'][0]:.2f}, {counts[s]['level_auc_ci'][1]:.2f}]"
            for s in sets) + " | | |")
        for r in rows:
            cells = [f"{r['sets'][s]['auc']:.3f} [{r['sets'][s]['auc_ci'][0]:.2f}, {r['sets'][s]['auc_ci'][1]:.2f}]"
                     for s in sets]
            mix = "–" if r["mixture_auc"] is None else f"{r['mixture_auc']:.3f}"
            drop = "–" if r["mixture_auc_drop"] is None else f"{0.0 - r['mixture_auc_drop']:+.3f}"
            lines.append(f"| {r['config']} | " + " | ".join(cells) + f" | {mix} | {drop} |")
        met = [r["config"] for r in rows if r["target_met"]]
        lines += ["", f"Target (no alarm raised by a gain within +-{TARGET_DB:g} dB, segment-mixture AUC at most "
                  f"{TARGET_AUC_DROP:g} below the baseline's): met by {', '.join(met) or 'none'}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
