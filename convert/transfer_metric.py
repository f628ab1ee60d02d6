"""``edge-convert`` for an ``edge-train --method transfer-metric`` checkpoint: extractor + head in one model
file, ``.tflite`` (float32 or full int8 through litert-torch and torchao PT2E static quantization, as the
autoencoder path) or ``.onnx`` (float32), and its parity with the float torch graph on the test clips.

The graph maps the model file's input, a flattened log-mel patch ``(1, 96 * 64)`` float32 (the normalization
in the metadata is mean 0, std 1: YAMNet takes raw ``ln(mel + 0.001)``), through YAMNet's layers to the chosen
one, global average pooling and (``head="centre"``) the Deep SVDD phi minus its centre c (:func:`folded_phi`),
to an embedding ``(1, E)`` float32. The metadata's ``head`` entry turns the embedding into the anomaly score
(``edge_asd.core.heads``, the shared contract): ``{"kind": "centre", "centre": 0}`` -> ``||e||^2 = ||phi(x) - c||^2``;
``head="mahalanobis"`` ships the Ledoit-Wolf comparator instead: the graph ends at the pooled features and the
entry is ``{"kind": "mahalanobis", "mean", "precision"}``. A checkpoint on a user's ONNX extractor gets a float32
ONNX file of that graph plus phi (:mod:`edge_asd.convert.onnx_extractor`), nothing else.

int8 ranges are calibrated on every second patch of the normal training clips plus as many patches of the
same clips with a something-else sound mixed in (random sound of ``--something-else``, ANR uniform in
[-10, 0] dB): calibrated on normals alone, the int8 output (phi - c) clips on anomalous patches, whose
distance exceeds every normal one (fan id_00: patch-score Spearman 0.71 -> 0.98 with the mixtures). The global
average pooling runs in float on the dequantized layer output (0.983 -> 0.987; docs/transfer-metric.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_asd.core.atomic_io import atomic_write_bytes
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import logmel
from edge_asd.core.heads import centre_head, mahalanobis_head
from edge_asd.core.model_file import seal, write_tflite_metadata
from edge_asd.core.presets import get_preset
from edge_asd.datasets.layout import assign_mimii_split, scan
from edge_asd.firmware_io.audio_file import audio_files, read_audio
from edge_asd.train.transfer_metric.extractor import Trunk
from edge_asd.train.transfer_metric.features import PRESET, patches
from edge_asd.train.transfer_metric.head import Phi

HEADS = ("centre", "mahalanobis")
USER_ONNX_ONLY = ("a transfer-metric checkpoint with your own ONNX extractor converts to --to onnx (float32, Deep SVDD "
                  "head) only: int8 and TFLite files need the extractor rebuilt in torch, which the kit does for "
                  "yamnet:layerN only")


class FloatEnds(nn.Module):
    """An identity the int8 quantizer leaves in float (a sum over a length-1 axis, as the autoencoder's
    squared-error sum): at the graph's ends it keeps the model file's input and output float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1).sum(dim=-1)


def folded_phi(ckpt: dict) -> nn.Sequential:
    """phi with the centre folded into its last layer as a bias: e -> phi(e) - c. The int8 output then spans phi(e) - c, whose squared
    norm is the anomaly score, not phi(e), which sits near c (int8 steps of |c| would swamp the distance)."""
    h = ckpt["head"]
    phi = Phi(np.zeros(h["in_dim"]), np.ones(h["in_dim"]), h["hidden"], h["z"])
    phi.load_state_dict(h["phi_state"])
    last = phi.net[-1]
    b = nn.Linear(last.in_features, last.out_features)
    b.weight.data = last.weight.data.clone()
    b.bias.data = -torch.as_tensor(np.asarray(h["centre"]), dtype=torch.float32)
    phi.net[-1] = b
    return phi


def embedding_model(ckpt: dict, head: str = "centre") -> nn.Module:
    """The float graph (n, 6144) -> (n, E) of a transfer-metric checkpoint: pooled YAMNet features
    (mahalanobis) or phi(e) - c (centre)."""
    parts = [FloatEnds(), Trunk(ckpt["extractor"].partition(":")[2])]
    if head == "centre":
        parts.append(folded_phi(ckpt))
    return nn.Sequential(*parts, FloatEnds()).eval()


def head_meta(ckpt: dict, head: str = "centre") -> dict:
    """The model file's ``head`` entry (:mod:`edge_asd.core.heads`)."""
    if head == "mahalanobis":
        m = ckpt["mahalanobis"]
        return mahalanobis_head(np.asarray(m["mean"]), np.asarray(m["precision"])).to_meta()
    return centre_head(np.zeros(int(ckpt["head"]["z"]))).to_meta()  # c is folded into the graph


def metadata(ckpt: dict, target: str, quantization: dict, head: str) -> dict:
    from edge_asd.convert.metadata import model_metadata

    meta = model_metadata(ckpt, target, quantization)
    meta["io"] = {"input": "log-mel patch, 96 frames x 64 bands flattened oldest first, shape (1, 6144), float32 "
                           "(normalization mean 0, std 1: raw ln(mel + 0.001))",
                  "output": f"embedding, shape (1, E), float32; anomaly score from the head entry ({head})"}
    meta["head"] = head_meta(ckpt, head)
    return meta


def model_bytes(ckpt: dict, fmt: str, quantization: str = "float32", calibration: np.ndarray | None = None,
                head: str = "centre", float_head: bool = False, float_pooling: bool = True) -> bytes:
    """A sealed model file. ``fmt`` "tflite" (``quantization`` "float32" or "int8-static", the latter needing
    ``calibration`` patches (n, 6144) float32) or "onnx" (float32). int8-static: ``float_pooling`` runs the global
    average pooling in float on the dequantized layer output (patch-score Spearman 0.983 -> 0.987 on fan id_00,
    same size), ``float_head`` keeps phi's Linear layers in float too (0.989, +31 % file size)."""
    if "extractor_onnx" in ckpt:  # a user's ONNX extractor: float32 ONNX with the head appended
        from edge_asd.convert.onnx_extractor import onnx_model_bytes

        if fmt != "onnx" or quantization != "float32" or head != "centre":
            raise EdgeAsdError(USER_ONNX_ONLY)
        return seal(onnx_model_bytes(ckpt, metadata(ckpt, "onnx", {"mode": "float32"}, head), folded_phi(ckpt)))
    model = embedding_model(ckpt, head)
    dim = 96 * 64
    if fmt == "onnx":
        from edge_asd.convert.onnx_export import export_onnx

        return seal(export_onnx(model, dim, metadata(ckpt, "onnx", {"mode": "float32"}, head)))
    from edge_asd.convert.tflite_export import export_tflite

    data = export_tflite(model, dim, calibration, quantization, float_linears=float_head, float_pooling=float_pooling)
    quant = {"mode": quantization} if quantization == "float32" else {
        "mode": quantization, "weights": "per-channel symmetric int8", "activations": "per-tensor int8",
        "calibration_patches": int(len(calibration)), "layers": "extractor int8, pooling " + ("float32" if float_pooling else "int8") + ", head " + ("float32" if float_head else "int8"),
        "output": "float32 embedding (dequantized); the head scores it in numpy"}
    return seal(write_tflite_metadata(data, metadata(ckpt, "tflite", quant, head)))


def write_model(ckpt: dict, fmt: str, out_path: Path, quantization: str = "float32",
                calibration: np.ndarray | None = None, head: str = "centre") -> Path:
    atomic_write_bytes(Path(out_path), model_bytes(ckpt, fmt, quantization, calibration, head))
    return Path(out_path)


log = logging.getLogger("edge_asd")


def _clips(data_dir: Path, ckpt: dict, split: str) -> list:
    ids = set(ckpt.get("machine_ids") or [])
    clips = assign_mimii_split(scan(data_dir, machine_type=ckpt["machine_type"]))
    return [c for c in clips if c.split == split and (not ids or c.machine_id in ids)]


def calibration_patches(data_dir: Path, ckpt: dict, something_else_dir: Path | None, seed: int = 0,
                        every: int = 2, mixtures: int = 1) -> np.ndarray:
    """Every ``every``-th patch of the normal training clips and of ``mixtures`` copies of them with a
    something-else sound mixed in, (n, 6144) float32."""
    cfg = get_preset(PRESET)
    normals = [read_audio(c.path, cfg.sample_rate) for c in _clips(data_dir, ckpt, "train") if c.label == "normal"]
    if not normals:
        raise EdgeAsdError(f"{data_dir}: no normal training clips of {ckpt['machine_type']} to calibrate int8 on")
    out = [patches(logmel(x, cfg))[::every] for x in normals]
    sounds = audio_files(something_else_dir) if something_else_dir is not None else []
    if not sounds:
        log.warning("no --something-else sounds: int8 calibrated on normal patches only (anomalous distances may clip)")
    rng = np.random.default_rng(seed)
    for x in [x for _ in range(mixtures) for x in normals] if sounds else []:
        a = read_audio(sounds[rng.integers(len(sounds))], cfg.sample_rate)[:len(x)]
        gain = np.sqrt(np.mean(x ** 2) / max(np.mean(a ** 2), 1e-12)) * 10 ** (rng.uniform(-10, 0) / 20)
        mixed = np.array(x, np.float64)
        mixed[:len(a)] += gain * a
        out.append(patches(logmel(np.clip(mixed, -1, 1), cfg))[::every])
    return np.concatenate(out)


def _file_embeddings(data: bytes, fmt: str, x: np.ndarray, out_dim: int) -> np.ndarray:
    """The model file's embeddings of patches ``x`` (n, D), run as the device runs it (the runtime's backend)."""
    from edge_asd.edge.runtime.backends import make_backend

    return make_backend(fmt, data, x.shape[1], out_dim=out_dim).score(np.ascontiguousarray(x, np.float32))


def _scores(ckpt: dict, e: np.ndarray, head: str) -> np.ndarray:
    if head == "centre":
        return (np.asarray(e, np.float64) ** 2).sum(axis=1)
    from edge_asd.train.transfer_metric.comparators import mahalanobis_scores

    m = ckpt["mahalanobis"]
    return mahalanobis_scores(np.asarray(m["mean"]), np.asarray(m["precision"]), e)


def reference_embeddings(ckpt: dict, head: str = "centre"):
    """The float reference of the model file's graph: patches (n, 6144) -> embeddings (n, E), in torch (YAMNet)
    or, for a user's ONNX extractor, its onnxruntime outputs through the float torch phi."""
    if "extractor_onnx" in ckpt:
        from edge_asd.train.transfer_metric.extractor import OnnxExtractor

        extractor, phi = OnnxExtractor(ckpt["extractor_onnx"], ckpt["extractor_output"]), folded_phi(ckpt).eval()
        return lambda x: phi(torch.from_numpy(extractor(x))).detach().numpy()
    model = embedding_model(ckpt, head)
    return lambda x: model(torch.from_numpy(x)).detach().numpy()


def parity(ckpt: dict, data: bytes, fmt: str, data_dir: Path, head: str = "centre") -> list[str]:
    """Lines: patch-score Spearman of the file vs the float torch graph, and clip AUC of both, on the test clips."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    cfg = get_preset(PRESET)
    test = _clips(data_dir, ckpt, "test")
    if not test:
        return ["parity: no test clips of the machine in the calibration folder"]
    reference = reference_embeddings(ckpt, head)
    ref_clip, got_clip, ref_all, got_all = [], [], [], []
    for c in test:
        x = patches(logmel(read_audio(c.path, cfg.sample_rate), cfg))
        ref_e = reference(x)
        ref = _scores(ckpt, ref_e, head)
        got = _scores(ckpt, _file_embeddings(data, fmt, x, ref_e.shape[1]), head)
        ref_all.append(ref), got_all.append(got), ref_clip.append(ref.mean()), got_clip.append(got.mean())
    ref_all, got_all = np.concatenate(ref_all), np.concatenate(got_all)
    lines = [f"parity ({len(test)} test clips, {len(ref_all)} patches): patch-score Spearman "
             f"{spearmanr(ref_all, got_all)[0]:.4f}, median relative error {np.median(np.abs(got_all - ref_all) / ref_all):.4f}"]
    labels = [c.label == "anomaly" for c in test]
    if 0 < sum(labels) < len(labels):
        lines.append(f"clip AUC float {roc_auc_score(labels, ref_clip):.3f} -> file {roc_auc_score(labels, got_clip):.3f}; "
                     f"pAUC {roc_auc_score(labels, ref_clip, max_fpr=0.1):.3f} -> {roc_auc_score(labels, got_clip, max_fpr=0.1):.3f}")
    return lines


def write_model_files(options) -> list[str]:
    """Write ``options.out_path`` (edge_asd.convert.run.ConvertOptions) for a transfer-metric checkpoint; returns
    the lines to print. Raises EdgeAsdError for --to all / c-array, int8-dynamic or int8 ONNX."""
    from edge_asd.train.checkpoint import load_checkpoint

    o = options
    ckpt = load_checkpoint(o.checkpoint)
    quant = o.quantize or "float32"
    if "extractor_onnx" in ckpt and (o.target, quant) != ("onnx", "float32"):  # first: its only choice
        raise EdgeAsdError(USER_ONNX_ONLY)
    if o.target not in ("tflite", "onnx") or quant not in ("float32", "int8-static") or (o.target == "onnx" and quant != "float32"):
        raise EdgeAsdError("a transfer-metric checkpoint converts to --to tflite (float32 or --int8) or --to onnx (float32)")
    calibration = None
    if quant == "int8-static":
        if o.calibration_dir is None:
            raise EdgeAsdError("--int8 needs --calibration DATA_DIR: int8 ranges are calibrated on normal recordings")
        default = Path(o.calibration_dir) / "something_else" / "train"  # edge-convert's default, as for autoencoders
        calibration = calibration_patches(o.calibration_dir, ckpt,
                                          o.something_else_dir or (default if default.is_dir() else None))
    data = model_bytes(ckpt, o.target, quant, calibration)
    atomic_write_bytes(Path(o.out_path), data)
    lines = [f"wrote {o.out_path} ({len(data) / 1024:.0f} KiB, {o.target}-{quant}, head centre)"]
    if o.calibration_dir is not None:
        lines += parity(ckpt, data, o.target, o.calibration_dir)
    if o.report_path is not None:
        atomic_write_bytes(o.report_path, ("# edge-convert: " + Path(o.checkpoint).name + "\n\n" +
                                           "\n".join(f"- {line}" for line in lines) + "\n").encode())
    return lines
