"""Threshold phi per machine ID, in a small JSON file written atomically (write, fsync, rename).

Layout: ``{"schema": 1, "machines": {"id_00": {"phi": 812.5, "model_sha256": "...", "rule": {...},
"calibrated_at": "2026-11-26T10:00:00+00:00", "recordings": [...]}}, "history": {"id_00": [...]}}``.
``machines`` holds the phi in use; ``history`` every record ever saved per machine ID, oldest first
(when, which model, which recordings, which rule). A phi belongs to one model file: the monitor
refuses a phi calibrated for another model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edge_asd.core.atomic_io import atomic_write_text
from edge_asd.core.errors import EdgeAsdError

STORE_SCHEMA = 1


def default_store_path() -> Path:
    """``<user config dir>/edge-asd/phi.json`` (platformdirs), or ``$EDGE_ASD_STORE`` when set."""
    if os.environ.get("EDGE_ASD_STORE"):
        return Path(os.environ["EDGE_ASD_STORE"])
    from platformdirs import user_config_dir

    return Path(user_config_dir("edge-asd")) / "phi.json"


def load(path: Path) -> dict:
    """The store's content; an empty store when the file does not exist."""
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


def save_phi(path: Path, machine_id: str, record: dict) -> None:
    """Set the record (``phi``, ``model_sha256``, rule, ...) of ``machine_id``, keeping the others,
    and append it to the machine ID's history (a store from before the history starts it with the
    record it replaces)."""
    data = load(path)
    history = data.setdefault("history", {}).setdefault(machine_id, [])
    previous = data["machines"].get(machine_id)
    if not history and previous is not None:
        history.append(previous)
    history.append(record)
    data["machines"][machine_id] = record
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def history(path: Path, machine_id: str | None = None) -> dict[str, list[dict]]:
    """Records saved per machine ID, oldest first; only ``machine_id``'s when given (EdgeAsdError if
    it was never calibrated)."""
    data = load(path)
    hist = {m: data.get("history", {}).get(m) or [r] for m, r in data["machines"].items()}
    if machine_id is None:
        return hist
    if machine_id not in hist:
        known = ", ".join(sorted(hist)) or "none"
        raise EdgeAsdError(f"machine ID {machine_id!r} was never calibrated in {path} (calibrated: {known})")
    return {machine_id: hist[machine_id]}


def lookup_phi(path: Path, machine_id: str | None, model_sha256: str) -> tuple[str, dict]:
    """(machine_id, record) for this model; with ``machine_id`` None, the only one calibrated for it.

    Raises EdgeAsdError for an unknown machine ID or a phi calibrated for another model file.
    """
    machines = load(path)["machines"]
    if machine_id is None:
        mine = [m for m, r in machines.items() if r.get("model_sha256") == model_sha256]
        if len(mine) != 1:
            what = "no machine ID is" if not mine else f"several machine IDs ({', '.join(sorted(mine))}) are"
            raise EdgeAsdError(f"{what} calibrated for this model in {path}; pass --machine-id (run edge-calibrate first)")
        machine_id = mine[0]
    record = machines.get(machine_id)
    if record is None:
        known = ", ".join(sorted(machines)) or "none"
        raise EdgeAsdError(
            f"unknown machine ID {machine_id!r}: no phi in {path} (calibrated: {known}); run edge-calibrate --machine-id {machine_id}"
        )
    if record.get("model_sha256") != model_sha256:
        raise EdgeAsdError(
            f"phi for machine ID {machine_id!r} in {path} was calibrated for another model file; run edge-calibrate with this model"
        )
    return machine_id, record
