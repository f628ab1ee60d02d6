"""The phi store (threshold per machine ID, tied to one model file), its atomic writes, and the
calibration rule phi = margin * quantile_q(per-recording max scores) (Koizumi et al. 2019, eq. 11)."""

from __future__ import annotations

import errno
import json
import math
import os
import stat

import numpy as np
import pytest

from edge_asd.core import atomic_io
from edge_asd.core.atomic_io import atomic_write_bytes, atomic_write_text
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.calibrate.rules import DEFAULT_MARGIN, DEFAULT_QUANTILE, phi_from_clip_maxima
from edge_asd.edge.runtime import phi_store
from edge_asd.edge.runtime.phi_store import PhiRecord

SHA_A = "a" * 64
SHA_B = "b" * 64


def record(phi: float, sha: str = SHA_A) -> PhiRecord:
    return PhiRecord(phi=phi, model_sha256=sha, rule={"name": "clip-max-quantile", "quantile": 1.0, "margin": 1.1})


def test_default_store_path_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_ASD_STORE", str(tmp_path / "s.json"))
    assert phi_store.default_store_path() == tmp_path / "s.json"


def test_save_lookup_roundtrip_two_machine_ids(tmp_path):
    store = tmp_path / "sub" / "phi.json"  # parent folder created on first save
    phi_store.save_phi(store, "id_00", record(812.5))
    phi_store.save_phi(store, "id_02", record(900.25))
    assert phi_store.lookup_phi(store, "id_00", SHA_A) == ("id_00", record(812.5))
    assert phi_store.lookup_phi(store, "id_02", SHA_A) == ("id_02", record(900.25))
    # saving again replaces one record and keeps the other
    phi_store.save_phi(store, "id_00", record(700.0))
    assert phi_store.lookup_phi(store, "id_00", SHA_A)[1].phi == 700.0
    assert phi_store.lookup_phi(store, "id_02", SHA_A)[1].phi == 900.25
    data = json.loads(store.read_text())
    assert data["schema"] == phi_store.STORE_SCHEMA == 1
    assert sorted(data["machines"]) == ["id_00", "id_02"]


def test_unknown_machine_id(tmp_path):
    store = tmp_path / "phi.json"
    phi_store.save_phi(store, "id_00", record(812.5))
    with pytest.raises(EdgeAsdError) as e:
        phi_store.lookup_phi(store, "id_07", SHA_A)
    msg = str(e.value)
    assert "id_07" in msg and "id_00" in msg and "edge-calibrate" in msg and str(store) in msg


def test_unknown_machine_id_on_missing_store(tmp_path):
    with pytest.raises(EdgeAsdError, match="edge-calibrate"):
        phi_store.lookup_phi(tmp_path / "none.json", "id_00", SHA_A)


def test_phi_of_another_model_is_refused(tmp_path):
    store = tmp_path / "phi.json"
    phi_store.save_phi(store, "id_00", record(812.5, SHA_B))
    with pytest.raises(EdgeAsdError) as e:
        phi_store.lookup_phi(store, "id_00", SHA_A)
    assert "another model" in str(e.value) and "edge-calibrate" in str(e.value)


def test_lookup_without_machine_id(tmp_path):
    store = tmp_path / "phi.json"
    with pytest.raises(EdgeAsdError, match="no machine ID"):
        phi_store.lookup_phi(store, None, SHA_A)  # no store yet
    phi_store.save_phi(store, "id_00", record(812.5, SHA_A))
    phi_store.save_phi(store, "id_04", record(1.0, SHA_B))
    # the only machine ID calibrated for this model, ignoring other models' records
    assert phi_store.lookup_phi(store, None, SHA_A) == ("id_00", record(812.5, SHA_A))
    assert phi_store.lookup_phi(store, None, SHA_B) == ("id_04", record(1.0, SHA_B))
    with pytest.raises(EdgeAsdError, match="no machine ID"):
        phi_store.lookup_phi(store, None, "c" * 64)
    phi_store.save_phi(store, "id_02", record(900.0, SHA_A))
    with pytest.raises(EdgeAsdError) as e:
        phi_store.lookup_phi(store, None, SHA_A)
    assert "id_00" in str(e.value) and "id_02" in str(e.value) and "--machine-id" in str(e.value)


def test_history_keeps_every_calibration(tmp_path):
    store = tmp_path / "phi.json"
    phi_store.save_phi(store, "id_00", record(812.5))
    phi_store.save_phi(store, "id_02", record(5.0))
    phi_store.save_phi(store, "id_00", record(700.0, SHA_B))
    hist = phi_store.history(store)
    assert [r.phi for r in hist["id_00"]] == [812.5, 700.0]
    assert [r.model_sha256 for r in hist["id_00"]] == [SHA_A, SHA_B]
    assert [r.phi for r in hist["id_02"]] == [5.0]
    assert phi_store.history(store, "id_02") == {"id_02": [record(5.0)]}
    assert phi_store.lookup_phi(store, "id_00", SHA_B) == ("id_00", record(700.0, SHA_B))  # the latest is in use
    with pytest.raises(EdgeAsdError, match="never calibrated"):
        phi_store.history(store, "id_09")


def test_history_of_a_store_written_before_it(tmp_path):
    """A store with no history key (written by 0.1) gains one that starts with the record it replaces."""
    store = tmp_path / "phi.json"
    store.write_text(json.dumps({"schema": 1, "machines": {"id_00": record(812.5).to_dict()}}))
    assert phi_store.history(store) == {"id_00": [record(812.5)]}
    phi_store.save_phi(store, "id_00", record(900.0))
    assert [r.phi for r in phi_store.history(store, "id_00")["id_00"]] == [812.5, 900.0]


# the typed record -------------------------------------------------------------------------------

CALIBRATED = {  # a record as edge-calibrate writes it (gate windows, budget rule, held-out check)
    "phi": 912.25, "model_sha256": SHA_A, "model_path": "/srv/fan.tflite", "machine_type": "fan",
    "rule": {"name": "false-alarm-budget", "false_alarms_per_day": 1.0, "tail": "gumbel"},
    "window": "gate", "gate_db": -50.0, "gate_min_on_s": 0.5, "gate_min_off_s": 2.5, "window_s": None,
    "window_maxima": {"n": 40, "min": 1.0, "median": 2.0, "max": 3.0, "cut_short": 0},
    "clip_max_scores": {"min": 1.0, "median": 2.0, "max": 3.0}, "recordings": ["a.wav", "b.wav"],
    "heldout_recordings": ["c.wav"], "calibrated_at": "2026-11-26T10:00:00+00:00", "kit_version": "0.4.0",
    "fit": {"p_window": 1e-5, "bootstrap": {"n": 50}}, "check": {"windows": 5, "false_alarms": 0},
    "recordings_heard_by_model": 0, "oof_recordings": 2,
}


def test_a_record_round_trips(tmp_path):
    """A record of the current layout reads into PhiRecord and writes back as the same JSON; through the store too."""
    rec = PhiRecord.from_dict(CALIBRATED)
    assert rec.phi == 912.25 and rec.rule["tail"] == "gumbel" and rec.recordings == ("a.wav", "b.wav")
    assert rec.to_dict() == CALIBRATED and PhiRecord.from_dict(rec.to_dict()) == rec
    assert rec.window_settings() == {"window": "gate", "gate_db": -50.0, "gate_min_on_s": 0.5, "gate_min_off_s": 2.5}
    assert PhiRecord.SCHEMA == phi_store.STORE_SCHEMA
    store = tmp_path / "phi.json"
    phi_store.save_phi(store, "id_00", rec)
    assert json.loads(store.read_text())["machines"]["id_00"] == CALIBRATED
    assert phi_store.lookup_phi(store, "id_00", SHA_A) == ("id_00", rec)
    newer = {**CALIBRATED, "drift": {"days": 3}}  # a key of a newer kit is kept
    assert PhiRecord.from_dict(newer).to_dict() == newer


def test_the_input_level_round_trips_and_old_records_have_none(tmp_path):
    level = {"seconds": 100, "median_dbfs": -44.05, "p5_dbfs": -45.52, "p95_dbfs": -42.83, "spread_db": 2.69,
             "high_band_share": 0.0194}
    rec = PhiRecord.from_dict({**CALIBRATED, "input_level": level})
    assert rec.input_level == level and rec.to_dict() == {**CALIBRATED, "input_level": level}
    assert PhiRecord.from_dict(CALIBRATED).input_level is None and "input_level" not in PhiRecord.from_dict(CALIBRATED).to_dict()


def test_an_old_store_loads(tmp_path):
    """A store of an older kit: records with only window_s (no window), none of the gate's or provenance keys,
    no history; they load, their windows read as they were calibrated, and saving keeps them as they were."""
    old = {"phi": 812.5, "model_sha256": SHA_A, "rule": {"name": "clip-max-quantile", "quantile": 1.0, "margin": 1.1},
           "window_s": 10.0, "calibrated_at": "2026-01-01T00:00:00+00:00", "recordings": ["x.wav"]}
    whole = {"phi": 5.0, "model_sha256": SHA_B}
    store = tmp_path / "phi.json"
    store.write_text(json.dumps({"schema": 1, "machines": {"id_00": old, "id_02": whole}}))
    _, rec = phi_store.lookup_phi(store, "id_00", SHA_A)
    assert rec.phi == 812.5 and rec.window is None and rec.window_settings() == {"window": "10"}
    assert phi_store.lookup_phi(store, "id_02", SHA_B)[1].window_settings() == {"window": "whole"}
    assert phi_store.history(store)["id_00"] == [rec]
    phi_store.save_phi(store, "id_04", record(1.0))
    data = json.loads(store.read_text())
    assert data["machines"]["id_00"] == old and data["machines"]["id_02"] == whole


@pytest.mark.parametrize("damage, words", [
    ({"phi": "812"}, "phi is '812', not a positive finite number"),
    ({"phi": None}, "phi is None, not a positive finite number"),
    ({"phi": float("nan")}, "not a positive finite number"),
    ({"phi": 0}, "phi is 0, not a positive finite number"),
    ({"phi": -1.0}, "phi is -1.0, not a positive finite number"),
    ({"rule": "clip-max-quantile"}, "rule is 'clip-max-quantile', not an object"),
    ({"recordings": "a.wav"}, "recordings is 'a.wav', not a list of paths"),
    ({"window_s": "ten"}, "window_s is 'ten', not a number"),
    ({"recordings_heard_by_model": True}, "not an integer"),
    ({"oof_recordings": "10"}, "oof_recordings is '10', not an integer"),
    ({"input_level": {"median_dbfs": -44.0}}, "not an object with finite p5_dbfs, p95_dbfs"),
    # make fuzz (phi_store target): tracebacks in the monitor's input-health checks
    ({"input_level": {"p5_dbfs": 10**400, "p95_dbfs": -42.8}}, "not an object with finite p5_dbfs, p95_dbfs"),
    ({"input_level": {"p5_dbfs": -45.5, "p95_dbfs": -42.8, "high_band_share": "1e999"}}, "(and high_band_share)"),
])
def test_a_damaged_record_is_refused_in_one_line(tmp_path, damage, words):
    """(A phi of 10**400, valid JSON, overflowed float: a traceback in a probe; its test writes the JSON text.)"""
    store = tmp_path / "phi.json"
    store.write_text(json.dumps({"schema": 1, "machines": {"id_00": {**CALIBRATED, **damage}}}))
    for read in (lambda: phi_store.lookup_phi(store, "id_00", SHA_A), lambda: phi_store.history(store)):
        with pytest.raises(EdgeAsdError) as e:
            read()
        msg = str(e.value)
        assert words in msg and str(store) in msg and "'id_00'" in msg and "edge-calibrate" in msg and "\n" not in msg


def test_a_record_that_is_not_an_object_or_has_no_phi_is_refused(tmp_path):
    store = tmp_path / "phi.json"
    for entry, words in (([812.5], "not a JSON object"), ({"model_sha256": SHA_A}, "no phi")):
        store.write_text(json.dumps({"schema": 1, "machines": {"id_00": entry}}))
        with pytest.raises(EdgeAsdError, match=words):
            phi_store.lookup_phi(store, "id_00", SHA_A)


def test_a_damaged_gate_is_refused_by_the_window_settings_only():
    """The monitor warns about a damaged gate and runs on phi: the record loads, its window settings refuse."""
    rec = PhiRecord.from_dict({**CALIBRATED, "gate_db": "loud"})
    with pytest.raises(EdgeAsdError, match="gate_db is 'loud', not a number"):
        rec.window_settings()


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b"", b"[1, 2]",
                                     b'{"schema": 2, "machines": {}}', b'{"schema": 1, "machines": []}',
                                     b'{"schema": 1, "machines": {}, "history": []}'])
def test_corrupt_store(tmp_path, content):
    store = tmp_path / "phi.json"
    store.write_bytes(content)
    with pytest.raises(EdgeAsdError, match="phi store"):
        phi_store.lookup_phi(store, "id_00", SHA_A)
    with pytest.raises(EdgeAsdError):
        phi_store.save_phi(store, "id_00", record(1.0))
    assert store.read_bytes() == content  # a save never overwrites a store it cannot read


def _leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


def test_atomic_write_failed_rename_keeps_old_file(tmp_path, monkeypatch):
    store = tmp_path / "phi.json"
    phi_store.save_phi(store, "id_00", record(812.5))
    before = store.read_bytes()

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic_io.os, "replace", no_space)
    with pytest.raises(EdgeAsdError) as e:
        phi_store.save_phi(store, "id_02", record(900.0))
    assert "No space left" in str(e.value) and "unchanged" in str(e.value)
    assert store.read_bytes() == before
    assert _leftovers(tmp_path, "phi.json") == []  # the temporary file is removed


def test_atomic_write_failed_write_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "model.bin"
    atomic_write_bytes(target, b"old contents")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic_io.os, "fsync", no_space)
    with pytest.raises(EdgeAsdError):
        atomic_write_bytes(target, b"new contents that never land")
    assert target.read_bytes() == b"old contents"
    assert _leftovers(tmp_path, "model.bin") == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_atomic_write_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    target = folder / "phi.json"
    atomic_write_text(target, "old\n")
    folder.chmod(0o555)
    try:
        with pytest.raises(EdgeAsdError, match="cannot write"):
            atomic_write_text(target, "new\n")
        assert target.read_text() == "old\n"
        assert _leftovers(folder, "phi.json") == []
    finally:
        folder.chmod(0o755)


def test_atomic_write_unwritable_folder_keeps_old_file(tmp_path, monkeypatch):
    """The read-only folder case, simulated so that it also runs as root."""
    target = tmp_path / "phi.json"
    atomic_write_text(target, "old\n")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic_io, "_new_temporary", denied)
    with pytest.raises(EdgeAsdError, match="cannot write there"):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path, "phi.json") == []


def test_atomic_write_success_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "one\n")
    atomic_write_text(target, "two\n")
    assert target.read_text() == "two\n"
    assert _leftovers(tmp_path, "a.txt") == []


def test_atomic_write_uses_ordinary_file_permissions(tmp_path):
    """A phi store or model file written atomically gets the permissions an ordinary write would give
    (0666 & ~umask for a new file; an existing file keeps its mode), so a service user on the device can
    read a model written by another user. mkstemp's private 0600 must not leak through."""
    umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fan.tflite"
        atomic_write_bytes(fresh, b"model")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
        existing = tmp_path / "phi.json"
        existing.write_text("{}")
        existing.chmod(0o664)
        atomic_write_text(existing, "{}\n")
        assert stat.S_IMODE(existing.stat().st_mode) == 0o664
    finally:
        os.umask(umask)


# calibration rule -------------------------------------------------------------------------------

def test_phi_defaults_to_margin_over_worst_normal():
    assert DEFAULT_QUANTILE == 1.0 and DEFAULT_MARGIN == 1.1
    assert phi_from_clip_maxima(np.array([800.0, 1000.0, 900.0])) == pytest.approx(1100.0)


@pytest.mark.parametrize(
    "maxima, q, margin, expected",
    [
        ([1.0, 2.0, 3.0, 4.0, 5.0], 0.5, 1.0, 3.0),  # median
        ([1.0, 2.0, 3.0, 4.0, 5.0], 0.75, 2.0, 8.0),  # linear interpolation, numpy's default
        ([10.0, 20.0], 0.5, 1.0, 15.0),
        ([7.0], 0.01, 1.5, 10.5),
        ([812.5, 700.0, 950.0], 1.0, 1.0, 950.0),
    ],
)
def test_phi_quantile_and_margin(maxima, q, margin, expected):
    assert phi_from_clip_maxima(np.array(maxima), q, margin) == pytest.approx(expected)
    assert isinstance(phi_from_clip_maxima(maxima, q, margin), float)


@pytest.mark.parametrize(
    "maxima, q, margin, words",
    [
        ([], 1.0, 1.1, "no normal recording"),
        ([1.0, math.nan], 1.0, 1.1, "non-finite"),
        ([1.0, math.inf], 1.0, 1.1, "non-finite"),
        ([1.0, 2.0], 0.0, 1.1, "--quantile"),
        ([1.0, 2.0], 1.5, 1.1, "--quantile"),
        ([1.0, 2.0], -0.5, 1.1, "--quantile"),
        ([1.0, 2.0], 1.0, 0.0, "--margin"),
        ([1.0, 2.0], 1.0, -1.0, "--margin"),
    ],
)
def test_phi_rule_errors(maxima, q, margin, words):
    with pytest.raises(EdgeAsdError, match=words):
        phi_from_clip_maxima(np.array(maxima, dtype=float), q, margin)


def test_a_phi_too_large_for_a_float_is_refused_in_one_line(tmp_path):
    store = tmp_path / "phi.json"
    text = json.dumps({"schema": 1, "machines": {"id_00": {**CALIBRATED, "phi": 1.0}}})
    store.write_text(text.replace('"phi": 1.0', '"phi": 1' + "0" * 400))
    with pytest.raises(EdgeAsdError, match="not a positive finite number"):
        phi_store.lookup_phi(store, "id_00", SHA_A)
