"""``edge-convert``: checkpoint -> self-describing .tflite / .onnx files, or tflite-micro C sources, with a
parity report against the float model that fails the command when a target is missed.

The command parses its options into :class:`edge_asd.convert.run.ConvertOptions`, calls
:func:`edge_asd.convert.run.write_model_files` and prints what it wrote and measured.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from edge_asd.core.commands import CONTEXT_SETTINGS, setup_logging, user_errors, version_option
from edge_asd.core.errors import EdgeAsdError

log = logging.getLogger("edge_asd")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "target", type=click.Choice(["tflite", "onnx", "all", "c-array"]), required=True,
              help="tflite / onnx: one file (--out FILE). all: every format x quantization into --out DIR. "
                   "c-array: full-int8 .tflite + model_data.cc/.h + feature_config.h for tflite-micro into --out DIR.")
@click.option("--quantize", type=click.Choice(["float32", "int8-dynamic", "int8-static"]), default=None,
              help="float32 (default); int8-dynamic: int8 weights, float activations (TFLite); int8-static: "
                   "full-integer int8, calibrated (needs --calibration).")
@click.option("--int8", is_flag=True, help="Same as --quantize int8-static.")
@click.option("--calibration", "calibration_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Recordings to calibrate int8 on (normal training clips) and measure parity on (held-out test "
                   "clips): a DCASE/MIMII folder or any folder of audio.")
@click.option("--calibration-frames", default=2000, show_default=True, help="Context frames for int8 calibration.")
@click.option("--pseudo-fraction", default=0.25, show_default=True, type=click.FloatRange(0, 1),
              help="Share of calibration frames that are pseudo-anomalous (normal + something-else sound, eq. 8), "
                   "so int8 ranges cover anomalous scores too. 0: normal frames only.")
@click.option("--something-else", "something_else_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Sounds for the pseudo-anomalous frames. Default: the checkpoint's, else "
                   "CALIBRATION/something_else/train, else coloured noise.")
@click.option("--calibrate-method", type=click.Choice(["minmax", "entropy", "percentile", "distribution"]),
              default="minmax", show_default=True, help="ONNX int8 activation calibration (onnxruntime).")
@click.option("--float-output-layer", is_flag=True, help="TFLite int8-static: keep the decoder's last layer in float.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="Model file to write; a folder for --to all / c-array.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the parity report (Markdown): parity, AUC, size, per-frame latency per runtime.")
@click.option("--allow-degraded", is_flag=True, help="Exit 0 even when a parity or size target is missed.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@version_option()
@user_errors
def main(int8: bool, allow_degraded: bool, quiet: bool, **options) -> None:
    """Convert an edge-train CHECKPOINT into model files that edge-monitor runs with no other file.

    The feature preset, normalization, architecture, loss and versions go into each file's metadata
    (edge-inspect prints them). With --calibration, prints parity on held-out clips: Pearson and
    Spearman of converted vs float frame scores, and clip AUC/pAUC of both; exits 1 when a target
    is missed (Spearman >= 0.999, AUC drop <= 0.5 point, full-int8 size <= 0.3x float) unless
    --allow-degraded.
    """
    setup_logging(quiet=quiet)
    if int8 and options["quantize"] not in (None, "int8-static"):
        raise EdgeAsdError("--int8 means --quantize int8-static; give one of them")
    if int8:
        options["quantize"] = "int8-static"
    from edge_asd.convert.run import ConvertOptions, write_model_files

    result = write_model_files(ConvertOptions(**options))
    for row in result.rows:
        click.echo(f"wrote {row.path} ({row.size_bytes / 1024:.0f} KiB, {row.target})")
        for line in row.parity.lines() if row.parity else []:
            click.echo(line)
    for line in result.extra:
        click.echo(line)
    if result.report_path is not None:
        click.echo(f"wrote {result.report_path}")
    missed = result.missed
    if missed:
        for m in missed:
            log.warning("target missed: %s", m)
        if not allow_degraded:
            raise EdgeAsdError(f"{len(missed)} parity/size target(s) missed ({missed[0]}); the files are written; "
                               "--allow-degraded accepts them")


if __name__ == "__main__":
    main()
