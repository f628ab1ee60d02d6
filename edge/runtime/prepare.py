"""Loading one model for one monitored input: its scorer, phi (the phi store's, or signed: the trust directory's
checks), machine ID and alert policy, with the warnings a mismatched phi record deserves. Used when the service
starts (:mod:`.service`) and when a running input swaps models (:mod:`.rollout`, a set-phi command)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.phi_store import PhiRecord

if TYPE_CHECKING:
    from edge_asd.edge.runtime.config import InputConfig

log = logging.getLogger("edge_asd")


@dataclass
class Prepared:
    """What one model needs on an input: its scorer, its detector (phi, machine ID, alert policy) and the phi
    record phi came from (None with ``--phi``)."""

    scorer: object
    detector: object
    record: PhiRecord | None
    model: Path


def prepare_model(cfg: InputConfig, model_path: Path, from_history: bool = False) -> Prepared:
    """Load ``model_path`` for input ``cfg``: the scorer, phi (``cfg.phi`` or the phi store's record for this
    model; with ``from_history`` also an older record of the store's history, :func:`.phi_store.lookup_phi`),
    the signature checks of ``cfg.trust_dir`` and the alert policy.

    Raises:
        EdgeAsdError: an unreadable model, no phi for it, a refused signature (:func:`_check_signed`).
    """
    from edge_asd.core.machine_id import normalize_machine_id
    from edge_asd.edge.runtime import phi_store
    from edge_asd.edge.runtime.decision import RunningMaxDetector
    from edge_asd.edge.runtime.scorer import Scorer

    scorer = Scorer(model_path, num_threads=cfg.threads)
    machine_id = normalize_machine_id(cfg.machine_id) if cfg.machine_id else None
    phi, record = cfg.phi, None
    if phi is None:
        machine_id, record = phi_store.lookup_phi(cfg.store or phi_store.default_store_path(), machine_id,
                                                  scorer.sha256, from_history)
        phi = float(record.phi)
    if cfg.trust_dir is not None:
        record = _check_signed(cfg, scorer, machine_id, record)
        phi = float(record.phi) if record is not None else phi
    policy = alert_policy(cfg.label, record, cfg.votes, cfg.hysteresis)
    if cfg.phi is None:
        _check_heard(cfg.label, record)
    return Prepared(scorer, RunningMaxDetector(phi, machine_id or "unknown", scorer.sha256, policy), record,
                    Path(model_path))


def _check_signed(cfg: InputConfig, scorer, machine_id: str | None, record: PhiRecord | None) -> PhiRecord | None:
    """With a trust directory: refuse a model without a signed release installed and a phi record that is not
    the signed one last accepted (the signed copy replaces the store's); with ``allow_unsigned``, a WARNING
    instead. Returns the phi record to use.

    Raises:
        EdgeAsdError: the refusals of :meth:`~edge_asd.edge.runtime.trust.TrustDir.check_model` and
            :meth:`~edge_asd.edge.runtime.trust.TrustDir.phi_in_service`, or ``--phi`` given (an unsigned phi).
    """
    from edge_asd.edge.runtime.trust import TrustDir

    device = TrustDir(cfg.trust_dir)

    def refuse(reason) -> None:
        if not cfg.allow_unsigned:
            raise EdgeAsdError(f"{cfg.label}: {reason}")
        log.warning("%s: --allow-unsigned (development mode): %s", cfg.label, reason)

    try:
        release = device.check_model(scorer.sha256, scorer.size_bytes, cfg.trusted_clock)
        log.info("%s: signed release %d (cohort %s)", cfg.label, release.version, release.cohort)
    except EdgeAsdError as e:
        refuse(e)
    if record is None:
        if cfg.phi is not None:
            refuse(f"--phi {cfg.phi:g} is an unsigned phi; a trust directory is configured (use the signed phi store)")
        return None
    try:
        return device.phi_in_service(record, machine_id, scorer.sha256, "phi record")
    except EdgeAsdError as e:
        refuse(e)
        return record


def _check_heard(label: str, record: PhiRecord) -> None:
    """Warn when the stored phi was set on recordings the model was trained on (edge-calibrate counts them,
    :mod:`.provenance`): the model scores its training audio low, so that phi raises more false alarms."""
    heard = record.recordings_heard_by_model
    if heard is not None and heard > 0:
        log.warning("%s: phi was set on %d recording%s the model was trained on: expect more false alarms than its "
                    "rule targets; run edge-calibrate on normal recordings the model has not heard", label, heard,
                    "" if heard == 1 else "s")


def alert_policy(label: str, record: PhiRecord | None, votes: str | None, hysteresis: float | None):
    """The alert policy of an input: the phi record's (1/1, off at phi, without one), with ``votes`` (``K/N``)
    and ``hysteresis`` overriding it; a WARNING when an override differs from the stored policy (phi was
    set on the stored policy's scores: a longer vote lowers them, a shorter one raises false alarms).

    Raises:
        EdgeAsdError: bad votes or hysteresis, or a damaged ``alert`` in the record.
    """
    from edge_asd.edge.runtime.alert import AlertPolicy

    stored = record.alert_policy() if record is not None else AlertPolicy()
    policy = stored if votes is None else AlertPolicy.parse(votes, stored.hysteresis)
    if hysteresis is not None:
        policy = AlertPolicy(policy.k, policy.n, float(hysteresis))
    if record is not None and (policy.k, policy.n) != (stored.k, stored.n):
        log.warning("%s: phi was calibrated for votes %s but the monitor uses %s; run edge-calibrate --votes %d/%d",
                    label, stored.describe(), policy.describe(), policy.k, policy.n)
    if record is not None and policy.hysteresis != stored.hysteresis:
        log.warning("%s: the phi record's hysteresis is %g, the monitor uses %g", label, stored.hysteresis,
                    policy.hysteresis)
    return policy


def _check_window(label: str, record: PhiRecord, windows) -> None:
    """Warn when the stored phi was calibrated on other windows than the monitor's: another ``--window``, or
    for the energy gate another on level or hold time (window maxima grow with the window: a phi from 1-s
    windows raises false alarms on whole streams; a gate that opens later or closes sooner changes the
    segments)."""
    from edge_asd.edge.runtime.windows import describe

    monitoring = describe(windows.settings())
    try:
        calibrated = describe(record.window_settings())
    except EdgeAsdError as e:  # the monitor still runs on the phi itself
        log.warning("%s: %s", label, e)
        return
    if calibrated != monitoring:
        log.warning("%s: phi was calibrated with %s but the monitor uses %s; run edge-calibrate with the monitor's "
                    "window options", label, calibrated, monitoring)
