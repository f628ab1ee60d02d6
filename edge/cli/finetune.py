"""``edge-finetune``: adapt the model in service to one machine from its normal sound, on the device."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_asd.core.commands import CONTEXT_SETTINGS, setup_logging, user_errors, version_option
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.cli.options import (
    accept_other_machines_option,
    model_option,
    sign_key_option,
    store_option,
    threads_option,
    trust_dir_option,
)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("recordings", nargs=-1)
@model_option(required=True,
              help="The .tflite model file in service; replaced in place (the old one is kept for --rollback).")
@click.option("--machine-id", default=None, help="Machine ID the recordings come from (00, id_00, section_00); 00 takes "
              "the model's ID form. Recordings whose names say another ID are refused.")
@accept_other_machines_option
@store_option()
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
@sign_key_option
@trust_dir_option
@threads_option("Inference threads.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@version_option()
@user_errors
def main(recordings, model_path, machine_id, accept_other_machines, store, steps, minutes, lr, seed, something_else_dir,
         reject_factor, max_rejected, phi_share, check_paths, force, rollback, sign_key, trust_dir, threads, quiet):
    """Continue BU training of the model in service on normal RECORDINGS (files or directories) of one
    machine, recalibrate its phi, and replace the model file atomically. Prints a JSON summary on stdout.
    A model that scores embeddings with an inlier model (serial OE, transfer + metric learning) keeps its
    network frozen: its inlier model is refitted on the recordings' windows instead (head_refit in the summary).

    The recordings are first scored with the current model: frames above phi are rejected (they may be
    the fault the model should catch); more than --max-rejected of them and the command refuses. The last
    --phi-share of the RECORDINGS are not trained on: the new phi is set on them (the model scores the audio
    it was trained on low), by the rule and on the windows of the phi in service (as edge-calibrate
    set it: quantile, --target-fpr or --false-alarms-per-day; --window and the gate's options); when that
    rule cannot be applied to them, the command refuses and nothing changes. With --check, the new phi is
    also checked on held-out normal recordings of the machine (the realized false-alarm rate, as
    edge-calibrate --check). File names decide what goes where: anomaly_* clips are refused, and clips
    whose DCASE / MIMII name says another machine ID or type are refused unless --accept-other-machines.

    --trust-dir DIR --sign-key KEY (a device whose models are signed, docs/releases.md): only when the fleet
    switched fine-tuning on (edge-release command finetune-on) and the model in service has a signed release;
    the new model and phi are signed with the device key so that edge-monitor --trust-dir runs them.
    """
    setup_logging(quiet=quiet)
    from edge_asd.edge.calibrate.fit import check_line
    from edge_asd.edge.finetune.adapt import FinetuneConfig
    from edge_asd.edge.finetune.adapt import rollback as roll_back
    from edge_asd.edge.finetune.workflow import FinetuneOptions, finetune_machine
    from edge_asd.edge.runtime import phi_store
    from edge_asd.edge.runtime.trust import TrustDir

    store = store or phi_store.default_store_path()
    signer = _signer(sign_key, trust_dir, model_path)
    if rollback:
        back = roll_back(model_path, store)
        if trust_dir is not None and not TrustDir(trust_dir).pin_restored(back.machine_id, back.phi, "restored phi"):
            click.echo("edge-finetune: the restored phi record is unsigned: edge-monitor --trust-dir refuses it", err=True)
        click.echo(json.dumps({"rolled_back": str(model_path), "machine_id": back.machine_id,
                               "model_sha256": back.model_sha256, "phi": None if back.phi is None else back.phi.phi}))
        return
    if not recordings:
        raise EdgeAsdError("give the normal RECORDINGS to fine-tune on (files or directories), or --rollback")
    if machine_id is None:
        raise EdgeAsdError("--machine-id is required: the new phi is stored for that machine")
    options = FinetuneOptions(model_path=model_path, machine_id=machine_id, store=store, recordings=tuple(recordings),
                              training=FinetuneConfig(steps=steps, minutes=minutes, lr=lr, seed=seed,
                                                      reject_factor=reject_factor, max_rejected=max_rejected,
                                                      phi_share=phi_share),
                              something_else_dir=something_else_dir, force=force, check=tuple(check_paths),
                              threads=threads, accept_other_machines=accept_other_machines)
    done = finetune_machine(options)
    summary, record = done.summary, done.record
    if signer is not None:
        signer(store, summary["machine_id"], record)
    if record.check is not None:
        click.echo(f"edge-finetune: {check_line(record.check)}", err=True)
    click.echo(json.dumps({**{k: summary[k] for k in ("machine_id", "steps", "train_seconds", "audio_seconds",
                                                         "recordings_trained", "recordings_phi", "frames",
                                                         "rejected_frames", "base_sha256")},
                           "model_sha256": record.model_sha256, "phi": record.phi,
                           "previous_phi": summary["previous_phi"], "rule": record.rule,
                           "window": record.window, "store": str(store),
                           **({"check": record.check} if record.check is not None else {}),
                           **({"head_refit": summary["head_refit"]} if "head_refit" in summary else {})}))


def _signer(sign_key: Path | None, trust_dir: Path | None, model_path: Path):
    """None without --trust-dir; else checks that fine-tuning is allowed (before any training) and returns a
    function (store, machine_id, record) that signs the fine-tuned model and its phi with the device key."""
    if trust_dir is None:
        if sign_key is not None:
            raise EdgeAsdError("--sign-key needs --trust-dir (the device's trust directory, edge-release init)")
        return None
    if sign_key is None:
        raise EdgeAsdError("--trust-dir needs --sign-key (the device key that signs the fine-tuned model and phi)")
    from edge_asd.core.model_file import read_model_file
    from edge_asd.core.provenance import sha256_bytes
    from edge_asd.core.signing import load_private_key
    from edge_asd.edge.runtime.trust import TrustDir

    key, device = load_private_key(sign_key), TrustDir(trust_dir)
    data = read_model_file(model_path)[0]
    base = device.check_finetune(key, sha256_bytes(data), len(data))

    def sign(store, machine_id, record):
        device.sign_fine_tuned(key, base, read_model_file(model_path)[0], Path(model_path).name)
        device.sign_phi_record(key, store, machine_id, record)

    return sign


if __name__ == "__main__":
    main()
