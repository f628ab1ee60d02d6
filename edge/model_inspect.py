"""What a model file says about itself (its metadata, as summary lines) and what it holds: operators (with
versions) and tensors (shapes, dtypes, quantization); edge-inspect prints it. Device-side: LiteRT's flatbuffer
schema and interpreter, or onnxruntime; no torch, no onnx package."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.heads import Head
from edge_asd.core.oof import summary as oof_summary
from edge_asd.core.presets import FeatureConfig
from edge_asd.edge.runtime.scorer import Scorer


@dataclass(frozen=True)
class ModelDescription:
    """What edge-inspect reports about a model file."""

    kind: str
    """``tflite`` or ``onnx``."""
    size_bytes: int
    sha256: str
    """sha256 of the file."""
    backend: str
    """The inference backend that runs it here."""
    meta: dict
    """Its ``edge_asd`` metadata."""
    operators: list[dict] | None
    """:func:`tflite_ops` (None for ONNX: listing them needs the onnx package)."""
    tensors: list[dict]
    """:func:`tflite_tensors`, or for ONNX :func:`onnx_io`."""


def inspect_model(model_path: str | Path) -> ModelDescription:
    """Load ``model_path`` as edge-monitor does (metadata, schema, seal, tensors vs metadata) and list what it
    holds.

    Raises:
        EdgeAsdError: a file the device would refuse, or a damaged TFLite flatbuffer.
    """
    scorer = Scorer(model_path)
    if scorer.kind == "tflite":
        ops, tensors = tflite_ops(Path(model_path).read_bytes()), tflite_tensors(scorer.backend._it)
    else:
        ops, tensors = None, onnx_io(scorer.backend._sess)
    return ModelDescription(scorer.kind, scorer.size_bytes, scorer.sha256, scorer.backend.name, scorer.meta, ops, tensors)


def tflite_ops(data: bytes) -> list[dict]:
    """Operators of a .tflite file: [{"op": "FULLY_CONNECTED", "version": 9, "count": 6}, ...] in
    operator-code order; ``count`` is how many nodes of the main subgraph use it."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    try:
        model = schema.Model.GetRootAs(data, 0)
        codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())  # codes >= 127 live in BuiltinCode only
            name = names.get(code, f"BUILTIN_{code}")
            if code == schema.BuiltinOperator.CUSTOM:
                name = f"CUSTOM:{(oc.CustomCode() or b'').decode()}"
            codes.append({"op": name, "version": oc.Version()})
        graph = model.Subgraphs(0)
        used = Counter(graph.Operators(i).OpcodeIndex() for i in range(graph.OperatorsLength()))
    except Exception as e:
        raise EdgeAsdError(f"damaged TFLite file ({type(e).__name__}: {e})") from None
    return [{**c, "count": used.get(i, 0)} for i, c in enumerate(codes)]


def _quant(q: dict) -> dict | None:
    scales = np.asarray(q.get("scales", []))
    if scales.size == 0:
        return None
    zps = np.asarray(q.get("zero_points", []))
    return {"scales": [float(s) for s in scales], "zero_points": [int(z) for z in zps],
            "axis": int(q.get("quantized_dimension", 0))}


def tflite_tensors(interpreter) -> list[dict]:
    """Every tensor of a LiteRT/tflite-runtime interpreter: index, name, shape, dtype, quantization."""
    out = []
    for d in interpreter.get_tensor_details():
        out.append({"index": int(d["index"]), "name": d["name"], "shape": [int(s) for s in d["shape"]],
                    "dtype": np.dtype(d["dtype"]).name, "quantization": _quant(d.get("quantization_parameters", {}))})
    return out


def onnx_io(session) -> list[dict]:
    """Inputs and outputs of an onnxruntime session (initializers need the onnx package, not on the device)."""
    return [{"role": role, "name": t.name, "shape": list(t.shape), "dtype": t.type}
            for role, ts in (("input", session.get_inputs()), ("output", session.get_outputs())) for t in ts]


def describe_quantization(q: dict | None, limit: int = 4) -> str:
    """One line: "per-tensor scale 0.0123 zp -5" or "per-channel (axis 0) 128 scales 0.001..0.004"."""
    if not q:
        return ""
    s, z = q["scales"], q["zero_points"]
    if len(s) == 1:
        return f"scale {s[0]:.6g} zero point {z[0] if z else 0}"
    return f"per-channel axis {q['axis']}: {len(s)} scales {min(s):.3g}..{max(s):.3g}, zero points {sorted(set(z))[:limit]}"


def summary_lines(meta: dict) -> list[str]:
    """A model file's ``edge_asd`` metadata as edge-inspect prints it, one line per topic: format and versions,
    machine, feature preset, normalization, architecture, loss, training data, out-of-fold scores (when
    there are), each fine-tune, quantization and the sealed content digest."""
    f, arch, loss = meta["features"], meta.get("architecture", {}), meta.get("loss", {})
    norm = meta["normalization"]
    mean, std = np.asarray(norm["mean"]), np.asarray(norm["std"])
    td = meta.get("training_data") or {}
    lines = [
        f"format: {meta['format']} schema {meta['schema_version']}, target {meta.get('target')}, "
        f"kit {meta.get('kit_version')} (trained with {meta.get('trained_with_kit_version')}), created {meta.get('created_at')}",
        f"machine: {meta.get('machine_type')} {', '.join(meta.get('machine_ids') or [])}",
        f"features: preset {f.get('preset')}: " + ", ".join(f"{k}={v}" for k, v in f["config"].items()),
        f"normalization: per mel band, {len(mean)} bands; mean {mean.min():.4g}..{mean.max():.4g}, "
        f"std {std.min():.4g}..{std.max():.4g}",
        windows_line(FeatureConfig.from_dict(f["config"])),
        head_line(meta.get("head")),
        "architecture: " + ", ".join(f"{k}={v}" for k, v in arch.items()),
        f"loss: {loss.get('name')} " + json.dumps(loss.get("params", {}), sort_keys=True),
        f"training data: sha256 {td.get('sha256')} over {td.get('n_files')} files" + _listed(td),
    ]
    if oof_summary(meta) is not None:
        lines.append(oof_summary(meta))
    for ft in meta.get("fine_tuning") or []:
        refit = ft.get("head_refit")
        if isinstance(refit, dict):
            lines.append(f"fine-tuned {ft.get('finetuned_at')}: machine ID {ft.get('machine_id')}, inlier model refit "
                         f"({refit.get('head')}) on {refit.get('windows')} windows of {ft.get('recordings_trained')} "
                         f"recordings, network frozen, base sha256 {str(ft.get('base_sha256'))[:12]}")
            continue
        lines.append(f"fine-tuned {ft.get('finetuned_at')}: machine ID {ft.get('machine_id')}, {ft.get('steps')} updates on "
                     f"{ft.get('recordings_trained', ft.get('recordings'))} recordings, {ft.get('rejected_frames')} frames "
                     f"rejected, base sha256 {str(ft.get('base_sha256'))[:12]}" + _listed(ft))
    lines += [quantization_line(meta),
              f"content sha256 (sealed): {meta.get('content_sha256')}"]
    return lines


def quantization_line(meta: dict) -> str:
    """The ``quantization`` entry. For an embedding model (a ``head``) the graph's output is a float32 embedding
    that the head scores in numpy: files written before the kit said so carry ``output_layer=int8``, which
    described the autoencoders' last layer (and ``error_computation``, their squared error): shown as what it is."""
    q = dict(meta.get("quantization") or {})
    if meta.get("head") is not None and "output_layer" in q:
        q.pop("output_layer"), q.pop("error_computation", None)
        q["output"] = "float32 embedding; the head scores it in numpy"
    return "quantization: " + ", ".join(f"{k}={v}" for k, v in q.items())


def windows_line(cfg: FeatureConfig) -> str:
    """How the model scores: one anomaly score per window of ``samples_per_vector`` every score hop."""
    return (f"scores: one per {cfg.samples_per_vector / cfg.sample_rate:.3g}-s window ({cfg.n_context_frames} frames) "
            f"every {cfg.vector_hop_s:.3g} s ({cfg.context_hop_frames} frame{'s' if cfg.context_hop_frames > 1 else ''})")


def head_line(head: dict | None) -> str:
    """The inlier model that turns the graph's embedding into the anomaly score, or that the graph outputs it."""
    if head is None:
        return "head: none (the graph outputs the anomaly score)"
    h = Head.from_meta(head, "head")
    extra = f", {len(h.params['weights'])} components" if h.kind == "gmm" else ""
    return f"head: {h.kind} over {h.dim}-d embeddings{extra} (edge_asd.core.heads)"


def _listed(entry: dict) -> str:
    """How many recordings' short digests an entry lists (edge-calibrate warns when given one of them)."""
    listed = entry.get("file_sha256_prefixes")
    return f" (short sha256 of {len(listed)} listed)" if isinstance(listed, list) else ""
