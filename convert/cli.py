"""``edge-convert``: checkpoint -> self-describing .tflite (float32 / int8) or .onnx, with a parity check."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from edge_asd.edge.cli_common import CONTEXT_SETTINGS, kit_version, setup_logging, user_errors

log = logging.getLogger("edge_asd")


def _clips(data_dir: Path, ckpt: dict):
    """(calibration paths, parity paths, parity labels) from a DCASE-layout dir or a plain folder.

    Calibration: the normal training clips of the model's machine IDs; parity: those plus the test clips,
    labelled anomaly True/False (None for the calibration clips, which are left out of the AUC)."""
    from edge_asd.datasets.layout import assign_mimii_split, scan
    from edge_asd.edge.errors import EdgeAsdError
    from edge_asd.train.data import audio_files

    try:
        clips = assign_mimii_split(scan(data_dir, machine_type=ckpt["machine_type"]))
    except EdgeAsdError:
        clips = []
    mine = [c for c in clips if c.machine_id in ckpt["machine_ids"]]
    if not mine:  # not a dataset folder: every audio file is a normal calibration recording
        files = audio_files(data_dir)
        if not files:
            raise EdgeAsdError(f"{data_dir}: no audio files for calibration")
        return files, files, None
    calib = [c.path for c in mine if c.split == "train" and c.label == "normal"] or [c.path for c in mine if c.label == "normal"]
    test = [c for c in mine if c.split == "test"]
    return calib, calib + [c.path for c in test], [None] * len(calib) + [c.label == "anomaly" for c in test]


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
    scores, and clip AUC of both where the folder has labelled test clips.
    """
    setup_logging(quiet=quiet)
    import numpy as np

    from edge_asd.edge.errors import EdgeAsdError
    from edge_asd.edge.features import extract
    from edge_asd.edge.model_file import write_tflite_metadata
    from edge_asd.edge.atomic_io import atomic_write_bytes
    from edge_asd.edge.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio
    from edge_asd.train.checkpoint import load_checkpoint, restore
    from edge_asd.train.evaluate import torch_frame_scorer
    from edge_asd.train.model import ScoreModel

    from .metadata import model_metadata
    from .parity import parity

    if int8 and target != "tflite":
        raise EdgeAsdError("--int8 is available for --to tflite (ONNX int8 is not in this version)")
    if int8 and calibration_dir is None:
        raise EdgeAsdError("--int8 needs --calibration DATA_DIR: int8 ranges are calibrated on normal recordings")
    ckpt = load_checkpoint(checkpoint)
    ae, features, mean, std = restore(ckpt)
    score_model = ScoreModel(ae)
    float_score = torch_frame_scorer(ae, mean, std, features)

    calib_paths, parity_paths, labels = _clips(calibration_dir, ckpt) if calibration_dir else ([], [], None)
    audio = {p: read_audio(p, features.sample_rate) for p in dict.fromkeys(calib_paths + parity_paths)}

    if target == "onnx":
        from .onnx_export import export_onnx

        data = export_onnx(score_model, features.dim, model_metadata(ckpt, "onnx", {"mode": "float32"}))
    else:
        from .tflite_export import export_tflite

        calibration, quant = None, {"mode": "float32"}
        if int8:
            vectors = np.concatenate([extract(audio[p], features) for p in calib_paths])
            rng = np.random.default_rng(0)
            pick = rng.choice(len(vectors), size=min(calibration_frames, len(vectors)), replace=False)
            mean_v, std_v = np.tile(mean, features.n_context_frames), np.tile(std, features.n_context_frames)
            calibration = ((vectors[pick] - mean_v) / std_v).astype(np.float32)
            quant = {"mode": "int8-static", "weights": "per-channel symmetric int8", "activations": "per-tensor int8",
                     "error_computation": "float32", "calibration_frames": int(len(pick)),
                     "calibration_clips": len(calib_paths)}
            log.info("calibrating int8 on %d frames of %d clips", len(pick), len(calib_paths))
        data = write_tflite_metadata(export_tflite(score_model, features.dim, calibration),
                                     model_metadata(ckpt, "tflite", quant))
    atomic_write_bytes(out_path, data)
    converted = Scorer(out_path)  # load it back the way the device will
    click.echo(f"wrote {out_path} ({len(data) / 1024:.0f} KiB, {target}, {converted.meta['quantization']['mode']}, "
               f"sha256 {converted.sha256[:12]})")
    if parity_paths:
        result = parity([float_score(audio[p]) for p in parity_paths],
                        [converted.score_audio(audio[p]) for p in parity_paths], labels)
        for line in result.lines():
            click.echo(line)


if __name__ == "__main__":
    main()
