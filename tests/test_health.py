"""Input health on real audio (edge/runtime/health.py): a dead microphone, digital zeros, DC offset, clipping,
an upsampled 8-kHz recording and level drift are reported as ``health`` lines and never scored as machine
sound; healthy normal clips of fan and slider id_00 give no health line at all."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.signal import resample_poly

from conftest import cli
from edge_asd.edge.runtime.decision import RunningMaxDetector
from edge_asd.edge.runtime.health import HOLD_S, HealthChecker, recording_health
from edge_asd.edge.runtime.input_level import level_statistics
from edge_asd.edge.runtime.stream_loop import Monitor
from edge_asd.edge.runtime.windows import EnergyGate, FixedWindows, WholeStream
from edge_asd.firmware_io.audio_file import read_audio
from edge_asd.firmware_io.blocks import Gap

RATE, HOP, SPAN = 16000, 256, 5632  # koizumi2019: hop and samples per context vector


def check(audio, reference=None, block=4096):
    """(health lines, frames skipped per reason) of a recording streamed as the monitor does."""
    result = recording_health(audio, RATE, HOP, SPAN, reference, block)
    return result.lines, result.skipped


def starts(lines):
    return [(h.state, h.time_s) for h in lines if h.status == "start"]


@pytest.fixture(scope="module")
def normal(fan):
    return read_audio(fan["test_normal"][0], RATE)


@pytest.fixture(scope="module")
def fan_reference(fan):
    return level_statistics([read_audio(f, RATE) for f in fan["train"]], RATE, HOP)


@pytest.mark.parametrize("machine", ["fan", "slider"])
def test_no_false_health_alarm_on_any_normal_clip(data_root, machine):
    from edge_asd.datasets.layout import scan

    clips = [c for c in scan(data_root, machine_type=machine, machine_id="00") if c.label == "normal"]
    reference = level_statistics([read_audio(c.path, RATE) for c in clips if c.split == "train"], RATE, HOP)
    assert len(clips) >= 15 and reference["seconds"] >= 100
    for c in clips:
        x = read_audio(c.path, RATE)
        for ref in (None, reference):
            lines, skipped = check(x, ref)
            assert lines == [] and skipped == {}, (c.path.name, lines, skipped)


def test_level_statistics_are_the_recordings_per_second_levels(fan, fan_reference):
    from edge_asd.core.loudness import clip_level_dbfs

    x = read_audio(fan["train"][0], RATE)
    assert fan_reference["seconds"] == 10 * len(fan["train"])
    per_second = [clip_level_dbfs(x[k * RATE:(k + 1) * RATE]) for k in range(10)]
    assert fan_reference["p5_dbfs"] <= np.median(per_second) <= fan_reference["p95_dbfs"]
    assert -50 < fan_reference["median_dbfs"] < -38 and 1e-3 < fan_reference["high_band_share"] < 0.1


def test_zeros_mid_stream_are_one_silent_state_and_no_frame_of_them_is_scored(normal):
    x = np.r_[normal[:48000], np.zeros(5 * RATE, np.float32), normal[48000:]]
    lines, skipped = check(x)
    assert [(h.state, h.status) for h in lines] == [("silent", "start"), ("silent", "end")]
    assert 3.0 <= lines[0].time_s < 3.02 and 8.0 <= lines[1].time_s < 8.02
    assert "-200.0 dBFS" in lines[0].reason
    assert skipped["silent"] >= 5 * RATE // HOP  # every frame touching the zeros


def test_dc_offset_clipping_and_band_limit_are_flagged(normal, tmp_path):
    cases = {"dc_offset": normal + 0.01,  # 1 % sits on the limit: the value hysteresis keeps its state from flapping "clipping": np.clip(normal * 100, -1, 1),
             "band_limited": read_audio_8k(normal, tmp_path)}
    for state, x in cases.items():
        lines, skipped = check(x.astype(np.float32))
        assert starts(lines)[0][0] == state, (state, lines)
        assert skipped == {state: skipped[state]} and skipped[state] > 0.9 * (len(x) - SPAN) / HOP
    # 1 % offset is the limit: 0.5 % is not flagged
    assert check(normal + 0.005)[0] == []


def read_audio_8k(x, folder):
    """A normal clip as an 8-kHz recording, read back at 16 kHz as edge-monitor reads it (soxr)."""
    import soundfile as sf

    sf.write(folder / "8k.wav", resample_poly(x, 1, 2), 8000, subtype="FLOAT")
    return read_audio(folder / "8k.wav", RATE)


def test_level_drift_against_the_calibrated_level(normal, fan_reference):
    assert check(normal, fan_reference)[0] == []
    assert check(normal * 10 ** (2 / 20), fan_reference)[0] == []  # +2 dB: within the tolerance
    lines, skipped = check(normal * 10 ** (10 / 20), fan_reference)  # +10 dB
    assert starts(lines) == [("level_drift", 0.0)] and skipped == {}  # reported, still scored
    assert "dBFS" in lines[0].reason and lines[0].value > fan_reference["p95_dbfs"] + 3
    assert check(normal * 10 ** (10 / 20))[0] == []  # no reference, no level check


def test_a_level_far_from_the_calibrated_one_is_not_scored(normal, fan_reference):
    n_frames = 1 + (len(normal) - SPAN) // HOP
    lines, skipped = check(normal * 10 ** (20 / 20), fan_reference)  # +20 dB: a gain change, not the machine
    assert starts(lines) == [("level_drift", 0.0)] and skipped == {"level_far": n_frames}
    assert check(normal * 10 ** (-20 / 20), fan_reference)[1] == {"level_far": n_frames}
    assert check(normal * 10 ** (20 / 20))[1] == {}  # no reference: scored


def test_the_frames_not_scored_do_not_depend_on_the_block_size(normal):
    x = np.r_[normal[:3 * RATE], np.zeros(2 * RATE, np.float32), np.clip(normal[3 * RATE:] * 100, -1, 1)]
    results = [recording_health(x, RATE, HOP, SPAN, block_samples=b) for b in (1536, 4096, 10000)]
    assert len(results[0].scored) == 1 + (len(x) - SPAN) // HOP
    for r in results[1:]:
        assert np.array_equal(r.scored, results[0].scored) and r.skipped == results[0].skipped
    assert set(results[0].skipped) == {"silent", "clipping"} and results[0].scored[:150].all()


def test_a_gap_is_a_state_that_ends_after_the_release_time(normal):
    h = HealthChecker(RATE, HOP)
    lines = h.push(normal[:RATE]) + h.gap(800) + h.push(normal[RATE:3 * RATE]) + h.push(normal[3 * RATE:8 * RATE])
    assert [(x.state, x.status) for x in lines] == [("gap", "start"), ("gap", "end")]
    assert lines[0].time_s == 1.0 and lines[0].value == 800 and "800 samples lost" in lines[0].reason
    h = HealthChecker(RATE, HOP)  # overflows: the source's running count; only an increase is news
    lines = h.overflows(0) + h.push(normal[:RATE]) + h.overflows(2) + h.overflows(2) + h.push(normal[RATE:7 * RATE])
    assert [(x.state, x.status, x.value) for x in lines] == [("overflow", "start", 2.0), ("overflow", "end", 2.0)]


# The monitor: health lines and scoring, with the session's real model -------------------------------

@pytest.fixture(scope="module")
def phi(scorer, normal):
    """A phi just over the normal clip's max score: its healthy part raises no event."""
    return 1.05 * float(scorer.score_audio(normal).max())


def monitor(scorer, phi, audio, windows, block=1536):
    """Stream ``audio`` through a Monitor; (lines, summary, stream position when each line was written)."""
    lines, at = [], []
    source = (audio[i:i + block] for i in range(0, len(audio), block))
    mon = Monitor(source, scorer, RunningMaxDetector(phi, "id_00", scorer.sha256),
                  lambda r: (lines.append(r), at.append(mon.position)), "test", windows)
    summary = mon.run()
    return lines, summary, at


@pytest.mark.parametrize("mode", ["whole", "fixed", "gate"])
def test_a_dead_microphone_is_reported_within_seconds_and_never_scored(scorer, phi, normal, mode):
    dead_at = 5 * RATE
    windows = {"whole": WholeStream(), "fixed": FixedWindows(2.0, RATE),
               "gate": EnergyGate(RATE, HOP, on_db=-60.0)}[mode]
    lines, summary, at = monitor(scorer, phi, np.r_[normal[:dead_at], np.zeros(8 * RATE, np.float32)], windows)
    health = [(r, a) for r, a in zip(lines, at) if r["event"] == "health"]
    assert health and health[0][0]["state"] == "silent" and health[0][0]["status"] == "start"
    assert health[0][1] <= dead_at + (HOLD_S["silent"] + 0.2) * RATE  # written within the hold time
    assert [r for r in lines if r["event"] == "anomaly"] == []
    assert summary.health_skipped["silent"] >= 8 * RATE // HOP - 2 and summary.health_states == {"silent": 1}


def test_zeros_mid_stream_give_no_anomaly_event(scorer, phi, normal):
    x = np.r_[normal[:3 * RATE], np.zeros(5 * RATE, np.float32), normal[3 * RATE:]]
    assert scorer.score_audio(x).max() > 10 * phi  # scored, the zeros would raise events
    lines, summary, _ = monitor(scorer, phi, x, WholeStream(), block=4096)
    assert [r["event"] for r in lines].count("anomaly") == 0
    assert [(r["state"], r["status"]) for r in lines if r["event"] == "health"] == [("silent", "start"), ("silent", "end")]
    assert summary.health_skipped == {"silent": summary.health_skipped["silent"]} and summary.events == 0
    assert summary.health_skipped == recording_health(x, RATE, HOP, SPAN).skipped  # edge-score's call, the same
    assert "health: " in summary.line(phi) and "silent" in summary.line(phi)


def test_health_lines_fall_among_the_frames_whatever_the_block_size(scorer, normal):
    x = np.r_[normal[:3 * RATE], np.zeros(3 * RATE, np.float32), normal[3 * RATE:]]
    low_phi = float(np.quantile(scorer.score_audio(normal), 0.5))  # many events around the health lines
    timing = ("wall_time", "compute_s", "real_time_factor")
    runs = [[{k: v for k, v in r.items() if k not in timing} for r in monitor(scorer, low_phi, x, FixedWindows(2.0, RATE),
                                                                            block=b)[0]] for b in (1536, 4096, 2560)]
    assert runs[0] == runs[1] == runs[2]
    kinds = [r["event"] for r in runs[0]]
    assert "health" in kinds and "anomaly" in kinds[kinds.index("health"):]


def test_lost_samples_are_a_gap_line(scorer, phi, normal):
    source, lines = [normal[:RATE], Gap(1000), normal[RATE:]], []
    Monitor(iter(source), scorer, RunningMaxDetector(phi, "id_00", scorer.sha256), lines.append, "t").run()
    gap = [r for r in lines if r["event"] == "health"]
    assert gap[0]["state"] == "gap" and gap[0]["status"] == "start" and gap[0]["value"] == 1000


# The commands ------------------------------------------------------------------------------------

def test_calibration_stores_the_level_and_the_monitor_warns_of_drift(calibrated, model, normal, tmp_path, env):
    import soundfile as sf

    store, proc = calibrated
    assert proc.returncode == 0, proc.stderr
    level = json.loads(store.read_text())["machines"]["id_00"]["input_level"]
    assert level["seconds"] == 100 and level["p5_dbfs"] < level["median_dbfs"] < level["p95_dbfs"]
    loud = tmp_path / "loud.wav"
    sf.write(loud, normal * 10 ** (10 / 20), RATE, subtype="FLOAT")
    out = cli("edge-monitor", "--model", model, "--store", store, "--input", loud, env=env)
    health = [json.loads(line) for line in out.stdout.splitlines() if '"health"' in line]
    assert health and health[0]["state"] == "level_drift" and health[0]["input"] == str(loud)
    assert "level_drift x1" in out.stderr


def test_a_digitally_silent_file_gives_a_health_line_and_one_error_never_an_anomaly(model, tmp_path, env):
    import soundfile as sf

    from conftest import assert_one_line_error

    path = tmp_path / "zeros.wav"
    sf.write(path, np.zeros(4 * RATE, np.float32), RATE)
    out = cli("edge-monitor", "--model", model, "--phi", "1", "--input", path, env=env)
    assert_one_line_error(out)
    events = [json.loads(line)["event"] for line in out.stdout.splitlines()]
    assert "anomaly" not in events and events.count("health") == 2
    assert "silence" in out.stderr and "silent" in out.stderr


def test_the_silence_hold_time_is_an_option(model, normal, tmp_path, env):
    import soundfile as sf

    path = tmp_path / "dropout.wav"
    sf.write(path, np.r_[normal[:3 * RATE], np.zeros(RATE, np.float32), normal[3 * RATE:]], RATE, subtype="FLOAT")
    runs = {s: cli("edge-monitor", "--model", model, "--phi", "1e9", "--input", path, "--silent-s", s, env=env)
            for s in ("2", "0.5")}
    lines = {s: [json.loads(x) for x in p.stdout.splitlines() if '"health"' in x] for s, p in runs.items()}
    assert lines["2"] == [] and "frames not scored (silent" in runs["2"].stderr  # a 1-s dropout: not scored, no line
    assert [(h["state"], h["status"]) for h in lines["0.5"]] == [("silent", "start"), ("silent", "end")]
    assert "input health: silent from 3.0" in runs["0.5"].stderr


def test_calibrating_on_an_upsampled_recording_warns(model, normal, tmp_path, env):
    import soundfile as sf

    path = tmp_path / "normal_8k.wav"
    sf.write(path, resample_poly(normal, 1, 2), 8000, subtype="FLOAT")
    out = cli("edge-calibrate", path, "--model", model, "--machine-id", "00", "--store", tmp_path / "phi.json", env=env)
    assert out.returncode == 0, out.stderr
    assert "almost no energy above 4000 Hz" in out.stderr and "band_limited" in out.stderr
    level = json.loads((tmp_path / "phi.json").read_text())["machines"]["id_00"]["input_level"]
    assert level["high_band_share"] < 1e-5
