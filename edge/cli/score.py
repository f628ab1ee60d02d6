"""``edge-score``: score recordings clip by clip with a model file; with labelled file names, AUC and pAUC
beside the loudness reference. How a user evaluates the kit on their own recordings."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from edge_asd.core.commands import CONTEXT_SETTINGS, setup_logging, user_errors, version_option
from edge_asd.core.metrics import DEFAULT_MAX_FPR
from edge_asd.edge.cli.options import threads_option


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_path", envvar="EDGE_ASD_MODEL", required=True, type=click.Path(dir_okay=False),
              help="Model file (.tflite or .onnx).")
@click.option("--machine-id", default=None,
              help="Keep only the clips of this machine ID (from their file names); 00 takes the model's ID form "
                   "(id_00 or section_00).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the per-clip CSV here (atomically) instead of stdout.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary and every clip as one JSON object on stdout (the CSV only goes to --out).")
@click.option("--max-fpr", type=click.FloatRange(0, 1, min_open=True), default=DEFAULT_MAX_FPR, show_default=True,
              help="Where pAUC stops (false-positive rate), as DCASE Task 2.")
@click.option("--votes", default="1/1", show_default=True, metavar="K/N",
              help="Alert policy of the max: the clip's max of the K-th largest score of the last N frames, as "
                   "edge-monitor --votes K/N reports it (use the policy edge-calibrate stored: edge-calibrate --show).")
@threads_option("Inference threads.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr (the summary stays).")
@version_option()
@user_errors
def main(paths, model_path, machine_id, out_path, as_json, max_fpr, votes, threads, quiet):
    """Score every clip in PATH... (audio files, or folders searched recursively) with the model.

    Per clip (CSV on stdout, or --out): file, machine type, machine ID and label read from DCASE / MIMII
    file names (normal_id_00_00000010.wav, fan/id_00/abnormal/00000001.wav, ...), frames, max (of the --votes
    policy score, as edge-monitor's running max) and mean anomaly score, RMS level (dBFS). On stderr a summary:
    clips per label and, when both normal and anomaly clips are present, AUC and pAUC of the max and of the mean score beside the loudness
    reference: the same metric with the clip level as the score, what a level meter alone would get.
    """
    setup_logging(quiet=quiet)
    from edge_asd.core.atomic_io import atomic_write_text
    from edge_asd.edge.calibrate import names
    from edge_asd.edge.evaluate import score_folder as sf
    from edge_asd.edge.runtime.alert import AlertPolicy
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import find_recordings

    policy = AlertPolicy.parse(votes)
    scorer = Scorer(model_path, num_threads=threads)
    files = find_recordings(paths)
    resolved = None
    if machine_id is not None:
        resolved = names.resolve_for_model(machine_id, scorer.meta, files)
        files = sf.keep_machine_id(files, resolved)
    results = sf.score_clips(scorer, files, policy)
    evaluation = sf.evaluate(results, max_fpr)
    if out_path is not None:
        atomic_write_text(out_path, sf.to_csv(results))
    if as_json:
        doc = {"model": str(model_path), "model_sha256": scorer.sha256, "machine_id": resolved,
               "votes": policy.to_dict(), **evaluation,
               "clips": [{**asdict(r), "file": str(r.file)} for r in results]}
        click.echo(json.dumps(doc, indent=1))
    elif out_path is None:
        click.echo(sf.to_csv(results), nl=False)
    for line in sf.summary_lines(evaluation, policy, scorer.features.score_unit):
        click.echo(f"edge-score: {line}", err=True)


if __name__ == "__main__":
    main()
