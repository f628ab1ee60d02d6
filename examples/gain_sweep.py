"""Score against input gain: how many dB of microphone gain (or distance) turn a normal clip into a false alarm.

    python examples/gain_sweep.py --model fan.tflite --store phi.json --machine-type fan --machine-id id_00 \\
        --out out/gain_sweep_fan.json

For a model file and one machine ID, the normal test clips are scaled by each gain (default -6, -3, -1,
-0.5, 0, +0.5, +1, +3, +6 dB: samples x 10^(gain/20), clipped to [-1, 1], the clipped samples counted)
and scored exactly as the device scores a file (:meth:`edge_asd.edge.runtime.scorer.Scorer.score_audio`).
Per gain it prints the median and the largest of the clips' max frame scores (eq. 11), how many normal
clips reach phi (max >= phi: edge-monitor would raise an anomaly event on them) and that as a false-alarm
rate per clip. At 0 dB it also prints the clip AUC / pAUC (max FPR 0.1) of the real anomalous vs normal
test clips beside the loudness reference (the same metric with the clip's RMS level as the score,
:mod:`edge_asd.core.loudness`). A Markdown table goes to stdout, the same figures as JSON to ``--out``.
Runs unchanged on a full DCASE 2020 Task 2 or MIMII download (``--data``). Results: docs/level.md.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from edge_asd.core.commands import script_help, setup_logging, user_errors
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.loudness import clip_level_dbfs, loudness_reference
from edge_asd.core.metrics import DEFAULT_MAX_FPR, auc_pauc
from edge_asd.edge.runtime.scorer import Scorer

log = logging.getLogger("edge_asd")

GAINS_DB = (-6.0, -3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 6.0)
"""Input gains swept by default, dB (issue 14, sec. 2)."""


@dataclass(frozen=True)
class GainRow:
    """The normal clips' scores at one input gain.

    Attributes:
        gain_db: the gain applied, dB (amplitude factor 10^(gain_db / 20)).
        clipped_samples: samples of all clips whose scaled magnitude exceeded full scale (set to +-1).
        max_scores: (n_clips,) each clip's max frame score (eq. 11), in clip order.
        median_max, max_max: median and largest of ``max_scores``.
        n_over_phi: clips whose max frame score reaches phi (>= phi); None without phi.
        false_alarm_rate: n_over_phi / n_clips, per clip; None without phi.
    """

    gain_db: float
    clipped_samples: int
    max_scores: tuple[float, ...]
    median_max: float
    max_max: float
    n_over_phi: int | None
    false_alarm_rate: float | None


def apply_gain(samples: np.ndarray, gain_db: float) -> tuple[np.ndarray, int]:
    """(samples x 10^(gain_db/20) clipped to [-1, 1] as float32, number of samples clipped).

    Args:
        samples: (N,) mono float samples, full scale = 1. gain_db: gain, dB.
    """
    scaled = np.asarray(samples, dtype=np.float64) * 10.0 ** (gain_db / 20.0)
    n_clipped = int(np.count_nonzero(np.abs(scaled) > 1.0))
    return np.clip(scaled, -1.0, 1.0).astype(np.float32), n_clipped


def sweep(score_audio, clips: list[np.ndarray], gains_db=GAINS_DB, phi: float | None = None) -> list[GainRow]:
    """Max frame score of every clip at every gain.

    Args:
        score_audio: a function, mono samples (N,) -> frame scores (n_vectors,): a model file's
            :meth:`Scorer.score_audio` (as the device scores a file), or a float model's
            (``examples/level_remedies.py``). clips: mono float samples at the model's sample rate, full
            scale = 1 (normal recordings). gains_db: gains, dB. phi: the threshold, score units; None: no
            false-alarm count.
    Returns:
        One :class:`GainRow` per gain, in the order given.
    Raises:
        EdgeAsdError: no clips, or a clip shorter than one context vector.
    """
    if not clips:
        raise EdgeAsdError("no clips to sweep")
    rows = []
    for gain in gains_db:
        maxima, clipped = [], 0
        for samples in clips:
            scaled, n = apply_gain(samples, gain)
            scores = score_audio(scaled)
            if len(scores) == 0:
                raise EdgeAsdError(f"a clip of {len(samples)} samples is shorter than one context vector")
            maxima.append(float(scores.max()))
            clipped += n
        over = None if phi is None else sum(m >= phi for m in maxima)
        rows.append(GainRow(float(gain), clipped, tuple(maxima), float(np.median(maxima)), max(maxima), over,
                            None if over is None else over / len(maxima)))
        log.info("gain %+g dB: median max score %.1f, %s clip(s) >= phi", gain, rows[-1].median_max, over)
    return rows


def auc_beside_level(scorer: Scorer, normals: list[np.ndarray], anomalies: list[np.ndarray],
                     max_fpr: float = DEFAULT_MAX_FPR) -> dict[str, dict[str, float]]:
    """Clip AUC / pAUC at 0 dB of the max frame score and of the clip level (the loudness reference).

    Returns:
        ``{"max": {"auc", "pauc"}, "level": {"auc", "pauc"}}``.
    Raises:
        ValueError: no normal or no anomalous clip (as :func:`edge_asd.core.metrics.auc_pauc`).
    """
    clips = list(normals) + list(anomalies)
    y = np.r_[np.zeros(len(normals), bool), np.ones(len(anomalies), bool)]
    model = auc_pauc(y, [scorer.score_audio(c).max() for c in clips], max_fpr)
    level = loudness_reference(y, [clip_level_dbfs(c) for c in clips], max_fpr)
    return {"max": dict(zip(("auc", "pauc"), model)), "level": dict(zip(("auc", "pauc"), level))}


def markdown(rows: list[GainRow], n_clips: int, phi: float | None, aucs: dict | None, max_fpr: float) -> str:
    """The sweep as a Markdown table, then the AUC table at 0 dB (when anomalous clips were scored)."""
    out = ["| gain dB | clipped samples | median max score | max max score | normal clips >= phi | "
           "false alarms per clip |", "|---|---|---|---|---|---|"]
    for r in rows:
        over = "–" if r.n_over_phi is None else f"{r.n_over_phi} / {n_clips}"
        rate = "–" if r.false_alarm_rate is None else f"{r.false_alarm_rate:.2f}"
        out.append(f"| {r.gain_db:+g} | {r.clipped_samples} | {r.median_max:.1f} | {r.max_max:.1f} | {over} | {rate} |")
    out.append("")
    out.append(f"phi {phi:.1f}" if phi is not None else "no phi: no false-alarm count")
    if aucs is not None:
        out += ["", f"| clip score, gain 0 dB | AUC | pAUC (FPR <= {max_fpr:g}) |", "|---|---|---|",
                f"| max frame score (eq. 11) | {aucs['max']['auc']:.3f} | {aucs['max']['pauc']:.3f} |",
                f"| loudness reference (clip RMS level as the score) | {aucs['level']['auc']:.3f} | "
                f"{aucs['level']['pauc']:.3f} |"]
    return "\n".join(out) + "\n"


def split_test_clips(data: Path | None, machine_type: str, machine_id: str) -> tuple[list[Path], list[Path]]:
    """(normal, anomalous) test clips of one machine ID (MIMII clips get the baselines' split).

    Raises:
        EdgeAsdError: no data root, no clip of that machine, or no normal test clip.
    """
    from edge_asd.datasets.layout import assign_mimii_split, scan
    from edge_asd.datasets.locate import require_data_root

    clips = assign_mimii_split(scan(data or require_data_root(), machine_type=machine_type, machine_id=machine_id))
    normals = [c.path for c in clips if c.split == "test" and c.label == "normal"]
    anomalies = [c.path for c in clips if c.split == "test" and c.label == "anomaly"]
    if not normals:
        raise EdgeAsdError(f"{machine_type} {machine_id}: no normal test clip to sweep")
    return normals, anomalies


def resolve_phi(phi: float | None, store: Path | None, machine_id: str, scorer: Scorer) -> tuple[float, str]:
    """(phi, where it came from): ``--phi``, else the store's record of ``machine_id`` for this model file.

    Raises:
        EdgeAsdError: neither or both given; no phi for this machine ID and model in the store.
    """
    if (phi is None) == (store is None):
        raise EdgeAsdError("give the threshold as --phi VALUE or --store PHI_STORE (one of them)")
    if phi is not None:
        return phi, "--phi"
    from edge_asd.edge.runtime.phi_store import lookup_phi

    _, record = lookup_phi(store, machine_id, scorer.sha256)
    return record.phi, f"{store} ({machine_id})"


def _gains(ctx, param, value):
    try:
        gains = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        gains = ()
    if not gains or not all(np.isfinite(gains)):
        raise click.BadParameter(f"{value!r}: a comma-separated list of gains in dB, e.g. -1,0,1")
    return gains


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=script_help(__doc__))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root (DCASE/MIMII layout). Default: $EDGE_ASD_DATA or ../shared/data.")
@click.option("--machine-type", default="fan", show_default=True)
@click.option("--machine-id", default="id_00", show_default=True)
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Model file (.tflite or .onnx).")
@click.option("--phi", type=float, default=None, help="Threshold phi (score units).")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Phi store to read phi from (this machine ID, this model file), as edge-monitor does.")
@click.option("--gains", callback=_gains, default=",".join(f"{g:g}" for g in GAINS_DB), show_default=True,
              help="Input gains, dB.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the figures as JSON here.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Inference threads.")
@click.option("-q", "--quiet", is_flag=True)
@user_errors
def main(data, machine_type, machine_id, model_path, phi, store, gains, out, threads, quiet):
    setup_logging(quiet=quiet)
    from edge_asd.core.atomic_io import atomic_write_text
    from edge_asd.core.machine_id import normalize_machine_id
    from edge_asd.firmware_io.audio_file import read_audio

    machine_id = normalize_machine_id(machine_id)
    scorer = Scorer(model_path, num_threads=threads)
    phi, phi_from = resolve_phi(phi, store, machine_id, scorer)
    normal_paths, anomaly_paths = split_test_clips(data, machine_type, machine_id)
    rate = scorer.features.sample_rate
    normals = [read_audio(p, rate) for p in normal_paths]
    rows = sweep(scorer.score_audio, normals, gains, phi)
    aucs = None
    if anomaly_paths:
        aucs = auc_beside_level(scorer, normals, [read_audio(p, rate) for p in anomaly_paths])
    click.echo(f"{machine_type} {machine_id}: {len(normals)} normal test clips swept, {len(anomaly_paths)} anomalous; "
               f"model {model_path.name} (sha256 {scorer.sha256[:12]}); phi {phi:.1f} from {phi_from}\n")
    click.echo(markdown(rows, len(normals), phi, aucs, DEFAULT_MAX_FPR), nl=False)
    if out is not None:
        doc = {"model": str(model_path), "model_sha256": scorer.sha256, "machine_type": machine_type,
               "machine_id": machine_id, "phi": phi, "phi_from": phi_from, "max_fpr": DEFAULT_MAX_FPR,
               "normal_clips": [p.name for p in normal_paths], "anomalous_clips": [p.name for p in anomaly_paths],
               "levels_dbfs": [clip_level_dbfs(c) for c in normals], "gains": [asdict(r) for r in rows],
               "auc_at_0db": aucs}
        atomic_write_text(out, json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
