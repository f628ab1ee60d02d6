"""``edge-calibrate``: set the threshold phi of one machine ID from its normal recordings."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

from .calibration import DEFAULT_MARGIN, DEFAULT_QUANTILE, phi_from_clip_maxima
from .cli_common import CONTEXT_SETTINGS, kit_version, setup_logging, user_errors
from .errors import EdgeAsdError
from .machine_id import normalize_machine_id

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


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("recordings", nargs=-1, required=True)
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="Model file (.tflite or .onnx).")
@click.option("--machine-id", required=True, help="Machine ID the recordings come from: 00, id_00 or section_00.")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="phi store (JSON). Default: $EDGE_ASD_STORE or the user config dir.")
@click.option("--quantile", default=DEFAULT_QUANTILE, show_default=True,
              help="q of the per-recording max scores (eq. 11) that phi is placed above.")
@click.option("--margin", default=DEFAULT_MARGIN, show_default=True, help="phi = margin x quantile.")
@click.option("--threads", default=1, show_default=True, help="Inference threads.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.version_option(kit_version(), "--version")
@user_errors
def main(recordings, model_path, machine_id, store, quantile, margin, threads, quiet):
    """Score normal RECORDINGS (files or directories) and store phi for one machine ID.

    Each recording's score is its max frame score (Koizumi et al. 2019, eq. 11); phi is MARGIN times
    the QUANTILE of those scores. Prints the result as JSON on stdout.
    """
    setup_logging(quiet=quiet)
    from edge_asd.firmware_io.audio_file import read_audio

    from . import phi_store
    from .scorer import Scorer

    machine_id = normalize_machine_id(machine_id)
    store = store or phi_store.default_store_path()
    scorer = Scorer(model_path, num_threads=threads)
    files = expand_recordings(recordings)
    maxima = []
    for f in files:
        scores = scorer.score_audio(read_audio(f, scorer.features.sample_rate))
        if len(scores) == 0:
            raise EdgeAsdError(f"{f}: shorter than one context window ({scorer.features.samples_per_vector} samples)")
        maxima.append(float(scores.max()))
        log.info("%s: max score %.3f over %d frames", f.name, maxima[-1], len(scores))
    phi = phi_from_clip_maxima(np.array(maxima), quantile, margin)
    record = {
        "phi": phi,
        "model_sha256": scorer.sha256,
        "model_path": str(Path(model_path).resolve()),
        "machine_type": scorer.meta.get("machine_type"),
        "rule": {"name": "clip-max-quantile", "quantile": quantile, "margin": margin},
        "clip_max_scores": {"min": min(maxima), "median": float(np.median(maxima)), "max": max(maxima)},
        "recordings": [str(f) for f in files],
        "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kit_version": kit_version(),
    }
    phi_store.save_phi(store, machine_id, record)
    click.echo(json.dumps({"machine_id": machine_id, "phi": phi, "store": str(store), "n_recordings": len(files),
                           "clip_max_scores": record["clip_max_scores"]}))


if __name__ == "__main__":
    main()
