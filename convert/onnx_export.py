"""ONNX export with a dynamic batch axis: float32 through torch.onnx (TorchScript exporter), or static
int8 QDQ through onnxruntime.quantization (per-channel symmetric int8 weights, int8 activations
calibrated on representative frames; only Gemm/MatMul are quantized, so the squared-error sum of
eq. (5) stays in float)."""

from __future__ import annotations

import io
import json
import os
import tempfile

import numpy as np
import torch

OPSET = 17
INPUT_NAME, OUTPUT_NAME, EMBEDDING_NAME = "context_vectors", "anomaly_score", "embedding"
CALIBRATE_METHODS = ("minmax", "entropy", "percentile", "distribution")


def _float_graph(score_model: torch.nn.Module, dim: int, output: str = OUTPUT_NAME):
    import onnx

    buf = io.BytesIO()
    torch.onnx.export(score_model.eval(), (torch.zeros(1, dim),), buf, input_names=[INPUT_NAME],
                      output_names=[output], dynamic_axes={INPUT_NAME: {0: "n"}, output: {0: "n"}},
                      opset_version=OPSET, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _quantize_int8(model, calibration: np.ndarray, calibrate_method: str, batch: int = 64,
                   op_types: tuple[str, ...] = ("Gemm", "MatMul")):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rows = np.ascontiguousarray(calibration, dtype=np.float32)
            size = min(batch, len(rows))  # equal batches: the histogram calibrators stack them (remainder dropped)
            self._it = iter([{INPUT_NAME: rows[i:i + size]} for i in range(0, len(rows) - size + 1, size)])

        def get_next(self):
            return next(self._it, None)

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}[calibrate_method]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(model, src)
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method, extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        return onnx.load(dst)


def export_onnx(score_model: torch.nn.Module, dim: int, meta: dict, calibration: np.ndarray | None = None,
                calibrate_method: str = "minmax", embedding: bool = False) -> bytes:
    """Serialized .onnx: input ``context_vectors`` (n, dim) float32 -> ``anomaly_score`` (n,) float32, or with
    ``embedding=True`` (a model whose metadata carries a ``head``) -> ``embedding`` (n, E) float32, its
    convolutions quantized to int8 and its Linear (Gemm) layers left in float, as the TFLite export does.

    Args:
        meta: the ``edge_asd`` metadata, stored in ``metadata_props``.
        calibration: standardized representative vectors (n, dim) float32: quantize to static int8 QDQ.
        calibrate_method: one of :data:`CALIBRATE_METHODS` (onnxruntime's CalibrationMethod).
    """
    import onnx

    model = _float_graph(score_model, dim, EMBEDDING_NAME if embedding else OUTPUT_NAME)
    if calibration is not None:
        ops = ("Conv",) if embedding else ("Gemm", "MatMul")  # an embedding network: its Linear layers stay float
        model = _quantize_int8(model, calibration, calibrate_method, op_types=ops)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "edge_asd", json.dumps(meta, sort_keys=True)
    onnx.checker.check_model(model)
    return model.SerializeToString()
