"""edge-score as users run it (subprocesses) on real fan clips: its max score per clip is edge-monitor's,
labels and machine IDs come from the file names, --machine-id filters, AUC sits beside the loudness
reference, user mistakes are one line, and the device path imports no training stack."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, cli
from edge_asd.core.machine_id import resolve_machine_id
from edge_asd.core.metrics import auc_pauc
from edge_asd.edge.evaluate.score_folder import CSV_COLUMNS
from edge_asd.firmware_io.audio_file import read_audio


def rows_of(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def score(*args, env=None):
    proc = cli("edge-score", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def fan_id_00(model, fan, tmp_path_factory):
    """(rows, JSON summary, stderr) of ``edge-score fan/test --machine-id 00 --json --out``."""
    out = tmp_path_factory.mktemp("score") / "scores.csv"
    proc = score(fan["test_normal"][0].parent, "--model", model, "--machine-id", "00", "--json", "--out", out)
    return rows_of(out.read_text()), json.loads(proc.stdout), proc.stderr


@pytest.fixture
def mixed(fan, tmp_path):
    """A folder of links: fan/test/ with an id_00 normal and anomaly, an id_02 anomaly and a section_00 normal,
    and mine/recording.flac, a name that carries no label."""
    test = fan["test_normal"][0].parent
    names = ["normal_id_00_00000010.flac", "anomaly_id_00_00000003.flac", "anomaly_id_02_00000090.flac",
             "normal_section_00_target_0021.flac"]
    (tmp_path / "fan" / "test").mkdir(parents=True)
    (tmp_path / "mine").mkdir()
    for name in names:
        (tmp_path / "fan" / "test" / name).symlink_to(test / name)
    (tmp_path / "mine" / "recording.flac").symlink_to(test / names[0])
    return tmp_path


def test_max_score_equals_edge_monitor(model, fan, env):
    """Per real clip, edge-score's max and frame count are those of edge-monitor --phi 0 on the same file
    (its last event's score is the running max over the whole stream)."""
    clips = [fan["test_normal"][0], fan["test_anomaly"][0], fan["test_anomaly"][5]]
    rows = rows_of(score(*clips, "--model", model, env=env).stdout)
    assert [Path(r["file"]) for r in rows] == clips  # files in the order given
    for row in rows:
        proc = cli("edge-monitor", "--model", model, "--phi", "0", "--input", row["file"], env=env)
        assert proc.returncode == 0, proc.stderr
        events = [e for line in proc.stdout.splitlines() if (e := json.loads(line))["event"] == "anomaly"]
        assert float(row["max_score"]) == events[-1]["score"]
        assert f"{row['n_frames']} frames" in proc.stderr
        assert float(row["mean_score"]) <= float(row["max_score"])
    # with votes: the max of the policy score, as edge-monitor --votes reports it in its verdict and summary
    voted = rows_of(score(clips[1], "--model", model, "--votes", "16/31", env=env).stdout)[0]
    proc = cli("edge-monitor", "--model", model, "--phi", "0", "--votes", "16/31", "--input", clips[1], env=env)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    verdict, summary = [e for e in lines if e["event"] == "verdict"][0], lines[-1]
    assert float(voted["max_score"]) == verdict["max_score"] == summary["max_score"] < float(rows[1]["max_score"])


def test_fan_id_00_auc_beside_the_loudness_reference(fan_id_00, fan):
    rows, summary, stderr = fan_id_00
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 15 and {r["machine_type"] for r in rows} == {"fan"} and {r["machine_id"] for r in rows} == {"id_00"}
    assert [Path(r["file"]) for r in rows] == sorted(fan["test_normal"] + fan["test_anomaly"])
    assert summary["labels"] == {"normal": 5, "anomaly": 10, "unlabelled": 0} and summary["machine_id"] == "id_00"
    y = np.array([r["label"] == "anomaly" for r in rows])
    for name, column in (("max", "max_score"), ("mean", "mean_score"), ("level", "level_dbfs")):
        auc, pauc = auc_pauc(y, [float(r[column]) for r in rows])
        assert summary["metrics"][name] == {"auc": auc, "pauc": pauc}
    assert summary["metrics"]["level"] == {"auc": 1.0, "pauc": 1.0}  # the level alone is perfect here
    assert all(-45 < float(r["level_dbfs"]) < -38 for r in rows)
    assert [c["max_score"] for c in summary["clips"]] == [float(r["max_score"]) for r in rows]
    assert "--machine-id 00 is id_00 (the model's ID form)" in stderr
    assert "15 clips (fan id_00): 5 normal, 10 anomaly" in stderr
    assert "level, dBFS (loudness ref.)   1.000   1.000" in stderr
    assert "as well as the model" in stderr  # the warning, since the level's AUC is 1


def test_labels_and_ids_from_names(model, mixed, env):
    proc = score(mixed, "--model", model, env=env)
    rows = {Path(r["file"]).name: r for r in rows_of(proc.stdout)}
    assert len(rows) == 5
    assert (rows["anomaly_id_02_00000090.flac"]["machine_id"], rows["anomaly_id_02_00000090.flac"]["label"]) == ("id_02", "anomaly")
    assert rows["normal_section_00_target_0021.flac"]["machine_id"] == "section_00"
    assert {rows[n]["machine_type"] for n in rows if n != "recording.flac"} == {"fan"}
    unnamed = rows["recording.flac"]
    assert (unnamed["machine_type"], unnamed["machine_id"], unnamed["label"]) == ("", "", "")
    assert unnamed["max_score"] == rows["normal_id_00_00000010.flac"]["max_score"]  # the same audio
    assert "2 normal, 2 anomaly, 1 unlabelled" in proc.stderr
    assert "machine IDs id_00, id_02, section_00 evaluated together" in proc.stderr


def test_machine_id_filter(model, mixed, env, tmp_path):
    out = tmp_path / "s.csv"
    proc = score(mixed, "--model", model, "--machine-id", "00", "--out", out, env=env)
    assert proc.stdout == ""  # the CSV went to --out
    assert sorted(Path(r["file"]).name for r in rows_of(out.read_text())) == [
        "anomaly_id_00_00000003.flac", "normal_id_00_00000010.flac"]
    proc = score(mixed, "--model", model, "--machine-id", "section_00", env=env)
    assert [r["machine_id"] for r in rows_of(proc.stdout)] == ["section_00"]
    assert "(the model was trained on id_00)" in proc.stderr
    assert "no AUC" in proc.stderr  # one normal clip: nothing to rank


def test_resolve_machine_id():
    assert resolve_machine_id("00", ["section_00"])[0] == "section_00"
    assert resolve_machine_id("0", ["id_00"]) == ("id_00", "--machine-id 0 is id_00 (the model's ID form)")
    assert resolve_machine_id("3", None, ["section_01", None, "section_02"])[0] == "section_03"
    assert resolve_machine_id("3", None, ["section_01", "id_02"])[0] == "id_03"
    assert resolve_machine_id("id_04", ["section_00"])[0] == "id_04"


def test_one_line_errors(model, fan, tmp_path, env):
    (tmp_path / "empty").mkdir()
    bad_audio = tmp_path / "normal_id_00_00000001.wav"
    bad_audio.write_text("not audio")
    not_a_model = tmp_path / "model.tflite"
    not_a_model.write_bytes(b"\0" * 64)
    clip = fan["test_normal"][0]
    for args, words in [
        ((tmp_path / "empty", "--model", model), "no audio files"),
        ((tmp_path / "missing.wav", "--model", model), "no such file"),
        ((bad_audio, "--model", model), "not a readable audio file"),
        ((clip, "--model", not_a_model), "model.tflite"),
        ((clip, "--model", tmp_path / "none.tflite"), "none.tflite"),
        ((clip, "--model", model, "--machine-id", "05"), "no clips of id_05 among the 1 recording(s); machine IDs found: id_00"),
        ((clip, "--model", model, "--machine-id", "abc"), "bad machine ID"),
    ]:
        proc = cli("edge-score", *args, env=env)
        assert_one_line_error(proc)
        assert words in proc.stderr, proc.stderr


HEAVY = ("torch", "onnx", "librosa", "jax", "litert_torch", "tensorflow", "sklearn", "matplotlib", "scipy",
         "edge_asd.train", "edge_asd.convert")


def test_imports_no_training_stack(model, fan, tmp_path):
    code = (f"import json, sys\nfrom edge_asd.edge.cli.score import main\n"
            f"main({[str(fan['test_normal'][0]), str(fan['test_anomaly'][0]), '--model', str(model)]!r}, standalone_mode=False)\n"
            f"print('MODULES=' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "EDGE_ASD_STORE": str(tmp_path / "s.json")})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.split("MODULES=")[1]) == []
    assert "1 normal, 1 anomaly" in proc.stderr and proc.stdout.count(",id_00,") == 2  # it scored both


def test_input_health_per_clip(int8_model, fan, tmp_path):
    """Input faults are reported as health, not scored as machine sound: a normal clip whose microphone
    goes dead for 5 s and a clipped copy are flagged and their faulty frames not scored; the real clips are
    ok; a clip with no healthy frame is left out of the AUC and counted."""
    import dataclasses

    import soundfile as sf

    from edge_asd.edge.evaluate.score_folder import evaluate, score_clips
    from edge_asd.edge.runtime.scorer import Scorer

    normal = read_audio(fan["test_normal"][0], 16000)
    dead = normal.copy()
    dead[3 * 16000:8 * 16000] = 0.0
    sf.write(tmp_path / "normal_id_00_90000000.wav", dead, 16000, subtype="FLOAT")
    sf.write(tmp_path / "normal_id_00_90000001.wav", np.clip(normal * 100, -1, 1), 16000, subtype="FLOAT")
    scorer = Scorer(int8_model[0])
    silent, clipped = score_clips(scorer, sorted(tmp_path.glob("*.wav")))
    assert silent.health.startswith("silent") and 0 < silent.frames_not_scored < silent.n_frames
    assert silent.max_score <= scorer.score_audio(dead).max()
    assert "clipping" in clipped.health and clipped.frames_not_scored > 0
    real = score_clips(scorer, fan["test_normal"][:2] + fan["test_anomaly"][:2])
    assert all(r.health == "ok" and r.frames_not_scored == 0 for r in real)
    no_healthy_frame = dataclasses.replace(real[0], max_score=float("nan"), mean_score=float("nan"),
                                           frames_not_scored=real[0].n_frames, health="silent:1")
    evaluation = evaluate(real + [no_healthy_frame])
    assert evaluation["left_out_unhealthy"] == 1 and evaluation["metrics"] == evaluate(real)["metrics"]
