"""phi records that travel in a signed release (``edge-release sign --phi-store``, docs/releases.md): stored by
the installer, accepted by edge-monitor --trust-dir as signed when they equal the verified release's.

A stored copy carries ``"release": <the model's sha256>`` (kept in :attr:`PhiRecord.extra`), which names the
release document (``releases/<sha256>.json`` of the trust directory) that signs it.
"""

from __future__ import annotations

from pathlib import Path

from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime import phi_store
from edge_asd.edge.runtime.phi_store import PhiRecord

NOT_CARRIED = ("signed", "release")
"""Keys of a stored record that never go into a release (its own signature, the release it came with)."""


def records_for_model(store: Path, model_sha256: str) -> dict:
    """machine ID -> record dict, for every machine ID whose latest record in ``store`` was calibrated for the
    model with this sha256 (what ``edge-release sign --phi-store`` puts into the release).

    Raises:
        EdgeAsdError: an unreadable store, or no machine ID calibrated for this model.
    """
    out = {}
    for machine_id, records in phi_store.history(store).items():
        if records and records[-1].model_sha256 == model_sha256:
            out[machine_id] = {k: v for k, v in records[-1].to_dict().items() if k not in NOT_CARRIED}
    if not out:
        raise EdgeAsdError(f"{store}: no machine ID's latest phi record was calibrated for this model (sha256 "
                           f"{model_sha256[:16]}...); run edge-calibrate with it first")
    return out


def store_records(store: Path, release) -> list[str]:
    """Save the release's phi records into ``store`` (each marked with ``release``); the machine IDs saved."""
    for machine_id, record in (release.phi or {}).items():
        phi_store.save_phi(store, machine_id, PhiRecord.from_dict({**record, "release": release.sha256},
                                                                  f"release phi, machine ID {machine_id!r}"))
    return sorted(release.phi or {})


def check_record(record: PhiRecord, release, machine_id: str, pinned: str | None, where: str) -> PhiRecord:
    """``record`` (a stored copy naming ``release``, verified by the caller) if it equals the phi the release
    carries for ``machine_id`` and no signed phi record was accepted for that machine ID since (``pinned``).

    Raises:
        EdgeAsdError: the release carries no phi for it, the record differs from the signed one (tampered),
            or a newer signed record (set-phi, edge-calibrate --sign-key) replaces it.
    """
    carried = (release.phi or {}).get(machine_id)
    if carried is None:
        raise EdgeAsdError(f"{where}: release {release.version} carries no phi for machine ID {machine_id!r}")
    mine = {k: v for k, v in record.to_dict().items() if k not in NOT_CARRIED}
    if mine != PhiRecord.from_dict(carried, where).to_dict():
        raise EdgeAsdError(f"{where}: the phi record differs from the one signed in release {release.version} "
                           "(a changed phi store)")
    if pinned is not None:
        raise EdgeAsdError(f"{where}: a signed phi record accepted after release {release.version} replaces its phi "
                           f"for {machine_id!r}; the store holds the release's")
    return record
