"""edge-finetune's workflow, callable from Python: guard rail, training, the rewritten model file, the new
phi (set on recordings kept out of training, by the rule of the phi in service) and the atomic install
(:mod:`edge_asd.edge.finetune.adapt` holds the steps).

Python use::

    from edge_asd.edge.finetune.adapt import FinetuneConfig
from edge_asd.edge.finetune.head_refit import refit_head, with_head
    from edge_asd.edge.finetune.workflow import FinetuneOptions, finetune_machine

    done = finetune_machine(FinetuneOptions(model_path=Path("fan.tflite"), machine_id="04", store=Path("phi.json"),
                                            recordings=(Path("normal/"),), training=FinetuneConfig(steps=150)))
    done.record.phi, done.summary["steps"]
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_asd.core import provenance
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.calibrate import names
from edge_asd.edge.calibrate.fit import calibrate_like
from edge_asd.edge.calibrate.recordings import split_holdout
from edge_asd.edge.finetune import adapt as ft
from edge_asd.edge.finetune.adapt import FinetuneConfig
from edge_asd.edge.finetune.head_refit import refit_head, with_head
from edge_asd.edge.runtime import phi_store
from edge_asd.edge.runtime.alert import AlertPolicy
from edge_asd.edge.runtime.phi_store import PhiRecord
from edge_asd.edge.runtime.scorer import Scorer
from edge_asd.edge.runtime.windows import describe
from edge_asd.firmware_io.audio_file import audio_files, find_recordings, read_audio

log = logging.getLogger("edge_asd")


@dataclass(frozen=True)
class FinetuneOptions:
    """Everything edge-finetune needs to adapt the model in service to one machine."""

    model_path: Path
    """The .tflite model file in service; replaced in place (the old one is kept for rollback)."""
    machine_id: str
    """Machine ID the recordings come from (00, id_00, section_00): the new phi is stored for it."""
    store: Path
    """The phi store."""
    recordings: tuple[Path, ...]
    """Normal recordings of the machine: files, or directories of audio files."""
    training: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Updates, time budget, step size, seed, guard rail and the share of recordings kept out to set phi."""
    something_else_dir: Path | None = None
    """Everyday sounds for the pseudo-anomalies of eq. (8); None: coloured noise."""
    force: bool = False
    """Fine-tune even when the guard rail refuses, or without a phi to check against."""
    check: tuple[Path, ...] = ()
    """Held-out normal recordings (files or directories), not trained on: the new phi is checked on them."""
    threads: int = 1
    """Inference threads."""
    accept_other_machines: bool = False
    """Take recordings whose names say another machine ID or type (:mod:`edge_asd.edge.calibrate.names`)."""


@dataclass(frozen=True)
class Finetuned:
    """What a fine-tune did."""

    summary: dict
    """:func:`~edge_asd.edge.finetune.adapt.summary_record` with ``recordings_trained``, ``recordings_phi``
    and ``previous_phi`` (the phi replaced, or None)."""
    record: PhiRecord
    """The new phi record, in service."""


def finetune_machine(options: FinetuneOptions) -> Finetuned:
    """edge-finetune without its option parsing: the recordings and held-out recordings expanded
    (directories to their audio files), then :func:`finetune_model`.

    Raises:
        EdgeAsdError: as :func:`finetune_model`, or a directory without audio files.
    """
    return finetune_model(options.model_path, options.machine_id, options.store,
                          find_recordings(options.recordings), options.training,
                          something_else_dir=options.something_else_dir, force=options.force, threads=options.threads,
                          held_files=find_recordings(options.check) if options.check else [],
                          accept_other_machines=options.accept_other_machines)


def finetune_model(model_path: Path, machine_id: str, store: Path, files: list[Path], cfg: FinetuneConfig,
                   something_else_dir: Path | None = None, force: bool = False, threads: int = 1,
                   held_files: Sequence[Path] = (), accept_other_machines: bool = False) -> Finetuned:
    """Fine-tune the model in service on ``files`` (normal recordings of ``machine_id``: 00, id_00 or
    section_00; a bare number takes the model's ID form, said in one INFO line), set its new phi and install
    both, keeping the previous ones for rollback.

    ``held_files``: held-out normal recordings the new phi is checked on (the record's ``check``).
    File names decide what goes where (:mod:`edge_asd.edge.calibrate.names`): ``anomaly_*`` clips among
    ``files`` or ``held_files`` are refused, and so are clips whose names say another machine ID or type
    (the model's) unless ``accept_other_machines``.

    Raises EdgeAsdError (nothing changed) for recordings refused by their names, a model that is not .tflite,
    no phi without ``force``, a
    recording shorter than one context vector, a recording in both ``files`` and ``held_files``, too few
    recordings to keep ``cfg.phi_share`` of them out, the guard rail's refusal, or a previous phi whose rule and
    windows cannot be applied to ``files`` (checked with the current model before training, and with the
    fine-tuned one before it is installed).
    """
    scorer = Scorer(model_path, num_threads=threads)
    if scorer.kind != "tflite":
        raise EdgeAsdError(f"{model_path}: edge-finetune rewrites .tflite model files; convert with --to tflite")
    machine_id = names.resolve_for_model(machine_id, scorer.meta, [*files, *held_files])
    machine = names.model_machine(scorer.meta, machine_id)
    names.check_normal_recordings(files, machine, "recordings", accept_other_machines)
    names.check_normal_recordings(list(held_files), machine, "--check recordings", accept_other_machines)
    try:
        _, previous = phi_store.lookup_phi(store, machine_id, scorer.sha256)
    except EdgeAsdError as e:
        if not force:
            raise EdgeAsdError(f"{e} (the guard rail scores the audio against it; or pass --force)") from None
        previous = None
    overlap = {Path(f).resolve() for f in files} & {Path(f).resolve() for f in held_files}
    if overlap:
        raise EdgeAsdError(f"{sorted(overlap)[0]}: given both to fine-tune on and as a held-out --check recording")
    sr = scorer.features.sample_rate
    clips = [read_audio(f, sr) for f in files]
    held_clips = [read_audio(f, sr) for f in held_files]
    for f, c in zip([*files, *held_files], [*clips, *held_clips]):
        if len(c) < scorer.features.samples_per_vector:
            raise EdgeAsdError(f"{f}: shorter than one context window ({scorer.features.samples_per_vector} samples)")
    audio_s = sum(map(len, clips)) / sr
    train_files, train_clips, phi_files, phi_clips = split_for_phi(files, clips, cfg.phi_share)
    try:  # fail before the training time is spent when the rule cannot be applied to these recordings
        calibrate_like(previous, scorer, model_path, phi_files, phi_clips, held_files, held_clips)
    except EdgeAsdError as e:
        raise EdgeAsdError(recalibration_error(previous, e, "nothing was trained")) from None
    limit = None if previous is None else cfg.reject_factor * float(previous.phi)
    policy = previous.alert_policy() if previous is not None else AlertPolicy()  # phi judges its policy scores
    guarded = ft.guard(scorer, train_clips, limit, policy)
    if phi_files is not train_files:  # the fault in a phi recording would raise phi: it counts as much
        on_phi = ft.guard(scorer, phi_clips, limit, policy)
        guarded = ft.Guarded(guarded.runs, guarded.n_frames + on_phi.n_frames, guarded.n_rejected + on_phi.n_rejected,
                             limit)
    share = guarded.n_rejected / max(1, guarded.n_frames)
    log.info("guard rail: %d of %d frames (%.1f %%) score above %s", guarded.n_rejected, guarded.n_frames, 100 * share,
             "nothing (no phi)" if limit is None else f"{limit:.4g} = {cfg.reject_factor} x phi")
    if share > cfg.max_rejected:
        if not force:
            raise EdgeAsdError(
                f"{guarded.n_rejected} of {guarded.n_frames} frames ({100 * share:.0f} %) already score as anomalous "
                f"(above {limit:.4g}); fine-tuning on them would teach the model the fault. Check the recordings, "
                f"or pass --force")
        log.warning("--force: training on all %d frames, %d of them above the limit", guarded.n_frames, guarded.n_rejected)
        guarded = ft.Guarded(train_clips, guarded.n_frames, guarded.n_rejected, limit)
    if scorer.head is None:
        summary, new_model = _train_autoencoder(scorer, model_path, guarded, cfg, something_else_dir)
    else:
        summary, new_model = _refit_head(scorer, guarded, cfg)
    summary = {**ft.summary_record(machine_id, cfg, summary.pop("history"), summary.pop("seconds"), len(files), audio_s,
                                   guarded, scorer.sha256), **summary}
    summary.update(recordings_trained=len(train_files), recordings_phi=len(phi_files))
    short = provenance.prefixes(provenance.file_sha256(f) for f in train_files)
    if short is not None:  # edge-calibrate warns when given these recordings later
        summary["file_sha256_prefixes"] = short
    new_model = new_model(summary)
    record = recalibrate(new_model, model_path, phi_files, phi_clips, previous, threads, held_files, held_clips)
    record = dataclasses.replace(record, fine_tuned={k: summary[k] for k in ("steps", "rejected_frames", "base_sha256",
                                                                            "finetuned_at")})
    summary["previous_phi"] = None if previous is None else previous.phi
    ft.install(Path(model_path), new_model, store, machine_id, record, previous,
               {**summary, "model_sha256": record.model_sha256, "previous_sha256": scorer.sha256})
    what = f"{summary['steps']} updates" if scorer.head is None else f"inlier model refit: {summary['head_refit']['head']}"
    log.info("fine-tuned in %.1f s (%s); phi %s -> %.4g; previous model kept in %s", summary["train_seconds"], what,
             "none" if previous is None else f"{previous.phi:.4g}", record.phi, ft.previous_path(Path(model_path)).name)
    return Finetuned(summary, record)


def _train_autoencoder(scorer, model_path: Path, guarded, cfg: FinetuneConfig, something_else_dir: Path | None):
    """An autoencoder's fine-tune: its dense layers trained in numpy on the accepted audio (:mod:`.adapt`).
    Returns ({"history", "seconds"}, a function from the summary record to the new model's bytes)."""
    sr = scorer.features.sample_rate
    something_else = [read_audio(p, sr) for p in audio_files(something_else_dir)] if something_else_dir else None
    data = Path(model_path).read_bytes()
    layers, _ = ft.read_layers(data, str(model_path))

    def progress(step, row):
        if step % 25 == 0 or step == cfg.steps - 1:
            log.info("update %d/%d: loss %.2f, mean A(x_u) %.1f", step + 1, cfg.steps, row["loss"], row["score_u"])

    t0 = time.perf_counter()
    layers, history = ft.train_layers(layers, scorer.info, guarded.runs, cfg, something_else, progress)
    seconds = time.perf_counter() - t0
    calibration = ft.calibration_sample(scorer.info, guarded.runs, cfg.calibration_frames, cfg.seed)
    return ({"history": history, "seconds": seconds},
            lambda summary: ft.write_layers(data, layers, ft.new_metadata(scorer.meta, summary), calibration,
                                            str(model_path)))


def _refit_head(scorer, guarded, cfg: FinetuneConfig):
    """An embedding model's fine-tune: the network frozen, its inlier model refitted on the accepted audio's
    windows (:mod:`.head_refit`); the graph's bytes are kept, only the metadata changes."""
    t0 = time.perf_counter()
    head, what = refit_head(scorer, guarded.runs)
    seconds = time.perf_counter() - t0
    log.info("inlier model refit on %d windows of this machine (network frozen): %s%s", what["windows"], what["head"],
             "" if what["shrinkage"] is None else f", Ledoit-Wolf shrinkage {what['shrinkage']:.3f}")
    return ({"history": [], "seconds": seconds, "head_refit": what},
            lambda summary: with_head(scorer.path.read_bytes(), {**ft.new_metadata(scorer.meta, summary),
                                                                 "quantization": scorer.meta.get("quantization")}, head))


def split_for_phi(files: list[Path], clips: list, share: float) -> tuple[list, list, list, list]:
    """(train files, their clips, phi files, their clips): the last ``share`` of the recordings (at least one)
    are kept out of training and set phi. A model scores the audio it was just trained on lower than new
    audio of the same machine, so a phi set on it is low (fan id_00, 1-s windows, target 5 %: 16-34 % false
    alarms on held-out normals, against 2-4 % for phi set on recordings kept out; docs/finetune.md).
    ``share`` 0: both are all of the recordings (a warning says what that costs).

    Raises EdgeAsdError (one line, naming --phi-share) when the split leaves nothing to train on."""
    if share == 0:
        log.warning("--phi-share 0: phi is set on the recordings the model is trained on, and comes out low "
                    "(more false alarms in service)")
        return files, clips, files, clips
    train, kept = split_holdout(list(zip(files, clips)), share, "--phi-share", "train on")
    log.info("phi is set on the last %d of %d recordings, kept out of training (--phi-share %g)", len(kept), len(files), share)
    return [f for f, _ in train], [c for _, c in train], [f for f, _ in kept], [c for _, c in kept]


def recalibrate(new_model: bytes, model_path: Path, files: list[Path], clips: list, previous: PhiRecord | None,
                threads: int, held_files: Sequence[Path] = (), held_clips: list | None = None) -> PhiRecord:
    """phi for the fine-tuned model: the previous record's rule with its parameters, on its windows
    (``--window`` whole / SECONDS / gate with the gate's level and hold times; edge-calibrate's defaults
    without a previous record), applied to the fine-tuning recordings scored through the new file as the
    device will run it (:func:`edge_asd.edge.calibrate.fit.calibrate_like`; ``clips``: the files decoded once,
    at the model's rate; ``held_files``/``held_clips``: held-out recordings to check the new phi on). Returns
    the new phi record.

    Raises:
        EdgeAsdError: the rule or windows cannot be applied (one line; the caller installs nothing).
    """
    fd, tmp = tempfile.mkstemp(dir=Path(model_path).parent, prefix=f".{Path(model_path).name}.", suffix=".check.tflite")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(new_model)
        return calibrate_like(previous, Scorer(tmp, num_threads=threads), model_path, files, clips, held_files,
                              held_clips)
    except EdgeAsdError as e:
        raise EdgeAsdError(recalibration_error(previous, e, "the fine-tuned model was not installed")) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def recalibration_error(previous: PhiRecord | None, error: Exception, what_happened: str) -> str:
    """One line: which rule and windows could not be re-applied, why, and that the model and phi stay."""
    if previous is None:
        how = "edge-calibrate's default rule (1.1 x the worst recording)"
    else:
        rule = previous.rule or {}
        params = ", ".join(f"{k} {v}" for k, v in rule.items() if k != "name")
        try:
            window = describe(previous.window_settings())
        except EdgeAsdError:
            window = "damaged"
        name = str(rule.get("name", "unknown")) + (f": {params}" if params else "")
        how = f"the rule of the phi in service ({name}) on its windows ({window})"
    return (f"cannot re-calibrate phi with {how} on these recordings: {error}; {what_happened}, the model and phi "
            "in service are unchanged")
