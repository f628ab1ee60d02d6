"""Does on-device fine-tuning help? Shipped vs fine-tuned clip AUC / pAUC on a machine the model never heard.

For each machine type: the *target* is the machine ID with the most test clips; the *base* model is
trained (edge-train's trainer, BU) on the normal clips of the type's other ``id_*`` IDs and written as
a full-integer int8 .tflite; then, as a user on the device would:

    edge-calibrate --model shipped.tflite --machine-id TARGET FT_CLIPS
    edge-finetune  --model model.tflite   --machine-id TARGET FT_CLIPS --steps N --phi-share 0

FT_CLIPS are the target's train normals (a full DCASE 2020 / MIMII download), or, in the small local
set where every target clip is in ``test``, the first half of its test normals. Both models score the
rest: the target's held-out normals against (a) its real anomalies and (b) paper-style mixtures
(sec. 4.2: DCASE 2016 office sounds in held-out normals at ANR -10/-15/-20 dB, ``train.mixtures``).
Clip score = max frame score (eq. 11). Repeated over seeds (base training, fine-tuning and mixtures);
95 % bootstrap intervals of AUC and of the paired difference (``train.bootstrap``).

Only one converter run (edge-convert's pipeline, int8) is made, for the first base model; the others are
written into that file's graph by the kit's int8 weight writer (``edge.finetune_tflite``), the code
edge-finetune itself uses. Data: $EDGE_ASD_DATA or ../shared/data, or --data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent


def run(name: str, *args) -> dict:
    proc = subprocess.run([str(BIN / name), *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(f"finetune_demo: `{name}` failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan(root: Path, types: list[str] | None, max_base_clips: int, max_ft_clips: int) -> list[dict]:
    """One experiment per machine type: base clips, target ID, fine-tuning clips, held-out test clips."""
    from edge_asd.datasets.layout import machine_types, scan

    out = []
    for mtype in types or machine_types(root):
        clips = [c for c in scan(root, machine_type=mtype) if c.machine_id.startswith("id_")]
        ids = sorted({c.machine_id for c in clips})
        test = {i: [c for c in clips if c.machine_id == i and c.split == "test"] for i in ids}
        ok = [i for i in ids if sum(c.label == "normal" for c in test[i]) >= 2 and any(c.label == "anomaly" for c in test[i])]
        if len(ids) < 2 or not ok:
            continue
        target = max(ok, key=lambda i: (len(test[i]), i))
        train_normals = [c.path for c in clips if c.machine_id == target and c.split == "train" and c.label == "normal"]
        test_normals = [c.path for c in test[target] if c.label == "normal"]
        if train_normals:
            ft, held = train_normals[:max_ft_clips], test_normals
        else:  # the local set: split the target's test normals
            half = max(1, len(test_normals) // 2)
            ft, held = test_normals[:half], test_normals[half:]
        base = [c.path for c in clips if c.machine_id != target and c.label == "normal"
                and (c.split == "train" or not any(d.split == "train" for d in clips if d.machine_id == c.machine_id))]
        out.append({"machine_type": mtype, "target": target, "base_ids": sorted({c.machine_id for c in clips} - {target}),
                    "base": base[:max_base_clips], "finetune": ft, "held_normal": held,
                    "anomaly": [c.path for c in test[target] if c.label == "anomaly"]})
    return out


def make_template(ckpt: dict, work: Path) -> Path:
    """One int8 .tflite of this architecture through edge-convert's pipeline: the graph every base model reuses."""
    from edge_asd.convert.pipeline import convert_checkpoint
    from edge_asd.train.checkpoint import save_checkpoint

    save_checkpoint(ckpt, work / "template.pt")
    convert_checkpoint(work / "template.pt", "tflite", work / "template.tflite", int8=True, calibration_dir=work / "calib")
    return work / "template.tflite"


def write_base(ckpt: dict, work: Path, template: Path) -> Path:
    """The shipped int8 model of a base checkpoint, its weights and metadata written into the template's graph
    (per-channel int8 weights, activation ranges from the base clips in ``work/calib``)."""
    from edge_asd.convert.metadata import model_metadata
    from edge_asd.core.features import extract, standardize
    from edge_asd.edge.finetune.tflite_weights import write_layers
    from edge_asd.firmware_io.audio_file import read_audio

    out = work / "shipped.tflite"
    state = ckpt["model_state"]
    names = sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".weight")},
                   key=lambda n: (n.split(".")[0] != "encoder", int(n.split(".")[1])))
    layers = [(state[n + ".weight"].numpy(), state[n + ".bias"].numpy()) for n in names]
    norm = ckpt["normalization"]
    from edge_asd.core.presets import FeatureConfig

    features = FeatureConfig.from_dict(ckpt["features"]["config"])
    vectors = np.concatenate([extract(read_audio(p, features.sample_rate), features) for p in sorted((work / "calib").iterdir())])
    pick = np.random.default_rng(0).choice(len(vectors), size=min(2000, len(vectors)), replace=False)
    calib = standardize(vectors[pick], np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32))
    quant = {"mode": "int8-static", "weights": "per-channel symmetric int8", "activations": "per-tensor int8 (min/max)",
             "error_computation": "float32", "calibration_frames": int(len(pick))}
    out.write_bytes(write_layers(template.read_bytes(), layers, model_metadata(ckpt, "tflite", quant), calib))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--types", nargs="*", default=None, help="machine types (default: every type with >= 2 IDs)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--base-updates", type=int, default=100)
    ap.add_argument("--ft-steps", type=int, default=100)
    ap.add_argument("--ft-minutes", type=float, default=30.0,
                    help="edge-finetune's time cap (its device default, 1.25 min, would make the updates depend on the load)")
    ap.add_argument("--lr", type=float, default=3e-4, help="fine-tuning step size")
    ap.add_argument("--max-base-clips", type=int, default=200)
    ap.add_argument("--max-ft-clips", type=int, default=30, help="30 x 10 s = the issue's 5 minutes on a full download")
    ap.add_argument("--sounds-every", type=int, default=4, help="use every k-th paper anomaly sound in the mixtures")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--template", type=Path, default=None,
                    help="an int8 fcn-small koizumi2019 .tflite to reuse the graph of (default: convert the first base model)")
    ap.add_argument("--out", type=Path, default=Path("out/finetune_demo"))
    args = ap.parse_args()

    from edge_asd.core.features import extract
    from edge_asd.core.presets import get_preset
    from edge_asd.datasets.locate import local_data_root
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import audio_files
    from edge_asd.train.bootstrap import auc_ci, paired_difference_ci
    from edge_asd.train.data import band_statistics, load_clips
    from edge_asd.train.mixtures import anomaly_sound_files, plan_mixtures, render
    from edge_asd.train.trainer import TrainConfig, train

    root = args.data or local_data_root()
    if root is None:
        sys.exit("finetune_demo: no data (set EDGE_ASD_DATA or pass --data)")
    features = get_preset("koizumi2019")
    others = load_clips(audio_files(root / "something_else" / "train")[::8], features)
    sounds = load_clips(anomaly_sound_files(root / "something_else" / "test")[::args.sounds_every], features)
    experiments = plan(root, args.types, args.max_base_clips, args.max_ft_clips)
    args.out.mkdir(parents=True, exist_ok=True)
    template, rows = args.template, []
    for ex in experiments:
        mtype = ex["machine_type"]
        print(f"== {mtype}: base {','.join(ex['base_ids'])} ({len(ex['base'])} clips) -> target {ex['target']}: "
              f"fine-tune on {len(ex['finetune'])}, test {len(ex['held_normal'])} normal + {len(ex['anomaly'])} anomalous "
              f"+ {3 * len(sounds)} mixtures", file=sys.stderr, flush=True)
        base_audio = load_clips(ex["base"], features)
        held = load_clips(ex["held_normal"], features)
        anomalies = load_clips(ex["anomaly"], features)
        mean, std = band_statistics(base_audio, features)
        for seed in range(args.seeds):
            work = args.out / f"{mtype}_{ex['target']}_seed{seed}"
            (work / "calib").mkdir(parents=True, exist_ok=True)
            for p in ex["base"][:10]:
                link = work / "calib" / p.name
                if not link.exists():
                    link.symlink_to(p.resolve())
            t0 = time.perf_counter()
            cfg = TrainConfig(machine_type=mtype, machine_ids=ex["base_ids"], preset="koizumi2019", epochs=1,
                              batches_per_epoch=args.base_updates, seed=seed, lam="2D")
            ckpt = train(cfg, features, base_audio, others, mean, std, progress=False)
            template = template or make_template(ckpt, work)
            shipped = write_base(ckpt, work, template)
            t_base = time.perf_counter() - t0
            model = work / "model.tflite"
            model.write_bytes(shipped.read_bytes())
            store = work / "phi.json"
            run("edge-calibrate", *ex["finetune"], "--model", model, "--machine-id", ex["target"], "--store", store, "-q")
            # --phi-share 0: every fine-tuning clip is trained on (AUC, the measure here, does not use phi)
            ft = run("edge-finetune", *ex["finetune"], "--model", model, "--machine-id", ex["target"], "--store", store,
                     "--phi-share", 0, "--steps", args.ft_steps, "--minutes", args.ft_minutes, "--lr", args.lr, "--seed", seed, "-q")
            mix = render(plan_mixtures([len(h) for h in held], [len(s) for s in sounds], seed=seed), held, sounds)
            scores = {}
            for name, path in (("shipped", shipped), ("finetuned", model)):
                scorer = Scorer(path)
                scores[name] = [float(scorer.score_vectors(extract(a, features)).max()) for a in held + anomalies + mix]
            n_h, n_a = len(held), len(anomalies)
            row = {"machine_type": mtype, "target": ex["target"], "base_ids": ex["base_ids"], "seed": seed,
                   "n_finetune_clips": len(ex["finetune"]), "n_held_normal": n_h, "n_anomaly": n_a, "n_mixtures": len(mix),
                   "base_seconds": round(t_base, 1), "finetune": ft}
            for test, idx, labels in (("real", list(range(n_h + n_a)), [False] * n_h + [True] * n_a),
                                      ("anr", list(range(n_h)) + list(range(n_h + n_a, n_h + n_a + len(mix))),
                                       [False] * n_h + [True] * len(mix))):
                s_ship = np.array(scores["shipped"])[idx]
                s_ft = np.array(scores["finetuned"])[idx]
                ship, ship_p = auc_ci(labels, s_ship, n_boot=args.boot, seed=seed)
                fine, fine_p = auc_ci(labels, s_ft, n_boot=args.boot, seed=seed)
                diff, diff_p = paired_difference_ci(labels, s_ft, s_ship, n_boot=args.boot, seed=seed)
                row[test] = {"auc_shipped": vars(ship), "auc_finetuned": vars(fine), "auc_delta": vars(diff),
                             "pauc_shipped": vars(ship_p), "pauc_finetuned": vars(fine_p), "pauc_delta": vars(diff_p)}
            rows.append(row)
            print(f"   seed {seed}: real AUC {ship_str(row, 'real')}; ANR-mixture AUC {ship_str(row, 'anr')}; "
                  f"fine-tune {ft['train_seconds']:.0f} s", file=sys.stderr, flush=True)
            (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))


def ship_str(row: dict, test: str) -> str:
    r = row[test]
    return f"{r['auc_shipped']['value']:.3f} -> {r['auc_finetuned']['value']:.3f}"


def table(rows: list[dict]) -> str:
    """Markdown: per machine type and test set, mean over seeds of AUC / pAUC, shipped vs fine-tuned,
    with the range of the per-seed 95 % bootstrap interval of the paired AUC difference."""
    lines = ["| type (base -> target) | test set | clips (normal/anomalous) | AUC shipped | AUC fine-tuned | delta AUC "
             "[95 % CI, seed-mean] | pAUC shipped | pAUC fine-tuned |", "|---|---|---|---|---|---|---|---|"]
    deltas = {"real": [], "anr": []}
    for key in dict.fromkeys((r["machine_type"], r["target"]) for r in rows):
        group = [r for r in rows if (r["machine_type"], r["target"]) == key]
        for test in ("real", "anr"):
            def m(k, f="value", test=test, group=group):
                return float(np.mean([r[test][k][f] for r in group]))

            deltas[test].append(m("auc_delta"))
            n_pos = group[0]["n_anomaly"] if test == "real" else group[0]["n_mixtures"]
            lines.append(f"| {key[0]} ({','.join(group[0]['base_ids'])} -> {key[1]}) | {test} | {group[0]['n_held_normal']}/{n_pos} "
                         f"| {m('auc_shipped'):.3f} | {m('auc_finetuned'):.3f} | {m('auc_delta'):+.3f} "
                         f"[{m('auc_delta', 'low'):+.3f}, {m('auc_delta', 'high'):+.3f}] | {m('pauc_shipped'):.3f} "
                         f"| {m('pauc_finetuned'):.3f} |")
    for test, d in deltas.items():
        if d:
            lines.append(f"\nmean delta AUC over machine types, {test}: {100 * np.mean(d):+.1f} points ({len(rows)} runs)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
