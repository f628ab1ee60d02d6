"""edge-calibrate's rules as users run them on the real fan id_00 recordings: windows, the false-alarm
budget with its extreme-value fit, the held-out check, the phi history, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from conftest import assert_one_line_error, cli


@pytest.fixture(scope="module")
def frame_scores(model):
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio

    scorer = Scorer(model)
    return lambda path: scorer.score_audio(read_audio(path, 16000))


def monitor_window_maxima(scores: np.ndarray, window_s: float, duration_s: float = 10.0) -> list[float]:
    """Brute force, the monitor's convention: score i is stamped at its vector's end, (i * 256 + 5632) / 16000 s,
    and belongs to window floor(stamp / W); windows whose span runs past the recording's end are left out."""
    stamps = (np.arange(len(scores)) * 256 + 5632) / 16000
    k = np.floor(stamps / window_s).astype(int)
    return [float(scores[k == w].max()) for w in np.unique(k) if (w + 1) * window_s <= duration_s]


def calibrate(*args, env):
    proc = cli("edge-calibrate", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc, json.loads(proc.stdout)


def test_budget_rule_with_windows_and_holdout(model, fan, frame_scores, tmp_path, env):
    """10 real train normals in 1-s windows: 7 recordings fit a Gumbel tail for 1 false alarm a day, the
    last 3 are held out; the reported check is what their window maxima give."""
    store = tmp_path / "phi.json"
    proc, out = calibrate(*fan["train"], "--model", model, "--machine-id", "00", "--store", store, "--window", "1",
                          "--false-alarms-per-day", "1", "--holdout", "0.3", "--bootstrap", "50", "--votes", "1/1",
                              env=env)
    train, held = sorted(fan["train"])[:7], sorted(fan["train"])[7:]
    maxima = np.array([m for p in train for m in monitor_window_maxima(frame_scores(p), 1.0)])
    # each 10-s recording: windows [0, 1) ... [9, 10) s; [10, 11) holds one score (stamped 10.0 s) and is cut short
    assert out["window_maxima"]["n"] == len(maxima) == 7 * 10 and out["window_maxima"]["cut_short"] == 7
    assert out["window_maxima"]["max"] == pytest.approx(maxima.max(), rel=1e-6)
    assert out["rule"] == {"name": "false-alarm-budget", "false_alarms_per_day": 1.0, "tail": "gumbel"}
    fit = out["fit"]
    assert fit["p_window"] == pytest.approx(1.0 / 86400)
    assert fit["fit"]["family"] == "gumbel" and fit["fit"]["n_maxima"] == len(maxima)
    b = fit["bootstrap"]
    assert b["n"] == 50 and b["phi_p5"] < out["phi"] < b["phi_p95"]
    # phi is the 1 - p quantile of the maximum-likelihood Gumbel fit, computed here with scipy
    assert out["phi"] == pytest.approx(stats.gumbel_r(*stats.gumbel_r.fit(maxima)).isf(fit["p_window"]), rel=1e-4)
    held_max = np.array([m for p in held for m in monitor_window_maxima(frame_scores(p), 1.0)])
    check = out["check"]
    assert check["windows"] == len(held_max) and check["false_alarms"] == int(np.sum(held_max >= out["phi"]))
    assert check["target_per_day"] == pytest.approx(1.0)
    assert check["windows_needed"] > 100_000  # what it would take to show 1/day in 1-s windows
    assert "held-out normal windows" in proc.stderr and "target 1/day" in proc.stderr and "not confirmed" in proc.stderr
    saved = json.loads(store.read_text())["machines"]["id_00"]
    assert saved["phi"] == out["phi"] and saved["window_s"] == 1.0 and saved["window"] == "1"
    assert len(saved["heldout_recordings"]) == 3
    assert len(saved["recordings"]) == 7


def test_target_fpr_checked_on_a_separate_directory(model, fan, frame_scores, tmp_path, env):
    held = tmp_path / "held_out"
    held.mkdir()
    for p in fan["test_normal"]:  # links to the 5 real test normals, no audio copied
        (held / p.name).symlink_to(p)
    proc, out = calibrate(*fan["train"], "--model", model, "--machine-id", "00", "--store", tmp_path / "phi.json",
                          "--target-fpr", "0.2", "--check", held, "--votes", "1/1", env=env)
    train_max = [frame_scores(p).max() for p in fan["train"]]
    assert out["phi"] == pytest.approx(np.quantile(train_max, 0.8), rel=1e-6)  # margin 1 with a target rate
    assert out["rule"] == {"name": "clip-max-quantile", "quantile": 0.8, "margin": 1.0, "target_fpr": 0.2}
    held_max = np.array([frame_scores(p).max() for p in fan["test_normal"]])
    check = out["check"]
    assert check["windows"] == 5 and check["false_alarms"] == int(np.sum(held_max >= out["phi"]))
    assert check["rate_per_window"] == check["false_alarms"] / 5
    assert check["meets_target"] == (check["false_alarms"] / 5 <= 0.2)
    assert check["per_day"] == pytest.approx(check["rate_per_window"] * 86400 / 10.0)


def test_show_prints_the_history(model, fan, tmp_path, env):
    store = tmp_path / "phi.json"
    _, first = calibrate(*fan["train"][:3], "--model", model, "--machine-id", "00", "--store", store, env=env)
    _, second = calibrate(*fan["train"], "--model", model, "--machine-id", "00", "--store", store,
                          "--quantile", "0.5", "--margin", "1.0", env=env)
    proc = cli("edge-calibrate", "--show", "--store", store, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "id_00:" and len(lines) == 3
    assert f"phi {first['phi']:.4g}" in lines[1] and "3 recordings" in lines[1]
    assert f"phi {second['phi']:.4g}" in lines[2] and "quantile 0.5" in lines[2] and "10 recordings" in lines[2]
    assert json.loads(store.read_text())["machines"]["id_00"]["phi"] == second["phi"]


@pytest.mark.parametrize("args, words", [
    (["--holdout", "1.5"], ["--holdout"]),
    (["--holdout", "0.99"], ["leaves no recording"]),
    (["--target-fpr", "0.1", "--false-alarms-per-day", "1"], ["not both"]),
    (["--false-alarms-per-day", "1"], ["at least 5"]),  # 3 recordings, one window each
    (["--window", "100"], ["shorter than one window"]),
    (["--window", "hourly"], ["--window"]),
    (["--window", "gate", "--gate-min-off-s", "-1"], ["--gate-min-off-s"]),
    (["--false-alarms-per-day", "1", "--margin", "1.2"], ["--margin"]),
])
def test_calibrate_user_mistakes(model, fan, tmp_path, env, args, words):
    proc = cli("edge-calibrate", *fan["train"][:3], "--model", model, "--machine-id", "00",
               "--store", tmp_path / "phi.json", *args, env=env)
    assert_one_line_error(proc)
    error = next(line for line in proc.stderr.splitlines() if line.startswith("Error:"))
    for w in words:
        assert w in error, error
    assert not (tmp_path / "phi.json").exists()


def test_calibrate_needs_recordings_unless_show(model, tmp_path, env):
    assert_one_line_error(cli("edge-calibrate", "--model", model, "--machine-id", "00", env=env))
    proc = cli("edge-calibrate", "--show", "--store", tmp_path / "none.json", "--machine-id", "03", env=env)
    assert_one_line_error(proc)
    assert "never calibrated" in proc.stderr


def test_the_python_api_calibrates_as_the_command_does(model, fan, tmp_path, env):
    """calibrate_machine (no click) saves the record the command would and returns it typed; a record of
    edge-calibrate loads back from the store as the same PhiRecord."""
    from pathlib import Path

    from edge_asd.edge.calibrate.fit import CalibrateOptions, RuleOptions, WindowOptions, calibrate_machine
    from edge_asd.edge.runtime import phi_store

    store = tmp_path / "phi.json"
    done = calibrate_machine(CalibrateOptions(recordings=tuple(map(Path, fan["train"][:3])), model_path=Path(model),
                                              machine_id="00", store=store, window=WindowOptions("1"),
                                              rule=RuleOptions(quantile=0.9, margin=1.0)))
    assert done.machine_id == "id_00" and len(done.recordings) == 3 and len(done.fit_windows) > 3
    assert done.record.rule == {"name": "clip-max-quantile", "quantile": 0.9, "margin": 1.0}
    assert phi_store.history(store) == {"id_00": [done.record]}
    _, out = calibrate(*fan["train"][:3], "--model", model, "--machine-id", "00", "--store", store, "--window", "1",
                       "--quantile", "0.9", "--margin", "1.0", env=env)
    assert out["phi"] == done.record.phi and out["window_maxima"] == done.record.window_maxima
    assert phi_store.history(store)["id_00"][1].to_dict() == json.loads(store.read_text())["machines"]["id_00"]
