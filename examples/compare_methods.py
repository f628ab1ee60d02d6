"""Compare anomaly detectors on the same clips: the kit's autoencoders, the new families and the loudness reference.

    python examples/compare_methods.py --seeds 0,1,2 --budget short
    python examples/compare_methods.py --few-shot 10 --draws 5 --methods bu,serial-oe
    python examples/compare_methods.py --quick --budget smoke      # CI-sized

Methods (``--methods``, edge_asd.train.compare): re, snp, bu (fcn-small, Koizumi et al. 2019), dcase2020
(the DCASE 2020 Task 2 baseline AE), serial-oe and transfer-metric (their modules' ``fit_score`` hooks,
transfer-metric/<name> for a comparator ``fit_score_<name>``). The loudness reference, each clip's RMS
level as the anomaly score, is in every table. A method whose module is not installed is listed as not
available.

Protocol: every machine ID of the data with normal training clips (found in the folder, DCASE 2020 /
MIMII layout), the same split for every method and seed; test sets: the ID's test clips ("real") and
the paper-style mixtures (sec. 4.2: the anomalous sounds of something_else/test mixed into the ID's
normal test clips at ANR -10 / -15 / -20 dB, plan seed 0, written once as 16-bit WAV under
OUT/mixtures). Clip score = mean of the window scores. AUC and pAUC (max FPR 0.1) with 95 % bootstrap
intervals over the test clips (seed-mean AUC; with --few-shot over the draws). ``--few-shot N --draws K``:
K draws, each of one ID per machine type and N of its training clips.

Writes OUT/compare.md (the table, what the clips can and cannot rank), OUT/per_seed.csv and
OUT/compare.json (every per-seed number), OUT/runs.jsonl (per-clip scores; a rerun skips finished runs);
OUT defaults to out/compare/<budget>.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path

import click
import numpy as np

from edge_asd.core.commands import csv_list, script_help, setup_logging, user_errors
from edge_asd.core.errors import EdgeAsdError
from edge_asd.train.compare import AE_METHODS, BUDGETS, HOOKS, REFERENCE, few_shot_draws, method_names, resolve_methods
from edge_asd.train.compare_report import per_seed, resolution, summarize, summarize_draws, table
from edge_asd.train.experiment import check_settings, evenly, find_machines, sound_dir
from edge_asd.train.mixtures import PAPER_ANRS_DB, anomaly_sound_files, mix_at_anr, plan_mixtures

log = logging.getLogger("edge_asd")
DEFAULT_METHODS = ",".join([*AE_METHODS, *HOOKS])


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=script_help(__doc__))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root (DCASE 2020 / MIMII layout). Default: $EDGE_ASD_DATA or ../shared/data.")
@click.option("--machine-types", callback=csv_list(), default=None, help="Comma-separated machine types (default: all).")
@click.option("--ids", callback=csv_list(), default=None, help="Comma-separated machine IDs (default: all with training clips).")
@click.option("--methods", callback=csv_list(), default=DEFAULT_METHODS, show_default=True,
              help="Methods to compare; the RMS reference is always added.")
@click.option("--seeds", callback=csv_list(int), default="0,1,2", show_default=True)
@click.option("--budget", type=click.Choice(list(BUDGETS)), default="short", show_default=True,
              help="short: the default training budget (600 updates for the autoencoders); smoke: the smallest run "
                   "that still exercises every step.")
@click.option("--few-shot", type=click.IntRange(min=1), default=None,
              help="Train on N normal clips of one ID per machine type (IDs with at least N), drawn --draws times.")
@click.option("--draws", type=click.IntRange(min=1), default=5, show_default=True, help="Few-shot draws.")
@click.option("--something-else", "something_else_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Something-else sounds for training. Default: DATA/something_else/train, else the kit's.")
@click.option("--anomaly-sounds", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Sounds of the mixtures. Default: DATA/something_else/test (the paper's DCASE 2016 clips), else "
                   "the kit's; none found: no mixtures.")
@click.option("--max-anomaly-sounds", type=click.IntRange(min=1), default=None,
              help="At most this many anomalous sounds, evenly spaced over the sorted list.")
@click.option("--quick", is_flag=True, help="CI-sized: the first seed, 7 anomalous sounds, 200 bootstrap replicates.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch threads (default: torch's).")
@click.option("--n-boot", type=click.IntRange(min=100), default=1000, show_default=True, help="Bootstrap replicates.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder. Default: out/compare/BUDGET[_quick][_few_shot_NxK].")
@click.option("--report-only", is_flag=True,
              help="Train nothing: write the report from the runs OUT/runs.jsonl already holds (a comparison still "
                   "running or interrupted; unfinished runs are counted and left out).")
@click.option("-q", "--quiet", is_flag=True)
@user_errors
def main(data, machine_types, ids, methods, seeds, budget, few_shot, draws, something_else_dir, anomaly_sounds,
         max_anomaly_sounds, quick, device, threads, n_boot, out, report_only, quiet):
    setup_logging(quiet=quiet)
    if quick:
        seeds, max_anomaly_sounds, n_boot = seeds[:1], max_anomaly_sounds or 7, 200
    if not seeds:
        raise EdgeAsdError("--seeds: give at least one seed")
    out = out or Path("out/compare") / (budget + ("_quick" if quick else "") + (f"_few_shot_{few_shot}x{draws}" if few_shot else ""))
    names = method_names([REFERENCE] + [m for m in methods if m != REFERENCE])
    found, missing = resolve_methods(names, device)
    for name, why in missing.items():
        log.warning("%s: %s", name, why)
    if threads:
        import torch

        torch.set_num_threads(threads)
    data, machines = find_machines(data, machine_types, ids)
    splits = few_shot_draws(machines, few_shot, draws) if few_shot else [machines]
    settings = {"data": str(data), "budget": budget, "few_shot": few_shot, "draws": draws if few_shot else None,
                "max_anomaly_sounds": max_anomaly_sounds, "mixture_seed": 0}
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out / "settings.json", settings)
    se_dir = sound_dir(something_else_dir, data, "train")
    sounds = anomaly_sounds_of(sound_dir(anomaly_sounds, data, "test"), max_anomaly_sounds)
    wanted = sorted({key for split in splits for key in split})
    tests = {key: test_items(machines[key], sounds, out / "mixtures" / f"{key[0]}_{key[1]}") for key in wanted}
    runs = run_all(found, splits, tests, seeds, data, se_dir, budget, out / "runs.jsonl", report_only)
    report(runs, {k: t["sets"] for k, t in tests.items()}, list(found), missing, settings, seeds, n_boot, out,
           "no finished run yet" if report_only else "failed (log above)")


def anomaly_sounds_of(folder: Path | None, most: int | None) -> list[Path]:
    if folder is None:
        log.warning("no anomalous sounds (--anomaly-sounds, DATA/something_else/test): no mixtures")
        return []
    return evenly(anomaly_sound_files(folder), most)


def test_items(paths: dict, sounds: list[Path], folder: Path) -> dict:
    """One ID's test items (its test clips, then the mixtures, written to ``folder`` once) and test sets
    {name: (item indices, labels)}, as :func:`edge_asd.train.experiment.prepare` builds them."""
    import soundfile as sf

    from edge_asd.train.compare import audio

    normal, anomaly = paths["test_normal"], paths["test_anomaly"]
    items = [*normal, *anomaly]
    sets = {}
    if normal and anomaly:
        sets["real"] = (list(range(len(items))), [0] * len(normal) + [1] * len(anomaly))
    if normal and sounds:
        folder.mkdir(parents=True, exist_ok=True)
        plan = plan_mixtures([len(audio(p)) for p in normal], [len(audio(s)) for s in sounds], PAPER_ANRS_DB, seed=0)
        for anr in PAPER_ANRS_DB:
            mixed = []
            for m in (m for m in plan if m.anr_db == anr):
                path = folder / f"{normal[m.normal_index].stem}+{sounds[m.sound_index].stem}@{anr:g}dB@{m.start}.wav"
                if not path.is_file():
                    wave = mix_at_anr(audio(normal[m.normal_index]), audio(sounds[m.sound_index]), anr, m.start)
                    sf.write(path, np.clip(wave, -1.0, 1.0), 16000, subtype="PCM_16")
                mixed.append(len(items))
                items.append(path)
            sets[f"mix_{anr:g}dB"] = (list(range(len(normal))) + mixed, [0] * len(normal) + [1] * len(mixed))
    return {"items": items, "sets": sets}


def run_all(found: dict, splits: list[dict], tests: dict, seeds: list[int], data: Path, se_dir: Path | None,
            budget: str, runs_path: Path, report_only: bool = False) -> list[dict]:
    """Every method x draw x ID x seed (the RMS reference once per draw and ID), seed-major (an interrupted
    comparison has every method and ID of its first seeds), each appended to ``runs_path`` as it finishes;
    runs already there are read, not redone. A method that fails is logged and left out. ``report_only``: run
    nothing, return the finished runs."""
    done = {}
    if runs_path.is_file():
        done = {r["key"]: r for r in map(json.loads, runs_path.read_text().splitlines())}
    jobs = [(seed, draw, key, paths, method) for seed in seeds for draw, split in enumerate(splits)
            for key, paths in split.items() for method in found if method != REFERENCE or seed == seeds[0]]
    runs, unfinished = [], 0
    for seed, draw, (mtype, mid), paths, method in jobs:
        key = f"{method}/{mtype}/{mid}/{draw}/{seed}"
        if key not in done and report_only:
            unfinished += 1
            continue
        if key not in done:
            items = tests[(mtype, mid)]["items"]
            t0 = time.perf_counter()
            try:
                scores = np.asarray(found[method](data_dir=data, machine_type=mtype, machine_id=mid,
                                                  train_clips=list(paths["train"]), test_clips=list(items),
                                                  something_else_dir=se_dir, seed=seed, budget=budget), np.float64)
            except Exception as e:  # a broken method must not lose the others' runs
                log.error("%s failed: %s: %s", key, type(e).__name__, e)
                continue
            if scores.shape != (len(items),) or not np.isfinite(scores).all():
                log.error("%s: scores of shape %s, not %d finite values", key, scores.shape, len(items))
                continue
            done[key] = {"key": key, "method": method, "machine_type": mtype, "machine_id": mid, "draw": draw,
                         "seed": seed, "n_train": len(paths["train"]), "fit_seconds": round(time.perf_counter() - t0, 2),
                         "scores": [float(f"{s:.7g}") for s in scores]}
            with open(runs_path, "a") as f:
                f.write(json.dumps(done[key]) + "\n")
            log.info("%s: %.0f s", key, done[key]["fit_seconds"])
        runs.append(done[key])
    if unfinished:
        log.warning("--report-only: %d of %d runs are not finished; the report covers the %d finished", unfinished,
                    len(jobs), len(runs))
    return runs


def report(runs, sets, methods, missing, settings, seeds, n_boot, out: Path, no_runs: str = "failed (log above)") -> None:
    few_shot = settings["few_shot"]
    rows = summarize_draws(runs, sets, n_boot) if few_shot else summarize(runs, sets, n_boot)
    seed_rows = per_seed(runs, sets)
    failed = sorted({m for m in methods if not any(r["method"] == m for r in runs)})
    can_rank = [] if few_shot else resolution(runs, rows, sets, n_boot)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "?"
    interval = ("mean over draws of each draw's seed-mean AUC, 95 % bootstrap interval over the draws"
                if few_shot else "seed-mean AUC, 95 % stratified bootstrap interval over the test clips (the seeds "
                "share each resample; the seed range is the lowest and highest single-seed AUC)")
    lines = ["# Method comparison\n",
             f"Budget {settings['budget']}, seeds {seeds}" + (f", few-shot {few_shot} training clips x {settings['draws']} "
                                                              f"draws (one ID per machine type)" if few_shot else "")
             + f"; {interval}; pAUC at max FPR 0.1; clip score = mean window score; rms = clip RMS level "
             f"(the loudness reference). Data {settings['data']}; {platform.machine()}, {os.cpu_count()} CPU cores, "
             f"commit {commit}. Generated by `examples/compare_methods.py`.\n",
             table(rows, methods)]
    if missing or failed:
        lines.append("Not in the table: " + "; ".join([f"{m}: {why}" for m, why in missing.items()]
                                                       + [f"{m}: {no_runs}" for m in failed]) + "\n")
    if can_rank:
        lines.append("## What these clips can rank\n\n" + "\n".join(f"- {line}" for line in can_rank) + "\n")
    (out / "compare.md").write_text("\n".join(lines))
    with open(out / "per_seed.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(seed_rows[0]) if seed_rows else ["method"])
        writer.writeheader()
        writer.writerows(seed_rows)
    (out / "compare.json").write_text(json.dumps({"settings": settings, "seeds": seeds, "rows": rows,
                                                  "per_seed": seed_rows, "not_available": missing,
                                                  "failed": failed, "can_rank": can_rank}, indent=1) + "\n")
    click.echo("\n".join(lines[2:]))
    click.echo(f"written: {out / 'compare.md'}, {out / 'per_seed.csv'}, {out / 'compare.json'}")


if __name__ == "__main__":
    main()
