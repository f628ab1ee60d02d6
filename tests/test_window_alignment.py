"""edge-calibrate fits phi on the windows edge-monitor decides on: for real fan recordings, the per-window
maxima edge-calibrate computes equal, window by window, the verdict lines edge-monitor writes for the same
recording and --window (count, index, start/end times, frames, max score and its time), for whole, fixed
windows that do and do not divide the recording, and the energy gate, whatever the block size of the stream."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import cli

RATE = 16000
WINDOWS = ["whole", "1", "0.7", "3", "gate"]
GATE_DB = "-50"  # the fan runs at about -40 dBFS; "off" below is the same clip 40 dB down


@pytest.fixture(scope="module")
def recordings(fan, tmp_path_factory) -> list:
    """A real 10-s train normal as it is; a real test normal cut to 7.3 s + 77 samples (not a whole number of
    hops, nor of 1-s, 0.7-s or 3-s windows); a machine cycle from another train normal: 1.5 s off, 3.5 s on,
    2 s off, 3 s on (float WAV files, so the monitor and the calibration read the same samples)."""
    from edge_asd.firmware_io.audio_file import read_audio

    folder = tmp_path_factory.mktemp("align")
    cut = read_audio(fan["test_normal"][0], RATE)[: int(7.3 * RATE) + 77]
    clip = read_audio(fan["train"][1], RATE)
    gain = np.repeat([0.01, 1.0, 0.01, 1.0], [int(1.5 * RATE), int(3.5 * RATE), 2 * RATE, 3 * RATE])
    out = [fan["train"][0]]
    for name, audio in (("cut.wav", cut), ("cycle.wav", clip * gain)):
        sf.write(folder / name, audio.astype(np.float32), RATE, subtype="FLOAT")
        out.append(folder / name)
    return out


def verdicts(lines: list[dict]) -> list[tuple]:
    return [(v["window"], v["start_s"], v["end_s"], v["frames"], v["max_time_s"]) for v in lines]


def assert_same_windows(calibration: list[dict], monitor: list[dict]) -> None:
    assert len(calibration) == len(monitor) > 0
    assert verdicts(calibration) == verdicts(monitor)
    np.testing.assert_allclose([c["max_score"] for c in calibration], [m["max_score"] for m in monitor], rtol=1e-5)


@pytest.mark.parametrize("window", WINDOWS)
def test_calibration_windows_are_the_monitor_verdicts(model, recordings, tmp_path, env, window):
    """edge-calibrate --maxima-out against edge-monitor's verdict lines (the file path: 16-hop blocks), with the
    alert policy edge-calibrate chose (--votes auto: the window maxima of its policy score) given to the monitor."""
    maxima_path = tmp_path / "maxima.jsonl"
    cal = cli("edge-calibrate", *recordings, "--model", model, "--machine-id", "00", "--store", tmp_path / "phi.json",
              "--window", window, "--gate-db", GATE_DB, "--maxima-out", maxima_path, env=env)
    assert cal.returncode == 0, cal.stderr
    result, windows = json.loads(cal.stdout), [json.loads(line) for line in maxima_path.read_text().splitlines()]
    votes = f"{result['alert']['k']}/{result['alert']['n']}"
    for rec in recordings:
        mon = cli("edge-monitor", "--model", model, "--phi", "1e9", "--input", rec, "--window", window,
                  "--gate-db", GATE_DB, "--votes", votes, env=env)
        assert mon.returncode == 0, mon.stderr
        lines = [json.loads(line) for line in mon.stdout.splitlines()]
        assert_same_windows([w for w in windows if w["recording"] == str(rec)],
                            [r for r in lines if r["event"] == "verdict"])
    # phi is fitted to exactly the complete windows listed: 1.1 x the worst of them
    complete = [w["max_score"] for w in windows if w["complete"]]
    assert result["window_maxima"]["n"] == len(complete)
    assert result["phi"] == pytest.approx(1.1 * max(complete), rel=1e-9)
    if window == "1":  # 10 s: [0, 1) ... [9, 10) s and a cut [10, 11) with one score stamped at 10.0 s
        first = [w for w in windows if w["recording"] == str(recordings[0])]
        assert [w["frames"] for w in first] == [41] + [62, 63] * 4 + [62, 1]
        assert [w["complete"] for w in first] == [True] * 10 + [False]
        assert first[0]["start_s"] == 0.352 and first[-1]["start_s"] == 10.0  # the first score comes 0.352 s in
    if window == "gate":  # off, on, off, on: two machine cycles, nothing scored while off
        cycle = [w for w in windows if w["recording"] == str(recordings[2])]
        assert [w["window"] for w in cycle] == [0, 1] and cycle[0]["start_s"] == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("block_hops", [6, 16, 1000 / 256, 625])
def test_block_size_does_not_move_the_windows(model, recordings, block_hops):
    """The monitor in-process on blocks of 6 hops (live input), 16 hops (files), 1000 samples (no whole hop) and
    10 s: its verdicts equal the windows edge-calibrate computes (recordings_window_maxima) for every --window."""
    from edge_asd.edge.calibrate.recordings import recordings_window_maxima
    from edge_asd.edge.runtime.decision import RunningMaxDetector
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.edge.runtime.stream_loop import Monitor
    from edge_asd.edge.runtime.windows import make_windows
    from edge_asd.firmware_io.audio_file import read_audio

    scorer = Scorer(model)
    cfg, block = scorer.features, round(block_hops * 256)
    for rec in recordings:
        audio = read_audio(rec, RATE)
        for window in WINDOWS:
            records = []
            Monitor((audio[i:i + block] for i in range(0, len(audio), block)), scorer,
                    RunningMaxDetector(1e9, "id_00", scorer.sha256), records.append,
                    windows=make_windows(window, RATE, cfg.hop_samples, float(GATE_DB))).run()
            calibration = recordings_window_maxima(scorer, [rec], window, float(GATE_DB))[0]
            assert_same_windows([w.to_dict() for w in calibration], [r for r in records if r["event"] == "verdict"])


def test_monitor_warns_when_phi_was_calibrated_on_other_windows(model, fan, tmp_path, env):
    store = tmp_path / "phi.json"
    cal = cli("edge-calibrate", *fan["train"][:2], "--model", model, "--machine-id", "00", "--store", store,
              "--window", "1.0", env=env)
    assert cal.returncode == 0, cal.stderr
    assert json.loads(store.read_text())["machines"]["id_00"]["window"] == "1"
    for window, warned in (("whole", True), ("1", False)):
        mon = cli("edge-monitor", "--model", model, "--machine-id", "00", "--store", store, "--input", fan["train"][0],
                  "--window", window, env=env)
        assert mon.returncode == 0, mon.stderr
        assert ("calibrated with --window 1 but the monitor uses --window whole" in mon.stderr) == warned, mon.stderr


def test_gate_hold_times_reach_the_calibration_and_the_monitor_check(model, recordings, tmp_path, env):
    """The machine cycle's 2-s pause is shorter than a 2.5-s off hold: edge-calibrate --gate-min-off-s 2.5 gives it
    one window where the default gives two, as edge-monitor does with the same hold; the record keeps the gate's
    settings, and the monitor warns when its gate differs from them (command line) but not when it matches (TOML)."""
    cycle, store, maxima_path = recordings[2], tmp_path / "phi.json", tmp_path / "maxima.jsonl"
    gate = ["--window", "gate", "--gate-db", GATE_DB, "--gate-min-off-s", "2.5"]
    cal = cli("edge-calibrate", cycle, "--model", model, "--machine-id", "00", "--store", store, *gate,
              "--maxima-out", maxima_path, env=env)
    assert cal.returncode == 0, cal.stderr
    windows = [json.loads(line) for line in maxima_path.read_text().splitlines()]
    mon = cli("edge-monitor", "--model", model, "--phi", "1e9", "--input", cycle, *gate, env=env)
    assert mon.returncode == 0, mon.stderr
    assert_same_windows(windows, [r for r in map(json.loads, mon.stdout.splitlines()) if r["event"] == "verdict"])
    assert [w["window"] for w in windows] == [0]  # default hold (1 s): windows 0 and 1 (test above)
    record = json.loads(store.read_text())["machines"]["id_00"]
    assert {k: record[k] for k in ("window", "gate_db", "gate_min_on_s", "gate_min_off_s")} == {
        "window": "gate", "gate_db": -50.0, "gate_min_on_s": 0.5, "gate_min_off_s": 2.5}

    default_hold = cli("edge-monitor", "--model", model, "--machine-id", "00", "--store", store, "--input", cycle,
                       "--window", "gate", "--gate-db", GATE_DB, env=env)
    assert default_hold.returncode == 0, default_hold.stderr
    assert ("phi was calibrated with --window gate --gate-db -50 --gate-min-on-s 0.5 --gate-min-off-s 2.5 but the monitor "
            "uses --window gate --gate-db -50 --gate-min-on-s 0.5 --gate-min-off-s 1") in default_hold.stderr
    assert "; 2 windows, " in default_hold.stderr  # the summary: the 1-s hold closes the gate in the pause
    config = tmp_path / "monitor.toml"
    config.write_text(f'[monitor]\nwindow = "gate"\ngate_db = {GATE_DB}\ngate_min_off_s = 2.5\n\n'
                      f'[[input]]\nsource = "{cycle}"\nmodel = "{model}"\nmachine_id = "00"\nstore = "{store}"\n')
    matching = cli("edge-monitor", "--config", config, env=env)
    assert matching.returncode == 0, matching.stderr
    assert "phi was calibrated with" not in matching.stderr and " windows, " not in matching.stderr, matching.stderr
