"""edge-finetune as users run it: fine-tune in place, monitor with the result, roll back; the guard rail;
a process killed mid-run leaves the old model and phi in service; one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import BIN, assert_one_line_error, cli


@pytest.fixture
def deployed(model, fan, tmp_path):
    """(model copy, store) with phi of id_00 calibrated for the shipped model, as on a device."""
    path = tmp_path / "fan.tflite"
    shutil.copy(model, path)
    store = tmp_path / "phi.json"
    proc = cli("edge-calibrate", *fan["train"][:4], "--model", path, "--machine-id", "00", "--store", store)
    assert proc.returncode == 0, proc.stderr
    return path, store


def phi_of(store: Path) -> dict:
    return json.loads(store.read_text())["machines"]["id_00"]


def test_finetune_then_monitor_then_rollback(deployed, fan, env):
    from edge_asd.edge.scorer import Scorer

    path, store = deployed
    shipped, old_phi = path.read_bytes(), phi_of(store)
    proc = cli("edge-finetune", *fan["train"][:3], "--model", path, "--machine-id", "00", "--store", store,
               "--steps", "4", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["steps"] == 4 and out["frames"] == 3 * 604 and out["rejected_frames"] == 0
    assert out["previous_phi"] == old_phi["phi"] and out["phi"] != old_phi["phi"]
    assert (path.parent / "fan.tflite.previous").read_bytes() == shipped
    new = Scorer(path)
    assert new.sha256 == out["model_sha256"] == phi_of(store)["model_sha256"] != old_phi["model_sha256"]
    assert new.meta["fine_tuning"][-1]["machine_id"] == "id_00" and new.meta["fine_tuning"][-1]["steps"] == 4
    monitor = cli("edge-monitor", "--model", path, "--store", store, "--input", fan["test_anomaly"][0], env=env)
    assert monitor.returncode == 0, monitor.stderr
    assert "604 frames" in monitor.stderr

    back = cli("edge-finetune", "--model", path, "--store", store, "--rollback", env=env)
    assert back.returncode == 0, back.stderr
    assert path.read_bytes() == shipped and phi_of(store) == old_phi
    assert not (path.parent / "fan.tflite.previous").exists()
    assert_one_line_error(cli("edge-finetune", "--model", path, "--store", store, "--rollback", env=env))


def faulty_recording(clean: Path, data_root: Path, out: Path) -> Path:
    """A fan recording with a loud knocking fault: office impact sounds every second at +10 dB ANR."""
    from edge_asd.firmware_io.audio_file import read_audio
    from edge_asd.train.mixtures import anomaly_sound_files, mix_at_anr

    audio = read_audio(clean, 16000)
    sounds = [read_audio(p, 16000)[:8000] for p in anomaly_sound_files(data_root / "something_else" / "test")[:10]]
    for k, start in enumerate(range(0, len(audio) - 16000, 16000)):
        audio = mix_at_anr(audio, sounds[k % len(sounds)], 10.0, start)
    sf.write(out, np.clip(audio, -1, 1), 16000)
    return out


def test_guard_rail_refuses_a_recording_of_the_fault_unless_forced(deployed, fan, data_root, tmp_path, env):
    path, store = deployed
    shipped = path.read_bytes()
    fault = faulty_recording(fan["train"][5], data_root, tmp_path / "knocking.wav")
    proc = cli("edge-finetune", fault, "--model", path, "--machine-id", "00", "--store", store, "--steps", "2", env=env)
    assert_one_line_error(proc)
    assert "already score as anomalous" in proc.stderr and "--force" in proc.stderr
    assert path.read_bytes() == shipped
    forced = cli("edge-finetune", fault, "--model", path, "--machine-id", "00", "--store", store, "--steps", "2",
                 "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    out = json.loads(forced.stdout)
    assert out["rejected_frames"] > 0.1 * out["frames"]


def test_killed_midway_leaves_the_old_model_in_service(deployed, fan, env):
    from edge_asd.edge.scorer import Scorer

    path, store = deployed
    shipped, old_store = path.read_bytes(), store.read_bytes()
    proc = subprocess.Popen([str(BIN / "edge-finetune"), *map(str, fan["train"][4:6]), "--model", str(path),
                             "--machine-id", "00", "--store", str(store), "--steps", "100000"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    try:
        for line in proc.stderr:  # wait until it is training
            if "update 1/100000" in line:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == shipped and store.read_bytes() == old_store
    assert Scorer(path).sha256 == phi_of(store)["model_sha256"]
    assert not (path.parent / "fan.tflite.previous").exists()


@pytest.mark.parametrize("case", ["no-phi", "no-recordings", "no-machine-id", "short-clip"])
def test_user_mistakes_are_one_line_errors(case, model, fan, tmp_path, env):
    path = tmp_path / "fan.tflite"
    shutil.copy(model, path)
    args = {"no-phi": [fan["train"][0], "--machine-id", "00"], "no-recordings": ["--machine-id", "00"],
            "no-machine-id": [fan["train"][0]], "short-clip": [tmp_path / "short.wav", "--machine-id", "00", "--force"]}[case]
    sf.write(tmp_path / "short.wav", np.full(2000, 0.1, np.float32), 16000)
    proc = cli("edge-finetune", *args, "--model", path, "--store", tmp_path / "s.json", env=env)
    assert_one_line_error(proc)
    assert path.read_bytes() == model.read_bytes()


def test_help():
    proc = cli("edge-finetune", "--help")
    assert proc.returncode == 0, proc.stderr
    for word in ("--model", "--machine-id", "--steps", "--minutes", "--rollback", "--force", "--max-rejected"):
        assert word in proc.stdout


def test_finetune_imports_no_training_stack(deployed, fan, tmp_path):
    """The device has no torch: edge-finetune trains with numpy and rewrites the file with the LiteRT schema."""
    path, store = deployed
    heavy = ("torch", "onnx", "librosa", "jax", "litert_torch", "tensorflow")
    code = ("import json, sys\nfrom edge_asd.edge.cli_finetune import main\n"
            f"main({[str(fan['train'][6]), '--model', str(path), '--machine-id', '00', '--store', str(store), '--steps', '1']!r},"
            " standalone_mode=False)\n"
            f"print('MODULES=' + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.split("MODULES=")[1]) == []
    assert (path.parent / "fan.tflite.previous").exists()  # it really fine-tuned
