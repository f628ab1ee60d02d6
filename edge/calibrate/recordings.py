"""Normal recordings -> the window maxima phi is set on: which files, scored by the model (or taken from
their out-of-fold scores in the model file), cut into edge-monitor's windows, split into fitted and held-out
ones, and written out for a look."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edge_asd.core.atomic_io import atomic_write_text
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import n_vectors
from edge_asd.core.loudness import clip_level_dbfs
from edge_asd.core.oof import OutOfFold
from edge_asd.core.provenance import PREFIX_CHARS, file_sha256
from edge_asd.edge.calibrate.rules import WindowMax, phi_maxima, window_maxima
from edge_asd.edge.runtime.alert import EQ11, AlertPolicy
from edge_asd.edge.runtime.windows import DEFAULT_GATE_DB, DEFAULT_GATE_MIN_OFF_S, DEFAULT_GATE_MIN_ON_S, make_windows
from edge_asd.firmware_io.audio_file import read_audio

log = logging.getLogger("edge_asd")


def split_holdout(files: list, fraction: float, option: str = "--holdout", what: str = "calibrate on") -> tuple[list, list]:
    """(kept, held out): the last ``fraction`` of the recordings (the latest, when named in time order), at
    least one. Raises EdgeAsdError (naming ``option``) when ``fraction`` is not in (0, 1) or nothing is kept."""
    if not 0.0 < fraction < 1.0:
        raise EdgeAsdError(f"{option} must be in (0, 1), not {fraction}")
    n_held = max(1, round(fraction * len(files)))
    if n_held >= len(files):
        raise EdgeAsdError(f"{option} {fraction} leaves no recording to {what} ({len(files)} given)")
    return files[:-n_held], files[-n_held:]


def score_recordings(scorer, files: list[Path]) -> tuple[list[np.ndarray], list[float]]:
    """(frame scores, shape (n_frames,), and duration in s) of each recording, read at the model's rate.

    Raises:
        EdgeAsdError: a recording shorter than one context window, or unreadable audio.
    """
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


def scored_recordings(scorer, files: Sequence[Path], audio: list[np.ndarray] | None = None,
                      known: Mapping[Path, np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(samples, frame scores) of each recording: read at the model's rate (or taken from ``audio``: the files
    already decoded, mono float32 at the model's rate, in the same order) and scored; shapes (N,) and (n_frames,).
    ``known``: frame scores to take instead of the model's for some of the files (their out-of-fold scores,
    :func:`out_of_fold_scores`), shape (n_frames,) each.

    Raises:
        EdgeAsdError: a recording shorter than one context vector, or unreadable audio.
    """
    cfg = scorer.features
    out = []
    for i, f in enumerate(files):
        samples = read_audio(f, cfg.sample_rate) if audio is None else audio[i]
        scores = known[f] if known and f in known else scorer.score_audio(samples)
        if len(scores) == 0:
            raise EdgeAsdError(f"{f}: shorter than one context window ({cfg.samples_per_vector} samples)")
        out.append((samples, scores))
    return out


def recordings_window_maxima(scorer, files: list[Path], window: str, gate_db: float = DEFAULT_GATE_DB,
                             gate_min_on_s: float = DEFAULT_GATE_MIN_ON_S, gate_min_off_s: float = DEFAULT_GATE_MIN_OFF_S,
                             audio: list[np.ndarray] | None = None, policy: AlertPolicy = EQ11,
                             known: Mapping[Path, np.ndarray] | None = None,
                             scored: list[tuple[np.ndarray, np.ndarray]] | None = None, quiet: bool = False,
                             ) -> tuple[list[WindowMax], list[float], list[float]]:
    """(the :class:`~edge_asd.edge.calibrate.rules.WindowMax` of every window of every recording, each
    recording's duration in s and its max frame score).

    Each recording is scored (:func:`scored_recordings`, or taken from ``scored``), its frame scores turned
    into the ``policy``'s policy scores (1/1: unchanged), and its windows cut as edge-monitor ``--window WINDOW
    --gate-db GATE_DB --gate-min-on-s ... --gate-min-off-s ... --votes K/N`` cuts them on that file
    (:func:`~edge_asd.edge.calibrate.rules.window_maxima`; gate level in dBFS, hold times in s).
    ``known``: frame scores to take instead of the model's for some of the files (their out-of-fold scores,
    :func:`out_of_fold_scores`), shape (n_frames,) each. ``quiet``: no INFO line per recording (a policy
    tried on recordings already reported).

    Raises:
        EdgeAsdError: a recording shorter than one context vector, unreadable audio or a bad window.
    """
    cfg = scorer.features
    out, durations, clip_max = [], [], []
    for f, (samples, scores) in zip(files, scored or scored_recordings(scorer, files, audio, known)):
        windows = make_windows(window, cfg.sample_rate, cfg.hop_samples, gate_db, gate_min_on_s, gate_min_off_s)
        windows = window_maxima(scores, samples, windows, cfg, str(f), policy)
        if not quiet:
            log.info("%s: max score %.3f over %d %ss%s, %d operation window%s", f.name, float(scores.max()), len(scores),
                     cfg.score_unit, " (out-of-fold)" if known and f in known else "", len(windows),
                     "" if len(windows) == 1 else "s")
        out += windows
        durations.append(len(samples) / cfg.sample_rate)
        clip_max.append(float(scores.max()))
    return out, durations, clip_max


def out_of_fold_scores(oof: OutOfFold | None, files: Sequence[Path], cfg,
                       audio: Mapping[Path, np.ndarray] | None = None) -> dict[Path, np.ndarray]:
    """The out-of-fold frame scores (n_frames,) of each of ``files`` that has them in the model file (``oof``,
    :func:`edge_asd.core.oof.read_oof`), matched by the file's content digest (sha256 prefix); a recording
    whose frame count at the model's rate (``cfg``) differs gets a WARNING and is left out (the model scores it).
    ``audio``: the recordings already decoded (mono float32 at the model's rate), so none is read twice.

    Raises:
        EdgeAsdError: a matched recording that cannot be read.
    """
    out = {}
    for f in files if oof is not None else ():
        scores = oof.scores.get(file_sha256(f)[:PREFIX_CHARS])
        if scores is None:
            continue
        samples = audio[f] if audio is not None and f in audio else read_audio(f, cfg.sample_rate)
        n = n_vectors(len(samples), cfg)
        if len(scores) != n:
            log.warning("%s: its out-of-fold scores have %d frames, the recording %d: the model scores it", f.name,
                        len(scores), n)
            continue
        out[f] = scores
    return out


UNHEARD_MODE_RATIO = 3.0
"""A recording whose median out-of-fold frame score is this many times the median over the recordings sounds,
throughout, unlike every other one (see :func:`unheard_modes`)."""


def unheard_modes(known: Mapping[Path, np.ndarray], files: Sequence[Path]) -> list[Path]:
    """The recordings among ``files`` with out-of-fold scores (``known``) whose median out-of-fold frame score
    exceeds :data:`UNHEARD_MODE_RATIO` times the median of those recordings' medians: a fold model that did not
    hear them scores them, from start to end, like an anomaly (fan id_00: 3 of 10 clips at 7-15x while the
    others stay within 1.1x; the final model, which heard them, scores them like the rest, 0.9-1.2x). Such a
    recording is a mode of the machine's sound (an operating state, or a mislabelled anomaly) too rare in the
    training set for the fold models to have heard it; none is named when fewer than 3 recordings have
    out-of-fold scores or when as many as half of them would be."""
    medians = {f: float(np.median(known[f])) for f in files if f in known}
    if len(medians) < 3:
        return []
    typical = float(np.median(list(medians.values())))
    odd = [f for f, m in medians.items() if m > UNHEARD_MODE_RATIO * typical]
    return odd if 2 * len(odd) < len(medians) else []


def recording_levels(files: Sequence[Path], sample_rate: int, audio: Sequence[np.ndarray] | None = None) -> list[float]:
    """Each recording's RMS level, dBFS (:func:`edge_asd.core.loudness.clip_level_dbfs`), read mono at
    ``sample_rate`` Hz as the scorer reads it (or taken from ``audio``, the files already decoded, in order).
    Raises EdgeAsdError for unreadable or empty audio."""
    return [clip_level_dbfs(read_audio(f, sample_rate) if audio is None else audio[i]) for i, f in enumerate(files)]


def held_out_maxima(scorer, held_files: Sequence[Path], windows, audio: list[np.ndarray] | None = None,
                    policy: AlertPolicy = EQ11, known: Mapping[Path, np.ndarray] | None = None
                    ) -> tuple[list[WindowMax], np.ndarray | None]:
    """(the WindowMax of every window of the held-out recordings, their max scores for the check, shape
    (n,), or None without held-out recordings): cut as :func:`recordings_window_maxima` cuts the fitted
    ones (with the frame scores ``known`` for some of them), on ``windows`` (fresh windows whose
    ``settings()`` are used), with the same ``policy``."""
    if not held_files:
        return [], None
    held_windows = recordings_window_maxima(scorer, list(held_files), **windows.settings(), audio=audio,
                                            policy=policy, known=known)[0]
    return held_windows, phi_maxima(held_windows, "held-out recordings")


def write_maxima(path: Path, fit: list[WindowMax], held: list[WindowMax]) -> None:
    """Every window as a JSON line (WindowMax fields and ``held_out``), written atomically.

    Raises:
        EdgeAsdError: the file cannot be written.
    """
    lines = [json.dumps({**w.to_dict(), "held_out": h}) for ws, h in ((fit, False), (held, True)) for w in ws]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
