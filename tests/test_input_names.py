"""File names decide what goes where (issue 14 sec. 6) and edge-calibrate's warnings about its sample
(sec. 1), on the real recordings of ../shared/data: anomaly_* clips refused as normals, clips of another
machine refused unless --accept-other-machines, --machine-id 00 read in the model's ID form, the recording
that decides phi and the energy gate set too close to the machine's level."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, cli

NAMES_SHOWN = 5


def error_line(proc) -> str:
    assert_one_line_error(proc)
    return next(line for line in proc.stderr.splitlines() if line.startswith("Error:"))


def listed(paths) -> str:
    names = [Path(p).name for p in paths]
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


@pytest.fixture(scope="module")
def machines(data_root) -> Path:
    return data_root / "machines"


@pytest.fixture(scope="module")
def section_model(model, tmp_path_factory) -> Path:
    """The session's fan model with its metadata saying it was trained on section_00 (a DCASE 2021+ model)."""
    from edge_asd.core.model_file import DIGEST_KEY, read_tflite_metadata, seal, unsealed_digest, write_tflite_metadata

    data = Path(model).read_bytes()
    meta = read_tflite_metadata(data, str(model))
    meta.update(machine_ids=["section_00"], **{DIGEST_KEY: unsealed_digest()})
    path = tmp_path_factory.mktemp("section") / "fan_section.tflite"
    path.write_bytes(seal(write_tflite_metadata(data, meta)))
    return path


# the file-name parser ----------------------------------------------------------------------------------

def test_parse_clip_name_reads_dcase_and_mimii_names(machines, tmp_path):
    from edge_asd.datasets.layout import ClipName, parse_clip_name

    assert parse_clip_name(machines / "fan" / "test" / "anomaly_id_00_00000003.flac") == \
        ClipName("fan", "id_00", "anomaly", "test")
    assert parse_clip_name(machines / "fan" / "train" / "normal_section_00_source_0040.flac") == \
        ClipName("fan", "section_00", "normal", "train", "source")
    mimii = tmp_path / "fan" / "id_02" / "abnormal"
    mimii.mkdir(parents=True)
    (mimii / "00000001.flac").symlink_to(machines / "fan" / "test" / "anomaly_id_00_00000001.flac")
    assert parse_clip_name(mimii / "00000001.flac") == ClipName("fan", "id_02", "anomaly")
    # a folder that is no split folder does not name the machine type; names that say nothing give None
    assert parse_clip_name(tmp_path / "normal_id_04_00000010.wav") == ClipName(None, "id_04", "normal")
    assert parse_clip_name(tmp_path / "x" / "section_01_source_test_0003.wav") == \
        ClipName(None, "section_01", None, "test", "source")
    assert parse_clip_name(tmp_path / "recording.wav") is None


# --machine-id 00 in the model's ID form ----------------------------------------------------------------

def test_machine_id_takes_the_models_id_form(model, section_model, fan, machines, tmp_path, env):
    """A section_00 model's phi goes under section_00, an id_00 model's under id_00, each said in an INFO line."""
    from edge_asd.edge.calibrate.names import resolve_for_model
    from edge_asd.edge.runtime.scorer import Scorer

    assert resolve_for_model("00", Scorer(section_model).meta) == "section_00"
    assert resolve_for_model("00", Scorer(model).meta) == "id_00"
    section_clips = sorted((machines / "fan" / "train").glob("normal_section_00_*.flac"))
    store = tmp_path / "phi.json"
    proc = cli("edge-calibrate", *section_clips, "--model", section_model, "--machine-id", "00", "--store", store, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "--machine-id 00 is section_00 (the model's ID form)" in proc.stderr
    assert json.loads(proc.stdout)["machine_id"] == "section_00"
    assert list(json.loads(store.read_text())["machines"]) == ["section_00"]
    proc = cli("edge-calibrate", *fan["train"][:3], "--model", model, "--machine-id", "00", "--store", store, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "--machine-id 00 is id_00 (the model's ID form)" in proc.stderr
    assert sorted(json.loads(store.read_text())["machines"]) == ["id_00", "section_00"]
    # the fan id_00 clips are another machine for the section_00 model: refused, not stored under section_00
    proc = cli("edge-calibrate", *fan["train"][:3], "--model", section_model, "--machine-id", "00", "--store",
               tmp_path / "other.json", env=env)
    assert error_line(proc) == (f"Error: 3 of the 3 recordings are of another machine by their names (fan id_00: 3; "
                                f"{listed(fan['train'][:3])}), not fan section_00: pass --accept-other-machines to use "
                                "them anyway")
    assert not (tmp_path / "other.json").exists()


# refusals by name -------------------------------------------------------------------------------------

def test_calibrate_check_refuses_anomalies_and_other_machines(model, fan, machines, tmp_path, env):
    """The issue's case: --check fan/test counted the anomaly_* clips and 4 other machine IDs as held-out normals."""
    test = machines / "fan" / "test"
    every = sorted(p for p in test.iterdir() if p.suffix == ".flac")
    anomalies = [p for p in every if p.name.startswith("anomaly_")]
    store = tmp_path / "phi.json"
    proc = cli("edge-calibrate", *fan["train"], "--model", model, "--machine-id", "00", "--store", store,
               "--check", test, env=env)
    assert error_line(proc) == (f"Error: {len(anomalies)} of the {len(every)} --check recordings are anomalous by their "
                                f"names ({listed(anomalies)}): refused as normal recordings; give normal_* recordings only")
    normals = [p for p in every if p.name.startswith("normal_")]
    others = [p for p in normals if "_id_00_" not in p.name]
    held = tmp_path / "held"
    held.mkdir()
    for p in normals:
        (held / p.name).symlink_to(p)
    proc = cli("edge-calibrate", *fan["train"], "--model", model, "--machine-id", "00", "--store", store,
               "--check", held, env=env)
    ids = Counter("_".join(p.name.split("_")[1:3]) for p in others)
    assert len(ids) == 4  # id_02, id_04, id_06, section_00
    counts = ", ".join(f"{i}: {n}" for i, n in sorted(ids.items()))  # the held/ folder does not say the type
    assert error_line(proc) == (f"Error: {len(others)} of the {len(normals)} --check recordings are of another machine "
                                f"by their names ({counts}; {listed(others)}), not fan id_00: pass "
                                "--accept-other-machines to use them anyway")
    assert not store.exists()


def test_calibrate_glob_takes_another_fan_only_when_accepted(model, fan, machines, tmp_path, env):
    """fan/train/normal_*.flac also matches the normal_section_00_* clips of another fan."""
    globbed = sorted((machines / "fan" / "train").glob("normal_*.flac"))
    others = [p for p in globbed if "section_00" in p.name]
    assert others and len(globbed) == len(fan["train"]) + len(others)
    store = tmp_path / "phi.json"
    proc = cli("edge-calibrate", *globbed, "--model", model, "--machine-id", "00", "--store", store, env=env)
    assert error_line(proc) == (f"Error: {len(others)} of the {len(globbed)} recordings are of another machine by their "
                                f"names (fan section_00: {len(others)}; {listed(others)}), not fan id_00: pass "
                                "--accept-other-machines to use them anyway")
    assert not store.exists()
    proc = cli("edge-calibrate", *globbed, "--model", model, "--machine-id", "00", "--store", store,
               "--accept-other-machines", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_recordings"] == len(globbed)
    assert (f"WARNING: --accept-other-machines: using {len(others)} of the {len(globbed)} recordings of another machine "
            f"than fan id_00 (fan section_00: {len(others)})") in proc.stderr


def test_report_refuses_mixed_machines(model, fan, machines, tmp_path, env):
    """edge-report --normals fan/train mixed two machines into one histogram; --test-dir fan/test all IDs."""
    train = machines / "fan" / "train"
    globbed = sorted(train.glob("*.flac"))
    others = [p for p in globbed if "section_00" in p.name]
    proc = cli("edge-report", "--normals", train, "--model", model, "--phi", "1000", "--out", tmp_path / "r", env=env)
    assert error_line(proc) == (f"Error: {len(others)} of the {len(globbed)} --normals recordings are of another machine "
                                f"by their names (fan section_00: {len(others)}; {listed(others)}), not fan id_00: pass "
                                "--accept-other-machines to use them anyway")
    proc = cli("edge-report", "--normals", train, "--model", model, "--phi", "1000", "--out", tmp_path / "r",
               "--accept-other-machines", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["normal windows over phi"].endswith(f"of {len(globbed)}")
    proc = cli("edge-report", "--normals", fan["test_anomaly"][0], "--model", model, "--phi", "1000", "--out",
               tmp_path / "r", env=env)
    assert "are anomalous by their names" in error_line(proc)
    # a labelled test folder keeps the clips of the model's own ID (it was trained on id_00 only), and says so
    test = machines / "fan" / "test"
    every = sorted(test.glob("*.flac"))
    mine = [p for p in every if "_id_00_" in p.name]
    proc = cli("edge-report", "--test-dir", test, "--model", model, "--phi", "1000", "--out", tmp_path / "r", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (f"--test-dir: {len(mine)} clips of id_00 kept, {len(every) - len(mine)} of other machine IDs left out"
            in proc.stderr)
    assert f"ROC of {test} ({len(mine)} clips)" in (tmp_path / "r" / "index.html").read_text()
    proc = cli("edge-report", "--test-dir", test, "--model", model, "--phi", "1000", "--out", tmp_path / "r",
               "--accept-other-machines", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"ROC of {test} ({len(every)} clips)" in (tmp_path / "r" / "index.html").read_text()
    # another machine type: pump id_00 for the fan model, even with the right ID
    proc = cli("edge-report", "--test-dir", machines / "pump" / "test", "--machine-id", "00", "--model", model, "--phi",
               "1000", "--out", tmp_path / "r", env=env)
    n_pump = len(list((machines / "pump" / "test").glob("*_id_00_*.flac")))
    assert error_line(proc).startswith(f"Error: {n_pump} of the {n_pump} --test-dir clips are of another machine by "
                                       f"their names (pump id_00: {n_pump}; ")


def test_finetune_refuses_anomalies_and_other_machines(model, fan, machines, tmp_path, env):
    """Refused before anything is scored or trained: the model file and the store stay untouched."""
    path = tmp_path / "model.tflite"
    path.write_bytes(Path(model).read_bytes())
    store = tmp_path / "phi.json"
    proc = cli("edge-finetune", *fan["train"][:3], fan["test_anomaly"][0], "--model", path, "--machine-id", "00",
               "--store", store, "--force", env=env)
    assert error_line(proc) == (f"Error: 1 of the 4 recordings are anomalous by their names "
                                f"({fan['test_anomaly'][0].name}): refused as normal recordings; give normal_* "
                                "recordings only")
    other = sorted((machines / "fan" / "train").glob("normal_section_00_*.flac"))[0]
    proc = cli("edge-finetune", *fan["train"][:3], "--check", other, "--model", path, "--machine-id", "00",
               "--store", store, "--force", env=env)
    assert error_line(proc) == (f"Error: 1 of the 1 --check recordings are of another machine by their names (fan "
                                f"section_00: 1; {other.name}), not fan id_00: pass --accept-other-machines to use them "
                                "anyway")
    assert path.read_bytes() == Path(model).read_bytes() and not store.exists()


# edge-calibrate's warnings about its sample -------------------------------------------------------------

def test_one_recording_that_decides_phi_is_named(model, fan, tmp_path, env):
    """The issue's case: among the 10 fan id_00 training normals, clip 04 scores far above the others and alone
    holds phi up: the WARNING names it with its maximum, the ratio and the second-highest recording."""
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio

    scorer = Scorer(model)
    maxima = {Path(p).name: float(scorer.score_audio(read_audio(p, 16000)).max()) for p in fan["train"]}
    ranked = sorted(maxima.items(), key=lambda kv: kv[1], reverse=True)
    assert ranked[0][1] >= 2 * ranked[1][1], ranked  # the case under test
    proc = cli("edge-calibrate", *fan["train"], "--model", model, "--machine-id", "00", "--store", tmp_path / "phi.json",
               "--votes", "1/1", env=env)
    assert proc.returncode == 0, proc.stderr
    phi = json.loads(proc.stdout)["phi"]
    assert (f"WARNING: {ranked[0][0]} decides phi alone: its window maximum {ranked[0][1]:.4g} is "
            f"{ranked[0][1] / ranked[1][1]:.2f} x the second-highest recording's ({ranked[1][1]:.4g}, {ranked[1][0]}), "
            f"and phi {phi:.4g} lies above the maxima of the other {len(ranked) - 1} recordings") in proc.stderr
    # without it, whether a recording decides phi follows the stated rule
    rest = [p for p in fan["train"] if Path(p).name != ranked[0][0]]
    proc = cli("edge-calibrate", *rest, "--model", model, "--machine-id", "00", "--store", tmp_path / "phi2.json",
               "--votes", "1/1", env=env)
    assert proc.returncode == 0, proc.stderr
    top, second = ranked[1][1], ranked[2][1]
    assert ("decides phi alone" in proc.stderr) == (top >= 2 * second and json.loads(proc.stdout)["phi"] > second)
    # the default, --votes auto, sets phi on a vote its short burst does not hold: it no longer decides phi
    proc = cli("edge-calibrate", *fan["train"], "--model", model, "--machine-id", "00", "--store", tmp_path / "phi3.json",
               env=env)
    assert proc.returncode == 0 and f"{ranked[0][0]} decides phi alone" not in proc.stderr, proc.stderr


def test_dominance_rule_needs_phi_above_the_second(model, fan):
    """phi at or below the second-highest recording's maximum: another recording holds it up, no warning; nor
    with fewer than three recordings."""
    from edge_asd.edge.calibrate.diagnose import DOMINANCE_RATIO, dominant_recording
    from edge_asd.edge.calibrate.rules import WindowMax

    windows = [WindowMax(str(p), 0, 0.0, 10.0, 604, m, 1.0, True) for p, m in zip(fan["train"][:4], (900, 1000, 1100, 0))]
    top = WindowMax("top.wav", 0, 0.0, 10.0, 604, DOMINANCE_RATIO * 1100, 1.0, True)
    assert dominant_recording([*windows, top], 1.1 * top.max_score).recording == "top.wav"
    assert dominant_recording([*windows, top], 1100) is None
    assert dominant_recording([windows[1], top], 1.1 * top.max_score) is None  # two recordings: no "the others"


def test_gate_warning_suggests_a_gate_level(model, fan, tmp_path, env):
    """fan id_00 runs near -44 dBFS: the default gate (-45 dBFS) leaves recordings without a window; the WARNING
    counts them and suggests --gate-db 6 dB below the median level, with which every recording gets a window."""
    from edge_asd.core.loudness import clip_level_dbfs
    from edge_asd.firmware_io.audio_file import read_audio

    levels = [clip_level_dbfs(read_audio(p, 16000)) for p in fan["train"]]
    median = float(np.median(levels))
    suggested = math.floor(median - 6)
    windows_out = tmp_path / "maxima.jsonl"
    proc = cli("edge-calibrate", *fan["train"], "--model", model, "--machine-id", "00", "--store", tmp_path / "phi.json",
               "--window", "gate", "--maxima-out", windows_out, env=env)
    assert proc.returncode == 0, proc.stderr
    gated = {json.loads(line)["recording"] for line in windows_out.read_text().splitlines()}
    without = sum(str(p) not in gated for p in fan["train"])
    assert without > 0  # the case: the fan sits ~1 dB above the default gate
    assert (f"WARNING: --window gate: {without} of the {len(fan['train'])} recordings gave no machine-on window, and "
            f"their median level {median:.1f} dBFS is {median + 45:.1f} dB above the gate's -45 dBFS") in proc.stderr
    assert f"try --gate-db {suggested} (6 dB below the recordings' median level)" in proc.stderr
    proc = cli("edge-calibrate", *fan["train"], "--model", model, "--machine-id", "00", "--store", tmp_path / "phi.json",
               "--window", "gate", "--gate-db", suggested, "--maxima-out", windows_out, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "--window gate:" not in proc.stderr
    assert {json.loads(line)["recording"] for line in windows_out.read_text().splitlines()} == set(map(str, fan["train"]))


def test_without_a_machine_id_the_names_must_agree(machines):
    """A model that names no machine ID and no --machine-id: recordings of several IDs are refused, or taken
    together with --accept-other-machines."""
    from edge_asd.core.errors import EdgeAsdError
    from edge_asd.edge.calibrate.names import Machine, check_machines

    files = sorted((machines / "fan" / "train").glob("*.flac"))
    ids = Counter("_".join(p.name.split("_")[1:3]) for p in files)
    counts = ", ".join(f"{i}: {n}" for i, n in sorted(ids.items()))
    with pytest.raises(EdgeAsdError) as e:
        check_machines(files, Machine("fan", None), "--normals recordings")
    assert str(e.value) == (f"the {len(files)} --normals recordings name {len(ids)} machine IDs ({counts}): give "
                            "--machine-id, or pass --accept-other-machines to take them together")
    check_machines(files, Machine("fan", None), "--normals recordings", accept_other_machines=True)
    check_machines([p for p in files if "_id_00_" in p.name], Machine("fan", None), "--normals recordings")
