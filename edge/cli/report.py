"""``edge-report``: pictures of what the detector saw, as PNG files and an HTML page that links them
(:mod:`edge_asd.edge.report.build` draws them)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_asd.core.commands import CONTEXT_SETTINGS, setup_logging, user_errors, version_option
from edge_asd.edge.cli.options import accept_other_machines_option, model_option, phi_option, store_option, threads_option
from edge_asd.edge.runtime.windows import DEFAULT_GATE_DB


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--events", "events_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Event log (JSONL) written by edge-monitor --events.")
@click.option("--recording", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An audio file to score and draw the timeline of (needs --model).")
@click.option("--normals", multiple=True, help="Normal recordings (files or directories, repeatable): histogram of "
              "their window maxima with phi and the fitted tail (needs --model).")
@click.option("--test-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Labelled test clips (normal_*/anomaly_* names): ROC (needs --model).")
@model_option()
@click.option("--machine-id", default=None, help="Machine ID whose phi (and calibration settings) to use; 00 takes the "
              "model's ID form (id_00 or section_00). --test-dir keeps its clips of this ID.")
@accept_other_machines_option
@store_option()
@phi_option("Threshold to draw (default: the event log's, else the store's for --model).")
@click.option("--window", default=None,
              help="Decision window as edge-monitor's --window: whole, SECONDS or gate (default: the calibration's).")
@click.option("--gate-db", type=float, default=None,
              help=f"--window gate: machine-on level, dBFS (default: the calibration's, else {DEFAULT_GATE_DB:g}; "
                   "the hold times are the calibration's).")
@click.option("--tail", type=click.Choice(["gumbel", "gev"]), default=None,
              help="Extreme-value fit drawn on the maxima (default: the calibration's, else gumbel).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("report"), show_default=True,
              help="Folder for the PNG files and index.html.")
@threads_option("Inference threads.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@version_option()
@user_errors
def main(events_path, recording, normals, test_dir, model_path, machine_id, accept_other_machines, store, phi, window,
         gate_db, tail, out, threads, quiet):
    """Draw the score timeline, the normal window maxima with phi and its tail fit, and the ROC.

    Give an event log and/or recordings with a model. Writes PNG files and index.html to OUT and
    prints their paths as JSON on stdout. File names decide what goes where: anomaly_* clips are refused
    among --normals, and clips whose DCASE / MIMII name says another machine ID or type are refused
    unless --accept-other-machines.
    """
    setup_logging(quiet=quiet)
    if not (events_path or recording or normals or test_dir):
        raise click.UsageError("nothing to draw: give --events, --recording, --normals or --test-dir")
    if (recording or normals or test_dir) and not model_path:
        raise click.UsageError("--recording, --normals and --test-dir need --model")
    from edge_asd.edge.report.build import ReportOptions, build_report

    report = build_report(ReportOptions(
        out=out, events=events_path, recording=recording, normals=tuple(map(Path, normals)), test_dir=test_dir,
        model_path=model_path, machine_id=machine_id, store=store, phi=phi, window=window,
        gate_db=gate_db, tail=tail, threads=threads, accept_other_machines=accept_other_machines))
    click.echo(json.dumps({"figures": [str(f) for f in report.figures], "html": str(report.html), **report.facts}))


if __name__ == "__main__":
    main()
