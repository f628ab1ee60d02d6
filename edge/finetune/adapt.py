"""On-device fine-tuning: continue BU training of the shipped model on one machine's normal sound.

Steps (``edge-finetune``): (1) the guard rail scores the local audio with the model in service and its
phi and drops the frames above ``reject_factor * phi`` (refusing when too many are rejected: the audio
may hold the fault the model should detect); (2) the weights are read out of the model file
(:mod:`.tflite_weights`) and trained further with the paper's loss in numpy (:mod:`.autoencoder`) on
mini-batches drawn from the accepted audio exactly as the desktop trainer draws them (sec. 4.2.1,
``core.batches``, numpy only); (3) the new weights are written into a copy of the model file
(re-quantized on the local frames); (4) phi is recalibrated for the machine ID; (5) the files are
swapped atomically, keeping the previous model and phi for :func:`rollback`. The whole workflow,
as edge-finetune runs it, is :func:`edge_asd.edge.finetune.workflow.finetune_model`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_asd.core.atomic_io import atomic_write_bytes, atomic_write_text
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.provenance import sha256_bytes
from edge_asd.edge.finetune.autoencoder import AMSGrad, flat_params, loss_and_grads
from edge_asd.edge.finetune.tflite_weights import read_layers, write_layers
from edge_asd.edge.runtime import phi_store
from edge_asd.edge.runtime.alert import EQ11, AlertPolicy, policy_scores
from edge_asd.edge.runtime.phi_store import PhiRecord

log = logging.getLogger("edge_asd")
STATE_SCHEMA = 1


@dataclass
class FinetuneConfig:
    steps: int = 150
    """Updates (mini-batches of sec. 4.2.1: 10 x 3-s segments, one something-else sound)."""
    minutes: float | None = None
    """Stop earlier when training has run this long (wall clock), min."""
    lr: float = 3e-4
    """AMSGrad step size, constant (the shipped weights are already near a minimum)."""
    seed: int = 0
    reject_factor: float = 1.0
    """Frames scoring above reject_factor * phi are left out of training."""
    max_rejected: float = 0.1
    """Refuse when more than this fraction of the frames is rejected (unless forced)."""
    calibration_frames: int = 2000
    """Standardized local frames the int8 activation ranges are measured on."""
    phi_share: float = 0.3
    """Share of the recordings (the last ones) kept out of training and used to set phi; 0 sets phi on the
    training recordings themselves, which the model has just fitted (phi comes out low)."""


# 1. Guard rail ------------------------------------------------------------------------------------

@dataclass
class Guarded:
    runs: list[np.ndarray]
    """Stretches of audio whose frames all scored at most the limit (mono float32)."""
    n_frames: int
    n_rejected: int
    limit: float | None


def guard(scorer, clips: list[np.ndarray], limit: float | None, policy: AlertPolicy = EQ11) -> Guarded:
    """Score every context vector of ``clips`` with the model in service; keep the audio of the frames
    whose policy score is <= ``limit`` (eq. 4 with 1/1, the default: A(x) <= limit; the others are anomalies
    for this model as the monitor judges them with ``policy``, :mod:`edge_asd.edge.runtime.alert`; a frame
    without a policy score is kept), as contiguous runs.

    ``limit`` None keeps everything (no phi to compare with).
    """
    cfg = scorer.features
    runs, n_frames, n_rejected = [], 0, 0
    for clip in clips:
        scores, valid = policy_scores(scorer.score_audio(clip), policy)
        n_frames += len(scores)
        ok = np.ones(len(scores), bool) if limit is None else ~valid | (scores <= limit)
        n_rejected += int((~ok).sum())
        edges = np.flatnonzero(np.diff(np.concatenate([[0], ok.astype(np.int8), [0]])))
        for first, stop in zip(edges[::2], edges[1::2]):  # accepted vectors [first, stop)
            runs.append(clip[first * cfg.vector_hop_samples:(stop - 1) * cfg.vector_hop_samples + cfg.samples_per_vector])
    return Guarded(runs, n_frames, n_rejected, limit)


# 2. Training --------------------------------------------------------------------------------------

def train_layers(layers, info, runs: list[np.ndarray], cfg: FinetuneConfig, something_else=None,
                 on_step=None) -> tuple[list, list[dict]]:
    """Continue training ``layers`` (from :func:`read_layers`) with the model's own loss and parameters
    (its ``loss`` metadata: BU eq. 16, SNP eq. 9 or RE eq. 7); returns (layers, per-update history).

    Mini-batches: ``train.batches.BatchBuilder`` on ``runs`` (sec. 4.2.1); without ``something_else``
    sounds, coloured noise stands in for a (eq. 8). Raises EdgeAsdError when no run is 3 s long.
    """
    from edge_asd.core.batches import BatchBuilder

    loss = info.meta.get("loss", {})
    name, params = loss.get("name", "bu"), loss.get("params", {})
    dim = info.features.dim
    sigma = float(params.get("sigma") or 1.0 / (2 * dim))
    lam = float(params.get("lambda") or 2.0 * info.features.n_mels)
    eps = float(params.get("epsilon") or 1e-6)
    try:
        builder = BatchBuilder(runs, something_else, info.features)
    except ValueError:
        raise EdgeAsdError("no stretch of accepted normal audio is 3 s long; record more normal sound") from None
    rng = np.random.default_rng(cfg.seed)
    layers = [(w.astype(np.float32).copy(), b.astype(np.float32).copy()) for w, b in layers]
    params_flat, opt = flat_params(layers), AMSGrad(lr=cfg.lr)
    history, t0 = [], time.perf_counter()
    for step in range(cfg.steps):
        if cfg.minutes is not None and time.perf_counter() - t0 > 60.0 * cfg.minutes:
            log.info("time budget of %.1f min reached after %d updates", cfg.minutes, step)
            break
        batch = builder.draw(rng)
        x_u, x_a = info.standardize(batch.x_u), info.standardize(batch.x_a)
        j, grads, a_u, a_a = loss_and_grads(layers, x_u, x_a, name, sigma, lam, eps)
        opt.step(params_flat, [g for pair in grads for g in pair])
        history.append({"step": step, "loss": j, "score_u": float(a_u.mean()),
                        "score_a": float(a_a.mean()) if len(a_a) else float("nan")})
        if on_step:
            on_step(step, history[-1])
    return layers, history


# 3-5. Files ---------------------------------------------------------------------------------------

def previous_path(model_path: Path) -> Path:
    """Where the model in service before the last fine-tune is kept: ``<model>.previous``."""
    return model_path.with_name(model_path.name + ".previous")


def state_path(model_path: Path) -> Path:
    """The fine-tune record that :func:`rollback` reads: ``<model>.finetune.json``."""
    return model_path.with_name(model_path.name + ".finetune.json")


def calibration_sample(info, runs: list[np.ndarray], n: int, seed: int) -> np.ndarray:
    """Up to ``n`` standardized context vectors (n, D) of the accepted audio, for int8 activation ranges."""
    from edge_asd.core.features import extract

    vectors = np.concatenate([extract(r, info.features) for r in runs])
    pick = np.random.default_rng(seed).choice(len(vectors), size=min(n, len(vectors)), replace=False)
    return info.standardize(vectors[pick])


def new_metadata(meta: dict, record: dict) -> dict:
    """The old ``edge_asd`` metadata with this fine-tune appended to ``fine_tuning`` (provenance), without the
    out-of-fold scores (``oof``): they belong to the old weights, and edge-calibrate would set phi on them."""
    out = json.loads(json.dumps(meta))
    out.pop("oof", None)
    out["fine_tuning"] = list(out.get("fine_tuning", [])) + [record]
    if out.get("quantization", {}).get("mode") == "int8-static":
        out["quantization"]["calibration"] = "on-device min/max of the fine-tuning frames (edge-finetune)"
    return out


def install(model_path: Path, new_model: bytes, store: Path, machine_id: str, phi_record: PhiRecord,
            previous_phi: PhiRecord | None, summary: dict) -> None:
    """Put the fine-tuned model and phi in service, keeping what was there for :func:`rollback`.

    Order: previous model copy, then the state record, then the model (atomic rename), then phi. A
    crash before the model's rename leaves the old model and old phi in service; between the two
    renames, the monitor refuses the old phi for the new model (checksum) until ``--rollback`` or a rerun.
    """
    old = model_path.read_bytes()
    atomic_write_bytes(previous_path(model_path), old)
    state = {**summary, "schema": STATE_SCHEMA, "model": str(model_path), "store": str(store), "machine_id": machine_id,
             "previous_phi": None if previous_phi is None else previous_phi.to_dict()}  # restored by rollback
    atomic_write_text(state_path(model_path), json.dumps(state, indent=2, sort_keys=True) + "\n")
    atomic_write_bytes(model_path, new_model)
    phi_store.save_phi(store, machine_id, phi_record)


@dataclass(frozen=True)
class RolledBack:
    """What :func:`rollback` put back in service."""

    machine_id: str
    model_sha256: str
    """sha256 of the model file back in service."""
    phi: PhiRecord | None
    """The phi record back in service (None: the fine-tune had no phi to replace)."""


def rollback(model_path: Path, store: Path | None = None) -> RolledBack:
    """Put the model and phi that were in service before the last fine-tune back (into ``store``, default:
    the store the fine-tune wrote).

    Raises:
        EdgeAsdError: no fine-tune to undo, a damaged fine-tune record, or the model file changed since
            (converted or copied over).
    """
    model_path = Path(model_path)
    try:
        state = json.loads(state_path(model_path).read_text())
        old = previous_path(model_path).read_bytes()
    except FileNotFoundError:
        raise EdgeAsdError(f"{model_path}: no fine-tune to roll back (no {previous_path(model_path).name})") from None
    except ValueError:
        raise EdgeAsdError(f"{state_path(model_path)}: damaged fine-tune record; remove it and reinstall the model") from None
    current = sha256_bytes(model_path.read_bytes()) if model_path.exists() else None
    if current not in (state["model_sha256"], state["previous_sha256"]):
        raise EdgeAsdError(f"{model_path}: the model file changed since the last fine-tune; nothing rolled back")
    if sha256_bytes(old) != state["previous_sha256"]:
        raise EdgeAsdError(f"{previous_path(model_path)}: damaged copy of the previous model; nothing rolled back")
    previous_phi = state.get("previous_phi")
    if previous_phi is not None:
        previous_phi = PhiRecord.from_dict(previous_phi, f"{state_path(model_path)}, previous_phi")
    atomic_write_bytes(model_path, old)
    store = Path(store or state["store"])
    if previous_phi is not None:
        phi_store.save_phi(store, state["machine_id"], previous_phi)
    previous_path(model_path).unlink()
    state_path(model_path).unlink()
    return RolledBack(state["machine_id"], state["previous_sha256"], previous_phi)


def rollback_signed(device, model_path: Path, store: Path) -> dict:
    """A rollback command on a fine-tuned model file (:func:`rollback`), with a trust directory ``device``
    (:class:`~edge_asd.edge.runtime.trust.TrustDir`): the restored phi is pinned when it is signed (a WARNING
    otherwise: edge-monitor --trust-dir refuses it). Returns ``{"machine_id", "model_sha256"}``.

    Raises:
        EdgeAsdError: the refusals of :func:`rollback`, a restored signed phi that does not verify.
    """
    back = rollback(model_path, store)
    if not device.pin_restored(back.machine_id, back.phi, f"{store}: restored phi"):
        log.warning("the restored phi record is unsigned: edge-monitor with --trust-dir refuses it")
    return {"machine_id": back.machine_id, "model_sha256": back.model_sha256}


def summary_record(machine_id: str, cfg: FinetuneConfig, history: list[dict], seconds: float, n_clips: int,
                   audio_s: float, guarded: Guarded, old_sha: str) -> dict:
    """What a fine-tune did, for the metadata, the state record and the CLI's JSON line."""
    from edge_asd.core.commands import kit_version

    return {"machine_id": machine_id, "steps": len(history), "train_seconds": round(seconds, 2),
            "recordings": n_clips, "audio_seconds": round(audio_s, 1), "frames": guarded.n_frames,
            "rejected_frames": guarded.n_rejected, "reject_limit": guarded.limit,
            "final_loss": history[-1]["loss"] if history else None, "config": asdict(cfg), "base_sha256": old_sha,
            "finetuned_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "kit_version": kit_version()}


__all__ = ["FinetuneConfig", "guard", "train_layers", "write_layers", "read_layers", "install", "rollback", "rollback_signed", "RolledBack",
           "previous_path", "state_path", "calibration_sample", "new_metadata", "summary_record"]
