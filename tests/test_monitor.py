"""The monitoring loop in-process, with the session's real int8 model on real fan audio: the microphone
path (stand-in PyAudio) against the file path, lost samples, machine-on windows, evidence clips, the
rotating JSONL log, and a stop from another thread."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from edge_asd.edge.runtime.decision import RunningMaxDetector
from edge_asd.edge.runtime.evidence import EvidenceRecorder
from edge_asd.edge.runtime.stream_loop import Monitor
from edge_asd.edge.runtime.windows import EnergyGate, FixedWindows
from edge_asd.firmware_io.blocks import Gap
from edge_asd.firmware_io.sinks import RotatingJsonLinesFile
from edge_asd.firmware_io.sources import open_source
from standin_audio import StandInPyAudio

RATE = 16000


@pytest.fixture(scope="module")
def anomaly_scores(scorer, anomaly):
    return scorer.score_audio(anomaly)


def run(source, scorer, phi, **kw):
    records = []
    mon = Monitor(source, scorer, RunningMaxDetector(phi, "id_00", scorer.sha256), records.append, "test", **kw)
    summary = mon.run()
    return records, summary


def of(records, kind):
    return [r for r in records if r["event"] == kind]


def blocks(audio, n):
    return (audio[i:i + n] for i in range(0, len(audio), n))


def test_microphone_path_gives_the_file_path_events(scorer, anomaly, anomaly_scores):
    """The real clip played through the stand-in sound card's callback: same frames, scores, events."""
    phi = float(np.quantile(anomaly_scores, 0.5))
    from_file, _ = run(blocks(anomaly, 4096), scorer, phi)
    mod = StandInPyAudio((anomaly * 32768).round().astype("<i2").tobytes(), pace_s=0.001)
    mic = open_source("mic", RATE, 1536, stall_s=0.5, pyaudio_module=mod)
    records = []
    mon = Monitor(mic, scorer, RunningMaxDetector(phi, "id_00", scorer.sha256), records.append, "test")
    with pytest.raises(Exception, match="stopped delivering"):  # the stand-in stalls after the clip
        mon.run()
    strip = lambda rs: [(r["frame"], round(r["score"], 3), r["running_max"] and round(r["running_max"], 3))  # noqa: E731
                        for r in of(rs, "anomaly")]
    assert len(of(from_file, "anomaly")) >= 2 and strip(records) == strip(from_file)
    summary = of(records, "summary")[0]
    assert summary["frames"] == len(anomaly_scores) and summary["reason"].startswith("error: ")
    assert of(records, "verdict")[0]["anomalous"] is True  # the open window was closed with its verdict


def test_lost_samples_restart_the_features_and_keep_true_time(scorer, anomaly):
    """A Gap: no context vector spans the hole, times after it count the lost samples, the summary says so."""
    cut, lost = 3 * RATE, RATE // 2
    src = [anomaly[:cut], Gap(lost), anomaly[cut + lost:]]
    every_frame = FixedWindows(0.001, RATE)  # a window per frame: every frame is its window's first max, an event
    records, summary = run(iter(src), scorer, phi=-1e9, windows=every_frame)
    events = of(records, "anomaly")
    assert summary.dropped_samples == lost and summary.audio_s == pytest.approx(len(anomaly) / RATE)
    before, after = scorer.score_audio(anomaly[:cut]), scorer.score_audio(anomaly[cut + lost:])
    assert [e["frame"] for e in events] == list(range(len(before) + len(after)))  # frames count on across the gap
    assert summary.frames == len(before) + len(after)
    # after the gap the features restart: the first vector ends 5632 samples after it, scores as if a new stream
    got_after = events[len(before):]
    assert got_after[0]["time_s"] == pytest.approx((cut + lost + 5632) / RATE, abs=1e-4)
    np.testing.assert_allclose([e["score"] for e in got_after], after, rtol=1e-5)
    np.testing.assert_allclose([e["score"] for e in events[:len(before)]], before, rtol=1e-5)
    assert [e["time_s"] for e in got_after] == pytest.approx(list((cut + lost + 5632 + 256 * np.arange(len(after))) / RATE),
                                                            abs=1e-4)


def test_gate_windows_give_one_verdict_per_machine_cycle(scorer, anomaly, anomaly_scores):
    """Off 2 s (40 dB down), on 3 s, off 2 s, on 3 s: two windows, each with its own max and verdict."""
    quiet = 0.01 * anomaly
    audio = np.concatenate([quiet[:2 * RATE], anomaly[2 * RATE:5 * RATE], quiet[5 * RATE:7 * RATE],
                            anomaly[7 * RATE:]]).astype(np.float32)
    phi = float(np.quantile(anomaly_scores, 0.9))
    gate = EnergyGate(RATE, 256, on_db=-50.0, min_on_s=0.5, min_off_s=1.0)
    records, summary = run(blocks(audio, 4096), scorer, phi, windows=gate)
    verdicts = of(records, "verdict")
    assert [v["window"] for v in verdicts] == [0, 1]
    assert verdicts[0]["start_s"] == pytest.approx(2.5, abs=0.05) and verdicts[0]["end_s"] == pytest.approx(6.0, abs=0.05)
    assert verdicts[1]["start_s"] == pytest.approx(7.5, abs=0.05) and verdicts[1]["end_s"] == pytest.approx(10.0, abs=0.02)
    scores = scorer.score_audio(audio)
    times = (np.arange(len(scores)) * 256 + 5632) / RATE
    for v in verdicts:
        inside = (times >= v["start_s"] - 1e-6) & (times <= v["end_s"] + 1e-6)
        assert v["frames"] == inside.sum()
        assert v["max_score"] == pytest.approx(float(scores[inside].max()), rel=1e-5)  # eq. 11 per window
        assert v["anomalous"] == (v["max_score"] >= phi)
    assert all(any(v["start_s"] <= e["time_s"] <= v["end_s"] for v in verdicts) for e in of(records, "anomaly"))
    assert summary.off_frames == len(scores) - sum(v["frames"] for v in verdicts) > 0


def test_evidence_clips_hold_the_audio_around_each_event(scorer, anomaly, anomaly_scores, tmp_path):
    phi = float(np.quantile(anomaly_scores, 0.99))
    ev = EvidenceRecorder(tmp_path / "ev", "fan/1:id_00", scorer.features, before_s=1.0, after_s=0.5, png=True,
                          max_clip_s=3.0)
    records, summary = run(blocks(anomaly, 4096), scorer, phi, evidence=ev)
    events = of(records, "anomaly")
    assert events and summary.evidence_clips == len({e["evidence"]["audio"] for e in events}) >= 1
    for e in events:
        path = e["evidence"]["audio"]
        assert path.startswith(str(tmp_path / "ev" / "fan_1_id_00_")) and path.endswith(".flac")
        clip, rate = sf.read(path, dtype="float32")
        assert rate == RATE and sf.info(path).format == "FLAC"
        end = int(round(e["time_s"] * RATE))
        first = next(x for x in events if x["evidence"]["audio"] == path)  # the event that opened the clip
        start = max(0, int(round(first["time_s"] * RATE)) - 5632 - RATE)
        assert start + len(clip) >= min(end + RATE // 2, len(anomaly))  # covers this event and its after_s
        np.testing.assert_allclose(clip, anomaly[start:start + len(clip)], atol=1.0 / 32768)
        png = e["evidence"]["image"]
        assert png.endswith(".png") and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert all(len(sf.read(p)[0]) <= 3 * RATE for p in {e["evidence"]["audio"] for e in events})


def test_an_evidence_clip_a_full_disk_cuts_short_is_not_left_at_its_path(scorer, anomaly, anomaly_scores, tmp_path,
                                                                          monkeypatch):
    import errno
    import os

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("edge_asd.core.atomic_io.os.fsync", full)
    ev = EvidenceRecorder(tmp_path / "ev", "fan/1:id_00", scorer.features, before_s=1.0, after_s=0.5)
    records, summary = run(blocks(anomaly, 4096), scorer, float(np.quantile(anomaly_scores, 0.99)), evidence=ev)
    paths = {e["evidence"]["audio"] for e in of(records, "anomaly")}
    assert paths and summary.evidence_clips == 0 and ev.n_failed == len(paths)
    assert list((tmp_path / "ev").iterdir()) == []  # neither the clips nor their temporary files


def test_rotating_log_keeps_whole_lines(tmp_path):
    path = tmp_path / "log" / "events.jsonl"
    sink = RotatingJsonLinesFile(path, max_bytes=400, backups=2)
    for k in range(40):
        sink.write({"schema": 2, "event": "anomaly", "frame": k, "pad": "x" * 40})
    sink.close()
    files = [path.with_name(n) for n in ("events.jsonl.2", "events.jsonl.1", "events.jsonl")]
    assert all(f.exists() for f in files) and not path.with_name("events.jsonl.3").exists()
    frames = []
    for f in files:
        assert f.stat().st_size <= 400
        frames += [json.loads(line)["frame"] for line in f.read_text().splitlines()]
    assert frames == list(range(40 - len(frames), 40)) and len(frames) >= 9  # newest kept, in order, unsplit
    again = RotatingJsonLinesFile(path, max_bytes=400, backups=2)  # a restart appends to the current file
    again.write({"frame": 40})
    again.close()
    assert json.loads(path.read_text().splitlines()[-1]) == {"frame": 40}


def test_finish_from_another_thread_while_the_source_blocks(scorer, anomaly):
    """SIGTERM while a live source waits for audio: the verdict and summary are still written, once."""
    release = threading.Event()

    def stuck():
        yield anomaly[:2 * RATE]
        release.wait(30)  # a read that never returns

    records = []
    mon = Monitor(stuck(), scorer, RunningMaxDetector(0.0, "id_00", scorer.sha256), records.append, "test")
    worker = threading.Thread(target=mon.run, daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    while not of(records, "anomaly") and time.monotonic() < deadline:
        time.sleep(0.05)
    summary = mon.finish("stopped")
    assert mon.finish("stopped") is summary
    release.set()
    worker.join(10)
    assert [r["event"] for r in records].count("summary") == 1 and records[-1]["event"] == "summary"
    assert of(records, "verdict")[0]["frames"] == summary.frames > 0 and summary.reason == "stopped"
