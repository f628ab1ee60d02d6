"""ONNX export with a dynamic batch axis: float32 through torch.onnx (TorchScript exporter), or static
int8 QDQ through onnxruntime.quantization (per-channel symmetric int8 weights, int8 activations
calibrated on representative frames; only Gemm/MatMul are quantized, so the squared-error sum of
eq. (5) stays in float)."""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile

import numpy as np
import torch

OPSET = 17
INPUT_NAME, OUTPUT_NAME, EMBEDDING_NAME = "context_vectors", "anomaly_score", "embedding"
CALIBRATE_METHODS = ("minmax", "entropy", "percentile", "distribution")
HISTOGRAM_MEMORY_BYTES = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
"""Activation memory allowed to onnxruntime's histogram calibrators (entropy, percentile, distribution), which
hold every activation of every calibration row until the end: a quarter of this machine's memory; above it,
fewer rows are used."""
log = logging.getLogger("edge_asd")


def _float_graph(score_model: torch.nn.Module, dim: int, output: str = OUTPUT_NAME):
    import onnx

    buf = io.BytesIO()
    torch.onnx.export(score_model.eval(), (torch.zeros(1, dim),), buf, input_names=[INPUT_NAME],
                      output_names=[output], dynamic_axes={INPUT_NAME: {0: "n"}, output: {0: "n"}},
                      opset_version=OPSET, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _activation_bytes_per_row(model) -> int:
    """Bytes of the float32 tensors the graph computes for one input row: every float tensor shape inference
    names is made an output and the graph is run once on a row of zeros (onnxruntime), as the calibrators do
    (shapes alone miss the dimensions that dynamic padding leaves unknown)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.shape_inference.infer_shapes(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(v for v in probe.graph.value_info
                              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and v.name not in known)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = sess.get_inputs()[0]
    outputs = sess.run(None, {x.name: np.zeros((1, *x.shape[1:]), np.float32)})
    return sum(o.nbytes for o in outputs if isinstance(o, np.ndarray) and o.dtype == np.float32)


def _histogram_rows(model, calibration: np.ndarray, calibrate_method: str, batch: int) -> np.ndarray:
    """The calibration rows a histogram calibrator can hold in :data:`HISTOGRAM_MEMORY_BYTES`: all of them, or
    that many evenly spaced (at least one batch), with a log line. An EfficientNet-Lite0 serial-OE graph (2 networks) holds
    42 MB of activations per window: 2000 windows were killed at 24 GiB."""
    per_row = _activation_bytes_per_row(model)
    most = max(batch, HISTOGRAM_MEMORY_BYTES // max(per_row, 1))
    if len(calibration) <= most:
        return calibration
    log.info("onnxruntime's %s calibration holds every activation in memory (%.1f MB per row): calibrating on %d "
             "of the %d rows, evenly spaced", calibrate_method, per_row / 1e6, most, len(calibration))
    return calibration[np.linspace(0, len(calibration) - 1, most).round().astype(int)]


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

    if calibrate_method != "minmax":
        calibration = _histogram_rows(model, calibration, calibrate_method, batch)
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
