"""Threshold phi per machine ID: the typed phi record (:class:`PhiRecord`) and the small JSON store that
keeps it, written atomically (write, fsync, rename). This module is the one place a record is read
(validated) and written.

Layout: ``{"schema": 1, "machines": {"id_00": {"phi": 812.5, "model_sha256": "...", "rule": {...},
"calibrated_at": "2026-11-26T10:00:00+00:00", "recordings": [...]}}, "history": {"id_00": [...]}}``.
``machines`` holds the phi in use; ``history`` every record ever saved per machine ID, oldest first
(when, which model, which recordings, which rule). A phi belongs to one model file: the monitor
refuses a phi calibrated for another model.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from edge_asd.core.atomic_io import atomic_write_text
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.alert import AlertPolicy
from edge_asd.edge.runtime.windows import record_settings

STORE_SCHEMA = 1

_ALWAYS_WRITTEN = ("machine_type", "window_s")  # written even when null (edge-calibrate's layout)
_AGAIN = "set phi again with edge-calibrate"


@dataclass(frozen=True)
class PhiRecord:
    """One calibration of phi for one machine ID and one model file, as the store keeps it.

    Written by edge-calibrate (and edge-finetune's recalibration); read by edge-monitor (phi, and the
    window settings to compare with its own), edge-finetune (the rule and windows to re-apply) and
    edge-report. Every key but ``phi`` may be missing from a record written by an older kit (None here).
    The JSON keys are the field names; keys this kit does not know are kept in ``extra`` and written back.
    """

    SCHEMA: ClassVar[int] = STORE_SCHEMA
    """Version of the store layout the record belongs to (the store's ``schema``; a record has none of its own)."""

    phi: float
    """The threshold on the window max anomaly score (eq. 11)."""
    model_sha256: str | None = None
    """sha256 of the model file phi was set with (the monitor refuses phi for another model)."""
    rule: Mapping[str, Any] | None = None
    """``{"name": "clip-max-quantile", "quantile", "margin", "target_fpr"?}`` or ``{"name":
    "false-alarm-budget", "false_alarms_per_day", "tail"}`` (:func:`edge_asd.edge.calibrate.rules.calibrate`)."""
    window: str | None = None
    """The decision window: ``whole``, a number of seconds (``"1"``) or ``gate``; None in records older than it."""
    window_s: float | None = None
    """Fixed window length, s (None unless fixed; the only window key of the oldest records)."""
    gate_db: float | None = None
    """``--window gate``: the gate's on level, dBFS. Kept as stored: a damaged value is refused by
    :meth:`window_settings`, so that the monitor can warn and still run on phi."""
    gate_min_on_s: float | None = None
    """``--window gate``: seconds above the level before the gate opens (kept as stored, as ``gate_db``)."""
    gate_min_off_s: float | None = None
    """``--window gate``: seconds below the off level before the gate closes (kept as stored, as ``gate_db``)."""
    model_path: str | None = None
    """The model file's absolute path at calibration."""
    machine_type: str | None = None
    """The model's machine type (fan, pump, ...), from its metadata."""
    window_maxima: Mapping[str, Any] | None = None
    """``{"n", "min", "median", "max", "cut_short"}`` of the window maxima phi was set on."""
    clip_max_scores: Mapping[str, Any] | None = None
    """``{"min", "median", "max"}`` of each recording's max frame score."""
    recordings: tuple[str, ...] | None = None
    """The recordings phi was set on."""
    heldout_recordings: tuple[str, ...] | None = None
    """The held-out recordings phi was checked on (``check``)."""
    calibrated_at: str | None = None
    """When, ISO 8601 UTC."""
    kit_version: str | None = None
    fit: Mapping[str, Any] | None = None
    """The false-alarm budget rule's tail fit (with its ``bootstrap``)."""
    check: Mapping[str, Any] | None = None
    """The realized false-alarm rate on held-out recordings (:func:`edge_asd.edge.calibrate.rules.realized_rate`)."""
    recordings_heard_by_model: int | None = None
    """How many of ``recordings`` the model was trained on and scored (edge-calibrate): those whose out-of-fold
    scores phi was set on instead (``oof_recordings``) are not counted; the monitor warns when it is above 0."""
    oof_recordings: int | None = None
    """How many of ``recordings`` phi was set on with their out-of-fold frame scores from the model file
    (``edge-train --oof-folds``: fold models that never heard them) instead of the model's own scores;
    None when the model has none or edge-calibrate ran with ``--no-oof``."""
    oof_left_out: tuple[str, ...] | None = None
    """Recordings given to edge-calibrate but left out of phi: their out-of-fold scores sound like a mode the
    fold models never heard (:func:`edge_asd.edge.calibrate.recordings.unheard_modes`); None: none."""
    fine_tuned: Mapping[str, Any] | None = None
    """edge-finetune's record: ``steps``, ``rejected_frames``, ``base_sha256``, ``finetuned_at``."""
    input_level: Mapping[str, Any] | None = None
    """Level statistics of the recordings phi was set on (:func:`edge_asd.edge.runtime.input_level.level_statistics`):
    ``seconds``, the per-second RMS level's ``median_dbfs``, ``p5_dbfs``, ``p95_dbfs``, ``spread_db`` (dBFS, dB),
    and ``high_band_share`` (energy above rate/4 over the total); the monitor's level-drift and band checks
    compare the input with them. None in records older than it."""
    alert: Mapping[str, Any] | None = None
    """The alert policy phi was set for (:class:`~edge_asd.edge.runtime.alert.AlertPolicy`): ``{"k", "n",
    "hysteresis"}``, with edge-calibrate's ``choice`` (``auto`` or ``given``) and, for ``auto``, the ``grid`` it
    chose from (each policy's ``k``, ``n``, ``phi`` and ``headroom``). None in older records: 1/1, off at phi."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys this kit does not know (written by a newer one), kept as they were."""

    @classmethod
    def from_dict(cls, data: Any, where: str = "phi record") -> PhiRecord:
        """The record of a store entry (a JSON object), validated.

        ``where`` names it in errors (e.g. ``"phi.json, machine ID 'id_00'"``).

        Raises:
            EdgeAsdError: one line naming the damaged key: not an object, no phi or a phi that is not a
                finite number, or a key of the wrong type.
        """
        if not isinstance(data, dict):
            raise EdgeAsdError(f"{where}: damaged phi record (not a JSON object); {_AGAIN}")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        if "phi" not in values:
            raise EdgeAsdError(f"{where}: damaged phi record (no phi); {_AGAIN}")
        for key, value in values.items():
            what = _CHECKS[key](value)
            if what is not None:
                raise EdgeAsdError(f"{where}: damaged phi record ({key} is {_show(value)}, not {what}); {_AGAIN}")
        for key in ("recordings", "heldout_recordings"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict:
        """The record as the store writes it: every field that is set (``machine_type`` and ``window_s``
        even when None, as edge-calibrate writes them), and ``extra``."""
        out = dict(self.extra)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name not in _ALWAYS_WRITTEN):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else _plain(value)
        return out

    def alert_policy(self) -> AlertPolicy:
        """The alert policy of :attr:`alert` (1/1, off at phi, when the record has none).

        Raises:
            EdgeAsdError: a damaged ``alert`` (votes or hysteresis out of range).
        """
        try:
            return AlertPolicy.from_dict(None if self.alert is None else dict(self.alert))
        except EdgeAsdError as e:
            raise EdgeAsdError(f"the phi record's {e}; {_AGAIN}") from None

    def window_settings(self) -> dict:
        """The window settings phi was calibrated with, as the windows' ``settings()`` give them: ``{"window":
        "whole" | "<seconds>" | "gate"}`` and, for the gate, ``gate_db`` (dBFS), ``gate_min_on_s`` and
        ``gate_min_off_s`` (s). Records older than ``window`` have only ``window_s`` (None: whole); records older
        than the gate's level and hold times were calibrated with the defaults.

        Raises:
            EdgeAsdError: a gate level or hold time that is not a number (a damaged record).
        """
        return record_settings({k: getattr(self, k) for k in ("window", "window_s", "gate_db", "gate_min_on_s",
                                                             "gate_min_off_s") if getattr(self, k) is not None})


def _show(value) -> str:
    """``repr(value)`` cut to 60 characters: a damaged value stays a one-line error."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value):
    """A JSON-ready copy: mappings as dicts (so a record's dict never shares its nested objects)."""
    return json.loads(json.dumps(value)) if isinstance(value, Mapping) else value


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_number(value) -> bool:
    """A JSON number (not a bool) that a float holds: not NaN, not infinite, and not an integer like 10**400,
    which overflows float (refused, not a traceback)."""
    try:
        return _number(value) and math.isfinite(float(value))
    except OverflowError:
        return False


def _positive_finite(value) -> bool:
    """A finite number > 0 (phi <= 0 would make every frame an anomaly)."""
    return finite_number(value) and value > 0


def _check(test, what):
    return lambda value: None if value is None or test(value) else what


_CHECKS = {
    "phi": lambda v: None if _positive_finite(v) else "a positive finite number",
    "model_sha256": _check(lambda v: isinstance(v, str), "a string"),
    "rule": _check(lambda v: isinstance(v, dict), "an object"),
    "window": _check(lambda v: isinstance(v, str), "a string"),
    "window_s": _check(_number, "a number"),
    "gate_db": lambda v: None,  # checked by window_settings (the monitor warns and runs on phi)
    "gate_min_on_s": lambda v: None,
    "gate_min_off_s": lambda v: None,
    "model_path": _check(lambda v: isinstance(v, str), "a string"),
    "machine_type": _check(lambda v: isinstance(v, str), "a string"),
    "window_maxima": _check(lambda v: isinstance(v, dict), "an object"),
    "clip_max_scores": _check(lambda v: isinstance(v, dict), "an object"),
    "recordings": _check(lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of paths"),
    "heldout_recordings": _check(lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of paths"),
    "calibrated_at": _check(lambda v: isinstance(v, str), "a string"),
    "kit_version": _check(lambda v: isinstance(v, str), "a string"),
    "fit": _check(lambda v: isinstance(v, dict), "an object"),
    "check": _check(lambda v: isinstance(v, dict), "an object"),
    "recordings_heard_by_model": _check(lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "oof_recordings": _check(lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "oof_left_out": _check(lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of paths"),
    "fine_tuned": _check(lambda v: isinstance(v, dict), "an object"),
    "alert": _check(lambda v: isinstance(v, dict), "an object"),
    "input_level": _check(lambda v: isinstance(v, dict) and all(finite_number(v.get(k)) for k in ("p5_dbfs", "p95_dbfs"))
                          and (v.get("high_band_share") is None or finite_number(v["high_band_share"])),
                          "an object with finite p5_dbfs, p95_dbfs (and high_band_share)"),
}


def default_store_path() -> Path:
    """``<user config dir>/edge-asd/phi.json`` (platformdirs), or ``$EDGE_ASD_STORE`` when set."""
    if os.environ.get("EDGE_ASD_STORE"):
        return Path(os.environ["EDGE_ASD_STORE"])
    from platformdirs import user_config_dir

    return Path(user_config_dir("edge-asd")) / "phi.json"


def load(path: Path) -> dict:
    """The store's content as JSON (records as plain dicts); an empty store when the file does not exist.

    Raises:
        EdgeAsdError: unreadable, not JSON, or not a phi store of schema :data:`STORE_SCHEMA`.
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {"schema": STORE_SCHEMA, "machines": {}}
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise EdgeAsdError(f"{path}: unreadable phi store ({type(e).__name__}); fix or remove it") from None
    if (not isinstance(data, dict) or data.get("schema") != STORE_SCHEMA or not isinstance(data.get("machines"), dict)
            or not isinstance(data.get("history", {}), dict)):
        raise EdgeAsdError(f"{path}: not an edge-asd phi store (schema {STORE_SCHEMA})")
    return data


def _record(path: Path, machine_id: str, data) -> PhiRecord:
    return PhiRecord.from_dict(data, f"{path}, machine ID {machine_id!r}")


def save_phi(path: Path, machine_id: str, record: PhiRecord) -> None:
    """Set the record of ``machine_id``, keeping the others, and append it to the machine ID's history (a
    store from before the history starts it with the record it replaces). The other records are written
    back as they were read.

    Raises:
        EdgeAsdError: the store cannot be read (it is left as it is) or written.
    """
    data = load(path)
    history = data.setdefault("history", {}).setdefault(machine_id, [])
    previous = data["machines"].get(machine_id)
    if not history and previous is not None:
        history.append(previous)
    history.append(record.to_dict())
    data["machines"][machine_id] = record.to_dict()
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def history(path: Path, machine_id: str | None = None) -> dict[str, list[PhiRecord]]:
    """Records saved per machine ID, oldest first; only ``machine_id``'s when given.

    Raises:
        EdgeAsdError: ``machine_id`` was never calibrated, or a damaged store or record.
    """
    data = load(path)
    hist = {m: data.get("history", {}).get(m) or [r] for m, r in data["machines"].items()}
    if machine_id is not None:
        if machine_id not in hist:
            known = ", ".join(sorted(hist)) or "none"
            raise EdgeAsdError(f"machine ID {machine_id!r} was never calibrated in {path} (calibrated: {known})")
        hist = {machine_id: hist[machine_id]}
    if any(not isinstance(records, list) for records in hist.values()):
        raise EdgeAsdError(f"{path}: not an edge-asd phi store (a history that is not a list)")
    return {m: [_record(path, m, r) for r in records] for m, records in hist.items()}


def lookup_phi(path: Path, machine_id: str | None, model_sha256: str, from_history: bool = False) -> tuple[str, PhiRecord]:
    """(machine_id, record) for this model; with ``machine_id`` None, the only one calibrated for it.
    ``from_history``: when the record in service is for another model, the latest record of the machine ID's
    history calibrated for this one (a slot directory's models take turns: :mod:`.slots`).

    Raises:
        EdgeAsdError: an unknown machine ID, a phi calibrated for another model file, or a damaged record.
    """
    try:
        return _lookup(path, machine_id, model_sha256)
    except EdgeAsdError:
        if not from_history:
            raise
        found = []
        for m, entries in history(path).items():
            latest = next((r for r in reversed(entries) if r.model_sha256 == model_sha256), None)
            if machine_id in (None, m) and latest is not None:
                found.append((m, latest))
        if len(found) != 1:
            raise
        return found[0]


def _lookup(path: Path, machine_id: str | None, model_sha256: str) -> tuple[str, PhiRecord]:
    machines = load(path)["machines"]
    if machine_id is None:
        mine = [m for m, r in machines.items() if isinstance(r, dict) and r.get("model_sha256") == model_sha256]
        if len(mine) != 1:
            what = "no machine ID is" if not mine else f"several machine IDs ({', '.join(sorted(mine))}) are"
            raise EdgeAsdError(f"{what} calibrated for this model in {path}; pass --machine-id (run edge-calibrate first)")
        machine_id = mine[0]
    if machine_id not in machines:
        known = ", ".join(sorted(machines)) or "none"
        raise EdgeAsdError(
            f"unknown machine ID {machine_id!r}: no phi in {path} (calibrated: {known}); run edge-calibrate --machine-id {machine_id}"
        )
    record = _record(path, machine_id, machines[machine_id])
    if record.model_sha256 != model_sha256:
        raise EdgeAsdError(
            f"phi for machine ID {machine_id!r} in {path} was calibrated for another model file; run edge-calibrate with this model"
        )
    return machine_id, record


def attach_signature(path: Path, machine_id: str, envelope: dict) -> None:
    """Store ``envelope`` (a signed phi document, :mod:`edge_asd.edge.runtime.trust`) as the ``signed`` key of
    ``machine_id``'s record in service and of its last history entry, without adding a history entry.

    Raises:
        EdgeAsdError: ``machine_id`` has no record, or the store cannot be read or written.
    """
    data = load(path)
    if machine_id not in data["machines"]:
        raise EdgeAsdError(f"machine ID {machine_id!r}: no phi in {path} to sign")
    data["machines"][machine_id]["signed"] = envelope
    entries = data.get("history", {}).get(machine_id) or []
    if entries and isinstance(entries[-1], dict):
        entries[-1]["signed"] = envelope
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
