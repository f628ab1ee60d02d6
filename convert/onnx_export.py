"""ONNX export (float32) with a dynamic batch axis, through torch.onnx (TorchScript exporter)."""

from __future__ import annotations

import io
import json

import torch

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "context_vectors", "anomaly_score"


def export_onnx(score_model: torch.nn.Module, dim: int, meta: dict) -> bytes:
    """Serialized .onnx: input ``context_vectors`` (n, dim) float32 -> ``anomaly_score`` (n,) float32."""
    import onnx

    buf = io.BytesIO()
    torch.onnx.export(score_model.eval(), (torch.zeros(1, dim),), buf, input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "n"}, OUTPUT_NAME: {0: "n"}},
                      opset_version=OPSET, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = "edge_asd", json.dumps(meta, sort_keys=True)
    onnx.checker.check_model(model)
    return model.SerializeToString()
