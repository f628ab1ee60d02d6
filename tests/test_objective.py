"""The objective experiment (paper sec. 4.2): exact fast bootstrap AUC, patch scoring of mixtures, and a
reduced end-to-end run of examples/objective_experiment.py on the real fan recordings (train, score,
resume, report)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_asd.core.features import extract
from edge_asd.core.metrics import auc_pauc
from edge_asd.core.presets import get_preset
from edge_asd.train.bootstrap import _multiplicities, auc_ci, paired_difference_ci, weighted_auc_pauc
from edge_asd.train.experiment import frame_scorer, prepare, score_items
from edge_asd.train.mixtures import mix_at_anr
from edge_asd.train.model import ARCHS, build_autoencoder

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "objective_experiment.py"


def test_weighted_auc_equals_sklearn_on_bootstrap_resamples():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(9), np.ones(40)].astype(bool)
    s = np.r_[rng.normal(0, 1, 9), rng.normal(0.8, 1, 40)]
    w_neg, w_pos = _multiplicities(y, 30, seed=1)
    auc, pauc = weighted_auc_pauc(y, s, w_neg, w_pos)
    neg, pos = np.flatnonzero(~y), np.flatnonzero(y)
    for r in range(30):  # the same resample, spelled out as clip indices
        idx = np.r_[np.repeat(neg, w_neg[r].astype(int)), np.repeat(pos, w_pos[r].astype(int))]
        assert (auc[r], pauc[r]) == pytest.approx(auc_pauc(y[idx], s[idx]), abs=1e-12)


def test_seed_mean_interval_and_paired_difference_of_seeds():
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(30), np.ones(60)].astype(bool)
    good = np.stack([np.r_[rng.normal(0, 1, 30), rng.normal(1.5, 1, 60)] for _ in range(3)])
    weak = good + rng.normal(0, 2, good.shape)
    auc, pauc = auc_ci(y, good, n_boot=300)
    assert auc.value == pytest.approx(np.mean([auc_pauc(y, row)[0] for row in good]))
    assert auc.low <= auc.value <= auc.high and pauc.low <= pauc.value <= pauc.high
    diff, _ = paired_difference_ci(y, good, weak, n_boot=300)
    assert diff.low > 0
    with pytest.raises(ValueError, match="same clips"):
        paired_difference_ci(y, good, weak[:, :-1])


def test_mixture_scores_from_patches_equal_scores_of_the_whole_mixture(fan, data_root):
    """Only the vectors that overlap the added sound are recomputed; the result must be what scoring the
    whole mixed clip gives, for both presets (different hops)."""
    from edge_asd.train.experiment import load_audio
    from edge_asd.train.mixtures import anomaly_sound_files

    train = list(load_audio(fan["train"][:2]).values())
    normals = load_audio(fan["test_normal"][:2])
    sounds = load_audio(anomaly_sound_files(data_root / "something_else" / "test")[::35])
    prep = prepare("fan", "id_00", train, normals, {}, sounds, ["koizumi2019", "dcase2020"], segment_s=2.0)
    assert set(prep.sets) == {f"{lvl}_{a}dB" for lvl in ("clip", "segment") for a in (-10, -15, -20)}
    assert prep.sets["segment_-10dB"].labels.count(0) == 10 and prep.sets["segment_-10dB"].labels.count(1) == 4
    clean_audio = list(normals.values())
    clean_audio += [a[i:i + 32000] for a in normals.values() for i in range(0, len(a) - 32000 + 1, 32000)]
    names, waves = list(sounds), list(sounds.values())
    torch.manual_seed(0)
    for preset, arch in (("koizumi2019", "fcn-small"), ("dcase2020", "dcase2020")):
        cfg = get_preset(preset)
        ae = build_autoencoder({"name": arch, "dim": cfg.dim, **ARCHS[arch]}).eval()
        mean, std = prep.features[preset]["mean"], prep.features[preset]["std"]
        scores = score_items(prep, preset, frame_scorer(ae, mean, std, cfg, "cpu"))
        for k, (clean_index, m, _) in enumerate(prep.patches[::5]):
            mixed = mix_at_anr(clean_audio[clean_index], waves[m.sound_index], m.anr_db, m.start)
            x = torch.from_numpy(((extract(mixed, cfg).reshape(-1, cfg.n_context_frames, cfg.n_mels) - mean) / std)
                                 .reshape(-1, cfg.dim).astype(np.float32))
            with torch.no_grad():
                direct = (x - ae(x)).pow(2).sum(-1).numpy()
            item = prep.n_clean + 5 * k
            assert scores["max"][item] == pytest.approx(direct.max(), rel=1e-5)
            assert scores["mean"][item] == pytest.approx(direct.mean(), rel=1e-5)
            assert names[m.sound_index] in prep.items[item]


def _run(*args):
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=900)
    return proc


def test_reduced_experiment_end_to_end_resumes_and_reports(tmp_path, data_root, fan):
    out, report = tmp_path / "runs", tmp_path / "report"
    common = ["--data", data_root, "--machine-types", "fan", "--ids", "id_00", "--archs", "fcn-small",
              "--losses", "re,bu", "--seeds", "0", "--updates", "24", "--max-anomaly-sounds", "14",
              "--jobs", "1", "--threads", "1", "--n-boot", "200", "--out", out, "--report-dir", report]
    first = _run(*common)
    assert first.returncode == 0, first.stderr
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in runs) == ["fan/id_00/fcn-small/bu/0", "fan/id_00/fcn-small/re/0"]
    for r in runs:
        assert set(r["sets"]) == {"real"} | {f"{lvl}_{a}dB" for lvl in ("clip", "segment") for a in (-10, -15, -20)}
        real = r["sets"]["real"]
        assert real["labels"] == [0] * 5 + [1] * 10
        assert len(real["max"]) == len(real["mean"]) == 15
        assert all(mx >= mn > 0 for mx, mn in zip(real["max"], real["mean"]))
        assert r["sets"]["segment_-20dB"]["labels"].count(1) == 14
        assert r["loss_params"]["lambda"] == 2688.0  # 2D
    items = json.loads((out / "items_fan_id_00.json").read_text())
    assert len(items["real"]) == 15 and items["real"][0].startswith("normal_id_00")

    rows = json.loads((report / "objective_rows.json").read_text())
    assert len(rows["rows"]) == 2 * 7 * 2  # models x sets x poolings
    for row in rows["rows"]:
        for metric in ("auc", "pauc"):
            low, high = row[metric + "_ci"]
            assert 0.0 <= low <= row[metric + "_mean"] <= high <= 1.0
    assert {(p["a"], p["b"]) for p in rows["paired"]} == {("bu", "re")}
    for p in rows["paired"]:
        assert p["d_auc_ci"][0] <= p["d_auc"] <= p["d_auc_ci"][1]
    real_bu = next(r for r in rows["rows"] if r["loss"] == "bu" and r["set"] == "real" and r["pooling"] == "max")
    assert real_bu["auc_mean"] > 0.6  # the fan's anomalies are audible even to a briefly trained AE
    md = (report / "objective.md").read_text()
    assert "fcn-small BU" in md and "BU − RE" in md and (report / "objective.png").stat().st_size > 10_000

    # the loudness reference: every run carries its items' levels; the report's row is loudness_reference of them
    from edge_asd.core.loudness import clip_level_dbfs, loudness_reference
    from edge_asd.firmware_io.audio_file import read_audio

    real_levels = [clip_level_dbfs(read_audio(p, 16000)) for p in fan["test_normal"] + fan["test_anomaly"]]
    for r in runs:
        assert r["sets"]["real"]["level_dbfs"] == pytest.approx(real_levels, abs=1e-3)
        assert all(len(s["level_dbfs"]) == len(s["labels"]) for s in r["sets"].values())
    loud = {row["set"]: row for row in rows["loudness_reference"]}
    assert set(loud) == set(runs[0]["sets"])
    expected = loudness_reference(runs[0]["sets"]["real"]["labels"], real_levels)
    assert (loud["real"]["auc"], loud["real"]["pauc"]) == pytest.approx(expected, abs=1e-6)
    for name, row in loud.items():
        s = runs[0]["sets"][name]
        assert (row["auc"], row["pauc"]) == pytest.approx(loudness_reference(s["labels"], s["level_dbfs"]))
    # at ANR -20 dB the sound adds ~1 % of the power over its span: the mixture keeps its segment's level
    seg = dict(zip(items["segment_-20dB"], runs[0]["sets"]["segment_-20dB"]["level_dbfs"]))
    mixtures = [n for n in seg if "+" in n]
    assert len(mixtures) == 14 and all(abs(seg[n] - seg[n.split("+")[0]]) < 0.2 for n in mixtures)
    assert md.count("| fan id_00 | loudness reference (clip RMS level as the score) | – | ") == 7  # one per table

    with open(out / "runs.jsonl", "a") as f:
        f.write('{"key": "fan/id_00/fcn-small/snp/0", "sets": {"re')  # a line cut short by an interruption
    again = _run(*common)  # resume: nothing left to train, the damaged line ignored
    assert again.returncode == 0, again.stderr
    assert "2 already finished" in again.stderr and "trained" not in again.stderr
    assert len((out / "runs.jsonl").read_text().splitlines()) == 3

    (report / "objective.md").unlink()
    only = _run("--report-only", "--out", out, "--report-dir", report, "--n-boot", "200")
    assert only.returncode == 0, only.stderr
    assert (report / "objective.md").read_text() == md

    other = _run(*common[:-4], "--updates", "30", "--out", out)  # other settings, same folder: refused
    assert other.returncode == 1 and "other settings" in other.stderr and "Traceback" not in other.stderr


def test_compare_two_folders_pairs_runs_by_model_and_seed():
    from edge_asd.train.objective_report import compare, compare_markdown

    rng = np.random.default_rng(3)
    y = [0] * 20 + [1] * 40

    def run(seed, shift):
        s = np.r_[rng.normal(0, 1, 20), rng.normal(shift, 1, 40)]
        return {"key": f"fan/id_00/fcn-small/bu/{seed}", "machine_type": "fan", "machine_id": "id_00",
                "arch": "fcn-small", "loss": "bu", "seed": seed, "sets": {"real": {"labels": y, "max": s.tolist()}}}

    strong, weak = [run(s, 2.0) for s in (0, 1)], [run(s, 0.0) for s in (0, 1, 2)]
    rows = compare(strong, weak, n_boot=200)
    assert len(rows) == 1 and rows[0]["n_seeds"] == 2 and rows[0]["d_auc_ci"][0] > 0.3
    assert "**>**" in compare_markdown(rows, "A", "B")
    assert compare(strong, strong, n_boot=50)[0]["d_auc"] == 0.0


def test_loudness_rows_come_from_runs_that_carry_levels():
    """Runs recorded before the levels were stored give no loudness-reference row; the others one per set."""
    from edge_asd.train.objective_report import LOUDNESS_MODEL, loudness_rows, markdown, summarize

    y = [0, 0, 1, 1]

    def run(mid, levels):
        sets = {"real": {"labels": y, "max": [1.0, 2.0, 3.0, 4.0], "mean": [1.0, 2.0, 3.0, 4.0]}}
        if levels is not None:
            sets["real"]["level_dbfs"] = levels
        return {"key": f"fan/{mid}/fcn-small/bu/0", "machine_type": "fan", "machine_id": mid, "arch": "fcn-small",
                "loss": "bu", "seed": 0, "sets": sets}

    runs = [run("id_00", [-44.0, -43.9, -40.0, -43.95]), run("id_02", None)]
    rows = loudness_rows(runs, n_boot=100)
    assert [(r["machine_id"], r["set"]) for r in rows] == [("id_00", "real")]
    assert rows[0]["auc"] == 0.75 and rows[0]["n_normal"] == 2 and rows[0]["n_anomalous"] == 2
    md = markdown(summarize(runs, n_boot=100), [], "# t", rows)
    assert md.count(f"| fan id_00 | {LOUDNESS_MODEL} | – | ") == 3  # the AUC max, pAUC max and AUC mean tables
    assert md.count(f"| fan id_00 | {LOUDNESS_MODEL} | – | 0.750 [") == 2  # the AUC ones
    assert f"| fan id_02 | {LOUDNESS_MODEL}" not in md


def test_a_run_with_a_validation_split_holds_out_clips_and_stops_early(fan, fan_training_clips):
    """--val-fraction / --epochs / --patience / --keep reach the trainer as edge-train's options do: 2 of the
    10 fan clips held out, the updates split into epochs, the best epoch kept (lr 1e-12: no epoch improves,
    so patience 1 stops after epoch 2 and keeps epoch 1)."""
    from edge_asd.train.experiment import RunSpec, load_audio, run_one

    normals, others, _, _ = fan_training_clips
    prep = prepare("fan", "id_00", normals, load_audio(fan["test_normal"][:2]), load_audio(fan["test_anomaly"][:2]),
                   None, ["koizumi2019"])
    settings = {"updates": 6, "lr": 1e-12, "lambda": "D", "sigma": None, "epsilon": 1e-6, "anr_train_db": [-30, 10],
                "val_fraction": 0.2, "epochs": 3, "patience": 1, "keep": "best"}
    result = run_one(RunSpec("fan", "id_00", "fcn-small", "bu", 0), prep, others[:4], settings, "cpu")
    assert result["validation"]["split"] == "clips" and result["validation"]["kept_epoch"] == 1
    assert result["validation"]["stopped_early"] and result["updates_done"] == 4
    assert result["train_config"]["batches_per_epoch"] == 2 and result["train_config"]["val_fraction"] == 0.2
    assert result["sets"]["real"]["labels"] == [0, 0, 1, 1]


def test_epochs_patience_keep_need_a_validation_split(tmp_path):
    proc = _run("--epochs", "3", "--out", tmp_path / "o")
    assert proc.returncode == 1 and "add --val-fraction" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
