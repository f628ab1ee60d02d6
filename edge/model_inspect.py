"""What is inside a model file besides its metadata: operators (with versions) and tensors (shapes,
dtypes, quantization). Device-side: LiteRT's flatbuffer schema and interpreter, or onnxruntime; no
torch, no onnx package."""

from __future__ import annotations

from collections import Counter

import numpy as np

from edge_asd.core.errors import EdgeAsdError


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
