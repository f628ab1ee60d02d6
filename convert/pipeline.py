"""Checkpoint -> model file -> loaded back the way the device loads it -> parity against the float model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_asd.edge.atomic_io import atomic_write_bytes
from edge_asd.edge.errors import EdgeAsdError
from edge_asd.edge.features import extract, standardize
from edge_asd.edge.model_file import seal, write_tflite_metadata
from edge_asd.edge.scorer import Scorer
from edge_asd.firmware_io.audio_file import audio_files, read_audio
from edge_asd.train.checkpoint import load_checkpoint, restore
from edge_asd.train.evaluate import torch_frame_scorer
from edge_asd.train.model import ScoreModel

from .metadata import model_metadata
from .parity import Parity, parity

log = logging.getLogger("edge_asd")


def split_clips(data_dir: Path, ckpt: dict) -> tuple[list[Path], list[Path], list[bool | None]]:
    """(calibration paths, parity paths, parity labels) from a DCASE/MIMII folder or a plain folder.

    Calibration: the normal training clips of the model's machine IDs; parity: those plus the test clips,
    labelled anomaly True/False (None for the calibration clips, which are left out of the AUC). A
    folder that is not a dataset: every audio file is a normal recording for both.
    """
    from edge_asd.datasets.layout import assign_mimii_split, scan

    try:
        clips = assign_mimii_split(scan(data_dir, machine_type=ckpt["machine_type"]))
    except EdgeAsdError:
        clips = []
    mine = [c for c in clips if c.machine_id in ckpt["machine_ids"]]
    if not mine:
        files = audio_files(data_dir)
        if not files:
            raise EdgeAsdError(f"{data_dir}: no audio files for calibration")
        return files, files, [None] * len(files)
    calib = [c.path for c in mine if c.split == "train" and c.label == "normal"] or [c.path for c in mine if c.label == "normal"]
    test = [c for c in mine if c.split == "test"]
    return calib, calib + [c.path for c in test], [None] * len(calib) + [c.label == "anomaly" for c in test]


def convert_checkpoint(checkpoint: Path, target: str, out_path: Path, int8: bool = False,
                       calibration_dir: Path | None = None, calibration_frames: int = 2000,
                       seed: int = 0) -> tuple[Scorer, Parity | None]:
    """Write the model file; return it loaded through the edge runtime, and parity when clips were given.

    Raises:
        EdgeAsdError: bad checkpoint, int8 without calibration clips, unreadable audio, unwritable output.
    """
    if target not in ("tflite", "onnx"):
        raise EdgeAsdError(f"unknown target {target!r}: use tflite or onnx")
    if int8 and target != "tflite":
        raise EdgeAsdError("--int8 is available for --to tflite (ONNX int8 is not in this version)")
    if int8 and calibration_dir is None:
        raise EdgeAsdError("--int8 needs --calibration DATA_DIR: int8 ranges are calibrated on normal recordings")
    ckpt = load_checkpoint(checkpoint)
    ae, features, mean, std = restore(ckpt)
    score_model = ScoreModel(ae)
    calib_paths, parity_paths, labels = split_clips(calibration_dir, ckpt) if calibration_dir else ([], [], [])
    audio = {p: read_audio(p, features.sample_rate) for p in dict.fromkeys(calib_paths + parity_paths)}

    if target == "onnx":
        from .onnx_export import export_onnx

        data = export_onnx(score_model, features.dim, model_metadata(ckpt, "onnx", {"mode": "float32"}))
    else:
        from .tflite_export import export_tflite

        calibration, quant = None, {"mode": "float32"}
        if int8:
            vectors = np.concatenate([extract(audio[p], features) for p in calib_paths])
            pick = np.random.default_rng(seed).choice(len(vectors), size=min(calibration_frames, len(vectors)), replace=False)
            calibration = standardize(vectors[pick], mean, std)
            quant = {"mode": "int8-static", "weights": "per-channel symmetric int8", "activations": "per-tensor int8",
                     "error_computation": "float32", "calibration_frames": int(len(pick)),
                     "calibration_clips": len(calib_paths)}
            log.info("calibrating int8 on %d frames of %d clips", len(pick), len(calib_paths))
        data = write_tflite_metadata(export_tflite(score_model, features.dim, calibration),
                                     model_metadata(ckpt, "tflite", quant))
    atomic_write_bytes(Path(out_path), seal(data))
    converted = Scorer(out_path)  # load it back the way the device will
    if not parity_paths:
        return converted, None
    float_score = torch_frame_scorer(ae, mean, std, features)
    result = parity([float_score(audio[p]) for p in parity_paths],
                    [converted.score_audio(audio[p]) for p in parity_paths], labels)
    return converted, result
