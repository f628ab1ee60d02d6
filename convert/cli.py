"""``edge-convert``: checkpoint -> self-describing .tflite (float32 / int8) or .onnx, with a parity check."""

from __future__ import annotations

from pathlib import Path

import click

from edge_asd.edge.cli_common import CONTEXT_SETTINGS, kit_version, setup_logging, user_errors


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "target", type=click.Choice(["tflite", "onnx"]), required=True, help="Model file format.")
@click.option("--int8", is_flag=True, help="Full-integer int8 (static, per-channel weights; TFLite only). Needs --calibration.")
@click.option("--calibration", "calibration_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Normal recordings to calibrate int8 and measure parity on: a DCASE/MIMII folder or any folder of audio.")
@click.option("--calibration-frames", default=2000, show_default=True, help="Context frames drawn for int8 calibration.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Model file to write.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.version_option(kit_version(), "--version")
@user_errors
def main(checkpoint, target, int8, calibration_dir, calibration_frames, out_path, quiet):
    """Convert an edge-train CHECKPOINT into one model file that edge-monitor runs with no other file.

    The feature preset, normalization, architecture, loss and versions go into the file's metadata.
    With --calibration, prints parity on those clips: Pearson and Spearman of converted vs float frame
    scores, and clip AUC/pAUC of both where the folder has labelled test clips.
    """
    setup_logging(quiet=quiet)
    from .pipeline import convert_checkpoint

    scorer, result = convert_checkpoint(checkpoint, target, out_path, int8, calibration_dir, calibration_frames)
    click.echo(f"wrote {out_path} ({scorer.size_bytes / 1024:.0f} KiB, {target}, {scorer.meta['quantization']['mode']}, "
               f"sha256 {scorer.sha256[:12]})")
    for line in result.lines() if result else []:
        click.echo(line)


if __name__ == "__main__":
    main()
