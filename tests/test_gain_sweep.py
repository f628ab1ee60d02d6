"""examples/gain_sweep.py on the real fan recordings with the test-suite model: 0 dB is the unscaled
scoring, +6 dB raises a normal clip's max score, and the AUC at 0 dB stands beside the loudness reference."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, cli
from edge_asd.core.loudness import clip_level_dbfs, loudness_reference
from edge_asd.core.metrics import auc_pauc
from edge_asd.edge.runtime.scorer import Scorer
from edge_asd.firmware_io.audio_file import read_audio

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "gain_sweep.py"


@pytest.fixture(scope="module")
def gain_sweep():
    spec = importlib.util.spec_from_file_location("gain_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gain_sweep"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_zero_db_gives_the_unscaled_scores_and_plus_6_db_raises_the_max(gain_sweep, int8_model, fan):
    scorer = Scorer(int8_model[0])
    clips = [read_audio(p, 16000) for p in fan["test_normal"][:2]]
    unscaled = [float(scorer.score_audio(c).max()) for c in clips]
    phi = float(np.mean(unscaled))
    rows = gain_sweep.sweep(scorer.score_audio, clips, (0.0, 6.0), phi)
    zero, plus6 = rows
    assert zero.gain_db == 0.0 and zero.max_scores == tuple(unscaled) and zero.clipped_samples == 0
    assert all(loud > quiet for quiet, loud in zip(zero.max_scores, plus6.max_scores))
    for r in rows:
        assert r.n_over_phi == sum(m >= phi for m in r.max_scores) and r.false_alarm_rate == r.n_over_phi / 2
        assert r.median_max == pytest.approx(np.median(r.max_scores)) and r.max_max == max(r.max_scores)
    scaled, n_clipped = gain_sweep.apply_gain(np.array([0.1, -0.6, 0.9]), 6.0)
    assert n_clipped == 2 and scaled.tolist() == pytest.approx([0.1 * 10 ** 0.3, -1.0, 1.0])


def test_command_prints_the_sweep_and_the_auc_beside_the_loudness_reference(int8_model, fan, data_root, tmp_path):
    out = tmp_path / "sweep.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data_root), "--machine-type", "fan",
                           "--machine-id", "00", "--model", str(int8_model[0]), "--phi", "1e9", "--gains", "-1,0,1",
                           "--out", str(out), "-q"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| gain dB |") and [line.split(" | ")[0] for line in table[1:4]] == ["| -1", "| +0", "| +1"]
    assert all(line.endswith("| 0 / 5 | 0.00 |") for line in table[1:4])  # phi 1e9: no false alarm
    doc = json.loads(out.read_text())
    assert doc["machine_id"] == "id_00" and len(doc["normal_clips"]) == 5 and len(doc["anomalous_clips"]) == 10
    names = doc["normal_clips"] + doc["anomalous_clips"]
    assert [p.name for p in fan["test_normal"] + fan["test_anomaly"]] == names
    audio = [read_audio(p, 16000) for p in fan["test_normal"] + fan["test_anomaly"]]
    y = [False] * 5 + [True] * 10
    level = loudness_reference(y, [clip_level_dbfs(a) for a in audio])
    assert (doc["auc_at_0db"]["level"]["auc"], doc["auc_at_0db"]["level"]["pauc"]) == pytest.approx(level)
    scorer = Scorer(int8_model[0])
    model = auc_pauc(y, [scorer.score_audio(a).max() for a in audio])
    assert (doc["auc_at_0db"]["max"]["auc"], doc["auc_at_0db"]["max"]["pauc"]) == pytest.approx(model)
    assert f"| loudness reference (clip RMS level as the score) | {level[0]:.3f} | {level[1]:.3f} |" in proc.stdout
    assert doc["gains"][1]["max_scores"] == pytest.approx([scorer.score_audio(a).max() for a in audio[:5]])


def test_command_needs_a_phi(int8_model, data_root):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data_root), "--model", str(int8_model[0])],
                          capture_output=True, text=True, timeout=600)
    assert_one_line_error(proc)
    assert "--phi" in proc.stderr and "--store" in proc.stderr


def test_phi_from_the_store_edge_calibrate_wrote(gain_sweep, int8_model, fan, tmp_path):
    """--store: phi is the record edge-calibrate saved for this machine ID and model file (a typed PhiRecord)."""
    store = tmp_path / "phi.json"
    proc = cli("edge-calibrate", "--model", int8_model[0], "--machine-id", "00", "--store", store, *fan["train"][:3])
    assert proc.returncode == 0, proc.stderr
    phi, source = gain_sweep.resolve_phi(None, store, "id_00", Scorer(int8_model[0]))
    assert phi == json.loads(store.read_text())["machines"]["id_00"]["phi"] and source == f"{store} (id_00)"
