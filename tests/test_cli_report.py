"""edge-report as users run it: pictures from a real event log, a scored real recording, the real fan
normals and the labelled fan test folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_one_line_error, cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def clip_max(model):
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio

    scorer = Scorer(model)
    return lambda path: float(scorer.score_audio(read_audio(path, 16000)).max())


def assert_png(path):
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000, path


def test_report_from_recordings_and_event_log(model, fan, clip_max, tmp_path, env):
    phi = float(np.median([clip_max(p) for p in fan["train"]]))
    anomaly = max(fan["test_anomaly"], key=clip_max)
    log = tmp_path / "events.jsonl"
    mon = cli("edge-monitor", "--model", model, "--phi", phi, "--input", anomaly, "--events", log, env=env)
    assert mon.returncode == 0, mon.stderr
    n_events = sum(1 for line in log.read_text().splitlines() if json.loads(line).get("event") == "anomaly")
    assert n_events >= 1
    out = tmp_path / "report"
    normals = [a for p in fan["train"] for a in ("--normals", p)]  # the 10 id_00 clips (the folder holds other IDs)
    proc = cli("edge-report", "--events", log, "--recording", anomaly, *normals,
               "--test-dir", fan["test_normal"][0].parent, "--machine-id", "00", "--model", model, "--phi", phi,
               "--out", out, env=env)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    names = sorted(p.split("/")[-1] for p in res["figures"])
    assert names == ["normal_maxima.png", "roc.png", "timeline.png"]
    for p in res["figures"]:
        assert_png(p)
    page = (out / "index.html").read_text()
    assert all(f'src="{n}"' in page for n in names)
    assert res["events in log"] == n_events
    # the ROC numbers are those of the clip scores, computed here independently
    from edge_asd.core.metrics import auc_pauc

    clips = fan["test_normal"] + fan["test_anomaly"]
    auc, pauc = auc_pauc(np.array([p in fan["test_anomaly"] for p in clips]), np.array([clip_max(p) for p in clips]))
    assert float(res["test AUC"]) == pytest.approx(auc, abs=1e-4)
    assert float(res["test pAUC (FPR <= 0.1)"]) == pytest.approx(pauc, abs=1e-4)
    # beside it, the loudness reference: on fan id_00 the clip level alone separates the test clips
    from edge_asd.core.loudness import clip_level_dbfs, loudness_reference
    from edge_asd.firmware_io.audio_file import read_audio

    levels = [clip_level_dbfs(read_audio(p, 16000)) for p in clips]
    level_auc, level_pauc = loudness_reference(np.array([p in fan["test_anomaly"] for p in clips]), np.array(levels))
    reported = res["loudness reference AUC / pAUC (clip level as the score)"].split(" / ")
    assert [float(v) for v in reported] == pytest.approx([level_auc, level_pauc], abs=1e-4)
    assert level_auc == 1.0
    over = sum(clip_max(p) >= phi for p in fan["train"])
    assert res["normal windows over phi"] == f"{over} of 10"


def test_report_histogram_has_the_calibration_windows(model, fan, tmp_path, env):
    """--window 1: the histogram holds the maxima edge-calibrate fits phi to, the monitor's complete 1-s windows."""
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio

    scorer, maxima = Scorer(model), []
    for p in fan["train"][:3]:
        scores = scorer.score_audio(read_audio(p, 16000))
        k = (np.arange(len(scores)) * 256 + 5632) // 16000  # window of each score, stamped at its vector's end
        maxima += [scores[k == w].max() for w in range(10)]  # [10, 11) s is cut short by the 10-s clip's end
    phi = float(np.median(maxima))
    proc = cli("edge-report", *[a for p in fan["train"][:3] for a in ("--normals", p)], "--model", model,
               "--phi", phi, "--window", "1", "--out", tmp_path / "r", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["normal windows over phi"] == f"{sum(m >= phi for m in maxima)} of 30"


def test_report_from_an_event_log_alone(model, fan, clip_max, tmp_path, env):
    """No model: the timeline of the logged events, phi read from the log; a torn last line is skipped."""
    anomaly = max(fan["test_anomaly"], key=clip_max)
    log = tmp_path / "events.jsonl"
    cli("edge-monitor", "--model", model, "--phi", "0", "--input", anomaly, "--events", log, env=env)
    log.write_text(log.read_text() + '{"schema": 1, "event": "anom')
    proc = cli("edge-report", "--events", log, "--out", tmp_path / "r", env=env)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["phi"] == "0" and [p.split("/")[-1] for p in res["figures"]] == ["timeline.png"]
    assert_png(res["figures"][0])
    assert "incomplete" in proc.stderr


def test_a_monitor_restarted_after_a_torn_line_moves_it_aside_and_the_report_reads_whole_lines(model, fan, clip_max,
                                                                                              tmp_path, env):
    """A full disk or power cut left half a line; the next start moves it to events.jsonl.torn-<time> (named
    in one warning) and appends whole lines after the last whole one."""
    anomaly = max(fan["test_anomaly"], key=clip_max)
    log = tmp_path / "events.jsonl"
    cli("edge-monitor", "--model", model, "--phi", "0", "--input", anomaly, "--events", log, env=env)
    first = log.read_text()
    log.write_text(first + '{"schema": 2, "event": "anom')
    proc = cli("edge-monitor", "--model", model, "--phi", "0", "--input", anomaly, "--events", log, env=env)
    torn = list(tmp_path.glob("events.jsonl.torn-*"))
    assert proc.returncode == 0 and len(torn) == 1 and f"moved to {torn[0]}" in proc.stderr, proc.stderr
    assert torn[0].read_text() == '{"schema": 2, "event": "anom'
    text = log.read_text()
    assert text.startswith(first) and text.endswith("\n") and len(text.splitlines()) == 2 * len(first.splitlines())
    assert all(json.loads(line) for line in text.splitlines())
    report = cli("edge-report", "--events", log, "--out", tmp_path / "r", env=env)
    assert report.returncode == 0 and "incomplete" not in report.stderr, report.stderr


@pytest.mark.parametrize("args, words", [
    ([], ["nothing to draw"]),
    (["--recording", "x.wav"], ["--model"]),
    (["--events", "missing.jsonl"], ["no such event log"]),
])
def test_report_user_mistakes(tmp_path, env, args, words):
    proc = cli("edge-report", *args, "--out", tmp_path / "r", env=env)
    assert_one_line_error(proc)
    assert all(w in proc.stderr for w in words), proc.stderr


def test_report_rejects_a_file_that_is_not_an_event_log(tmp_path, env):
    bad = tmp_path / "notes.jsonl"
    bad.write_text("hello\nworld\n")
    proc = cli("edge-report", "--events", bad, "--out", tmp_path / "r", env=env)
    assert_one_line_error(proc)
    assert "not JSON" in proc.stderr


def test_report_shows_the_input_health_of_the_log(model, fan, clip_max, tmp_path, env):
    """A microphone dead for 5 s mid-stream: edge-monitor logs health lines, not anomalies, and edge-report
    shows the health states beside the events."""
    import soundfile as sf

    from edge_asd.firmware_io.audio_file import read_audio

    samples = read_audio(fan["test_normal"][0], 16000)
    samples[3 * 16000:8 * 16000] = 0.0
    wav = tmp_path / "dead_mic.wav"
    sf.write(wav, samples, 16000, subtype="FLOAT")
    log = tmp_path / "events.jsonl"
    phi = 1.5 * clip_max(fan["test_normal"][0])
    mon = cli("edge-monitor", "--model", model, "--phi", phi, "--input", wav, "--events", log, env=env)
    assert mon.returncode == 0, mon.stderr
    kinds = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert "health" in kinds and "anomaly" not in kinds
    proc = cli("edge-report", "--events", log, "--phi", phi, "--out", tmp_path / "r", env=env)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["input health in log (states started)"] == "silent x1" and facts["events in log"] == 0


@pytest.mark.parametrize("key, value", [("score", "x"), ("time_s", [1]), ("phi", None), ("phi", float("nan")),
                                        ("phi", -5), ("score", 10**400)])
def test_report_refuses_an_anomaly_line_with_a_damaged_number(tmp_path, env, key, value):
    """A complete JSON line whose numbers are damaged (make fuzz: TypeError, KeyError and OverflowError
    tracebacks from the plot and from phi) is refused as one line naming the line and the key."""
    line = {"schema": 3, "event": "anomaly", "time_s": 1.5, "frame": 40, "score": 900.0, "running_max": None,
            "phi": 812.5, "machine_id": "id_00", "model_sha256": "0" * 64, "window": 0, "input": "mic", "wall_time": "x"}
    log = tmp_path / "events.jsonl"
    log.write_text(json.dumps(line) + "\n" + json.dumps({**line, key: value}) + "\n")
    proc = cli("edge-report", "--events", log, "--out", tmp_path / "r", env=env)
    assert_one_line_error(proc)
    assert f"line 2: damaged anomaly line ({key} is" in proc.stderr, proc.stderr
