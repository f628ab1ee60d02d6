"""edge-finetune as users run it: fine-tune in place, monitor with the result, roll back; the guard rail;
a process killed mid-run leaves the old model and phi in service; the new phi keeps the rule and the windows
of the one in service, or nothing changes; one-line errors."""

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
from scipy import stats

from conftest import BIN, assert_one_line_error, cli


@pytest.fixture
def deployed(model, fan, tmp_path):
    """(model copy, store) with phi of id_00 calibrated for the shipped model, as on a device."""
    path = tmp_path / "fan.tflite"
    shutil.copy(model, path)
    store = tmp_path / "phi.json"
    proc = cli("edge-calibrate", *fan["train"][:4], "--model", path, "--machine-id", "00", "--store", store, "--votes",
               "1/1")
    assert proc.returncode == 0, proc.stderr
    return path, store


def phi_of(store: Path) -> dict:
    return json.loads(store.read_text())["machines"]["id_00"]


def test_finetune_then_monitor_then_rollback(deployed, fan, env):
    from edge_asd.edge.runtime.scorer import Scorer

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
    recordings = [fault, fan["train"][6]]  # phi goes on the clean one, kept out of training
    proc = cli("edge-finetune", *recordings, "--model", path, "--machine-id", "00", "--store", store, "--steps", "2",
               env=env)
    assert_one_line_error(proc)
    assert "already score as anomalous" in proc.stderr and "--force" in proc.stderr
    assert path.read_bytes() == shipped
    forced = cli("edge-finetune", *recordings, "--model", path, "--machine-id", "00", "--store", store, "--steps", "2",
                 "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    out = json.loads(forced.stdout)
    assert out["rejected_frames"] > 0.1 * out["frames"]


def test_killed_midway_leaves_the_old_model_in_service(deployed, fan, env):
    from edge_asd.edge.runtime.scorer import Scorer

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


def calibrated_copy(model, recordings, tmp_path, env, *options) -> tuple[Path, Path]:
    """(model copy, store) with phi of id_00 set by edge-calibrate ``options`` on ``recordings``."""
    path, store = tmp_path / "fan.tflite", tmp_path / "phi.json"
    shutil.copy(model, path)
    proc = cli("edge-calibrate", *recordings, "--model", path, "--machine-id", "00", "--store", store, "--votes", "1/1",
               *options, env=env)
    assert proc.returncode == 0, proc.stderr
    return path, store


def finetune(path, store, recordings, env, *options):
    return cli("edge-finetune", *recordings, "--model", path, "--machine-id", "00", "--store", store, "--steps", "3",
               *options, env=env)


def monitor_verdicts(path, recording, window: str, *gate) -> list[dict]:
    """edge-monitor's verdict lines (its own code path: the streaming Monitor, 16-hop blocks) for one recording."""
    from edge_asd.edge.runtime.decision import RunningMaxDetector
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.edge.runtime.stream_loop import Monitor
    from edge_asd.edge.runtime.windows import make_windows
    from edge_asd.firmware_io.audio_file import read_audio

    scorer, audio, lines = Scorer(path), read_audio(recording, 16000), []
    Monitor((audio[i:i + 4096] for i in range(0, len(audio), 4096)), scorer, RunningMaxDetector(1e9, "id_00", scorer.sha256),
            lines.append, windows=make_windows(window, 16000, 256, *gate)).run()
    return [v for v in lines if v["event"] == "verdict"]


def test_recalibration_keeps_the_false_alarm_budget_and_the_1s_windows(model, fan, tmp_path, env):
    """phi set for 1 false alarm a day (Gumbel) on 1-s windows: after fine-tuning, phi is the same rule fitted to the
    fine-tuned model's 1-s window maxima of the last 30 % of the recordings (kept out of training), and a monitor
    on 1-s windows does not warn."""
    path, store = calibrated_copy(model, fan["train"][:4], tmp_path, env, "--window", "1", "--false-alarms-per-day", "1",
                                  "--bootstrap", "20")
    old = phi_of(store)
    proc = finetune(path, store, fan["train"][4:10], env)
    assert proc.returncode == 0, proc.stderr
    new, out = phi_of(store), json.loads(proc.stdout)
    assert new["rule"] == old["rule"] == out["rule"] == {"name": "false-alarm-budget", "false_alarms_per_day": 1.0,
                                                         "tail": "gumbel"}
    assert new["window"] == out["window"] == "1" and new["window_s"] == 1.0
    assert (out["recordings_trained"], out["recordings_phi"]) == (4, 2)
    assert new["recordings"] == [str(f) for f in fan["train"][8:10]]
    # the 10 complete 1-s windows of each 10-s recording, as the monitor gives them with the fine-tuned model
    maxima = [v["max_score"] for rec in fan["train"][8:10] for v in monitor_verdicts(path, rec, "1") if v["window"] < 10]
    assert new["fit"]["fit"]["n_maxima"] == len(maxima) == 20 and new["window_maxima"]["cut_short"] == 2
    assert new["fit"]["bootstrap"]["n"] == 20 and new["fit"]["p_window"] == pytest.approx(1 / 86400)
    assert new["phi"] == pytest.approx(stats.gumbel_r(*stats.gumbel_r.fit(maxima)).isf(1 / 86400), rel=1e-4)
    assert new["phi"] != old["phi"] and new["fine_tuned"]["steps"] == 3
    for window, warned in (("1", False), ("whole", True)):
        mon = cli("edge-monitor", "--model", path, "--machine-id", "00", "--store", store, "--input", fan["test_normal"][0],
                  "--window", window, env=env)
        assert mon.returncode == 0, mon.stderr
        assert ("phi was calibrated with --window 1 but" in mon.stderr) == warned, mon.stderr


def test_recalibration_keeps_the_target_fpr_and_the_gate(model, fan, tmp_path, env):
    """phi at a target false-positive rate on energy-gate windows with non-default level and hold times: after
    fine-tuning, the same quantile of the fine-tuned model's gate windows of the recordings kept out of training,
    and the gate settings stay in the record."""
    gate = ["--gate-db", "-50", "--gate-min-on-s", "0.25", "--gate-min-off-s", "2.5"]
    path, store = calibrated_copy(model, fan["train"][:4], tmp_path, env, "--window", "gate", *gate, "--target-fpr", "0.25")
    old = phi_of(store)
    proc = finetune(path, store, fan["train"][4:10], env)
    assert proc.returncode == 0, proc.stderr
    new = phi_of(store)
    assert new["rule"] == old["rule"] == {"name": "clip-max-quantile", "quantile": 0.75, "margin": 1.0, "target_fpr": 0.25}
    assert {k: new[k] for k in ("window", "gate_db", "gate_min_on_s", "gate_min_off_s")} == {
        "window": "gate", "gate_db": -50.0, "gate_min_on_s": 0.25, "gate_min_off_s": 2.5}
    maxima = [v["max_score"] for rec in fan["train"][8:10] for v in monitor_verdicts(path, rec, "gate", -50.0, 0.25, 2.5)]
    assert new["window_maxima"]["n"] == len(maxima) >= 2
    assert new["phi"] == pytest.approx(np.quantile(maxima, 0.75), rel=1e-9) and new["phi"] != old["phi"]
    mon = cli("edge-monitor", "--model", path, "--machine-id", "00", "--store", store, "--input", fan["test_normal"][0],
              "--window", "gate", *gate, env=env)
    assert mon.returncode == 0 and "phi was calibrated with" not in mon.stderr, mon.stderr


def test_check_reports_the_new_phis_false_alarms_on_held_out_recordings(model, fan, tmp_path, env):
    """--check: the new phi (target FPR 0.2 on 1-s windows) is checked on held-out normal recordings of the machine:
    its realized false alarms are the held-out 1-s windows the fine-tuned model, as the monitor runs it, puts
    above that phi; printed, in the JSON summary and stored with the held-out recordings' names."""
    path, store = calibrated_copy(model, fan["train"][:4], tmp_path, env, "--window", "1", "--target-fpr", "0.2")
    held = fan["train"][7:10]
    proc = finetune(path, store, fan["train"][4:7], env, "--max-rejected", "0.5",  # a tight phi: frames above it are left out
                    *[a for f in held for a in ("--check", f)])
    assert proc.returncode == 0, proc.stderr
    new, out = phi_of(store), json.loads(proc.stdout)
    maxima = [v["max_score"] for rec in held for v in monitor_verdicts(path, rec, "1") if v["window"] < 10]
    alarms = sum(m > new["phi"] for m in maxima)
    assert new["check"] == out["check"] and new["heldout_recordings"] == [str(f) for f in held]
    assert new["check"]["windows"] == len(maxima) == 30 and new["check"]["false_alarms"] == alarms
    assert new["check"]["target_per_window"] == pytest.approx(0.2)
    assert new["check"]["meets_target"] == (alarms / 30 <= 0.2)
    assert f"edge-finetune: check on 30 held-out normal windows: {alarms} false alarms" in proc.stderr

    shipped, old_store = path.read_bytes(), store.read_bytes()
    again = finetune(path, store, fan["train"][4:7], env, "--check", fan["train"][6])
    assert_one_line_error(again)
    assert "given both to fine-tune on and as a held-out --check recording" in again.stderr
    assert path.read_bytes() == shipped and store.read_bytes() == old_store


def test_phi_share_0_sets_phi_on_the_training_recordings_with_a_warning(deployed, fan, env):
    path, store = deployed
    proc = finetune(path, store, fan["train"][4:7], env, "--phi-share", "0")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["recordings_trained"], out["recordings_phi"]) == (3, 3)
    assert phi_of(store)["recordings"] == [str(f) for f in fan["train"][4:7]]
    assert "WARNING: --phi-share 0: phi is set on the recordings the model is trained on" in proc.stderr


def test_a_rule_that_cannot_be_reapplied_changes_nothing(model, fan, tmp_path, env):
    """A Gumbel budget set on 6 whole recordings cannot be refitted to the 3 fine-tuning recordings (a tail fit
    needs 5 window maxima), nor can a rule this kit does not know be applied: one-line error before any training,
    model and phi untouched, nothing to roll back."""
    path, store = calibrated_copy(model, fan["train"][:6], tmp_path, env, "--false-alarms-per-day", "1", "--bootstrap", "0")
    shipped, old_store = path.read_bytes(), store.read_bytes()
    proc = finetune(path, store, fan["train"][4:7], env)
    assert_one_line_error(proc)
    error = next(line for line in proc.stderr.splitlines() if line.startswith("Error:"))
    for words in ("false-alarm-budget", "--window whole", "at least 5 window maxima, got 1", "unchanged"):
        assert words in error, error
    assert "update 1/" not in proc.stderr  # refused before spending the training time
    assert path.read_bytes() == shipped and store.read_bytes() == old_store
    assert not (tmp_path / "fan.tflite.previous").exists() and not (tmp_path / "fan.tflite.finetune.json").exists()

    data = json.loads(old_store)
    data["machines"]["id_00"]["rule"] = {"name": "percentile-of-the-future", "p": 99}
    store.write_text(json.dumps(data))
    mangled = store.read_bytes()
    proc = finetune(path, store, fan["train"][4:7], env)
    assert_one_line_error(proc)
    assert "unknown phi rule 'percentile-of-the-future'" in proc.stderr
    assert path.read_bytes() == shipped and store.read_bytes() == mangled


def test_a_recalibration_failing_after_training_installs_nothing(deployed, fan, monkeypatch):
    """Should the fine-tuned model's scores defeat the rule (say a tail fit with no finite phi), the command fails
    after training with one error, the model, phi and the folder as they were (no temporary model file left)."""
    from edge_asd.core.errors import EdgeAsdError
    from edge_asd.edge.finetune import workflow
    from edge_asd.edge.finetune.adapt import FinetuneConfig
    from edge_asd.edge.finetune.workflow import finetune_model

    path, store = deployed
    shipped, old_store, listing = path.read_bytes(), store.read_bytes(), sorted(os.listdir(path.parent))
    real, calls = workflow.calibrate_like, []

    def second_call_fails(previous, scorer, *args):
        calls.append(scorer.sha256)
        if len(calls) == 2:  # the fine-tuned model's scores
            raise EdgeAsdError("the gumbel fit gives no finite phi for p = 1.16e-05")
        return real(previous, scorer, *args)

    monkeypatch.setattr(workflow, "calibrate_like", second_call_fails)
    with pytest.raises(EdgeAsdError, match=r"clip-max-quantile.*no finite phi.*not installed, the model and phi in service"):
        finetune_model(path, "id_00", store, fan["train"][4:6], FinetuneConfig(steps=2))
    assert len(calls) == 2 and calls[0] != calls[1]
    assert path.read_bytes() == shipped and store.read_bytes() == old_store
    assert sorted(os.listdir(path.parent)) == listing


@pytest.mark.parametrize("case", ["no-phi", "no-recordings", "no-machine-id", "short-clip", "one-recording"])
def test_user_mistakes_are_one_line_errors(case, model, fan, tmp_path, env):
    path = tmp_path / "fan.tflite"
    shutil.copy(model, path)
    args = {"no-phi": [fan["train"][0], "--machine-id", "00"], "no-recordings": ["--machine-id", "00"],
            "no-machine-id": [fan["train"][0]],
            "short-clip": [fan["train"][0], tmp_path / "short.wav", "--machine-id", "00", "--force"],
            "one-recording": [fan["train"][0], "--machine-id", "00", "--force"]}[case]
    sf.write(tmp_path / "short.wav", np.full(2000, 0.1, np.float32), 16000)
    proc = cli("edge-finetune", *args, "--model", path, "--store", tmp_path / "s.json", env=env)
    assert_one_line_error(proc)
    words = {"short-clip": "short.wav: shorter than one context window",
             "one-recording": "--phi-share 0.3 leaves no recording to train on (1 given)"}.get(case, "")
    assert words in proc.stderr, proc.stderr
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
    code = ("import json, sys\nfrom edge_asd.edge.cli.finetune import main\n"
            f"main({[str(fan['train'][6]), str(fan['train'][7]), '--model', str(path), '--machine-id', '00', '--store', str(store), '--steps', '1']!r},"
            " standalone_mode=False)\n"
            f"print('MODULES=' + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.split("MODULES=")[1]) == []
    assert (path.parent / "fan.tflite.previous").exists()  # it really fine-tuned
