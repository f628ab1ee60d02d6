"""examples/finetune_demo.py, reduced: one machine type, one seed, a few updates, every 35th paper sound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reduced_demo_runs_end_to_end(int8_model, data_root, tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "finetune_demo.py"), "--data", str(data_root),
                           "--types", "fan", "--seeds", "1", "--base-updates", "3", "--ft-steps", "3",
                           "--sounds-every", "35", "--boot", "50", "--template", str(int8_model[0]), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads((out / "results.json").read_text())
    # fan: id_00 (MIMII, the only ID with train clips) is the target with the most test clips
    assert row["machine_type"] == "fan" and row["target"] == "id_00" and row["base_ids"] == ["id_02", "id_04", "id_06"]
    assert (row["n_finetune_clips"], row["n_held_normal"], row["n_anomaly"], row["n_mixtures"]) == (10, 5, 10, 12)
    assert row["finetune"]["steps"] == 3 and row["finetune"]["rejected_frames"] == 0
    for test in ("real", "anr"):
        r = row[test]
        for k in ("auc_shipped", "auc_finetuned"):
            assert 0.0 <= r[k]["low"] <= r[k]["value"] <= r[k]["high"] <= 1.0
        assert r["auc_delta"]["value"] == pytest.approx(r["auc_finetuned"]["value"] - r["auc_shipped"]["value"])
    assert "| fan (id_02,id_04,id_06 -> id_00) | real | 5/10 |" in proc.stdout
