"""edge-monitor as a service runs it (subprocesses, real audio): several inputs from one TOML file,
options from the environment, SIGTERM with the summary written, state kept across a restart, evidence,
and the device list."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from conftest import BIN, cli
from standin_audio import StandInPyAudio
from test_cli_edge import events_of, records_of, same_run


def run_ok(*args, env=None, input=None):
    proc = cli("edge-monitor", *args, env=env, input=input)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def phi_low(model, fan):
    import numpy as np

    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio

    return float(np.quantile(Scorer(model).score_audio(read_audio(fan["test_anomaly"][0], 16000)), 0.2))


def test_config_runs_several_machines_in_one_process(model, fan, calibrated, phi_low, tmp_path, env):
    store, _ = calibrated
    events = tmp_path / "state" / "events.jsonl"
    conf = tmp_path / "monitor.toml"
    conf.write_text(f"""
[monitor]
store = "{store}"
events = "state/events.jsonl"
window = 2

[[input]]
name = "fan-anomalous"
source = "{fan['test_anomaly'][0]}"
model = "{model}"
phi = {phi_low}

[[input]]
name = "fan-normal"
source = "{fan['test_normal'][0]}"
model = "{model}"
machine_id = "00"
""")
    proc = run_ok("--config", conf, env=env)
    records = records_of(proc.stdout)
    assert [json.loads(line) for line in events.read_text().splitlines()] == records  # file == stdout
    by_input = {name: [r for r in records if r["input"] == name] for name in ("fan-anomalous", "fan-normal")}
    assert sum(map(len, by_input.values())) == len(records)
    for name, clip, args in [("fan-anomalous", fan["test_anomaly"][0], ["--phi", str(phi_low)]),
                             ("fan-normal", fan["test_normal"][0], ["--store", store, "--machine-id", "00"])]:
        mine = by_input[name]
        assert [r["event"] for r in mine][0] == "start" and mine[-1]["event"] == "summary"
        alone = events_of(run_ok("--model", model, "--input", clip, "--window", "2", *args, env=env).stdout)
        assert same_run([r for r in mine if r["event"] == "anomaly"]) == same_run(alone)  # same as run alone
        # 10 s in 2-s windows [0, 2), ..., [8, 10), and [10, 12) holding the last frame, complete at 10.0 s
        assert [r["window"] for r in mine if r["event"] == "verdict"] == [0, 1, 2, 3, 4, 5]
        assert [line for line in proc.stderr.splitlines() if line.startswith(f"edge-monitor: {name}: 604 frames")]
    assert by_input["fan-normal"][0]["machine_id"] == "id_00"  # phi from the store
    assert by_input["fan-normal"][0]["phi"] == json.loads(store.read_text())["machines"]["id_00"]["phi"]


def test_options_from_the_environment(model, fan, phi_low, tmp_path, env):
    clip = fan["test_anomaly"][0]
    by_flags = run_ok("--model", model, "--input", clip, "--phi", str(phi_low), "--window", "2", env=env)
    by_env = run_ok(env={**env, "EDGE_ASD_MODEL": str(model), "EDGE_ASD_INPUT": str(clip), "EDGE_ASD_PHI": str(phi_low),
                         "EDGE_ASD_WINDOW": "2"})
    assert same_run(events_of(by_env.stdout)) == same_run(events_of(by_flags.stdout)) != []
    conf = tmp_path / "m.toml"
    conf.write_text(f'[[input]]\nname = "x"\nsource = "{clip}"\nmodel = "{model}"\nphi = {phi_low}\nwindow = 2\n')
    by_config_env = run_ok(env={**env, "EDGE_ASD_CONFIG": str(conf)})
    assert same_run(events_of(by_config_env.stdout)) == same_run(events_of(by_flags.stdout))


def _start(args, env):
    exe = BIN / "edge-monitor"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge_asd.edge.cli.monitor"]
    return subprocess.Popen(cmd + [str(a) for a in args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **env})


def test_sigterm_writes_verdict_and_summary_and_a_restart_appends(model, fan, phi_low, tmp_path, env):
    """systemctl stop: the open window's verdict and the summary reach the fsynced log; exit 0. The next
    start appends to the same log, so nothing recorded before the restart is lost."""
    from edge_asd.firmware_io.audio_file import read_audio

    pcm = (read_audio(fan["test_anomaly"][0], 16000) * 32767).astype("<i2").tobytes()
    log = tmp_path / "events.jsonl"
    proc = _start(["--model", model, "--phi", phi_low, "--input", "-", "--events", log], env)
    proc.stdin.write(pcm)  # a live stream that stays open
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and '"frame": 600' not in (log.read_text() if log.exists() else ""):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)  # stdin stays open: the stop comes from the signal, not from an end of input
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdin.close()
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode() and "SIGTERM" in err.decode()
    first = [json.loads(line) for line in log.read_text().splitlines()]
    assert first == records_of(out.decode())
    kinds = [r["event"] for r in first]
    assert kinds[0] == "start" and kinds[-2:] == ["verdict", "summary"]
    assert first[-1]["reason"] == "stopped" and first[-1]["frames"] >= 600
    assert first[-2]["anomalous"] is True and first[-2]["frames"] == first[-1]["frames"]
    # restart: the same log grows
    run_ok("--model", model, "--phi", phi_low, "--input", fan["test_normal"][0], "--events", log, env=env)
    after = [json.loads(line) for line in log.read_text().splitlines()]
    assert after[:len(first)] == first and after[len(first)]["event"] == "start" and after[-1]["event"] == "summary"


def test_evidence_from_the_command_line(model, fan, phi_low, tmp_path, env):
    import soundfile as sf

    proc = run_ok("--model", model, "--phi", phi_low, "--input", fan["test_anomaly"][0], "--evidence-dir",
                  tmp_path / "ev", "--evidence-seconds", "1", env=env)
    events = events_of(proc.stdout)
    paths = {e["evidence"]["audio"] for e in events}
    assert events and all(os.path.exists(p) for p in paths)
    assert all(sf.info(p).samplerate == 16000 and sf.info(p).duration >= 1.0 for p in paths)
    assert {p.name for p in (tmp_path / "ev").iterdir()} == {os.path.basename(p) for p in paths}


def test_list_devices(monkeypatch):
    from edge_asd.edge.cli import monitor as cli_monitor
    from edge_asd.firmware_io import mic

    monkeypatch.setattr(mic, "_pyaudio", lambda: StandInPyAudio())
    result = CliRunner().invoke(cli_monitor.main, ["--list-devices"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[0] == "0" and "USB Audio CODEC" in lines[1] and "(4 ch, default 48000 Hz)" in lines[1]
    assert len(lines) == 3  # the HDMI output is not an input


def test_journald_priorities_when_stderr_is_the_journal(model, fan, phi_low, tmp_path, env):
    """Under systemd ($JOURNAL_STREAM names our stderr) log lines carry syslog priorities, not level words."""
    err = tmp_path / "journal.txt"
    exe = BIN / "edge-monitor"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge_asd.edge.cli.monitor"]
    with open(err, "wb") as f:
        st = os.fstat(f.fileno())
        proc = subprocess.run(cmd + ["--model", str(model), "--phi", str(phi_low), "--input", str(fan["test_normal"][0])],
                              stdout=subprocess.DEVNULL, stderr=f, timeout=300,
                              env={**os.environ, **env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert proc.returncode == 0
    ours = [line for line in err.read_text().splitlines() if "edge_asd" in line]
    assert ours and all(line.startswith("<6>edge_asd: ") for line in ours)  # INFO = priority 6
    assert "edge_asd: INFO" not in err.read_text()
