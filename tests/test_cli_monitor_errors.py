"""edge-monitor on user mistakes: each gives one "Error:" line, a nonzero exit and no traceback."""

from __future__ import annotations

import pytest
import soundfile as sf

from conftest import assert_one_line_error, cli

# edge-monitor: user mistakes ----------------------------------------------------------------------

def _monitor_error(model, *args, env, input=None, words=()):
    proc = cli("edge-monitor", "--model", model, *args, env=env, input=input)
    assert_one_line_error(proc)
    error = next(line for line in proc.stderr.splitlines() if line.startswith("Error:"))
    for w in words:
        assert w in error, error
    return error


def test_monitor_missing_audio(model, tmp_path, env):
    _monitor_error(model, "--phi", "1", "--input", tmp_path / "nope.wav", env=env, words=["nope.wav"])


def test_monitor_non_audio(model, tmp_path, env):
    path = tmp_path / "notes.txt"
    path.write_text("not audio\n" * 100)
    _monitor_error(model, "--phi", "1", "--input", path, env=env, words=["notes.txt"])


def test_monitor_absurd_thread_counts(model, fan, tmp_path, env):
    """--threads 100000 exhausted the host's process IDs, then segfaulted: the count is bounded, on the command
    line and in the TOML config alike, with the limit in the one-line error."""
    _monitor_error(model, "--phi", "1", "--threads", "100000", "--input", fan["test_normal"][0], env=env,
                   words=["--threads", "1<=x<=64"])
    _monitor_error(model, "--phi", "1", "--threads", "0", "--input", fan["test_normal"][0], env=env, words=["--threads"])
    config = tmp_path / "monitor.toml"
    config.write_text(f'[monitor]\nthreads = 100000\nphi = 1.0\n\n[[input]]\nmodel = "{model}"\n'
                      f'source = "{fan["test_normal"][0]}"\n')
    proc = cli("edge-monitor", "--config", config, env=env)
    assert_one_line_error(proc)
    assert "threads = 100000 is out of range (1 to 64)" in proc.stderr  # refused as the file is read


@pytest.mark.parametrize("phi", ["nan", "inf", "-1", "ten"])
def test_monitor_phi_must_be_a_finite_score(model, fan, env, phi):
    """--phi nan or inf gave a traceback, --phi -1 made every frame an event without a word."""
    _monitor_error(model, "--phi", phi, "--input", fan["test_normal"][0], env=env, words=["--phi", repr(phi)])


def test_monitor_raw_file_named_as_such(model, fan, tmp_path, env):
    """Any audio file named *.raw crashed the reader (TypeError: samplerate must be specified)."""
    raw = tmp_path / "recording.raw"
    raw.write_bytes(fan["test_normal"][0].read_bytes())
    _monitor_error(model, "--phi", "1", "--input", raw, env=env, words=["recording.raw", "no header", "--pcm-rate"])


def test_monitor_empty_file(model, tmp_path, env):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    _monitor_error(model, "--phi", "1", "--input", path, env=env, words=["empty"])


def test_monitor_truncated_wav(model, fan_audio, tmp_path, env):
    full = tmp_path / "full.wav"
    sf.write(full, fan_audio, 16000, subtype="PCM_16")
    data = full.read_bytes()
    path = tmp_path / "half.wav"
    path.write_bytes(data[: len(data) // 2])
    _monitor_error(model, "--phi", "1", "--input", path, env=env, words=["truncated"])


def test_monitor_wrong_rate_on_stdin(model, fan_audio, tmp_path, env):
    wav = tmp_path / "cd.wav"
    sf.write(wav, fan_audio[:44100], 44100, subtype="PCM_16")
    _monitor_error(model, "--phi", "1", "--input", "-", env=env, input=wav.read_bytes(),
                   words=["wrong sample rate", "44100"])


def test_monitor_declared_pcm_rate_mismatch(model, env):
    _monitor_error(model, "--phi", "1", "--input", "-", "--pcm-rate", "48000", env=env, input=b"\x00\x01" * 8000,
                   words=["48000", "16000"])


def test_monitor_silence(model, env):
    _monitor_error(model, "--phi", "1", "--input", "-", env=env, input=b"\x00\x00" * 16000, words=["silence"])


def test_monitor_damaged_model(model, fan, tmp_path, env):
    data = model.read_bytes()
    bad = tmp_path / "half.tflite"
    bad.write_bytes(data[: len(data) // 2])
    _monitor_error(bad, "--phi", "1", "--input", fan["test_normal"][0], env=env, words=["half.tflite"])


def test_monitor_not_our_model(model, fan, tmp_path, env):
    try:
        from test_model_file import strip_tflite_metadata
    except ImportError:  # tests/ imported as a package
        from tests.test_model_file import strip_tflite_metadata

    foreign = tmp_path / "foreign.tflite"
    foreign.write_bytes(strip_tflite_metadata(model.read_bytes()))
    _monitor_error(foreign, "--phi", "1", "--input", fan["test_normal"][0], env=env, words=["not an edge-asd model"])
    text = tmp_path / "text.tflite"
    text.write_text("hello\n" * 100)
    _monitor_error(text, "--phi", "1", "--input", fan["test_normal"][0], env=env)


def test_monitor_unknown_machine_id(calibrated, model, fan, env):
    store, _ = calibrated
    _monitor_error(model, "--store", store, "--machine-id", "07", "--input", fan["test_normal"][0], env=env,
                   words=["id_07", "edge-calibrate"])
    _monitor_error(model, "--store", store, "--machine-id", "pump", "--input", fan["test_normal"][0], env=env,
                   words=["machine ID"])


def test_monitor_no_store(model, fan, tmp_path, env):
    _monitor_error(model, "--input", fan["test_normal"][0], env={"EDGE_ASD_STORE": str(tmp_path / "none.json")},
                   words=["edge-calibrate"])


def test_monitor_mic_without_sound_card(model, env):
    try:
        import pyaudio  # noqa: F401

        pytest.skip("PyAudio is installed here; this test is for machines without it")
    except ImportError:
        pass
    _monitor_error(model, "--phi", "1", "--input", "mic", env=env, words=["PyAudio"])


def test_monitor_bad_mic_device_index(model, env):
    """``--input mic:abc`` is a typo, not a crash."""
    _monitor_error(model, "--phi", "1", "--input", "mic:abc", env=env)


def test_monitor_bad_window(model, fan, env):
    _monitor_error(model, "--phi", "1", "--input", fan["test_normal"][0], "--window", "hourly", env=env,
                   words=["--window", "gate"])


def test_monitor_full_disk_for_the_events_log(model, fan, env):
    """/dev/full: every write fails with ENOSPC. One line, exit 1; stdout shows no line the events file did not
    take (lines go to the file first, so a line anyone saw is on disk)."""
    import os

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    proc = cli("edge-monitor", "--model", model, "--phi", "1", "--input", fan["test_normal"][0], "--events", "/dev/full",
               env=env)
    assert_one_line_error(proc)
    assert "No space left" in proc.stderr
    assert proc.stdout == ""


def test_monitor_missing_config(model, tmp_path, env):
    proc = cli("edge-monitor", "--config", tmp_path / "monitor.toml", env=env)
    assert_one_line_error(proc)
    assert "monitor.toml: no such file" in proc.stderr


def test_monitor_serial_port_missing(model, tmp_path, env):
    _monitor_error(model, "--phi", "1", "--input", f"serial:{tmp_path}/ttyUSB7", env=env, words=["ttyUSB7", "port"])


def test_monitor_without_model_or_config(env):
    proc = cli("edge-monitor", "--input", "-", env=env, input=b"")
    assert_one_line_error(proc)
    assert "--model" in proc.stderr and "--config" in proc.stderr


@pytest.mark.parametrize("option, value", [("--silent-dbfs", "5"), ("--silent-dbfs", "nan"), ("--gate-min-on-s", "1e300"),
                                           ("--evidence-seconds", "1e9"), ("--events-max-mb", "-1"),
                                           ("--events-max-mb", "0.0001")])
def test_monitor_options_take_the_ranges_of_their_config_keys(option, value):
    """--silent-dbfs 5 (every frame 'silent', nothing scored) and --gate-min-on-s 1e300 (the gate never opens)
    ran with exit 0, although monitor.toml refuses the same values: an option now refuses what its key does."""
    from click.testing import CliRunner

    from edge_asd.edge.cli.monitor import main
    from edge_asd.edge.runtime.config import RANGES

    result = CliRunner().invoke(main, ["--model", "m.tflite", option, value])
    assert result.exit_code == 2 and not isinstance(result.exception, (TypeError, ValueError)), result.output
    key = option[2:].replace("-", "_").replace("evidence_seconds", "evidence_before_s")
    lo, hi = RANGES[key]
    assert f"Invalid value for '{option}'" in result.output
    assert f"{lo:g}" in result.output or "finite" in result.output or "is below 0.1 (0 turns it off)" in result.output
