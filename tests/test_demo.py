"""examples/demo.py's evaluation (make demo's summary) on the real fan test clips with the test-suite model:
the AUC / pAUC of the float and int8 model beside the loudness reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from edge_asd.core.loudness import clip_level_dbfs, loudness_reference
from edge_asd.firmware_io.audio_file import read_audio

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def test_summary_has_the_loudness_reference_of_the_test_clips(checkpoint, int8_model, data_root):
    from edge_asd.datasets.layout import scan

    spec = importlib.util.spec_from_file_location("demo", SCRIPT)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    test = [c for c in scan(data_root, machine_type="fan", machine_id="id_00") if c.split == "test"]
    aucs = demo.evaluate(checkpoint, Path(int8_model[0]), test)
    levels = [clip_level_dbfs(read_audio(c.path, 16000)) for c in test]
    expected = loudness_reference([c.label == "anomaly" for c in test], levels)
    assert aucs["level"] == pytest.approx(expected)
    rows = demo.auc_rows(aucs)
    assert list(rows) == ["AUC float / int8", "pAUC(0.1) float / int8", "loudness reference (clip RMS level as the score)"]
    assert rows["loudness reference (clip RMS level as the score)"] == f"AUC {expected[0]:.3f}, pAUC(0.1) {expected[1]:.3f}"
    assert rows["AUC float / int8"] == f"{aucs['float'][0]:.3f} / {aucs['int8'][0]:.3f}"
