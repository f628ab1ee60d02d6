"""Read the autoencoder's weights out of a shipped .tflite file and write new ones back into it.

The shipped model file is the only thing the device has, so it is also where fine-tuning starts: the
FULLY_CONNECTED layers of the graph, in order, are the autoencoder's Linear layers. In an int8 file
(``edge-convert --int8``) a weight is ``q * scale[channel]`` (per-channel symmetric, zero point 0) and
a bias ``q_int32 * input_scale * weight_scale[channel]``; :func:`read_layers` dequantizes them, which
gives the function the device actually runs. :func:`write_layers` rewrites the same flatbuffer through
the object API (``ai_edge_litert.schema_py_generated.ModelT``): new per-channel int8 weights, int32
biases, and activation scales / zero points measured on calibration frames (min/max, per tensor), the
graph, its operators and every other tensor left as they were; the ``edge_asd`` metadata is replaced in
its own buffer (nothing orphaned, so repeated fine-tunes do not grow the file). Float32 files are
rewritten the same way without quantization.
"""

from __future__ import annotations

import json

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.model_file import DIGEST_KEY, METADATA_NAME, _schema, seal, unsealed_digest
from edge_asd.edge.finetune.autoencoder import Layers, forward

_INT8, _INT32, _FLOAT32 = 9, 2, 0  # schema TensorType values


def _model(data: bytes, where: str):
    _, schema = _schema()
    try:
        return schema, schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as e:
        raise EdgeAsdError(f"{where}: damaged TFLite file ({type(e).__name__})") from None


def _fc_ops(schema, model, where: str) -> list:
    """The FULLY_CONNECTED operators of the main subgraph, in execution order."""
    graph = model.subgraphs[0]
    fc = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.FULLY_CONNECTED:
            fc.append(op)
    if not fc:
        raise EdgeAsdError(f"{where}: no fully-connected layers in the graph; only FCN autoencoders can be fine-tuned")
    return fc


def _array(model, tensor) -> np.ndarray:
    raw = model.buffers[tensor.buffer].data
    dtype = {_INT8: np.int8, _INT32: np.int32, _FLOAT32: np.float32}.get(tensor.type)
    if raw is None or dtype is None:
        raise EdgeAsdError("a fully-connected layer has no constant weights of a known type")
    return np.frombuffer(np.asarray(raw, dtype=np.uint8).tobytes(), dtype=dtype).reshape(tensor.shape)


def _scales(tensor) -> np.ndarray:
    return np.asarray(tensor.quantization.scale, dtype=np.float64)


def read_layers(data: bytes, where: str = "model") -> tuple[Layers, bool]:
    """([(W (out, in), b (out,)) float32 per Linear layer], is_int8) of a .tflite model file.

    Raises:
        EdgeAsdError: damaged file, or a graph that is not a chain of fully-connected layers.
    """
    schema, model = _model(data, where)
    tensors = model.subgraphs[0].tensors
    layers = []
    try:
        for op in _fc_ops(schema, model, where):
            w_t, b_t = tensors[op.inputs[1]], tensors[op.inputs[2]]
            w, b = _array(model, w_t).astype(np.float64), _array(model, b_t).astype(np.float64)
            if w_t.type == _INT8:
                w = w * _scales(w_t)[:, None]
                b = b * _scales(b_t)  # = input scale * weight scale per channel
            layers.append((w.astype(np.float32), b.astype(np.float32)))
    except (EdgeAsdError, AttributeError, IndexError, TypeError, ValueError) as e:
        raise EdgeAsdError(f"{where}: cannot read the autoencoder's weights from the graph ({e})") from None
    for (w0, _), (w1, _) in zip(layers[:-1], layers[1:]):
        if w1.shape[1] != w0.shape[0]:
            raise EdgeAsdError(f"{where}: the fully-connected layers do not form one chain")
    return layers, tensors[_fc_ops(schema, model, where)[0].inputs[1]].type == _INT8


def activation_ranges(layers: Layers, calibration: np.ndarray) -> list[tuple[float, float]]:
    """(min, max) of the model input and of every layer's output over ``calibration`` (n, D) frames."""
    y, inputs = forward(layers, calibration)
    outs = [calibration] + inputs[1:] + [y]
    return [(float(min(0.0, o.min())), float(max(0.0, o.max()))) for o in outs]


def _set_quant(tensor, scale: float, zero_point: int) -> None:
    q = tensor.quantization
    q.scale = np.array([scale], dtype=np.float32)
    q.zeroPoint = np.array([zero_point], dtype=np.int64)
    q.min = q.max = None


def _int8_params(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric per-tensor int8 (scale, zero point) covering [lo, hi] (which contains 0)."""
    scale = max(hi - lo, 1e-8) / 255.0
    return scale, int(np.clip(round(-128 - lo / scale), -128, 127))


def write_layers(data: bytes, layers: Layers, meta: dict, calibration: np.ndarray | None = None,
                 where: str = "model") -> bytes:
    """A sealed copy of the .tflite ``data`` with new weights ``layers`` and ``meta`` as its metadata.

    Args:
        layers: same shapes as :func:`read_layers` returned.
        meta: the new ``edge_asd`` metadata (its content_sha256 is filled in here).
        calibration: standardized normal frames (n, D) float32 for the activation ranges; required
            for an int8 file.
    Raises:
        EdgeAsdError: shapes differ from the file's, or an int8 file without calibration frames.
    """
    flatbuffers, _ = _schema()
    schema, model = _model(data, where)
    graph = model.subgraphs[0]
    tensors = graph.tensors
    ops = _fc_ops(schema, model, where)
    if len(ops) != len(layers):
        raise EdgeAsdError(f"{where}: the graph has {len(ops)} fully-connected layers, the new weights {len(layers)}")
    int8 = tensors[ops[0].inputs[1]].type == _INT8
    if int8:
        if calibration is None or not len(calibration):
            raise EdgeAsdError(f"{where}: an int8 model needs calibration frames to be rewritten")
        ranges = activation_ranges(layers, np.asarray(calibration, dtype=np.float32))
        for tensor_index, (lo, hi) in zip([ops[0].inputs[0]] + [op.outputs[0] for op in ops], ranges):
            _set_quant(tensors[tensor_index], *_int8_params(lo, hi))
    for op, (w, b) in zip(ops, layers):
        w_t, b_t = tensors[op.inputs[1]], tensors[op.inputs[2]]
        if tuple(w_t.shape) != w.shape or tuple(b_t.shape) != b.shape:
            raise EdgeAsdError(f"{where}: layer shape {tuple(w_t.shape)} differs from the new weights {w.shape}")
        if int8:
            in_scale = float(tensors[op.inputs[0]].quantization.scale[0])
            w_scale = np.maximum(np.abs(w).max(1).astype(np.float64), 1e-12) / 127.0
            qw = np.clip(np.round(w / w_scale[:, None]), -127, 127).astype(np.int8)
            b_scale = in_scale * w_scale
            qb = np.clip(np.round(b / b_scale), -(2**31) + 1, 2**31 - 1).astype(np.int32)
            w_t.quantization.scale, b_t.quantization.scale = w_scale.astype(np.float32), b_scale.astype(np.float32)
            w, b = qw, qb
        model.buffers[w_t.buffer].data = np.frombuffer(np.ascontiguousarray(w).tobytes(), dtype=np.uint8)
        model.buffers[b_t.buffer].data = np.frombuffer(np.ascontiguousarray(b).tobytes(), dtype=np.uint8)
    entries = [m for m in model.metadata or [] if m.name in (METADATA_NAME, METADATA_NAME.encode())]
    if len(entries) != 1:
        raise EdgeAsdError(f"{where}: not an edge-asd model (no '{METADATA_NAME}' metadata)")
    meta = {**meta, DIGEST_KEY: unsealed_digest()}
    model.buffers[entries[0].buffer].data = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    builder = flatbuffers.Builder(len(data) + 65536)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return seal(bytes(builder.Output()))
