"""``edge-calibrate``: set the threshold phi of one machine ID from its normal recordings."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_asd.core.commands import CONTEXT_SETTINGS, setup_logging, user_errors, version_option
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.machine_id import normalize_machine_id
from edge_asd.edge.calibrate.rules import DEFAULT_QUANTILE
from edge_asd.edge.cli.options import (
    accept_other_machines_option,
    gate_options,
    model_option,
    sign_key_option,
    store_option,
    threads_option,
    trust_dir_option,
)


def _history_lines(store: Path, machine_id: str | None) -> list[str]:
    """The store's phi history (of ``machine_id`` when given), one line per record, grouped by machine ID."""
    from edge_asd.edge.runtime import phi_store

    lines = []
    for mid, records in sorted(phi_store.history(store, machine_id).items()):
        lines.append(f"{mid}:")
        for r in records:
            rule = r.rule or {}
            what = ", ".join(f"{k} {v}" for k, v in rule.items() if k != "name")
            ws = r.window_settings()
            window = {"whole": "1 recording",
                      "gate": "gate ({gate_db:g} dBFS, on after {gate_min_on_s:g} s, off after {gate_min_off_s:g} s)",
                      }.get(ws["window"], "{window} s").format(**ws)
            lines.append(f"  {r.calibrated_at or '?'}  phi {r.phi:.4g}  model {str(r.model_sha256)[:12]}  "
                         f"{rule.get('name', '?')} ({what})  window {window}  "
                         f"{len(r.recordings or ())} recordings  votes {r.alert_policy().describe()}"
                         + (f"  check {r.check['false_alarms']}/{r.check['windows']}" if r.check else ""))
    return lines


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("recordings", nargs=-1)
@model_option()
@click.option("--machine-id", help="Machine ID the recordings come from: 00 (the model's ID form: id_00 or section_00), "
              "id_00 or section_00. Recordings whose names say another ID are refused.")
@store_option("phi store (JSON)")
@click.option("--window", default="whole", show_default=True,
              help="Decision window, as edge-monitor's --window: whole (one recording = one window), SECONDS, or "
                   "gate. Each recording is cut into the windows the monitor would give it verdicts for.")
@gate_options
@click.option("--quantile", default=DEFAULT_QUANTILE, show_default=True,
              help="Quantile rule: q of the window max scores (eq. 11) that phi is placed above.")
@click.option("--margin", type=float, default=None, help="Quantile rule: phi = margin x quantile [default: 1.1; 1.0 "
              "with --target-fpr].")
@click.option("--target-fpr", type=float, default=None,
              help="Quantile rule at a false-positive rate per window: q = 1 - TARGET_FPR.")
@click.option("--false-alarms-per-day", "alarms_per_day", type=float, default=None,
              help="Budget rule: fit an extreme-value tail to the window maxima, phi for this many false alarms a day.")
@click.option("--tail", type=click.Choice(["gumbel", "gev"]), default="gumbel", show_default=True,
              help="Budget rule: distribution of the window maxima (scipy.stats gumbel_r or genextreme).")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=0), default=200, show_default=True,
              help="Budget rule: parametric-bootstrap refits for phi's uncertainty (0: none).")
@click.option("--holdout", type=float, default=None,
              help="Keep this fraction of the recordings (the last ones) out of the fit and check phi on them.")
@click.option("--check", "check_paths", multiple=True,
              help="Held-out normal recordings (file or directory; repeatable) to check phi on.")
@click.option("--maxima-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every window (recording, window, start_s, end_s, frames, max_score, max_time_s, complete, "
                   "held_out) to this JSONL file.")
@click.option("--votes", default="auto", show_default=True, metavar="K/N|auto",
              help="Alert policy phi is set for: K of the last N frames reach phi (the window maxima are maxima of "
                   "the K-th largest score of the last N frames; 1/1: eq. 11), or auto: the policy of a small grid "
                   "(N = 1 frame, 0.5, 1, 2, 4 s; K = 1, N/2, N) whose phi needs the smallest rise over the normal "
                   "median (docs/calibration.md).")
@click.option("--hysteresis", type=float, default=1.0, show_default=True,
              help="Stored with the policy: edge-monitor's alarm stays on until the policy score falls below "
                   "HYSTERESIS x phi, in (0, 1].")
@accept_other_machines_option
@click.option("--no-oof", is_flag=True,
              help="Score every recording with the model, even those whose out-of-fold scores the model file holds "
                   "(edge-train --oof-folds: by default phi is set on those, from fold models that never heard them).")
@click.option("--oof-all", is_flag=True,
              help="Keep in phi the recordings whose out-of-fold scores sound, from start to end, like a mode the fold "
                   "models never heard (median frame score over 3x the recordings' median); by default they are "
                   "named and left out (docs/calibration.md).")
@click.option("--show", "show_history", is_flag=True, help="Print the phi history of the store (or of --machine-id) and exit.")
@sign_key_option
@trust_dir_option
@threads_option("Inference threads.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@version_option()
@user_errors
def main(recordings, model_path, machine_id, store, window, gate_db, gate_min_on_s, gate_min_off_s, quantile, margin,
         target_fpr, alarms_per_day, tail, n_boot, holdout, check_paths, maxima_out, votes, hysteresis,
         accept_other_machines, no_oof, oof_all, show_history, sign_key, trust_dir, threads, quiet):
    """Score normal RECORDINGS (files or directories) and store phi for one machine ID.

    A window's score is its max frame score (Koizumi et al. 2019, eq. 11); the windows are edge-monitor's
    for each recording with the same --window (fixed windows cut short by a recording's end are left
    out). Rules: phi = MARGIN x the
    QUANTILE of the window scores (default: 1.1 x the worst); --target-fpr P: the 1-P quantile;
    --false-alarms-per-day R: an extreme-value fit for R false alarms a day, with its bootstrap
    uncertainty. --holdout / --check report the false-alarm rate realized on normal recordings kept
    out of the fit. Prints the result as JSON on stdout; --show prints the store's history.

    A model trained with edge-train --oof-folds K holds out-of-fold frame scores of its training clips:
    for each recording with them (same content, same frame count) phi is set on those scores, from the
    fold models that never heard it, instead of the model's own low scores of its training audio
    (cross-conformal / CV+); one line says for how many; --no-oof scores them with the model.

    File names decide what goes where: anomaly_* clips are refused as normal recordings, and clips whose
    DCASE / MIMII name says another machine ID or type are refused unless --accept-other-machines.

    --sign-key KEY --trust-dir DIR: sign the new phi record with this device's key (the trust directory's root
    must name it) so that edge-monitor --trust-dir accepts it (docs/releases.md).
    """
    setup_logging(quiet=quiet)
    from edge_asd.edge.calibrate.fit import (
        CalibrateOptions,
        RuleOptions,
        WindowOptions,
        calibrate_machine,
        check_line,
        oof_line,
    )
    from edge_asd.edge.calibrate.votes import policy_line
    from edge_asd.edge.runtime import phi_store

    store = store or phi_store.default_store_path()
    if show_history:
        for line in _history_lines(store, normalize_machine_id(machine_id) if machine_id else None):
            click.echo(line)
        return
    for name, value in (("RECORDINGS", recordings), ("--model", model_path), ("--machine-id", machine_id)):
        if not value:
            raise click.UsageError(f"{name} is required (or use --show)")
    options = CalibrateOptions(
        recordings=tuple(map(Path, recordings)), model_path=model_path, machine_id=machine_id, store=store,
        window=WindowOptions(window, gate_db, gate_min_on_s, gate_min_off_s),
        rule=RuleOptions(quantile=quantile, margin=margin, target_fpr=target_fpr, alarms_per_day=alarms_per_day,
                         tail=tail, n_boot=n_boot),
        holdout=holdout, check=tuple(map(Path, check_paths)), maxima_out=maxima_out, threads=threads,
        accept_other_machines=accept_other_machines, use_oof=not no_oof, oof_all=oof_all, votes=votes, hysteresis=hysteresis)
    signer = _signer(sign_key, trust_dir)
    done = calibrate_machine(options)
    record = done.record
    if signer is not None:
        signer(store, done.machine_id, record)
    if oof_line(done) is not None:
        click.echo(f"edge-calibrate: {oof_line(done)}", err=True)
    click.echo(f"edge-calibrate: {policy_line(record, done.hop_s)}", err=True)
    if record.check is not None:
        click.echo(f"edge-calibrate: {check_line(record.check)}", err=True)
    out = {"machine_id": done.machine_id, "phi": record.phi, "store": str(store), "n_recordings": len(done.recordings),
           "clip_max_scores": record.clip_max_scores, "rule": record.rule, "window": record.window,
           "window_s": record.window_s, "window_maxima": record.window_maxima, "alert": record.alert}
    out.update({k: getattr(record, k) for k in ("fit", "check", "oof_recordings", "oof_left_out") if getattr(record, k) is not None})
    click.echo(json.dumps(out))


def _signer(sign_key: Path | None, trust_dir: Path | None):
    """None, or a function (store, machine_id, record) that signs the stored record with the device key and
    pins it in the trust directory; the key and the trust directory are checked before any scoring."""
    if sign_key is None:
        return None
    if trust_dir is None:
        raise EdgeAsdError("--sign-key needs --trust-dir (the device's trust directory, edge-release init)")
    from edge_asd.core.signing import load_private_key
    from edge_asd.edge.runtime.trust import TrustDir

    key, device = load_private_key(sign_key), TrustDir(trust_dir)
    root = device.root()
    if key.keyid not in root.roles["device"][0] | root.roles["operations"][0]:
        raise EdgeAsdError(f"{sign_key}: the trusted root names this key neither as a device nor as an operations key "
                           "(local calibration is not allowed with it)")

    def sign(store, machine_id, record):
        device.sign_phi_record(key, store, machine_id, record)

    return sign


if __name__ == "__main__":
    main()
