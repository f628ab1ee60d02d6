"""``edge-monitor``: score a live or recorded stream frame by frame and print anomaly events."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .cli_common import CONTEXT_SETTINGS, kit_version, setup_logging, user_errors
from .errors import EdgeAsdError

log = logging.getLogger("edge_asd")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="Model file (.tflite or .onnx).")
@click.option("--machine-id", default=None, help="Machine ID whose phi to use (default: the only one calibrated for this model).")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="phi store written by edge-calibrate. Default: $EDGE_ASD_STORE or the user config dir.")
@click.option("--phi", type=float, default=None, help="Use this threshold instead of the store's.")
@click.option("--input", "input_spec", default="mic", show_default=True,
              help="mic, mic:DEVICE_INDEX, an audio file, or - for raw s16le mono PCM (or WAV) on stdin.")
@click.option("--pcm-rate", type=int, default=None, help="Sample rate (Hz) of the PCM on stdin; must equal the model's.")
@click.option("--window", "window_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Operation window, seconds: reset the running max every WINDOW s (default: whole stream).")
@click.option("--events", "events_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also append events to this JSONL file (fsynced per line).")
@click.option("--threads", default=1, show_default=True, help="Inference threads.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.version_option(kit_version(), "--version")
@user_errors
def main(model_path, machine_id, store, phi, input_spec, pcm_rate, window_s, events_path, threads, quiet):
    """Stream audio through the model; print one JSON line per frame that pushes the running max over phi.

    Event lines go to stdout, logs and the end-of-stream summary to stderr. Exit status: 0 after a
    clean end of input or Ctrl-C, 1 on bad input.
    """
    setup_logging(quiet=quiet)
    from edge_asd.firmware_io.sinks import JsonLinesSink
    from edge_asd.firmware_io.sources import open_source

    from . import phi_store
    from .detector import RunningMaxDetector
    from .machine_id import normalize_machine_id
    from .monitor import BLOCK_HOPS, monitor
    from .scorer import Scorer

    scorer = Scorer(model_path, num_threads=threads)
    machine_id = normalize_machine_id(machine_id) if machine_id else None
    if phi is None:
        machine_id, record = phi_store.lookup_phi(store or phi_store.default_store_path(), machine_id, scorer.sha256)
        phi = float(record["phi"])
    machine_id = machine_id or "unknown"
    detector = RunningMaxDetector(phi, machine_id, scorer.sha256, window_s)
    source = open_source(input_spec, scorer.features.sample_rate, BLOCK_HOPS * scorer.features.hop_samples, pcm_rate)
    sinks = [JsonLinesSink(sys.stdout)] + ([JsonLinesSink.append_to(events_path)] if events_path else [])
    log.info("monitoring %s with %s (%s), machine ID %s, phi %.3f", input_spec, Path(model_path).name,
             scorer.backend.name, machine_id, phi)
    try:
        summary = monitor(source, scorer, detector, lambda e: [s.write(e) for s in sinks])
    finally:
        for s in sinks:
            s.close()
    click.echo(f"edge-monitor: {summary.line(phi)}", err=True)
    if summary.silent:
        raise EdgeAsdError(f"{input_spec}: the input was digital silence (all samples 0); check the microphone or file")
    if summary.frames == 0:
        raise EdgeAsdError(f"{input_spec}: too short to score (needs {scorer.features.samples_per_vector} samples)")


if __name__ == "__main__":
    main()
