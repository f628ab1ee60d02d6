"""``edge-report``: pictures of what the detector saw, as PNG files and an HTML page that links them.

- ``timeline.png``: a scored recording's frame scores, running max, phi and events (or an event log's
  events alone);
- ``normal_maxima.png``: the histogram of normal window maxima with phi and the fitted extreme-value tail;
- ``roc.png``: the ROC of a labelled test directory (clip score = max frame score, eq. 11).
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import click
import numpy as np

from edge_asd.core.commands import CONTEXT_SETTINGS, kit_version, setup_logging, user_errors
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.windows import DEFAULT_GATE_DB, DEFAULT_GATE_MIN_OFF_S, DEFAULT_GATE_MIN_ON_S

log = logging.getLogger("edge_asd")


def read_events(path: Path) -> list[dict]:
    """The anomaly events of an ``edge-monitor`` JSONL log (other line kinds are skipped)."""
    events = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise EdgeAsdError(f"{path}: no such event log") from None
    except UnicodeDecodeError:
        raise EdgeAsdError(f"{path}: not a JSONL event log") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            if n == len(lines):  # a last line cut by a power loss: keep what was recorded
                log.warning("%s: line %d is incomplete; skipped", path, n)
                continue
            raise EdgeAsdError(f"{path}: line {n} is not JSON; not an edge-monitor event log") from None
        if isinstance(item, dict) and item.get("event") == "anomaly" and "time_s" in item and "score" in item:
            events.append(item)
    return events


def resolve_phi(phi, store, machine_id, scorer, events) -> float | None:
    """--phi, else the event log's (the phi the monitor used), else the store's for this model."""
    if phi is not None:
        return phi
    if events:
        return float(events[0]["phi"])
    if scorer is not None:
        from edge_asd.edge.runtime import phi_store
        from edge_asd.core.machine_id import normalize_machine_id

        return float(phi_store.lookup_phi(store or phi_store.default_store_path(),
                                          normalize_machine_id(machine_id) if machine_id else None, scorer.sha256)[1]["phi"])
    return None


def page(out: Path, figures: list[tuple[str, str]], facts: dict) -> Path:
    """index.html: the figures (file, caption) and a table of the numbers behind them."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    figs = "".join(f'<figure><a href="{f}"><img src="{f}" style="max-width:100%"></a><figcaption>{html.escape(c)}'
                   "</figcaption></figure>" for f, c in figures)
    path = out / "index.html"
    path.write_text(f"<!doctype html><meta charset=utf-8><title>edge-asd report</title><h1>edge-asd report</h1>"
                    f"<table>{rows}</table>{figs}\n")
    return path


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--events", "events_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Event log (JSONL) written by edge-monitor --events.")
@click.option("--recording", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An audio file to score and draw the timeline of (needs --model).")
@click.option("--normals", multiple=True, help="Normal recordings (files or directories, repeatable): histogram of "
              "their window maxima with phi and the fitted tail (needs --model).")
@click.option("--test-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Labelled test clips (normal_*/anomaly_* names): ROC (needs --model).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None, help="Model file (.tflite or .onnx).")
@click.option("--machine-id", default=None, help="Machine ID whose phi (and calibration settings) to use.")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="phi store. Default: $EDGE_ASD_STORE or the user config dir.")
@click.option("--phi", type=float, default=None, help="Threshold to draw (default: the event log's, else the store's for --model).")
@click.option("--window", default=None,
              help="Decision window as edge-monitor's --window: whole, SECONDS or gate (default: the calibration's).")
@click.option("--gate-db", type=float, default=None,
              help=f"--window gate: machine-on level, dBFS (default: the calibration's, else {DEFAULT_GATE_DB:g}; "
                   "the hold times are the calibration's).")
@click.option("--tail", type=click.Choice(["gumbel", "gev"]), default=None,
              help="Extreme-value fit drawn on the maxima (default: the calibration's, else gumbel).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("report"), show_default=True,
              help="Folder for the PNG files and index.html.")
@click.option("--threads", default=1, show_default=True, help="Inference threads.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.version_option(kit_version(), "--version")
@user_errors
def main(events_path, recording, normals, test_dir, model_path, machine_id, store, phi, window, gate_db, tail, out, threads,
         quiet):
    """Draw the score timeline, the normal window maxima with phi and its tail fit, and the ROC.

    Give an event log and/or recordings with a model. Writes PNG files and index.html to OUT and
    prints their paths as JSON on stdout.
    """
    setup_logging(quiet=quiet)
    from edge_asd.edge.report import plots

    if not (events_path or recording or normals or test_dir):
        raise click.UsageError("nothing to draw: give --events, --recording, --normals or --test-dir")
    if (recording or normals or test_dir) and not model_path:
        raise click.UsageError("--recording, --normals and --test-dir need --model")
    events = read_events(events_path) if events_path else []
    scorer = None
    if model_path:
        from edge_asd.edge.runtime.scorer import Scorer

        scorer = Scorer(model_path, num_threads=threads)
    phi = resolve_phi(phi, store, machine_id, scorer, events)
    if phi is None:
        raise EdgeAsdError("no phi to draw: the event log is empty; pass --phi or --model with a calibrated --store")
    record = _calibration_record(store, machine_id, scorer)
    if window is None:  # the calibration's windows (records before "window" only had "window_s")
        window = record.get("window") or ("whole" if record.get("window_s") is None else str(record["window_s"]))
    gate_db = gate_db if gate_db is not None else record.get("gate_db", DEFAULT_GATE_DB)
    hold_s = (record.get("gate_min_on_s", DEFAULT_GATE_MIN_ON_S), record.get("gate_min_off_s", DEFAULT_GATE_MIN_OFF_S))
    tail = tail or record.get("rule", {}).get("tail", "gumbel")
    figures, facts = [], {"phi": f"{phi:.6g}"}
    if events_path:
        facts["events in log"] = len(events)

    if recording or events:
        times = scores = windows = None
        title = f"{events_path.name}: {len(events)} events" if events_path else ""
        if recording:
            from edge_asd.firmware_io.audio_file import read_audio

            from edge_asd.edge.runtime.decision import Event, RunningMaxDetector
            from edge_asd.edge.runtime.windows import make_windows, recording_windows

            cfg = scorer.features
            samples = read_audio(recording, cfg.sample_rate)
            scores = scorer.score_audio(samples)
            stamps, windows = recording_windows(make_windows(window, cfg.sample_rate, cfg.hop_samples, gate_db, *hold_s), samples,
                                                len(scores), cfg)  # the monitor's windows for this recording
            times = stamps / cfg.sample_rate
            if not events_path:  # the events the monitor would raise on this recording
                det = RunningMaxDetector(phi, "report", scorer.sha256)
                events = [r.to_dict() for r in det.update_block(0, times, scores, windows) if isinstance(r, Event)]
            title = f"{recording.name}: {len(scores)} frames, {len(events)} events"
            facts["recording max score"] = f"{scores.max():.6g}"
        figures.append((plots.timeline(out / "timeline.png", phi, events, times, scores, windows, title).name,
                        "score timeline: frame scores, running max per window, phi and events"))

    if normals:
        from edge_asd.edge.calibrate.rules import phi_maxima, seconds_per_window, windows_per_day
        from edge_asd.edge.cli.calibrate import expand_recordings, recordings_window_maxima
        from edge_asd.edge.calibrate.tail import MIN_MAXIMA, TailFit
        from edge_asd.edge.runtime.windows import make_windows

        # the windows edge-calibrate fits phi to: the monitor's, complete ones only
        all_windows, durations, _ = recordings_window_maxima(scorer, expand_recordings(normals), window, gate_db, *hold_s)
        maxima = phi_maxima(all_windows)
        cfg = scorer.features
        length_s = seconds_per_window(make_windows(window, cfg.sample_rate, cfg.hop_samples, gate_db, *hold_s), durations,
                                      len(all_windows))
        fit = TailFit.fit(maxima, tail) if len(maxima) >= MIN_MAXIMA and np.ptp(maxima) > 0 else None
        budget = record.get("rule", {}).get("false_alarms_per_day")
        p_window = budget / windows_per_day(length_s) if budget else None
        figures.append((plots.maxima_histogram(out / "normal_maxima.png", maxima, phi, fit, p_window).name,
                        f"{len(maxima)} normal window maxima ({length_s:g}-s windows), phi and the {tail} tail fit"))
        facts["normal windows over phi"] = f"{int(np.sum(maxima >= phi))} of {len(maxima)}"
        if fit is not None:
            facts[f"{tail} fit P(window max > phi)"] = f"{fit.exceedance(phi):.3g}"

    if test_dir:
        from edge_asd.datasets.layout import scan

        from edge_asd.edge.cli.calibrate import score_recordings

        clips = scan(test_dir, machine_id=machine_id) if machine_id else scan(test_dir)
        labels = np.array([c.label == "anomaly" for c in clips])
        if labels.all() or not labels.any():
            raise EdgeAsdError(f"{test_dir}: a ROC needs both normal and anomalous clips")
        clip_scores = np.array([s.max() for s in score_recordings(scorer, [c.path for c in clips])[0]])
        path, info = plots.roc(out / "roc.png", labels, clip_scores, phi)
        figures.append((path.name, f"ROC of {test_dir} ({len(clips)} clips), clip score = max frame score"))
        facts.update({"test AUC": f"{info['auc']:.4f}", "test pAUC (FPR <= 0.1)": f"{info['pauc']:.4f}",
                      "test FPR / TPR at phi": f"{info['fpr_at_phi']:.3f} / {info['tpr_at_phi']:.3f}"})

    index = page(out, figures, facts)
    click.echo(json.dumps({"figures": [str(out / f) for f, _ in figures], "html": str(index), **facts}))


def _calibration_record(store, machine_id, scorer) -> dict:
    """The store's record for this model and machine ID, or {} when there is none."""
    if scorer is None:
        return {}
    from edge_asd.edge.runtime import phi_store
    from edge_asd.core.machine_id import normalize_machine_id

    try:
        return phi_store.lookup_phi(store or phi_store.default_store_path(),
                                    normalize_machine_id(machine_id) if machine_id else None, scorer.sha256)[1]
    except EdgeAsdError:
        return {}


if __name__ == "__main__":
    main()
