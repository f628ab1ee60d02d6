"""``edge-convert``: checkpoint -> self-describing .tflite / .onnx files, or tflite-micro C sources, with a
parity report against the float model that fails the command when a target is missed."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from edge_asd.core.commands import CONTEXT_SETTINGS, kit_version, setup_logging, user_errors
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
@click.option("--calibration", "calibration_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Recordings to calibrate int8 on (normal training clips) and measure parity on (held-out test "
                   "clips): a DCASE/MIMII folder or any folder of audio.")
@click.option("--calibration-frames", default=2000, show_default=True, help="Context frames for int8 calibration.")
@click.option("--pseudo-fraction", default=0.25, show_default=True, type=click.FloatRange(0, 1),
              help="Share of calibration frames that are pseudo-anomalous (normal + something-else sound, eq. 8), "
                   "so int8 ranges cover anomalous scores too. 0: normal frames only.")
@click.option("--something-else", "something_else_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
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
@click.version_option(kit_version(), "--version")
@user_errors
def main(checkpoint, target, quantize, int8, calibration_dir, calibration_frames, pseudo_fraction, something_else_dir,
         calibrate_method, float_output_layer, out_path, report_path, allow_degraded, quiet):
    """Convert an edge-train CHECKPOINT into model files that edge-monitor runs with no other file.

    The feature preset, normalization, architecture, loss and versions go into each file's metadata
    (edge-inspect prints them). With --calibration, prints parity on held-out clips: Pearson and
    Spearman of converted vs float frame scores, and clip AUC/pAUC of both; exits 1 when a target
    is missed (Spearman >= 0.999, AUC drop <= 0.5 point, full-int8 size <= 0.3x float) unless
    --allow-degraded.
    """
    setup_logging(quiet=quiet)
    if int8 and quantize not in (None, "int8-static"):
        raise EdgeAsdError("--int8 means --quantize int8-static; give one of them")
    quantize = "int8-static" if int8 else quantize
    from edge_asd.convert.pipeline import TARGETS, Conversion, Options

    if target == "all":
        jobs = [(name, fmt, q) for name, (fmt, q) in TARGETS.items()]
        if quantize:
            raise EdgeAsdError("--to all writes every quantization; leave out --quantize/--int8")
    elif target == "c-array":
        jobs = [("tflite-int8-static", "tflite", "int8-static")]
        if quantize not in (None, "int8-static"):
            raise EdgeAsdError("--to c-array is full-integer int8 (tflite-micro); leave out --quantize")
    else:
        jobs = [(f"{target}-{quantize or 'float32'}", target, quantize or "float32")]
    if any(q == "int8-static" for _, _, q in jobs) and calibration_dir is None:
        raise EdgeAsdError("int8-static (--int8, --to all, --to c-array) needs --calibration DATA_DIR: "
                           "int8 ranges are calibrated on normal recordings")
    options = Options(calibration_frames=calibration_frames, pseudo_fraction=pseudo_fraction,
                      calibrate_method=calibrate_method, float_output_layer=float_output_layer,
                      something_else_dir=something_else_dir)
    conversion = Conversion(checkpoint, calibration_dir, options)
    if target in ("all", "c-array"):
        out_path.mkdir(parents=True, exist_ok=True)
    from edge_asd.convert.run import convert_and_measure

    rows, extra = convert_and_measure(conversion, jobs, out_path, checkpoint.stem, target == "c-array",
                                      measure_latency=report_path is not None)
    for row in rows:
        click.echo(f"wrote {row.path} ({row.size_bytes / 1024:.0f} KiB, {row.target})")
        for line in row.parity.lines() if row.parity else []:
            click.echo(line)
    for line in extra:
        click.echo(line)
    if report_path is not None:
        from edge_asd.convert.report import render

        context = [f"Checkpoint `{checkpoint.name}`: {conversion.ckpt['arch']['name']}, preset "
                   f"{conversion.ckpt['features']['preset']} (D = {conversion.features.dim}), loss "
                   f"{conversion.ckpt['loss']['name']}; calibration: {calibration_dir or 'none'}; options: "
                   f"{options.describe()}."] + [f"- {line}" for line in extra]
        from edge_asd.core.atomic_io import atomic_write_bytes

        atomic_write_bytes(report_path, render(rows, f"edge-convert parity report: {checkpoint.name}", context).encode())
        click.echo(f"wrote {report_path}")
    missed = [m for row in rows for m in row.missed()]
    if missed:
        for m in missed:
            log.warning("target missed: %s", m)
        if not allow_degraded:
            raise EdgeAsdError(f"{len(missed)} parity/size target(s) missed ({missed[0]}); the files are written; "
                               "--allow-degraded accepts them")


if __name__ == "__main__":
    main()
