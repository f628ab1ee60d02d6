"""examples/alert_policies.py with the test-suite model: the stored phi's row counts the alarms edge-monitor raises
on the real fan id_00 test normals streamed back to back, and its delays are those of edge-monitor's alarm lines
(the monitoring loop run in-process on each clip)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import cli
from edge_asd.edge.runtime.decision import RunningMaxDetector
from edge_asd.edge.runtime.phi_store import PhiRecord
from edge_asd.edge.runtime.scorer import Scorer
from edge_asd.edge.runtime.stream_loop import Monitor
from edge_asd.firmware_io.audio_file import read_audio

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "alert_policies.py"


def test_poisson_bound_of_no_event_is_three():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from alert_policies import poisson_upper95
    finally:
        sys.path.pop(0)
    assert poisson_upper95(0) == pytest.approx(2.996, abs=1e-3) and poisson_upper95(3) == pytest.approx(7.754, abs=1e-3)


def test_stored_policy_row_matches_edge_monitor(model, fan, tmp_path, env):
    store = tmp_path / "phi.json"
    cal = cli("edge-calibrate", *fan["train"], "--model", model, "--machine-id", "00", "--store", store,
              "--votes", "31/31", "--quantile", "0.5", "--margin", "1.0", env=env)  # a low phi: alarms to count
    assert cal.returncode == 0, cal.stderr
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--model", model, "--machine-type", "fan", "--machine-id", "id_00",
                           "--store", store, "--out", out, "-q"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["k"] == row["n"] == 31 and "| 31/31 (0.5 s above phi) (the store's) |" in proc.stdout
    record = PhiRecord.from_dict(json.loads(store.read_text())["machines"]["id_00"])
    scorer = Scorer(model)

    def alarm_ons(audio):  # edge-monitor's loop in-process, as it reads a file
        lines = []
        Monitor((audio[i:i + 4096] for i in range(0, len(audio), 4096)), scorer,
                RunningMaxDetector(record.phi, "id_00", scorer.sha256, record.alert_policy()), lines.append).run()
        return [e["time_s"] for e in lines if e["event"] == "alarm" and e["state"] == "on"]

    normals = np.concatenate([read_audio(f, 16000) for f in fan["test_normal"]])
    assert row["false_alarms"] == len(alarm_ons(normals))
    first = [(ons[0] if ons else None) for ons in (alarm_ons(read_audio(f, 16000)) for f in fan["test_anomaly"])]
    hit = [t for t in first if t is not None]
    assert row["real_anomalies"]["never"] == first.count(None) < 10
    assert row["real_anomalies"]["median_s"] == pytest.approx(float(np.median(hit)), abs=1e-3)
