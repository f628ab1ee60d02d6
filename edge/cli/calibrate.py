"""``edge-calibrate``: set the threshold phi of one machine ID from its normal recordings."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

from edge_asd.edge.calibrate.rules import (
    DEFAULT_MARGIN,
    DEFAULT_QUANTILE,
    calibrate,
    phi_maxima,
    rule_arguments,
    seconds_per_window,
    window_maxima,
)
from edge_asd.core.commands import CONTEXT_SETTINGS, kit_version, setup_logging, user_errors
from edge_asd.edge.cli.options import gate_options
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.machine_id import normalize_machine_id
from edge_asd.edge.runtime.windows import DEFAULT_GATE_DB, DEFAULT_GATE_MIN_OFF_S, DEFAULT_GATE_MIN_ON_S

log = logging.getLogger("edge_asd")


def expand_recordings(paths: tuple[str, ...]) -> list[Path]:
    """Files as given, directories expanded to the audio files inside them (sorted)."""
    from edge_asd.firmware_io.audio_file import audio_files

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = audio_files(p)
            if not found:
                raise EdgeAsdError(f"{p}: no audio files in this directory")
            out += found
        else:
            out.append(p)
    return out


def score_recordings(scorer, files: list[Path]) -> tuple[list[np.ndarray], list[float]]:
    """(frame scores, duration in s) of each recording; EdgeAsdError for one shorter than a context window."""
    from edge_asd.firmware_io.audio_file import read_audio

    scores, durations = [], []
    for f in files:
        samples = read_audio(f, scorer.features.sample_rate)
        s = scorer.score_audio(samples)
        if len(s) == 0:
            raise EdgeAsdError(f"{f}: shorter than one context window ({scorer.features.samples_per_vector} samples)")
        scores.append(s)
        durations.append(len(samples) / scorer.features.sample_rate)
        log.info("%s: max score %.3f over %d frames", f.name, float(s.max()), len(s))
    return scores, durations


def recordings_window_maxima(scorer, files: list[Path], window: str, gate_db: float = DEFAULT_GATE_DB,
                             gate_min_on_s: float = DEFAULT_GATE_MIN_ON_S, gate_min_off_s: float = DEFAULT_GATE_MIN_OFF_S,
                             audio: list[np.ndarray] | None = None) -> tuple[list, list[float], list[float]]:
    """(the calibration.WindowMax of every window of every recording, each recording's duration in s and
    its max frame score).

    Each recording is read at the model's rate (or taken from ``audio``: the files already decoded, mono
    float32 at the model's rate, in the same order), scored, and its windows cut as edge-monitor ``--window
    WINDOW --gate-db GATE_DB --gate-min-on-s ... --gate-min-off-s ...`` cuts them on that file
    (:func:`.calibration.window_maxima`; gate level in dBFS, hold times in s). Raises EdgeAsdError for a
    recording shorter than one context vector, unreadable audio or a bad window.
    """
    from edge_asd.firmware_io.audio_file import read_audio

    from edge_asd.edge.runtime.windows import make_windows

    cfg = scorer.features
    out, durations, clip_max = [], [], []
    for i, f in enumerate(files):
        samples = read_audio(f, cfg.sample_rate) if audio is None else audio[i]
        scores = scorer.score_audio(samples)
        if len(scores) == 0:
            raise EdgeAsdError(f"{f}: shorter than one context window ({cfg.samples_per_vector} samples)")
        windows = make_windows(window, cfg.sample_rate, cfg.hop_samples, gate_db, gate_min_on_s, gate_min_off_s)
        windows = window_maxima(scores, samples, windows, cfg, str(f))
        log.info("%s: max score %.3f over %d frames, %d windows", f.name, float(scores.max()), len(scores), len(windows))
        out += windows
        durations.append(len(samples) / cfg.sample_rate)
        clip_max.append(float(scores.max()))
    return out, durations, clip_max


def phi_record(scorer, model_path, files: list[Path], result: dict, windows, clip_max: list[float],
               held_files: list[Path] = ()) -> dict:
    """The phi store's record of a calibration: phi, the model (sha256, path, machine type), the rule (and
    its ``fit`` / ``check`` when made), the windows' ``settings()`` (``window``; for the gate ``gate_db``
    in dBFS, ``gate_min_on_s`` and ``gate_min_off_s`` in s) with ``window_s`` (s, None unless fixed), the
    window maxima, each recording's max frame score, the recordings, the time (UTC) and the kit version.
    ``result``: :func:`.calibration.calibrate`'s; ``clip_max``: each recording's max frame score;
    ``held_files``: the held-out recordings phi was checked on (``heldout_recordings``), if any.
    """
    record = {
        "phi": result["phi"],
        "model_sha256": scorer.sha256,
        "model_path": str(Path(model_path).resolve()),
        "machine_type": scorer.meta.get("machine_type"),
        "rule": result["rule"],
        **windows.settings(),
        "window_s": float(windows.spec) if windows.name == "fixed" else None,
        "window_maxima": result["window_maxima"],
        "clip_max_scores": {"min": min(clip_max), "median": float(np.median(clip_max)), "max": max(clip_max)},
        "recordings": [str(f) for f in files],
        "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kit_version": kit_version(),
    }
    record.update({key: result[key] for key in ("fit", "check") if key in result})
    if held_files:
        record["heldout_recordings"] = [str(f) for f in held_files]
    return record


def held_out_maxima(scorer, held_files: list[Path], windows, audio: list[np.ndarray] | None = None) -> tuple[list, np.ndarray | None]:
    """(the calibration.WindowMax of every window of the held-out recordings, their max scores for the check,
    or None without held-out recordings): cut as :func:`recordings_window_maxima` cuts the fitted ones."""
    if not held_files:
        return [], None
    held_windows = recordings_window_maxima(scorer, held_files, **windows.settings(), audio=audio)[0]
    return held_windows, phi_maxima(held_windows, "held-out recordings")


def calibrate_like(previous: dict | None, scorer, model_path, files: list[Path],
                   audio: list[np.ndarray] | None = None, held_files: list[Path] = (),
                   held_audio: list[np.ndarray] | None = None) -> dict:
    """Calibrate again as an earlier phi record was: the same rule with the same parameters
    (:func:`.calibration.rule_arguments`; the budget rule with as many bootstrap refits) on the same
    windows (:func:`.windows.windows_for_record`), applied to ``files`` (or their decoded ``audio``, see
    :func:`recordings_window_maxima`) scored by ``scorer``.
    ``previous`` None: edge-calibrate's defaults (1.1 x the worst recording, whole windows).
    ``held_files`` (decoded: ``held_audio``): held-out normal recordings; the new phi is checked on their
    windows as edge-calibrate ``--check`` does (the record's ``check`` and ``heldout_recordings``).

    Returns the new phi record (:func:`phi_record`). Raises EdgeAsdError when the rule or window cannot be
    applied: an unknown or damaged rule or window, no complete window, too few windows for a tail fit, ...
    """
    from edge_asd.edge.runtime.windows import windows_for_record

    previous = previous or {}
    rule = previous.get("rule") or {"name": "clip-max-quantile", "quantile": DEFAULT_QUANTILE, "margin": DEFAULT_MARGIN}
    arguments = rule_arguments(rule)
    cfg = scorer.features
    windows = windows_for_record(previous, cfg.sample_rate, cfg.hop_samples)
    fit_windows, durations, clip_max = recordings_window_maxima(scorer, files, **windows.settings(), audio=audio)
    n_boot = ((previous.get("fit") or {}).get("bootstrap") or {}).get("n", 0)
    held = held_out_maxima(scorer, held_files, windows, held_audio)[1]
    result = calibrate(phi_maxima(fit_windows), seconds_per_window(windows, durations, len(fit_windows)), n_boot=n_boot,
                       heldout_maxima=held, **arguments)
    result["window_maxima"]["cut_short"] = sum(not w.complete for w in fit_windows)
    return phi_record(scorer, model_path, files, result, windows, clip_max, held_files)


def warn_if_heard(meta: dict, files: list[Path], held_files: list[Path]) -> int:
    """Warn when the model was trained on some of the recordings (:mod:`.provenance`); return how many of
    ``files`` it heard. phi set on them is low, and a check on them is optimistic."""
    from edge_asd.core.provenance import heard

    fit, held = heard(meta, files), heard(meta, held_files)
    if fit:
        log.warning("%d of the %d recordings were used to train this model (e.g. %s): it scores them lower than new "
                    "audio, so phi comes out low and false alarms above the target; calibrate on normal recordings "
                    "the model has not heard", len(fit), len(files), fit[0].name)
    if held:
        log.warning("%d of the %d held-out recordings were used to train this model (e.g. %s): the check on them is "
                    "optimistic", len(held), len(held_files), held[0].name)
    return len(fit)


def split_holdout(files: list, fraction: float, option: str = "--holdout", what: str = "calibrate on") -> tuple[list, list]:
    """(kept, held out): the last ``fraction`` of the recordings (the latest, when named in time order), at
    least one. Raises EdgeAsdError (naming ``option``) when ``fraction`` is not in (0, 1) or nothing is kept."""
    if not 0.0 < fraction < 1.0:
        raise EdgeAsdError(f"{option} must be in (0, 1), not {fraction}")
    n_held = max(1, round(fraction * len(files)))
    if n_held >= len(files):
        raise EdgeAsdError(f"{option} {fraction} leaves no recording to {what} ({len(files)} given)")
    return files[:-n_held], files[-n_held:]


def check_line(check: dict) -> str:
    """The held-out check as one sentence."""
    line = (f"check on {check['windows']} held-out normal windows: {check['false_alarms']} false alarms, "
            f"realized {check['per_day']:.3g}/day (95% upper bound {check['per_day_upper95']:.3g}/day)")
    if "target_per_day" in check:
        verdict = "met" if check["meets_target"] else "NOT met"
        if check["meets_target"] and check["per_day_upper95"] > check["target_per_day"]:
            verdict += " but not confirmed at 95%" + (
                f" ({check['windows_needed']} alarm-free windows would confirm it)" if check["false_alarms"] == 0 else "")
        line += f"; target {check['target_per_day']:.3g}/day: {verdict}"
    return line


def write_maxima(path: Path, fit: list, held: list) -> None:
    """Every window as a JSON line (calibration.WindowMax fields and ``held_out``), written atomically."""
    from edge_asd.core.atomic_io import atomic_write_text

    lines = [json.dumps({**w.to_dict(), "held_out": h}) for ws, h in ((fit, False), (held, True)) for w in ws]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def show(store: Path, machine_id: str | None) -> None:
    from edge_asd.edge.runtime import phi_store
    from edge_asd.edge.runtime.windows import record_settings

    for mid, records in sorted(phi_store.history(store, machine_id).items()):
        click.echo(f"{mid}:")
        for r in records:
            rule = r.get("rule", {})
            what = ", ".join(f"{k} {v}" for k, v in rule.items() if k != "name")
            ws = record_settings(r)
            window = {"whole": "1 recording",
                      "gate": "gate ({gate_db:g} dBFS, on after {gate_min_on_s:g} s, off after {gate_min_off_s:g} s)",
                      }.get(ws["window"], "{window} s").format(**ws)
            click.echo(f"  {r.get('calibrated_at', '?')}  phi {r['phi']:.4g}  model {str(r.get('model_sha256'))[:12]}  "
                       f"{rule.get('name', '?')} ({what})  window {window}  "
                       f"{len(r.get('recordings', []))} recordings"
                       + (f"  check {r['check']['false_alarms']}/{r['check']['windows']}" if r.get("check") else ""))


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("recordings", nargs=-1)
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="Model file (.tflite or .onnx).")
@click.option("--machine-id", help="Machine ID the recordings come from: 00, id_00 or section_00.")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="phi store (JSON). Default: $EDGE_ASD_STORE or the user config dir.")
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
@click.option("--show", "show_history", is_flag=True, help="Print the phi history of the store (or of --machine-id) and exit.")
@click.option("--threads", default=1, show_default=True, help="Inference threads.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.version_option(kit_version(), "--version")
@user_errors
def main(recordings, model_path, machine_id, store, window, gate_db, gate_min_on_s, gate_min_off_s, quantile, margin,
         target_fpr, alarms_per_day, tail, n_boot, holdout, check_paths, maxima_out, show_history, threads, quiet):
    """Score normal RECORDINGS (files or directories) and store phi for one machine ID.

    A window's score is its max frame score (Koizumi et al. 2019, eq. 11); the windows are edge-monitor's
    for each recording with the same --window (fixed windows cut short by a recording's end are left
    out). Rules: phi = MARGIN x the
    QUANTILE of the window scores (default: 1.1 x the worst); --target-fpr P: the 1-P quantile;
    --false-alarms-per-day R: an extreme-value fit for R false alarms a day, with its bootstrap
    uncertainty. --holdout / --check report the false-alarm rate realized on normal recordings kept
    out of the fit. Prints the result as JSON on stdout; --show prints the store's history.
    """
    setup_logging(quiet=quiet)
    from edge_asd.edge.runtime import phi_store

    store = store or phi_store.default_store_path()
    if show_history:
        show(store, normalize_machine_id(machine_id) if machine_id else None)
        return
    for name, value in (("RECORDINGS", recordings), ("--model", model_path), ("--machine-id", machine_id)):
        if not value:
            raise click.UsageError(f"{name} is required (or use --show)")
    if holdout is not None and check_paths:
        raise EdgeAsdError("give either --holdout or --check, not both")
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.edge.runtime.windows import make_windows

    machine_id = normalize_machine_id(machine_id)
    scorer = Scorer(model_path, num_threads=threads)
    files = expand_recordings(recordings)
    held_files = expand_recordings(check_paths) if check_paths else []
    if holdout is not None:
        files, held_files = split_holdout(files, holdout)
    windows = make_windows(window, scorer.features.sample_rate, scorer.features.hop_samples, gate_db, gate_min_on_s,
                           gate_min_off_s)
    heard = warn_if_heard(scorer.meta, files, held_files)
    fit_windows, durations, maxima = recordings_window_maxima(scorer, files, **windows.settings())
    held_windows, held = held_out_maxima(scorer, held_files, windows)
    result = calibrate(phi_maxima(fit_windows), seconds_per_window(windows, durations, len(fit_windows)), quantile=quantile,
                       margin=margin, target_fpr=target_fpr, alarms_per_day=alarms_per_day, tail=tail, n_boot=n_boot,
                       heldout_maxima=held)
    result["window_maxima"]["cut_short"] = sum(not w.complete for w in fit_windows)
    if maxima_out is not None:
        write_maxima(maxima_out, fit_windows, held_windows)
    record = phi_record(scorer, model_path, files, result, windows, maxima, held_files)
    phi, window, window_s = record["phi"], record["window"], record["window_s"]
    record["recordings_heard_by_model"] = heard
    if "fit" in result:
        fit, boot = result["fit"], result["fit"].get("bootstrap")
        log.info("%s fit of %d window maxima %s (KS p %.2f); phi %.4g for p %.3g per window%s", fit["fit"]["family"],
                 fit["fit"]["n_maxima"], fit["fit"]["params"], fit["fit"]["ks_pvalue"], phi, fit["p_window"],
                 f", bootstrap 90% interval [{boot['phi_p5']:.4g}, {boot['phi_p95']:.4g}]" if boot else "")
    if "check" in result:
        click.echo(f"edge-calibrate: {check_line(result['check'])}", err=True)
    phi_store.save_phi(store, machine_id, record)
    out = {"machine_id": machine_id, "phi": phi, "store": str(store), "n_recordings": len(files),
           "clip_max_scores": record["clip_max_scores"], "rule": record["rule"], "window": window, "window_s": window_s,
           "window_maxima": record["window_maxima"]}
    out.update({k: record[k] for k in ("fit", "check") if k in record})
    click.echo(json.dumps(out))


if __name__ == "__main__":
    main()
