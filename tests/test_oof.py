"""Out-of-fold scores for phi (edge-train --oof-folds K -> checkpoint -> model file -> edge-calibrate), on fan
id_00's 10 real train normals: every clip is scored by a fold model that never heard it, the scores travel into
the model file, and edge-calibrate sets phi on them instead of on the final model's scores of its training audio."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import assert_one_line_error, cli


def test_folds_partition_the_clips_balanced_per_machine_id():
    from edge_asd.core.errors import EdgeAsdError
    from edge_asd.train.oof import assign_folds

    groups = ["id_00"] * 7 + ["id_02"] * 5
    folds = assign_folds(groups, 3, seed=0)
    assert sorted(set(folds)) == [0, 1, 2]
    assert sorted(np.bincount(folds)) == [4, 4, 4]
    for g, n in (("id_00", 7), ("id_02", 5)):
        per_fold = np.bincount([f for f, x in zip(folds, groups) if x == g], minlength=3)
        assert per_fold.sum() == n and per_fold.max() - per_fold.min() <= 1
    assert assign_folds(groups, 3, seed=0) == folds and assign_folds(groups, 3, seed=1) != folds
    for k in (1, 13):
        with pytest.raises(EdgeAsdError, match=f"--oof-folds {k}: use 2 to 12"):
            assign_folds(groups, k, seed=0)


def test_no_fold_model_trains_on_the_clips_it_scores(oof_checkpoint, fan):
    """The fold loop with a recording ``fit``: each model is asked to train on exactly the clips outside its fold."""
    from edge_asd.train.checkpoint import load_checkpoint
    from edge_asd.train.oof import out_of_fold

    audio = [np.zeros(16000 * 2, np.float32) + 0.01 * i for i in range(len(fan["train"]))]
    asked = []

    def fit(idx):
        asked.append(idx)
        return load_checkpoint(oof_checkpoint[0])

    oof = out_of_fold(fan["train"], audio, ["id_00"] * len(audio), 5, 0, fit)
    folds = [c["fold"] for c in oof["clips"]]
    assert len(asked) == 5
    for k, idx in enumerate(asked):
        held = {i for i, f in enumerate(folds) if f == k}
        assert len(held) == 2 and held.isdisjoint(idx) and held | set(idx) == set(range(10))


def test_edge_train_keeps_out_of_fold_scores(oof_checkpoint, fan, tmp_path):
    """The checkpoint's oof entry; fold 0's scores are what a model trained with the same options on the other
    8 clips alone gives (it never heard fold 0), and they differ from the final model's in-sample scores."""
    from edge_asd.core.features import n_vectors
    from edge_asd.core.presets import get_preset
    from edge_asd.core.provenance import file_sha256
    from edge_asd.firmware_io.audio_file import read_audio
    from edge_asd.train.checkpoint import load_checkpoint, restore
    from edge_asd.train.evaluate import torch_frame_scorer
    from edge_asd.train.run import TrainOptions, train_checkpoint

    path, stderr = oof_checkpoint
    assert stderr.count("out-of-fold model ") == 5 and "out-of-fold model 5/5: training on 8 clips" in stderr
    assert "5 out-of-fold models and the final model trained in" in stderr
    ckpt = load_checkpoint(path)
    oof = ckpt["oof"]
    assert oof["folds"] == 5 and oof["seed"] == 0
    assert [c["name"] for c in oof["clips"]] == [p.name for p in fan["train"]]
    assert [c["sha256"] for c in oof["clips"]] == [file_sha256(p) for p in fan["train"]]
    assert sorted(np.bincount([c["fold"] for c in oof["clips"]])) == [2] * 5
    features = get_preset("koizumi2019")
    audio = [read_audio(p, features.sample_rate) for p in fan["train"]]
    assert all(c["scores"].dtype.is_floating_point and c["scores"].numpy().dtype == np.float32 for c in oof["clips"])
    assert [len(c["scores"]) for c in oof["clips"]] == [n_vectors(len(a), features) for a in audio]

    ae, features, mean, std = restore(ckpt)
    final = torch_frame_scorer(ae, mean, std, features)
    for c, a in zip(oof["clips"], audio):
        assert not np.allclose(c["scores"].numpy(), final(a), rtol=0.01)

    data = tmp_path / "fan"
    (data / "train").mkdir(parents=True)
    for c, p in zip(oof["clips"], fan["train"]):
        if c["fold"] != 0:
            shutil.copy(p, data / "train" / p.name)
    alone = train_checkpoint(TrainOptions(data, "fan", tmp_path / "fold0.pt", machine_ids=("00",), val_fraction=0,
                                          epochs=1, batches_per_epoch=5, device="cpu", use_cache=False, progress=False))
    assert alone["training_data"]["n_files"] == 8
    ae, features, mean, std = restore(alone)
    fold0 = torch_frame_scorer(ae, mean, std, features)
    held = [(c, a) for c, a in zip(oof["clips"], audio) if c["fold"] == 0]
    for c, a in held:
        np.testing.assert_allclose(c["scores"].numpy(), fold0(a), rtol=1e-4)


def test_edge_train_refuses_bad_fold_counts(data_root, tmp_path, env):
    fan_dir = data_root / "machines" / "fan"
    common = ("--machine-type", "fan", "--machine-id", "00", "--epochs", "1", "--batches-per-epoch", "1",
              "--device", "cpu", "--no-cache", "--out", tmp_path / "x.pt")
    proc = cli("edge-train", fan_dir, *common, "--oof-folds", "11", env=env)
    assert_one_line_error(proc)
    assert "--oof-folds 11: use 2 to 10 (the number of normal training clips), or 0 for none" in proc.stderr
    proc = cli("edge-train", fan_dir, *common, "--oof-folds", "5", "--resume", env=env)
    assert_one_line_error(proc)
    assert "--resume cannot continue the out-of-fold models" in proc.stderr
    assert not (tmp_path / "x.pt").exists()


def test_the_model_file_carries_the_out_of_fold_scores(oof_checkpoint, oof_model, env):
    from edge_asd.core.oof import encode_scores, read_oof
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.train.checkpoint import load_checkpoint

    ckpt, meta = load_checkpoint(oof_checkpoint[0]), Scorer(oof_model).meta
    oof = read_oof(meta, "model")
    assert oof.folds == 5 and oof.seed == 0 and len(oof.scores) == 10
    assert sorted(oof.scores) == meta["training_data"]["file_sha256_prefixes"]
    for c in ckpt["oof"]["clips"]:
        np.testing.assert_allclose(oof.scores[c["sha256"][:12]], c["scores"].numpy(), rtol=2**-11)
    shown = cli("edge-inspect", oof_model, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "out-of-fold scores: 5 folds (seed 0), 10 clips, 6040 frames" in shown.stdout.splitlines()

    loud = np.array([0.0, 3.0, 70000.0, 213579.0], np.float32)  # above float16's 65504: scaled by a power of two
    entry = encode_scores(loud)
    assert entry["scale"] == 8.0 and entry["n_frames"] == 4
    decoded = read_oof({"oof": {"folds": 2, "seed": 0, "encoding": "float16-le-base64",
                                "clips": [{"file_sha256_prefix": "0" * 12, "fold": 1, **entry}]}}, "m").scores["0" * 12]
    np.testing.assert_allclose(decoded, loud, rtol=2**-11)


def test_edge_calibrate_sets_phi_on_out_of_fold_scores(oof_model, fan, tmp_path, env):
    from edge_asd.core.oof import read_oof
    from edge_asd.core.provenance import file_sha256
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio

    scorer = Scorer(oof_model)
    oof = read_oof(scorer.meta, "model")
    store = tmp_path / "phi.json"
    proc = cli("edge-calibrate", *fan["train"], "--model", oof_model, "--machine-id", "00", "--store", store,
               "--oof-all", "--votes", "1/1", env=env)
    assert proc.returncode == 0, proc.stderr
    assert ("edge-calibrate: phi from out-of-fold scores for 10 of 10 recordings (5-fold models that never heard "
            "them); 0 scored by the model") in proc.stderr
    assert "used to train this model" not in proc.stderr
    record = json.loads(store.read_text())["machines"]["id_00"]
    assert record["oof_recordings"] == 10 and record["recordings_heard_by_model"] == 0
    oof_max = max(float(oof.scores[file_sha256(p)[:12]].max()) for p in fan["train"])
    assert record["phi"] == pytest.approx(1.1 * oof_max, rel=1e-6)
    monitor = cli("edge-monitor", "--model", oof_model, "--machine-id", "00", "--store", store, "--input",
                  fan["test_normal"][0], env=env)
    assert monitor.returncode == 0 and "the model was trained on" not in monitor.stderr, monitor.stderr

    mixed = cli("edge-calibrate", *fan["train"][:3], fan["test_normal"][0], "--model", oof_model, "--machine-id", "00",
                "--store", store, "-q", "--oof-all", env=env)
    assert mixed.returncode == 0, mixed.stderr
    assert ("phi from out-of-fold scores for 3 of 4 recordings (5-fold models that never heard them); 1 scored by "
            "the model") in mixed.stderr
    assert json.loads(mixed.stdout)["oof_recordings"] == 3

    plain = cli("edge-calibrate", *fan["train"], "--model", oof_model, "--machine-id", "00", "--store", store, "--no-oof", "--votes", "1/1",
                env=env)
    assert plain.returncode == 0, plain.stderr
    assert "out-of-fold" not in plain.stderr and "10 of the 10 recordings were used to train this model" in plain.stderr
    record = json.loads(store.read_text())["machines"]["id_00"]
    assert "oof_recordings" not in record and record["recordings_heard_by_model"] == 10
    model_max = max(float(scorer.score_audio(read_audio(p, 16000)).max()) for p in fan["train"])
    assert record["phi"] == pytest.approx(1.1 * model_max, rel=1e-6) and abs(model_max - oof_max) > 1e-3 * oof_max


def test_a_recording_of_another_length_is_scored_by_the_model(oof_model, fan, caplog):
    import dataclasses

    from edge_asd.core.oof import read_oof
    from edge_asd.core.provenance import file_sha256
    from edge_asd.edge.calibrate.recordings import out_of_fold_scores
    from edge_asd.edge.runtime.scorer import Scorer

    scorer = Scorer(oof_model)
    oof = read_oof(scorer.meta, "model")
    first = file_sha256(fan["train"][0])[:12]
    cut = dataclasses.replace(oof, scores={**oof.scores, first: oof.scores[first][:-1]})
    known = out_of_fold_scores(cut, fan["train"][:3] + fan["test_normal"][:1], scorer.features)
    assert list(known) == fan["train"][1:3]
    assert "its out-of-fold scores have 603 frames, the recording 604: the model scores it" in caplog.text


def test_a_damaged_oof_field_is_one_line(oof_model, fan, tmp_path, env):
    from edge_asd.core.model_file import DIGEST_KEY, seal, unsealed_digest, write_tflite_metadata
    from edge_asd.edge.runtime.scorer import Scorer

    meta = json.loads(json.dumps(Scorer(oof_model).meta))
    meta[DIGEST_KEY] = unsealed_digest()
    meta["oof"]["clips"][0]["scores"] = meta["oof"]["clips"][0]["scores"][:-8]
    damaged = tmp_path / "damaged.tflite"
    damaged.write_bytes(seal(write_tflite_metadata(oof_model.read_bytes(), meta)))
    store = tmp_path / "phi.json"
    proc = cli("edge-calibrate", *fan["train"][:2], "--model", damaged, "--machine-id", "00", "--store", store, env=env)
    assert_one_line_error(proc)
    assert "damaged out-of-fold scores in the model metadata (clip 0: 601 scores for n_frames 604)" in proc.stderr
    assert not store.exists()
    proc = cli("edge-calibrate", *fan["train"][:2], "--model", damaged, "--machine-id", "00", "--store", store,
               "--no-oof", env=env)
    assert proc.returncode == 0, proc.stderr


def test_a_fine_tune_drops_the_out_of_fold_scores():
    """They are the base weights' fold models' scores: a fine-tuned model must be calibrated on its own scores."""
    from edge_asd.edge.finetune.adapt import new_metadata

    meta = {"format": "edge-asd-model", "oof": {"folds": 5, "clips": []}, "quantization": {"mode": "float32"}}
    out = new_metadata(meta, {"steps": 2})
    assert "oof" not in out and out["fine_tuning"] == [{"steps": 2}] and "oof" in meta


def test_edge_calibrate_names_and_leaves_out_the_recordings_that_sound_like_unheard_modes(oof_model, fan, tmp_path, env):
    """By default phi leaves out the recordings whose out-of-fold scores are high from start to end
    (calibrate.recordings.unheard_modes), names them in a warning and in the record; --oof-all keeps them."""
    from pathlib import Path

    from edge_asd.core.oof import read_oof
    from edge_asd.core.provenance import file_sha256
    from edge_asd.edge.calibrate.recordings import unheard_modes
    from edge_asd.edge.runtime.scorer import Scorer

    oof = read_oof(Scorer(oof_model).meta, "model")
    files = [Path(p) for p in fan["train"]]
    odd = unheard_modes({f: oof.scores[file_sha256(f)[:12]] for f in files}, files)
    store = tmp_path / "phi.json"
    proc = cli("edge-calibrate", *files, "--model", oof_model, "--machine-id", "00", "--store", store, env=env)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(store.read_text())["machines"]["id_00"]
    assert sorted(record.get("oof_left_out") or []) == sorted(map(str, odd))
    assert record["oof_recordings"] == len(record["recordings"]) == len(files) - len(odd)
    if odd:
        assert f"{len(odd)} left out as unheard modes" in proc.stderr and odd[0].name in proc.stderr
        assert f"out-of-fold scores for {len(files) - len(odd)} of {len(files)} recordings" in proc.stderr
