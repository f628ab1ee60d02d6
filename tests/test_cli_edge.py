"""The five commands as users run them (subprocesses): help, calibrate, monitor, train, convert, and a
one-line error for each user mistake."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import cli

EVENT_FIELDS = {"schema", "event", "time_s", "frame", "score", "running_max", "phi", "machine_id", "model_sha256",
                "window", "input", "wall_time", "evidence"}


def records_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def events_of(stdout: str) -> list[dict]:
    """The anomaly event lines."""
    return [r for r in records_of(stdout) if r["event"] == "anomaly"]


def same_run(records: list[dict]) -> list[dict]:
    """Records without what differs between two runs of the same audio (wall clock, input name)."""
    return [{k: v for k, v in r.items() if k not in ("wall_time", "input")} for r in records]


def reference_events(scores: np.ndarray, phi: float, window_s: float | None = None) -> list[tuple]:
    """(frame, window, running max before) of each event, by the rule of eqs. (4)/(11), brute force."""
    from edge_asd.core.features import vector_end_s
    from edge_asd.core.presets import get_preset

    cfg = get_preset("koizumi2019")
    times = [float(vector_end_s(i, cfg)) for i in range(len(scores))]
    win = [0 if window_s is None else int(t // window_s) for t in times]
    out = []
    for i, s in enumerate(scores):
        earlier = [float(scores[j]) for j in range(i) if win[j] == win[i]]
        prev = max(earlier) if earlier else None
        if s >= phi and (prev is None or s > prev):
            out.append((i, win[i], prev))
    return out


@pytest.fixture(scope="module")
def clip_scores(scorer):
    from edge_asd.firmware_io.audio_file import read_audio

    cache = {}

    def scores(path):
        if path not in cache:
            cache[path] = scorer.score_audio(read_audio(path, 16000))
        return cache[path]

    return scores


@pytest.fixture(scope="module")
def anomaly_clip(fan, clip_scores):
    """The real anomalous clip with the highest max frame score."""
    return max(fan["test_anomaly"], key=lambda p: float(clip_scores(p).max()))


def monitor(*args, env=None, input=None):
    proc = cli("edge-monitor", *args, env=env, input=input)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc, events_of(proc.stdout)


# help ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, words", [
    ("edge-train", ["--machine-type", "--something-else", "--epochs"]),
    ("edge-convert", ["--to", "--int8", "--calibration"]),
    ("edge-calibrate", ["--model", "--machine-id", "--quantile", "--margin"]),
    ("edge-monitor", ["--model", "--input", "--phi", "--window", "--events"]),
    ("edge-data", ["fetch"]),
])
def test_help(name, words):
    proc = cli(name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout
    for w in words:
        assert w in proc.stdout


# edge-calibrate -----------------------------------------------------------------------------------

def test_calibrate_writes_phi(calibrated, model, fan, clip_scores, scorer):
    store, proc = calibrated
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    maxima = [float(clip_scores(p).max()) for p in fan["train"]]
    assert out["machine_id"] == "id_00" and out["n_recordings"] == len(fan["train"]) == 10
    assert out["phi"] == pytest.approx(1.1 * max(maxima), rel=1e-6)  # default rule: 1.1 x worst normal
    assert out["store"] == str(store)
    assert out["clip_max_scores"]["max"] == pytest.approx(max(maxima), rel=1e-6)
    saved = json.loads(store.read_text())["machines"]["id_00"]
    assert saved["phi"] == out["phi"]
    assert saved["model_sha256"] == scorer.sha256
    assert saved["rule"] == {"name": "clip-max-quantile", "quantile": 1.0, "margin": 1.1}
    assert len(saved["recordings"]) == 10


def test_calibrate_median_rule_and_directory(model, fan, tmp_path, clip_scores, env):
    store = tmp_path / "phi.json"
    folder = tmp_path / "normals"
    folder.mkdir()
    for i, p in enumerate(fan["train"][:4]):  # links to the real clips, no audio copied; names that say no machine
        (folder / f"recording_{i}.flac").symlink_to(p)  # (an id_00 name is refused for id_03: test_input_names.py)
    proc = cli("edge-calibrate", folder, "--model", model, "--machine-id", "id_03", "--quantile", "0.5", "--margin",
               "1.0", "--store", store, "--votes", "1/1", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    expected = float(np.median([clip_scores(p).max() for p in sorted(fan["train"][:4])]))
    assert out["machine_id"] == "id_03" and out["n_recordings"] == 4
    assert out["phi"] == pytest.approx(expected, rel=1e-6)
    assert not Path(env["EDGE_ASD_STORE"]).exists()


def test_calibrate_uses_env_store(model, fan, tmp_path):
    store = tmp_path / "env_store.json"
    proc = cli("edge-calibrate", fan["train"][0], "--model", model, "--machine-id", "0",
               env={"EDGE_ASD_STORE": str(store)})
    assert proc.returncode == 0, proc.stderr
    assert "id_00" in json.loads(store.read_text())["machines"]


# edge-monitor -------------------------------------------------------------------------------------

def test_monitor_with_calibrated_phi(calibrated, model, fan, anomaly_clip, clip_scores, scorer, env):
    store, _ = calibrated
    phi = json.loads(store.read_text())["machines"]["id_00"]["phi"]
    for clip in (fan["test_normal"][0], anomaly_clip):
        proc, events = monitor("--model", model, "--input", clip, "--store", store, env=env)
        scores = clip_scores(clip)
        assert [e["frame"] for e in events] == [f for f, _, _ in reference_events(scores, phi)]
        for e in events:
            assert set(e) == EVENT_FIELDS
            assert e["phi"] == phi and e["machine_id"] == "id_00" and e["model_sha256"] == scorer.sha256
        summary = [line for line in proc.stderr.splitlines() if line.startswith("edge-monitor:")]
        assert len(summary) == 1
        assert f"{len(scores)} frames" in summary[0] and f"{len(events)} events" in summary[0]
        assert "real-time factor" in summary[0] and "10.0 s of audio" in summary[0]
    # the normal test clip stays under the phi calibrated on the train normals
    assert clip_scores(fan["test_normal"][0]).max() < phi


def test_monitor_store_phi_raises_events_on_anomaly(model, fan, anomaly_clip, clip_scores, scorer, tmp_path, env):
    """phi at the median train normal: the loudest real anomaly crosses it, and the events follow the rule."""
    store = tmp_path / "phi.json"
    proc = cli("edge-calibrate", *fan["train"], "--model", model, "--machine-id", "00", "--quantile", "0.5",
               "--margin", "1.0", "--store", store, "--votes", "1/1")
    phi = json.loads(proc.stdout)["phi"]
    scores = clip_scores(anomaly_clip)
    assert scores.max() > phi
    proc, events = monitor("--model", model, "--input", anomaly_clip, "--store", store, "--machine-id", "id_00", env=env)
    assert len(events) >= 1
    ref = reference_events(scores, phi)
    assert [(e["frame"], e["window"]) for e in events] == [(f, w) for f, w, _ in ref]
    for e, (f, _, prev) in zip(events, ref):
        assert e["score"] == pytest.approx(float(scores[f]), rel=1e-6) and e["score"] >= phi
        assert e["running_max"] == (None if prev is None else pytest.approx(prev, rel=1e-6))
        assert e["time_s"] == pytest.approx((f * 256 + 5632) / 16000, abs=1e-4)
        assert e["schema"] == 3 and e["event"] == "anomaly" and e["machine_id"] == "id_00"
        assert e["model_sha256"] == scorer.sha256


@pytest.fixture(scope="module")
def low_phi(anomaly_clip, clip_scores):
    """Below most frames of the anomalous clip."""
    return float(np.quantile(clip_scores(anomaly_clip), 0.05))


def test_monitor_low_phi_running_max_increases(model, anomaly_clip, low_phi, env):
    proc, events = monitor("--model", model, "--input", anomaly_clip, "--phi", str(low_phi), env=env)
    assert len(events) >= 1
    assert all(set(e) == EVENT_FIELDS and e["window"] == 0 for e in events)
    assert all(e["score"] >= low_phi and e["phi"] == pytest.approx(low_phi) for e in events)
    assert all(e["machine_id"] == "unknown" for e in events)  # --phi without --machine-id
    scores = [e["score"] for e in events]
    assert all(b > a for a, b in zip(scores, scores[1:]))
    for a, b in zip(events, events[1:]):
        assert b["running_max"] == a["score"]  # the running max rises with every event
        assert b["frame"] > a["frame"] and b["time_s"] > a["time_s"]
    assert f"{len(events)} events" in proc.stderr


def test_monitor_window(model, anomaly_clip, low_phi, clip_scores, env):
    _, whole = monitor("--model", model, "--input", anomaly_clip, "--phi", str(low_phi), env=env)
    _, events = monitor("--model", model, "--input", anomaly_clip, "--phi", str(low_phi), "--window", "2", env=env)
    windows = sorted({e["window"] for e in events})
    assert len(windows) > 1
    assert len(events) > len(whole)
    for e in events:
        assert int(e["time_s"] // 2) == e["window"]
    ref = reference_events(clip_scores(anomaly_clip), low_phi, window_s=2.0)
    assert [(e["frame"], e["window"]) for e in events] == [(f, w) for f, w, _ in ref]
    # within a window the running max rises; it restarts in the next window
    for w in windows:
        mine = [e for e in events if e["window"] == w]
        assert all(b["score"] > a["score"] and b["running_max"] == a["score"] for a, b in zip(mine, mine[1:]))


def test_monitor_pcm_stdin_matches_file(model, anomaly_clip, low_phi, env):
    _, from_file = monitor("--model", model, "--input", anomaly_clip, "--phi", str(low_phi), env=env)
    samples, rate = sf.read(anomaly_clip, dtype="int16")
    assert rate == 16000
    pcm = samples.astype("<i2").tobytes()
    _, from_pcm = monitor("--model", model, "--input", "-", "--phi", str(low_phi), env=env, input=pcm)
    assert same_run(from_pcm) == same_run(from_file) and len(from_file) >= 1
    _, declared = monitor("--model", model, "--input", "-", "--pcm-rate", "16000", "--phi", str(low_phi), env=env,
                          input=pcm)
    assert same_run(declared) == same_run(from_file)


def test_monitor_wav_on_stdin(model, anomaly_clip, low_phi, tmp_path, env):
    _, from_file = monitor("--model", model, "--input", anomaly_clip, "--phi", str(low_phi), env=env)
    samples, _ = sf.read(anomaly_clip, dtype="int16")
    wav = tmp_path / "clip.wav"
    sf.write(wav, samples, 16000, subtype="PCM_16")
    _, from_wav = monitor("--model", model, "--input", "-", "--phi", str(low_phi), env=env, input=wav.read_bytes())
    assert same_run(from_wav) == same_run(from_file)


def test_monitor_events_file_appends(model, anomaly_clip, low_phi, tmp_path, env):
    events_file = tmp_path / "events.jsonl"
    old = '{"earlier": "line"}\n'
    events_file.write_text(old)
    proc, events = monitor("--model", model, "--input", anomaly_clip, "--phi", str(low_phi), "--events",
                           events_file, env=env)
    assert len(events) >= 1
    assert events_file.read_text() == old + proc.stdout
    again, _ = monitor("--model", model, "--input", anomaly_clip, "--phi", str(low_phi), "--events", events_file, env=env)
    assert events_file.read_text() == old + proc.stdout + again.stdout  # appended, the first run's lines kept
    assert same_run(events_of(again.stdout)) == same_run(events_of(proc.stdout))


def test_monitor_ctrl_c_prints_the_summary_and_keeps_events(model, anomaly_clip, low_phi, tmp_path, env):
    """A live stream interrupted with Ctrl-C (SIGINT): events already written stay, the summary is printed, exit 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import BIN
    from edge_asd.firmware_io.audio_file import read_audio

    pcm = (read_audio(anomaly_clip, 16000) * 32767).astype("<i2").tobytes()
    events_file = tmp_path / "events.jsonl"
    exe = BIN / "edge-monitor"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge_asd.edge.cli.monitor"]
    proc = subprocess.Popen(cmd + ["--model", str(model), "--phi", str(low_phi), "--input", "-", "--events", str(events_file)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})
    proc.stdin.write(pcm)  # the whole clip, but the stream stays open like a microphone's
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and '"anomaly"' not in (events_file.read_text() if events_file.exists() else ""):
        time.sleep(0.1)
    time.sleep(1.0)  # let it drain the clip and block on the open stream
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)  # stdin stays open: the stop comes from the signal, not from an end of input
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdin.close()
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    assert "edge-monitor:" in err.decode() and "frames" in err.decode() and "real-time factor" in err.decode()
    stdout_events = events_of(out.decode())
    assert stdout_events and [json.loads(line) for line in events_file.read_text().splitlines()] == records_of(out.decode())
    summary = records_of(out.decode())[-1]  # the last line: the summary, with why it ended
    assert summary["event"] == "summary" and summary["reason"] == "stopped" and summary["frames"] > 0


def test_monitor_piped_into_head_stops_quietly_and_keeps_every_event(model, anomaly_clip, low_phi, tmp_path, env):
    """``edge-monitor ... | head -2``: the reader closes stdout after two lines; the monitor stops as on SIGTERM,
    exit 0, no "Broken pipe" error, and the events file holds every line up to its summary."""
    import os
    import subprocess
    import sys

    from conftest import BIN

    events_file = tmp_path / "events.jsonl"
    exe = BIN / "edge-monitor"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge_asd.edge.cli.monitor"]
    proc = subprocess.Popen(cmd + ["--model", str(model), "--phi", str(low_phi), "--input", str(anomaly_clip),
                                   "--events", str(events_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})
    head = [proc.stdout.readline() for _ in range(2)]
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert proc.returncode == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err and "ERROR" not in err, err
    lines = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert [json.loads(line) for line in head] == lines[:2]
    # its lines overfill the pipe, so the run ends early, stopped, not at the end of the clip
    assert lines[-1]["event"] == "summary" and lines[-1]["frames"] > 0 and lines[-1]["reason"] == "stopped"


def test_monitor_runs_onnx_models_with_the_same_events_as_the_float_scores(onnx_model, anomaly_clip, low_phi, env):
    """The .onnx file runs on onnxruntime; its events follow its own scores, computed in-process."""
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio

    path = Path(onnx_model[0])
    scorer = Scorer(path)
    assert scorer.backend.name == "onnxruntime"
    scores = scorer.score_audio(read_audio(anomaly_clip, 16000))
    proc, events = monitor("--model", path, "--phi", str(low_phi), "--input", anomaly_clip, env=env)
    assert "onnxruntime" in proc.stderr
    assert [e["frame"] for e in events] == [f for f, _, _ in reference_events(scores, low_phi)]
    assert events and all(e["model_sha256"] == scorer.sha256 for e in events)
