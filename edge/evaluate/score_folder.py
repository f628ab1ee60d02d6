"""Score recordings clip by clip with a model file, and evaluate them when their names carry labels:
edge-score's library (numpy and the inference backend only, as on the device).

Each clip is read as edge-monitor reads a file (mono, at the model's sample rate) and scored frame by
frame with the same model call, so its max frame score is the max edge-monitor reports for that file.
Machine type, machine ID and label come from DCASE / MIMII file names (:mod:`edge_asd.datasets.layout`);
when both labels are present, AUC and pAUC of the clip scores are computed beside the loudness reference
(the same metric with the clip's RMS level as the score, :mod:`edge_asd.core.loudness`).
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.loudness import clip_level_dbfs, loudness_reference
from edge_asd.core.metrics import DEFAULT_MAX_FPR, auc_pauc
from edge_asd.datasets.layout import parse_clip_name  # the one parser of DCASE / MIMII names
from edge_asd.edge.runtime.alert import EQ11, AlertPolicy, policy_scores
from edge_asd.edge.runtime.health import recording_health
from edge_asd.edge.runtime.scorer import Scorer
from edge_asd.firmware_io.audio_file import read_audio

log = logging.getLogger("edge_asd")

CSV_COLUMNS = ("file", "machine_type", "machine_id", "label", "n_frames", "max_score", "mean_score", "level_dbfs",
               "frames_not_scored", "health")
"""The columns of edge-score's CSV, one row per clip (empty cells where a name carries no label or ID)."""

CLIP_SCORES = ("max", "mean")
"""Clip scores evaluated: the max of the frame scores (eq. 11, what edge-monitor's running max reaches over
a whole clip) and their mean."""


@dataclass(frozen=True)
class ClipResult:
    """One scored clip.

    Attributes:
        file: the audio file, as found.
        machine_type, machine_id, label: from the file name (:mod:`edge_asd.datasets.layout`); None when
            the name follows no DCASE / MIMII layout. label is "normal" or "anomaly".
        n_frames: frame scores (context vectors) in the clip.
        max_score: max of the policy scores (:mod:`edge_asd.edge.runtime.alert`; 1/1: the anomaly scores, eq. 5)
            of the frames that pass the input health checks, as edge-monitor's running max reaches it over the
            file with the same ``--votes``; NaN when no frame has one (e.g. digital silence).
        mean_score: mean of the anomaly scores (eq. 5) of the frames that pass the health checks (no votes).
        level_dbfs: RMS level of the samples the model scored (mono, model's rate), dBFS
            (:func:`edge_asd.core.loudness.clip_level_dbfs`).
        frames_not_scored: frames that failed an input health check (:mod:`edge_asd.edge.runtime.health`).
        health: ``ok``, or the health states that started in the clip with their counts, e.g. ``silent:1``.
    """

    file: Path
    machine_type: str | None
    machine_id: str | None
    label: str | None
    n_frames: int
    max_score: float
    mean_score: float
    level_dbfs: float
    frames_not_scored: int = 0
    health: str = "ok"


def name_fields(path: Path) -> tuple[str | None, str | None, str | None]:
    """(machine type, machine ID, label) from a DCASE / MIMII file name, or (None, None, None)."""
    clip = parse_clip_name(Path(path))
    return (None, None, None) if clip is None else (clip.machine_type, clip.machine_id, clip.label)


def keep_machine_id(files: Sequence[Path], machine_id: str) -> list[Path]:
    """The files whose name carries ``machine_id`` (canonical form, e.g. ``id_00``).

    Raises:
        EdgeAsdError: none does (the message lists the IDs found).
    """
    ids = [name_fields(f)[1] for f in files]
    kept = [f for f, i in zip(files, ids) if i == machine_id]
    if not kept:
        found = ", ".join(sorted({i or "none in the name" for i in ids}))
        raise EdgeAsdError(f"no clips of {machine_id} among the {len(files)} recording(s); machine IDs found: {found}")
    return kept


def score_clip(scorer: Scorer, path: Path, policy: AlertPolicy = EQ11) -> ClipResult:
    """Score one recording (read as edge-monitor reads a file: mono, at the model's rate); its max on the
    ``policy``'s policy scores (default 1/1: the frame scores).

    Raises:
        EdgeAsdError: unreadable, truncated or digitally silent audio, or shorter than one context vector.
    """
    cfg = scorer.features
    samples = read_audio(path, cfg.sample_rate)
    scores = scorer.score_audio(samples)
    if len(scores) == 0:
        raise EdgeAsdError(f"{path}: shorter than one context window ({cfg.samples_per_vector} samples)")
    machine_type, machine_id, label = name_fields(path)
    health = recording_health(samples, cfg.sample_rate, cfg.hop_samples, cfg.samples_per_vector,
                              vector_hop_samples=cfg.vector_hop_samples)
    healthy = scores[health.scored[:len(scores)]]
    votes, ok = policy_scores(scores, policy, health.scored[:len(scores)])
    flags = ";".join(f"{state}:{n}" for state, n in sorted(health.states.items())) or "ok"
    result = ClipResult(Path(path), machine_type, machine_id, label, len(scores),
                        float(votes[ok].max()) if ok.any() else float("nan"),
                        float(healthy.mean()) if len(healthy) else float("nan"), clip_level_dbfs(samples),
                        int(len(scores) - len(healthy)), flags)
    unit = cfg.score_unit
    log.info("%s: max score %.3f, mean %.3f over %d %ss, level %.1f dBFS%s", Path(path).name, result.max_score,
             result.mean_score, result.n_frames, unit, result.level_dbfs,
             "" if flags == "ok" else f"; input health {flags}, {result.frames_not_scored} {unit}s not scored")
    return result


def score_clips(scorer: Scorer, files: Iterable[Path], policy: AlertPolicy = EQ11) -> list[ClipResult]:
    """:func:`score_clip` of each file, in order, with ``policy``. Raises EdgeAsdError as it does."""
    return [score_clip(scorer, f, policy) for f in files]


def evaluate(results: Sequence[ClipResult], max_fpr: float = DEFAULT_MAX_FPR) -> dict:
    """Label counts and, when both labels are present, AUC and pAUC per clip score beside the loudness reference.

    Returns:
        ``{"n_clips", "labels": {"normal": n, "anomaly": n, "unlabelled": n}, "machine_types": [...],
        "machine_ids": [...], "max_fpr", "left_out_unhealthy", "metrics"}``; ``metrics`` is None without both
        labels, else ``{"max": {"auc", "pauc"}, "mean": {...}, "level": {...}}`` over the labelled clips with at
        least one frame that passed the input health checks (``left_out_unhealthy`` counts the others),
        ``level`` being the loudness reference (the clip level in dBFS as the score).
    """
    counts = Counter(r.label or "unlabelled" for r in results)
    out = {"n_clips": len(results),
           "labels": {k: counts.get(k, 0) for k in ("normal", "anomaly", "unlabelled")},
           "machine_types": sorted({r.machine_type for r in results if r.machine_type}),
           "machine_ids": sorted({r.machine_id for r in results if r.machine_id}),
           "max_fpr": max_fpr, "metrics": None}
    labelled = [r for r in results if r.label is not None and np.isfinite(r.max_score)]
    out["left_out_unhealthy"] = sum(1 for r in results if r.label is not None and not np.isfinite(r.max_score))
    kept = Counter(r.label for r in labelled)
    if not (kept.get("normal") and kept.get("anomaly")):
        return out
    y = np.array([r.label == "anomaly" for r in labelled])
    metrics = {}
    for name in CLIP_SCORES:
        auc, pauc = auc_pauc(y, [getattr(r, f"{name}_score") for r in labelled], max_fpr)
        metrics[name] = {"auc": auc, "pauc": pauc}
    auc, pauc = loudness_reference(y, [r.level_dbfs for r in labelled], max_fpr)
    metrics["level"] = {"auc": auc, "pauc": pauc}
    out["metrics"] = metrics
    return out


def to_csv(results: Sequence[ClipResult]) -> str:
    """The results as CSV text with :data:`CSV_COLUMNS` (scores at full float precision; empty cell for None)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        row = asdict(r)
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
    return buf.getvalue()


def summary_lines(evaluation: dict, policy: AlertPolicy = EQ11, unit: str = "frame") -> list[str]:
    """The evaluation as text for stderr: the clip counts, then a table of AUC / pAUC per clip score with the
    loudness reference as its last row, and a warning when the level does as well as the model. ``policy``:
    the alert policy of the clips' max (its row reads "max policy score (votes K/N)" unless 1/1); ``unit``: what
    one score covers, "frame" or "window" (``FeatureConfig.score_unit``)."""
    labels = evaluation["labels"]
    kinds = " ".join(evaluation["machine_types"] + evaluation["machine_ids"]) or "unnamed recordings"
    counts = ", ".join(f"{n} {k}" for k, n in labels.items() if n)
    n = evaluation["n_clips"]
    lines = [f"{n} clip{'s' if n != 1 else ''} ({kinds}): {counts}"]
    if evaluation.get("left_out_unhealthy"):
        lines.append(f"{evaluation['left_out_unhealthy']} labelled clip(s) left out of the AUC: no frame passed the "
                     "input health checks (see the health column)")
    m = evaluation["metrics"]
    if m is None:
        lines.append("no AUC: it needs both normal_* and anomaly_* clips (labels from DCASE / MIMII file names)")
        return lines
    if len(evaluation["machine_ids"]) > 1:
        lines.append(f"machine IDs {', '.join(evaluation['machine_ids'])} evaluated together; --machine-id ID for one")
    lines.append(f"{'clip score':<28}{'AUC':>7}{'pAUC':>8}  (pAUC: FPR <= {evaluation['max_fpr']:g}, McClish)")
    max_name = f"max {unit} score" if (policy.k, policy.n) == (1, 1) else f"max policy score ({policy.k}/{policy.n})"
    rows = [(max_name, m["max"]), (f"mean {unit} score", m["mean"]),
            ("level, dBFS (loudness ref.)", m["level"])]
    lines += [f"{name:<28}{v['auc']:>7.3f}{v['pauc']:>8.3f}" for name, v in rows]
    if m["level"]["auc"] >= max(m[s]["auc"] for s in CLIP_SCORES):
        lines.append("the clip level alone separates these clips as well as the model: this AUC may measure loudness, "
                     "not the machine's condition")
    return lines
