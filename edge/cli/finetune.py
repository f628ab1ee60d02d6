"""``edge-finetune``: adapt the model in service to one machine from its normal sound, on the device."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import click

from edge_asd.core.commands import CONTEXT_SETTINGS, kit_version, setup_logging, user_errors
from edge_asd.core.errors import EdgeAsdError

log = logging.getLogger("edge_asd")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("recordings", nargs=-1)
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .tflite model file in service; replaced in place (the old one is kept for --rollback).")
@click.option("--machine-id", default=None, help="Machine ID the recordings come from (00, id_00, section_00).")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="phi store. Default: $EDGE_ASD_STORE or the user config dir.")
@click.option("--steps", type=click.IntRange(min=1), default=150, show_default=True, help="Training updates.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=1.25, show_default=True,
              help="Stop training after this many minutes (wall clock) even before --steps: the device's time budget.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-4, show_default=True, help="AMSGrad step size.")
@click.option("--seed", default=0, show_default=True)
@click.option("--something-else", "something_else_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Everyday sounds for the pseudo-anomalies of eq. (8); default: coloured noise.")
@click.option("--reject-factor", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Frames the current model scores above FACTOR x phi are left out of training.")
@click.option("--max-rejected", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Refuse when more than this fraction of the frames is rejected.")
@click.option("--phi-share", type=click.FloatRange(0, 1, max_open=True), default=0.3, show_default=True,
              help="Share of the RECORDINGS (the last ones, at least one) kept out of training to set the new phi on; "
                   "0 sets phi on the training recordings, which the new model scores low.")
@click.option("--check", "check_paths", multiple=True,
              help="Held-out normal recordings of this machine (file or directory; repeatable), not trained on: the new "
                   "phi's realized false-alarm rate on them is printed and stored, as edge-calibrate --check does.")
@click.option("--force", is_flag=True, help="Fine-tune even when the guard rail refuses, or without a phi to check against.")
@click.option("--rollback", is_flag=True, help="Put back the model and phi in service before the last fine-tune.")
@click.option("--threads", default=1, show_default=True, help="Inference threads.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.version_option(kit_version(), "--version")
@user_errors
def main(recordings, model_path, machine_id, store, steps, minutes, lr, seed, something_else_dir, reject_factor,
         max_rejected, phi_share, check_paths, force, rollback, threads, quiet):
    """Continue BU training of the model in service on normal RECORDINGS (files or directories) of one
    machine, recalibrate its phi, and replace the model file atomically. Prints a JSON summary on stdout.

    The recordings are first scored with the current model: frames above phi are rejected (they may be
    the fault the model should catch); more than --max-rejected of them and the command refuses. The last
    --phi-share of the RECORDINGS are not trained on: the new phi is set on them (the model scores the audio
    it was trained on low), by the rule and on the windows of the phi in service (as edge-calibrate
    set it: quantile, --target-fpr or --false-alarms-per-day; --window and the gate's options); when that
    rule cannot be applied to them, the command refuses and nothing changes. With --check, the new phi is
    also checked on held-out normal recordings of the machine (the realized false-alarm rate, as
    edge-calibrate --check).
    """
    setup_logging(quiet=quiet)
    from edge_asd.edge.finetune import adapt as ft
    from edge_asd.edge.runtime import phi_store
    from edge_asd.edge.cli.calibrate import check_line, expand_recordings
    from edge_asd.core.machine_id import normalize_machine_id

    store = store or phi_store.default_store_path()
    if rollback:
        state = ft.rollback(model_path, store)
        click.echo(json.dumps({"rolled_back": str(model_path), "machine_id": state["machine_id"],
                               "model_sha256": state["previous_sha256"],
                               "phi": (state.get("previous_phi") or {}).get("phi")}))
        return
    if not recordings:
        raise EdgeAsdError("give the normal RECORDINGS to fine-tune on (files or directories), or --rollback")
    if machine_id is None:
        raise EdgeAsdError("--machine-id is required: the new phi is stored for that machine")
    machine_id = normalize_machine_id(machine_id)
    summary, phi_record = finetune_model(model_path, machine_id, store, expand_recordings(recordings),
                                         ft.FinetuneConfig(steps=steps, minutes=minutes, lr=lr, seed=seed,
                                                           reject_factor=reject_factor, max_rejected=max_rejected,
                                                           phi_share=phi_share),
                                         something_else_dir, force, threads,
                                         expand_recordings(check_paths) if check_paths else [])
    if "check" in phi_record:
        click.echo(f"edge-finetune: {check_line(phi_record['check'])}", err=True)
    click.echo(json.dumps({**{k: summary[k] for k in ("machine_id", "steps", "train_seconds", "audio_seconds",
                                                         "recordings_trained", "recordings_phi", "frames",
                                                         "rejected_frames", "base_sha256")},
                           "model_sha256": phi_record["model_sha256"], "phi": phi_record["phi"],
                           "previous_phi": summary["previous_phi"], "rule": phi_record["rule"],
                           "window": phi_record["window"], "store": str(store),
                           **({"check": phi_record["check"]} if "check" in phi_record else {})}))


def finetune_model(model_path: Path, machine_id: str, store: Path, files: list[Path], cfg, something_else_dir=None,
                   force: bool = False, threads: int = 1, held_files: list[Path] = ()) -> tuple[dict, dict]:
    """The whole command without its options parsing: (summary, new phi record).

    ``held_files``: held-out normal recordings the new phi is checked on (the record's ``check``).

    Raises EdgeAsdError (nothing changed) for a model that is not .tflite, no phi without ``force``, a
    recording shorter than one context vector, a recording in both ``files`` and ``held_files``, too few
    recordings to keep ``cfg.phi_share`` of them out, the guard rail's refusal, or a previous phi whose rule and
    windows cannot be applied to ``files`` (checked with the current model before training, and with the
    fine-tuned one before it is installed).
    """
    from edge_asd.firmware_io.audio_file import audio_files, read_audio

    from edge_asd.edge.finetune import adapt as ft
    from edge_asd.edge.runtime import phi_store
    from edge_asd.core import provenance
    from edge_asd.edge.cli.calibrate import calibrate_like
    from edge_asd.edge.runtime.scorer import Scorer

    scorer = Scorer(model_path, num_threads=threads)
    if scorer.kind != "tflite":
        raise EdgeAsdError(f"{model_path}: edge-finetune rewrites .tflite model files; convert with --to tflite")
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
    limit = None if previous is None else cfg.reject_factor * float(previous["phi"])
    guarded = ft.guard(scorer, train_clips, limit)
    if phi_files is not train_files:  # the fault in a phi recording would raise phi: it counts as much
        on_phi = ft.guard(scorer, phi_clips, limit)
        guarded = ft.Guarded(guarded.runs, guarded.n_frames + on_phi.n_frames, guarded.n_rejected + on_phi.n_rejected,
                             limit)
    share = guarded.n_rejected / max(1, guarded.n_frames)
    log.info("guard rail: %d of %d frames (%.1f %%) score above %s", guarded.n_rejected, guarded.n_frames, 100 * share,
             "nothing (no phi)" if limit is None else f"{limit:.1f} = {cfg.reject_factor} x phi")
    if share > cfg.max_rejected:
        if not force:
            raise EdgeAsdError(
                f"{guarded.n_rejected} of {guarded.n_frames} frames ({100 * share:.0f} %) already score as anomalous "
                f"(above {limit:.1f}); fine-tuning on them would teach the model the fault. Check the recordings, "
                f"or pass --force")
        log.warning("--force: training on all %d frames, %d of them above the limit", guarded.n_frames, guarded.n_rejected)
        guarded = ft.Guarded(train_clips, guarded.n_frames, guarded.n_rejected, limit)
    something_else = [read_audio(p, sr) for p in audio_files(something_else_dir)] if something_else_dir else None
    data = Path(model_path).read_bytes()
    layers, _ = ft.read_layers(data, str(model_path))

    def progress(step, row):
        if step % 25 == 0 or step == cfg.steps - 1:
            log.info("update %d/%d: loss %.2f, mean A(x_u) %.1f", step + 1, cfg.steps, row["loss"], row["score_u"])

    t0 = time.perf_counter()
    layers, history = ft.train_layers(layers, scorer.info, guarded.runs, cfg, something_else, progress)
    seconds = time.perf_counter() - t0
    summary = ft.summary_record(machine_id, cfg, history, seconds, len(files), audio_s, guarded, scorer.sha256)
    summary.update(recordings_trained=len(train_files), recordings_phi=len(phi_files))
    short = provenance.prefixes(provenance.file_sha256(f) for f in train_files)
    if short is not None:  # edge-calibrate warns when given these recordings later
        summary["file_sha256_prefixes"] = short
    calibration = ft.calibration_sample(scorer.info, guarded.runs, cfg.calibration_frames, cfg.seed)
    new_model = ft.write_layers(data, layers, ft.new_metadata(scorer.meta, summary), calibration, str(model_path))
    phi_record = recalibrate(new_model, model_path, phi_files, phi_clips, previous, threads, held_files, held_clips)
    phi_record["fine_tuned"] = {k: summary[k] for k in ("steps", "rejected_frames", "base_sha256", "finetuned_at")}
    summary["previous_phi"] = None if previous is None else previous["phi"]
    ft.install(Path(model_path), new_model, store, machine_id, phi_record, previous,
               {**summary, "model_sha256": phi_record["model_sha256"], "previous_sha256": scorer.sha256})
    log.info("fine-tuned in %.1f s (%d updates); phi %s -> %.1f; previous model kept in %s", seconds, len(history),
             "none" if previous is None else f"{previous['phi']:.1f}", phi_record["phi"], ft.previous_path(Path(model_path)).name)
    return summary, phi_record


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
    from edge_asd.edge.cli.calibrate import split_holdout

    train, kept = split_holdout(list(zip(files, clips)), share, "--phi-share", "train on")
    log.info("phi is set on the last %d of %d recordings, kept out of training (--phi-share %g)", len(kept), len(files), share)
    return [f for f, _ in train], [c for _, c in train], [f for f, _ in kept], [c for _, c in kept]


def recalibrate(new_model: bytes, model_path: Path, files: list[Path], clips: list, previous: dict | None,
                threads: int, held_files: list[Path] = (), held_clips: list | None = None) -> dict:
    """phi for the fine-tuned model: the previous record's rule with its parameters, on its windows
    (``--window`` whole / SECONDS / gate with the gate's level and hold times; edge-calibrate's defaults
    without a previous record), applied to the fine-tuning recordings scored through the new file as the
    device will run it (:func:`edge_asd.edge.cli.calibrate.calibrate_like`; ``clips``: the files decoded once, at the
    model's rate; ``held_files``/``held_clips``: held-out recordings to check the new phi on). Returns the
    new phi record.

    Raises:
        EdgeAsdError: the rule or windows cannot be applied (one line; the caller installs nothing).
    """
    from edge_asd.edge.cli.calibrate import calibrate_like
    from edge_asd.edge.runtime.scorer import Scorer

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


def recalibration_error(previous: dict | None, error: Exception, what_happened: str) -> str:
    """One line: which rule and windows could not be re-applied, why, and that the model and phi stay."""
    from edge_asd.edge.runtime.windows import describe, record_settings

    if previous is None:
        how = "edge-calibrate's default rule (1.1 x the worst recording)"
    else:
        rule = previous.get("rule") if isinstance(previous.get("rule"), dict) else {}
        params = ", ".join(f"{k} {v}" for k, v in rule.items() if k != "name")
        try:
            window = describe(record_settings(previous))
        except EdgeAsdError:
            window = "damaged"
        name = str(rule.get("name", "unknown")) + (f": {params}" if params else "")
        how = f"the rule of the phi in service ({name}) on its windows ({window})"
    return (f"cannot re-calibrate phi with {how} on these recordings: {error}; {what_happened}, the model and phi "
            "in service are unchanged")


if __name__ == "__main__":
    main()
