"""edge-report's content: what to draw from an event log, a scored recording, normal recordings and a
labelled test folder, drawn by :mod:`edge_asd.edge.report.plots` into PNG files and an HTML page.

- ``timeline.png``: a scored recording's frame scores, running max, phi and events (or an event log's
  events alone);
- ``normal_maxima.png``: the histogram of normal window maxima with phi and the fitted extreme-value tail;
- ``roc.png``: the ROC of a labelled test directory (clip score = max frame score, eq. 11; with the calibration's
  votes, the max policy score, :mod:`edge_asd.edge.runtime.alert`).

Python use: ``build_report(ReportOptions(out=Path("report"), events=Path("events.jsonl"), phi=812.5))``.
"""

from __future__ import annotations

import html
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.loudness import clip_level_dbfs
from edge_asd.core.machine_id import normalize_machine_id
from edge_asd.datasets.layout import scan
from edge_asd.edge.calibrate import names
from edge_asd.edge.calibrate.recordings import recordings_window_maxima, score_recordings
from edge_asd.edge.calibrate.rules import phi_maxima, seconds_per_window, windows_per_day
from edge_asd.edge.calibrate.tail import MIN_MAXIMA, TailFit
from edge_asd.edge.report import plots
from edge_asd.edge.runtime import phi_store
from edge_asd.edge.runtime.alert import policy_scores
from edge_asd.edge.runtime.decision import Event, RunningMaxDetector
from edge_asd.edge.runtime.events import EVENT_SCHEMA
from edge_asd.edge.runtime.phi_store import PhiRecord
from edge_asd.edge.runtime.scorer import Scorer
from edge_asd.edge.runtime.windows import (
    DEFAULT_GATE_DB,
    DEFAULT_GATE_MIN_OFF_S,
    DEFAULT_GATE_MIN_ON_S,
    make_windows,
    recording_windows,
)
from edge_asd.firmware_io.audio_file import find_recordings, read_audio

log = logging.getLogger("edge_asd")


@dataclass(frozen=True)
class ReportOptions:
    """What to draw and with what. ``recording``, ``normals`` and ``test_dir`` need ``model_path``."""

    out: Path = Path("report")
    """Folder for the PNG files and index.html."""
    events: Path | None = None
    """Event log (JSONL) written by edge-monitor --events."""
    recording: Path | None = None
    """An audio file to score and draw the timeline of."""
    normals: tuple[Path, ...] = ()
    """Normal recordings (files or directories): histogram of their window maxima with phi and the tail fit."""
    test_dir: Path | None = None
    """Labelled test clips (normal_*/anomaly_* names): ROC."""
    model_path: Path | None = None
    """Model file (.tflite or .onnx)."""
    machine_id: str | None = None
    """Machine ID whose phi (and calibration settings) to use."""
    store: Path | None = None
    """phi store (None: $EDGE_ASD_STORE or the user config dir)."""
    phi: float | None = None
    """Threshold to draw (None: the event log's, else the store's for the model)."""
    window: str | None = None
    """Decision window as edge-monitor's --window (None: the calibration's)."""
    gate_db: float | None = None
    """``--window gate``: machine-on level, dBFS (None: the calibration's, else the default)."""
    tail: str | None = None
    """Extreme-value fit drawn on the maxima, gumbel or gev (None: the calibration's, else gumbel)."""
    threads: int = 1
    """Inference threads."""
    accept_other_machines: bool = False
    """Take ``normals`` / ``test_dir`` clips whose names say another machine ID or type
    (:mod:`edge_asd.edge.calibrate.names`)."""


@dataclass(frozen=True)
class Report:
    """What :func:`build_report` wrote."""

    figures: list[Path]
    """The PNG files, in the page's order."""
    html: Path
    """index.html."""
    facts: dict[str, Any]
    """The numbers behind the figures, as shown in the page's table (label -> value)."""


def _damage(item: dict) -> str | None:
    """What makes an anomaly or health line unusable (``"score is 'x', not a finite number"``), or None."""
    if item["event"] == "health":
        state, status = item.get("state"), item.get("status")
        ok = isinstance(state, str) and isinstance(status, str)
        return None if ok else f"state {repr(state)[:40]} / status {repr(status)[:40]}, not strings"
    for key in ("time_s", "score", "phi"):
        value = item.get(key)
        if not phi_store.finite_number(value) or (key == "phi" and value < 0):  # phi 0: edge-monitor --phi 0
            return f"{key} is {repr(value)[:40]}, not a {'non-negative ' if key == 'phi' else ''}finite number"
    return None


def read_events(path: Path, health: list[dict] | None = None) -> list[dict]:
    """The anomaly events of an ``edge-monitor`` JSONL log (other line kinds are skipped; a line cut short by
    a power loss or a full disk, last or followed by the lines of a later start, is skipped with a warning). With a ``health`` list, the log's ``health`` lines (input
    health, :class:`edge_asd.edge.runtime.events.Health`) are appended to it.

    Raises:
        EdgeAsdError: no such file, not a JSONL event log, or an anomaly line whose ``time_s``, ``score`` or
            ``phi`` is not a finite number (phi >= 0), or a health line whose ``state`` or ``status`` is not a string.
    """
    try:
        with open(path, encoding="utf-8") as stream:  # line by line: a month's log is not held in memory
            return _read_lines(path, stream, health)
    except FileNotFoundError:
        raise EdgeAsdError(f"{path}: no such event log") from None
    except IsADirectoryError:
        raise EdgeAsdError(f"{path}: a folder, not an event log") from None
    except UnicodeDecodeError:
        raise EdgeAsdError(f"{path}: not a JSONL event log") from None


def _read_lines(path: Path, stream, health: list[dict] | None) -> list[dict]:
    events = []
    for n, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            if line.lstrip().startswith("{"):  # a torn event line, not a foreign file
                log.warning("%s: line %d is incomplete (cut by a power loss or a full disk?); skipped", path, n)
                continue
            raise EdgeAsdError(f"{path}: line {n} is not JSON; not an edge-monitor event log") from None
        if isinstance(item, dict) and isinstance(item.get("schema"), int) and item["schema"] > EVENT_SCHEMA:
            raise EdgeAsdError(f"{path}: line {n} has event schema {item['schema']}; this kit reads schemas up to "
                               f"{EVENT_SCHEMA}: update edge-asd")
        if isinstance(item, dict) and item.get("event") in ("anomaly", "health") and (what := _damage(item)):
            raise EdgeAsdError(f"{path}: line {n}: damaged {item['event']} line ({what})")
        if isinstance(item, dict) and item.get("event") == "anomaly" and "time_s" in item and "score" in item:
            events.append(item)
        elif health is not None and isinstance(item, dict) and item.get("event") == "health":
            health.append(item)
    return events


def health_summary(health: list[dict]) -> str:
    """The input-health states that started in a log, with counts (``silent x2, clipping x1``), or ``none``."""
    starts = Counter(h.get("state", "?") for h in health if h.get("status") == "start")
    return ", ".join(f"{state} x{n}" for state, n in sorted(starts.items())) or "none"


def resolve_phi(phi: float | None, store: Path | None, machine_id: str | None, scorer: Scorer | None,
                events: list[dict]) -> float | None:
    """``phi``, else the event log's (the phi the monitor used), else the store's for this model, else None.

    Raises:
        EdgeAsdError: the store has no phi for this model and machine ID, or a damaged record.
    """
    if phi is not None:
        return phi
    if events:
        return float(events[0]["phi"])
    if scorer is not None:
        return float(phi_store.lookup_phi(store or phi_store.default_store_path(),
                                          normalize_machine_id(machine_id) if machine_id else None, scorer.sha256)[1].phi)
    return None


def calibration_record(store: Path | None, machine_id: str | None, scorer: Scorer | None) -> PhiRecord | None:
    """The store's record for this model and machine ID, or None when there is none (or no model)."""
    if scorer is None:
        return None
    try:
        return phi_store.lookup_phi(store or phi_store.default_store_path(),
                                    normalize_machine_id(machine_id) if machine_id else None, scorer.sha256)[1]
    except EdgeAsdError:
        return None


def page(out: Path, figures: list[tuple[str, str]], facts: dict) -> Path:
    """Write ``out/index.html``: the figures (file name, caption) and a table of the numbers behind them."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    figs = "".join(f'<figure><a href="{f}"><img src="{f}" style="max-width:100%"></a><figcaption>{html.escape(c)}'
                   "</figcaption></figure>" for f, c in figures)
    out.mkdir(parents=True, exist_ok=True)  # a log without anomalies draws no figure, but still has a page
    path = out / "index.html"
    path.write_text(f"<!doctype html><meta charset=utf-8><title>edge-asd report</title><h1>edge-asd report</h1>"
                    f"<table>{rows}</table>{figs}\n")
    return path


def build_report(options: ReportOptions) -> Report:
    """Draw the score timeline (``events`` and/or ``recording``), the normal window maxima with phi and its tail
    fit (``normals``) and the ROC (``test_dir``) into ``options.out``, with index.html.

    The windows, gate level and tail are the calibration's (the store's record for the model and machine ID)
    unless given. ``machine_id`` 00 takes the model's ID form (one INFO line). File names decide what goes
    where (:mod:`edge_asd.edge.calibrate.names`): ``anomaly_*`` clips are refused among the normals; normal
    recordings of another machine ID (than ``machine_id``, else the model's only ID) or machine type (the model's)
    are refused unless ``accept_other_machines``; ``test_dir``, a labelled dataset folder, keeps the clips of
    that machine ID (:func:`test_clips`; all of them with ``accept_other_machines`` and no ``machine_id``),
    and its clips of another machine type are refused unless ``accept_other_machines``.

    Raises:
        EdgeAsdError: nothing to draw, a recording, normals or test folder without a model, no phi to draw, a
            damaged event log, store or model, a test folder without both labels, clips refused by their
            names, or matplotlib missing.
    """
    o = options
    if not (o.events or o.recording or o.normals or o.test_dir):
        raise EdgeAsdError("nothing to draw: give --events, --recording, --normals or --test-dir")
    if (o.recording or o.normals or o.test_dir) and not o.model_path:
        raise EdgeAsdError("--recording, --normals and --test-dir need --model")
    health: list[dict] = []
    events = read_events(o.events, health) if o.events else []
    scorer = Scorer(o.model_path, num_threads=o.threads) if o.model_path else None
    normal_files = find_recordings(o.normals) if o.normals else []
    machine_id = o.machine_id
    if machine_id is not None and scorer is not None:
        machine_id = names.resolve_for_model(machine_id, scorer.meta, normal_files)
    machine = names.model_machine(scorer.meta, machine_id) if scorer is not None else None
    if normal_files:
        names.check_normal_recordings(normal_files, machine, "--normals recordings", o.accept_other_machines)
    phi = resolve_phi(o.phi, o.store, machine_id, scorer, events)
    if phi is None:
        raise EdgeAsdError("no phi to draw: the event log is empty; pass --phi or --model with a calibrated --store")
    record = calibration_record(o.store, machine_id, scorer) or PhiRecord(phi=phi)
    window = o.window
    if window is None:  # the calibration's windows (records before "window" only had "window_s")
        window = record.window or ("whole" if record.window_s is None else str(record.window_s))
    gate_db = o.gate_db if o.gate_db is not None else _or(record.gate_db, DEFAULT_GATE_DB)
    hold_s = (_or(record.gate_min_on_s, DEFAULT_GATE_MIN_ON_S), _or(record.gate_min_off_s, DEFAULT_GATE_MIN_OFF_S))
    tail = o.tail or (record.rule or {}).get("tail", "gumbel")
    policy = record.alert_policy()  # the calibration's votes: scores below are its policy scores (1/1: frame scores)
    out = Path(o.out)
    figures, facts = [], {"phi": f"{phi:.6g}", "votes (alert policy)": policy.describe()}
    if o.events:
        facts["events in log"] = len(events)
        facts["input health in log (states started)"] = health_summary(health)

    if o.recording or events:
        times = scores = windows = None
        title = f"{o.events.name}: {len(events)} events" if o.events else ""
        if o.recording:
            cfg = scorer.features
            samples = read_audio(o.recording, cfg.sample_rate)
            votes, ok = policy_scores(scorer.score_audio(samples), policy)
            scores = np.where(ok, votes, np.nan)  # the policy scores the monitor decides on (none before k votes)
            stamps, windows = recording_windows(make_windows(window, cfg.sample_rate, cfg.hop_samples, gate_db, *hold_s),
                                                samples, len(scores), cfg)  # the monitor's windows for this recording
            times = stamps / cfg.sample_rate
            if not o.events:  # the events the monitor would raise on this recording
                det = RunningMaxDetector(phi, "report", scorer.sha256, policy)
                events = [r.to_dict() for r in det.update_block(0, times, votes, windows, ok) if isinstance(r, Event)]
            title = f"{o.recording.name}: {len(scores)} frames, {len(events)} events"
            facts["recording max score"] = f"{np.nanmax(scores):.6g}"
        figures.append((plots.timeline(out / "timeline.png", phi, events, times, scores, windows, title).name,
                        "score timeline: frame scores, running max per window, phi and events"))

    if o.normals:
        # the windows edge-calibrate fits phi to: the monitor's, complete ones only
        all_windows, durations, _ = recordings_window_maxima(scorer, normal_files, window, gate_db, *hold_s,
                                                             policy=policy)
        maxima = phi_maxima(all_windows)
        cfg = scorer.features
        length_s = seconds_per_window(make_windows(window, cfg.sample_rate, cfg.hop_samples, gate_db, *hold_s), durations,
                                      len(all_windows))
        fit = TailFit.fit(maxima, tail) if len(maxima) >= MIN_MAXIMA and np.ptp(maxima) > 0 else None
        budget = (record.rule or {}).get("false_alarms_per_day")
        p_window = budget / windows_per_day(length_s) if budget else None
        figures.append((plots.maxima_histogram(out / "normal_maxima.png", maxima, phi, fit, p_window).name,
                        f"{len(maxima)} normal window maxima ({length_s:g}-s windows), phi and the {tail} tail fit"))
        facts["normal windows over phi"] = f"{int(np.sum(maxima >= phi))} of {len(maxima)}"
        if fit is not None:
            facts[f"{tail} fit P(window max > phi)"] = f"{fit.exceedance(phi):.3g}"

    if o.test_dir:
        clips = test_clips(o.test_dir, machine, o.machine_id is not None or not o.accept_other_machines)
        names.check_machines([c.path for c in clips], machine, "--test-dir clips", o.accept_other_machines)
        labels = np.array([c.label == "anomaly" for c in clips])
        if labels.all() or not labels.any():
            raise EdgeAsdError(f"{o.test_dir}: a ROC needs both normal and anomalous clips")
        clip_scores = np.array([np.max(v[ok], initial=-np.inf) for v, ok in
                                (policy_scores(s, policy) for s in score_recordings(scorer, [c.path for c in clips])[0])])
        levels = np.array([clip_level_dbfs(read_audio(c.path, scorer.features.sample_rate)) for c in clips])
        path, info = plots.roc(out / "roc.png", labels, clip_scores, phi, levels_dbfs=levels)
        figures.append((path.name, f"ROC of {o.test_dir} ({len(clips)} clips), clip score = max policy score "
                                   f"(votes {policy.describe()}; 1/1: max frame score), "
                                   "beside the loudness reference (clip RMS level as the score)"))
        facts.update({"test AUC": f"{info['auc']:.4f}", "test pAUC (FPR <= 0.1)": f"{info['pauc']:.4f}",
                      "loudness reference AUC / pAUC (clip level as the score)":
                          f"{info['level_auc']:.4f} / {info['level_pauc']:.4f}",
                      "test FPR / TPR at phi": f"{info['fpr_at_phi']:.3f} / {info['tpr_at_phi']:.3f}"})

    index = page(out, figures, facts)
    return Report([out / f for f, _ in figures], index, facts)


def test_clips(test_dir: Path, machine: names.Machine, keep_one_id: bool) -> list:
    """The labelled clips of a test folder (:func:`edge_asd.datasets.layout.scan`); with ``keep_one_id`` and a
    known ``machine.machine_id`` (``--machine-id``, else the model's only ID), only that ID's clips, with an
    INFO line saying how many of other IDs were left out.

    Raises:
        EdgeAsdError: no labelled clips, or none of that machine ID (the message lists the IDs found).
    """
    if not keep_one_id or machine.machine_id is None:
        return scan(test_dir)
    kept = scan(test_dir, machine_id=machine.machine_id)
    left_out = len(scan(test_dir)) - len(kept)
    if left_out:
        log.info("--test-dir: %d clips of %s kept, %d of other machine IDs left out", len(kept), machine.machine_id,
                 left_out)
    return kept


def _or(value, default):
    """``value`` unless None (a record lacks the key)."""
    return default if value is None else value
