"""A model file knows which recordings it was trained on (short sha256 digests in its metadata), so
edge-calibrate warns when phi would be set, or checked, on audio the model has heard: it scores that audio
low (README, calibration check). The session's model was trained on fan id_00's 10 train normals."""

from __future__ import annotations

import json
import shutil

from conftest import cli


def test_the_model_file_lists_its_training_recordings(model, fan):
    from edge_asd.core import provenance
    from edge_asd.edge.runtime.scorer import Scorer

    meta = Scorer(model).meta
    listed = meta["training_data"]["file_sha256_prefixes"]
    assert len(listed) == meta["training_data"]["n_files"] == 10 and listed == sorted(listed)
    assert all(len(p) == provenance.PREFIX_CHARS for p in listed)
    assert provenance.heard(meta, fan["train"] + fan["test_normal"]) == fan["train"]


def test_calibrating_on_training_recordings_warns(model, fan, tmp_path, env):
    store = tmp_path / "phi.json"
    heard = cli("edge-calibrate", *fan["train"][:3], fan["test_normal"][0], "--model", model, "--machine-id", "00",
                "--store", store, "--check", fan["train"][5], env=env)
    assert heard.returncode == 0, heard.stderr
    assert "WARNING: 3 of the 4 recordings were used to train this model" in heard.stderr
    assert "WARNING: 1 of the 1 held-out recordings were used to train this model" in heard.stderr
    assert json.loads(store.read_text())["machines"]["id_00"]["recordings_heard_by_model"] == 3
    monitor = cli("edge-monitor", "--model", model, "--machine-id", "00", "--store", store, "--input",
                  fan["test_normal"][1], env=env)
    assert monitor.returncode == 0, monitor.stderr
    assert "phi was set on 3 recordings the model was trained on" in monitor.stderr

    unheard = cli("edge-calibrate", *fan["test_normal"][:3], "--model", model, "--machine-id", "00", "--store", store,
                  "--check", fan["test_normal"][4], env=env)
    assert unheard.returncode == 0, unheard.stderr
    assert "used to train this model" not in unheard.stderr
    assert json.loads(store.read_text())["machines"]["id_00"]["recordings_heard_by_model"] == 0
    monitor = cli("edge-monitor", "--model", model, "--machine-id", "00", "--store", store, "--input",
                  fan["test_normal"][1], env=env)
    assert monitor.returncode == 0 and "the model was trained on" not in monitor.stderr, monitor.stderr


def test_a_fine_tune_adds_the_recordings_it_trained_on(model, fan, tmp_path, env):
    from edge_asd.core import provenance
    from edge_asd.edge.runtime.scorer import Scorer

    path, store = tmp_path / "fan.tflite", tmp_path / "phi.json"
    shutil.copy(model, path)
    new = fan["test_normal"][:3]  # recordings the shipped model has not heard; the last one sets phi
    assert provenance.heard(Scorer(path).meta, new) == []
    assert cli("edge-calibrate", *new, "--model", path, "--machine-id", "00", "--store", store, env=env).returncode == 0
    proc = cli("edge-finetune", *new, "--model", path, "--machine-id", "00", "--store", store, "--steps", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    meta = Scorer(path).meta
    assert len(meta["fine_tuning"][-1]["file_sha256_prefixes"]) == 2
    assert provenance.heard(meta, new) == new[:2]  # the phi recording was kept out of training
    shown = cli("edge-inspect", path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "training data: sha256 " in shown.stdout and "over 10 files (short sha256 of 10 listed)" in shown.stdout
    line = next(x for x in shown.stdout.splitlines() if x.startswith("fine-tuned "))
    assert "machine ID id_00, 2 updates on 2 recordings" in line and line.endswith("(short sha256 of 2 listed)"), line


def test_long_lists_stay_out_of_the_file():
    from edge_asd.core import provenance

    digests = [f"{i:064x}" for i in range(provenance.MAX_FILES + 1)]
    assert provenance.prefixes(digests) is None and provenance.prefixes([]) is None
    assert provenance.prefixes(digests[:3]) == [d[:12] for d in digests[:3]]
    assert provenance.heard({}, []) == [] and provenance.heard_prefixes({"fine_tuning": [None, {}]}) == set()


def test_edge_train_fingerprints_only_the_clips_it_trained_on(data_root, fan, tmp_path, env):
    """With --val-fraction 0.2 on 10 clips, 2 whole clips are held out for validation: the checkpoint's
    training_data lists the 8 others and validation_data those 2, the ones the trainer validated on."""
    from edge_asd.train.checkpoint import load_checkpoint

    ckpt_path = tmp_path / "m.pt"
    proc = cli("edge-train", data_root / "machines" / "fan", "--machine-type", "fan", "--machine-id", "00", "--loss", "re",
               "--val-fraction", "0.2", "--epochs", "1", "--batches-per-epoch", "2", "--no-cache", "--device", "cpu",
               "--out", ckpt_path, "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(ckpt_path)
    trained, held = set(ckpt["training_data"]["files"]), set(ckpt["validation_data"]["files"])
    assert len(trained) == 8 and len(held) == 2 and trained | held == {p.name for p in fan["train"]}
    assert ckpt["validation"]["split"] == "clips" and ckpt["validation"]["n_normal"] == 2 * 604  # the trainer's 2 clips
