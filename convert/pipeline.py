"""Checkpoint -> model file -> loaded back the way the device loads it -> parity against the float model."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_asd.convert.metadata import model_metadata
from edge_asd.convert.parity import Parity, parity
from edge_asd.core.atomic_io import atomic_write_bytes
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.model_file import seal, write_tflite_metadata
from edge_asd.core.presets import FeatureConfig
from edge_asd.edge.runtime.scorer import Scorer
from edge_asd.firmware_io.audio_file import audio_files, read_audio
from edge_asd.train.checkpoint import load_checkpoint, restore
from edge_asd.train.evaluate import torch_frame_scorer
from edge_asd.train.model import ScoreModel

log = logging.getLogger("edge_asd")

QUANTIZATIONS = ("float32", "int8-dynamic", "int8-static")
TARGETS = {  # name -> (format, quantization): every file edge-convert --to all writes
    "tflite-float32": ("tflite", "float32"),
    "tflite-int8-dynamic": ("tflite", "int8-dynamic"),
    "tflite-int8-static": ("tflite", "int8-static"),
    "onnx-float32": ("onnx", "float32"),
    "onnx-int8-static": ("onnx", "int8-static"),
}
MAX_SOMETHING_ELSE = 64
"""Something-else sounds loaded for pseudo-anomalous calibration frames (a random subset)."""


def split_clips(data_dir: Path, ckpt: dict) -> tuple[list[Path], list[Path], list[bool | None]]:
    """(calibration paths, held-out parity paths, their labels) from a DCASE/MIMII folder or a plain folder.

    Calibration: the normal training clips of the model's machine IDs; parity: the test clips of those
    IDs (held out from calibration), labelled anomaly True/False. A folder that is not a dataset: every
    other audio file calibrates, the rest are held out, all normal (label None, no AUC); a single file
    serves both.
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
        held = files[1::2] or files
        return files[::2], held, [None] * len(held)
    calib = [c.path for c in mine if c.split == "train" and c.label == "normal"] or [c.path for c in mine if c.label == "normal"]
    test = [c for c in mine if c.split == "test"] or [c for c in mine if c.path not in calib]
    if not test:
        return calib, calib, [None] * len(calib)
    return calib, [c.path for c in test], [c.label == "anomaly" if c.split == "test" else None for c in test]


@dataclass
class Options:
    """How to quantize. Defaults: what passed the parity targets on the real fan recordings (docs/convert/)."""

    calibration_frames: int = 2000
    """Standardized context vectors the int8 activation ranges are calibrated on."""
    pseudo_fraction: float = 0.25
    """Share of them that are pseudo-anomalous (normal audio + something-else sound, eq. 8)."""
    calibrate_method: str = "minmax"
    """ONNX int8 only: onnxruntime CalibrationMethod (minmax, entropy, percentile, distribution)."""
    float_output_layer: bool = False
    """TFLite int8-static only: keep the decoder's last layer in float."""
    float_pooling: bool = True
    """TFLite int8-static only: an embedding network's global average pooling in float, on the dequantized feature
    maps (docs/serial-oe.md: window-score Spearman 0.99837 -> 0.99904 on fan id_00)."""
    something_else_dir: Path | None = None
    """Sounds for pseudo-anomalies; None: the checkpoint's, else DATA_DIR/something_else/train, else coloured noise."""
    seed: int = 0

    def describe(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


@dataclass
class Conversion:
    """One checkpoint, its float model and (optionally) the clips to calibrate on and measure parity with."""

    checkpoint: Path
    calibration_dir: Path | None = None
    options: Options = field(default_factory=Options)

    def __post_init__(self):
        self.ckpt = load_checkpoint(self.checkpoint)
        if self.ckpt.get("method") == "serial-oe":  # graph: windows -> embedding; the head is metadata
            from edge_asd.train.serial_oe.fit import restore_embedder

            self.ae, self.score_model = None, restore_embedder(self.ckpt)
            self.features = FeatureConfig.from_dict(self.ckpt["features"]["config"])
            self.mean, self.std = (np.asarray(self.ckpt["normalization"][k], np.float32) for k in ("mean", "std"))
        else:
            self.ae, self.features, self.mean, self.std = restore(self.ckpt)
            self.score_model = ScoreModel(self.ae)
        self.calib_paths, self.parity_paths, self.labels = (
            split_clips(self.calibration_dir, self.ckpt) if self.calibration_dir else ([], [], []))
        self.audio = {p: read_audio(p, self.features.sample_rate) for p in dict.fromkeys(self.calib_paths + self.parity_paths)}
        self._representative = None
        self._float_scores = None

    def set_options(self, options: Options) -> None:
        """Quantize the next files with other options (the clips and float scores are kept)."""
        self.options, self._representative = options, None

    def representative(self) -> tuple[np.ndarray, dict]:
        """Standardized calibration vectors (n, D) float32 and their description for the metadata."""
        if self._representative is None:
            if not self.calib_paths:
                raise EdgeAsdError("int8 needs --calibration DATA_DIR: int8 ranges are calibrated on normal recordings")
            from edge_asd.convert.representative import representative_vectors

            opt = self.options
            sounds_dir, sounds = self._something_else()
            vectors, n_pseudo = representative_vectors([self.audio[p] for p in self.calib_paths], sounds, self.features,
                                                       self.mean, self.std, opt.calibration_frames, opt.pseudo_fraction,
                                                       opt.seed)
            log.info("calibrating int8 on %d frames of %d clips (%d pseudo-anomalous, %s)", len(vectors),
                     len(self.calib_paths), n_pseudo, sounds_dir or "coloured noise")
            self._representative = vectors, {
                "calibration_frames": int(len(vectors)), "calibration_clips": len(self.calib_paths),
                "pseudo_anomalous_frames": int(n_pseudo),
                "pseudo_anomaly_sounds": "/".join(Path(sounds_dir).parts[-2:]) if sounds_dir else ("coloured noise" if n_pseudo else None)}
        return self._representative

    def _something_else(self) -> tuple[str | None, list[np.ndarray] | None]:
        if self.options.pseudo_fraction <= 0:
            return None, None
        candidates = [self.options.something_else_dir, (self.ckpt.get("something_else") or {}).get("dir"),
                      self.calibration_dir and Path(self.calibration_dir) / "something_else" / "train"]
        for d in candidates:
            if d and Path(d).is_dir() and audio_files(d):
                files = audio_files(d)
                rng = np.random.default_rng(self.options.seed)
                pick = sorted(rng.choice(len(files), size=min(MAX_SOMETHING_ELSE, len(files)), replace=False))
                return str(d), [read_audio(files[i], self.features.sample_rate) for i in pick]
            if d and d is self.options.something_else_dir:
                raise EdgeAsdError(f"{d}: no .wav/.flac files for --something-else")
        return None, None

    def model_bytes(self, fmt: str, quantization: str = "float32") -> bytes:
        """A sealed model file's bytes (metadata included)."""
        if fmt not in ("tflite", "onnx"):
            raise EdgeAsdError(f"unknown target {fmt!r}: use tflite or onnx")
        if quantization not in QUANTIZATIONS:
            raise EdgeAsdError(f"unknown quantization {quantization!r}: use {', '.join(QUANTIZATIONS)}")
        if fmt == "onnx" and quantization == "int8-dynamic":
            raise EdgeAsdError("ONNX int8 is static (QDQ) in this kit: use --quantize int8-static")
        opt = self.options
        quant: dict = {"mode": quantization}
        calibration = None
        if quantization == "int8-static":
            calibration, described = self.representative()
            quant.update(described, weights="per-channel symmetric int8", activations="per-tensor int8")
            if self.ae is not None:
                quant["error_computation"] = "float32"
        elif quantization == "int8-dynamic":
            quant.update(weights="per-channel symmetric int8", activations="float32, quantized per inference inside FC")
        if fmt == "onnx":
            from edge_asd.convert.onnx_export import export_onnx

            if calibration is not None:
                quant["calibrate_method"] = opt.calibrate_method
                if self.ae is None:
                    quant.update(embedding_quantization("onnx"))
            return seal(export_onnx(self.score_model, self.features.dim, model_metadata(self.ckpt, "onnx", quant),
                                    calibration, opt.calibrate_method, embedding=self.ae is None))
        from edge_asd.convert.tflite_export import export_tflite

        if quantization == "int8-static" and self.ae is None:
            quant.update(embedding_quantization("tflite", opt.float_pooling))
        elif quantization == "int8-static":
            quant["output_layer"] = "float32" if opt.float_output_layer else "int8"
        data = export_tflite(self.score_model, self.features.dim, calibration, quantization, opt.float_output_layer,
                             float_linears=self.ae is None, float_pooling=opt.float_pooling and self.ae is None)
        return seal(write_tflite_metadata(data, model_metadata(self.ckpt, "tflite", quant)))

    def float_scores(self) -> list[np.ndarray]:
        """The torch float model's frame (window) scores of each held-out clip."""
        if self._float_scores is None:
            if self.ae is None:
                from edge_asd.core.heads import Head
                from edge_asd.train.serial_oe.fit import window_scorer

                head = Head.from_meta(self.ckpt["head"], str(self.checkpoint))
                score = window_scorer(self.score_model, head, self.mean, self.std, self.features)
            else:
                score = torch_frame_scorer(self.ae, self.mean, self.std, self.features)
            self._float_scores = [score(self.audio[p]) for p in self.parity_paths]
        return self._float_scores

    def parity(self, scorer: Scorer) -> Parity | None:
        """Parity of a loaded model file against the float model on the held-out clips (batch scoring)."""
        if not self.parity_paths:
            return None
        return parity(self.float_scores(), [scorer.score_audio(self.audio[p]) for p in self.parity_paths], self.labels,
                      scorer.features.score_unit)


def embedding_quantization(fmt: str, float_pooling: bool = True) -> dict:
    """What int8 covers in an embedding network's file (serial OE), for the metadata's ``quantization`` entry:
    its convolutions are int8, its pooling (TFLite: when ``float_pooling``; ONNX: always, only Conv is quantized),
    Linear embedding layers and the embedding output float32, and the head scores the float embedding in numpy
    (``edge_asd.core.heads``)."""
    pooling = "float32" if float_pooling else "int8"
    layers = (f"convolutions int8 except the first (fed the float input); global pooling {pooling}; Linear embedding "
              "layers float32" if fmt == "tflite" else "convolutions int8 (QDQ); pooling and Linear (Gemm) embedding "
              "layers float32")
    return {"layers": layers, "output": "float32 embedding; the head scores it in numpy"}


def write_model(conversion: Conversion, fmt: str, quantization: str, out_path: Path) -> Scorer:
    """Write one model file atomically and load it back the way the device will."""
    atomic_write_bytes(Path(out_path), conversion.model_bytes(fmt, quantization))
    return Scorer(out_path)


def convert_checkpoint(checkpoint: Path, target: str, out_path: Path, int8: bool = False,
                       calibration_dir: Path | None = None, calibration_frames: int = 2000,
                       seed: int = 0, quantization: str | None = None,
                       options: Options | None = None) -> tuple[Scorer, Parity | None]:
    """Write the model file; return it loaded through the edge runtime, and parity when clips were given.

    Args:
        target: "tflite" or "onnx".
        int8: shorthand for ``quantization="int8-static"``.
        quantization: "float32", "int8-dynamic" (TFLite) or "int8-static".
        options: quantization options (``calibration_frames`` and ``seed`` are used when it is None).
    Raises:
        EdgeAsdError: bad checkpoint, int8 without calibration clips, unreadable audio, unwritable output.
    """
    quantization = quantization or ("int8-static" if int8 else "float32")
    if target not in ("tflite", "onnx"):
        raise EdgeAsdError(f"unknown target {target!r}: use tflite or onnx")
    if quantization == "int8-static" and calibration_dir is None:
        raise EdgeAsdError("--int8 needs --calibration DATA_DIR: int8 ranges are calibrated on normal recordings")
    options = options or Options(calibration_frames=calibration_frames, seed=seed)
    conversion = Conversion(Path(checkpoint), calibration_dir, options)
    scorer = write_model(conversion, target, quantization, out_path)
    return scorer, conversion.parity(scorer)
