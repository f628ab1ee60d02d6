"""bench/soak.py on a few minutes of real fan audio (issue 19, part 4): edge-monitor with 1-s windows, events
and evidence keeps its descriptors flat and writes the same lines and clips as a straight run of the audio."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_a_short_soak_keeps_descriptors_flat_and_events_identical(model, scorer, anomaly, data_root, tmp_path):
    import soak

    phi = float(np.quantile(scorer.score_audio(anomaly), 0.9))
    out = tmp_path / "soak.json"
    code = soak.main(["--model", str(model), "--phi", str(phi), "--hours", "0.03", "--sample-s", "0.05",
                      "--data", str(data_root), "--json", str(out)])
    r = json.loads(out.read_text())
    assert code == 0 and r["events_identical"] is True
    assert r["audio_hours"] == 0.03 and r["events"] > 50 and r["evidence_clips"] > 0
    assert r["fds_end"] <= r["fds_start"] and r["fds_peak"] <= r["fds_start"] + 2  # + an evidence clip's temporary
    assert 0 < r["rss_start_mb"] <= r["rss_peak_mb"] and r["samples"] > 5
