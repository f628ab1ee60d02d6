"""TFLite export through litert-torch (no TensorFlow): float32, dynamic-range int8, or full-integer int8.

- ``float32``: the torch graph as is.
- ``int8-dynamic``: int8 weights (per channel), float activations quantized on the fly inside each
  fully-connected kernel (ai-edge-quantizer recipe ``dynamic_wi8_afp32`` on the float file). No calibration.
- ``int8-static``: static PT2E quantization: every fully-connected layer runs in int8 with per-channel
  symmetric weights and per-tensor activations calibrated (histogram observer) on representative
  standardized frames; the squared-error sum of eq. (5) stays in float, after DEQUANTIZE, so the score
  keeps its resolution. ``float_output_layer=True`` leaves the decoder's last layer (U -> D) in float too.

The graph is exported at batch 1, the streaming shape; the edge runtime resizes the input for batches.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile

import numpy as np
import torch

log = logging.getLogger("edge_asd")

MODES = ("float32", "int8-dynamic", "int8-static")
RESHAPES = (torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default)


@contextlib.contextmanager
def _quiet():
    """litert-torch prints progress to stdout; keep stdout for results."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _serialize(edge_model) -> bytes:
    fd, tmp = tempfile.mkstemp(suffix=".tflite")
    os.close(fd)
    try:
        edge_model.export(tmp)
        with open(tmp, "rb") as f:
            return f.read()
    finally:
        os.unlink(tmp)


POOLS = (torch.ops.aten.mean.dim, torch.ops.aten.adaptive_avg_pool2d.default)


def _static_quantizer(float_output_layer: bool, float_linears: bool = False, float_pooling: bool = False):
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    class Quantizer(PT2EQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            if float_output_layer:  # drop the annotation of the last linear: it runs on dequantized input
                last = [n for n in model.graph.nodes if n.target == torch.ops.aten.linear.default][-1]
                last.meta.pop("quantization_annotation", None)
            for n in model.graph.nodes:  # a CNN's first convolution, on the reshaped input ((1, D) -> (1, 1, L, M)),
                # runs in float: quantized, litert-torch makes the graph input int8, and the runtime feeds float32
                src = n.args[0] if n.args and isinstance(n.args[0], torch.fx.Node) else None
                if n.target == torch.ops.aten.conv2d.default and src is not None and src.target in RESHAPES \
                        and src.args[0].op == "placeholder":
                    n.meta.pop("quantization_annotation", None)
            for n in model.graph.nodes if float_pooling else []:  # global pooling on dequantized activations
                if n.target in POOLS:
                    n.meta.pop("quantization_annotation", None)
            (out,) = [n for n in model.graph.nodes if n.op == "output"]
            last = out.args[0][0] if isinstance(out.args[0], (tuple, list)) else out.args[0]
            if float_linears or last.target == torch.ops.aten.cat.default:  # an embedding model (several networks side by side):
                # the concatenation and the embedding layers (every linear) run in float, so the output stays
                # float32 and the int8 rounding is that of the convolutions only
                last.meta.pop("quantization_annotation", None)
                for n in model.graph.nodes:
                    if n.target == torch.ops.aten.linear.default:
                        n.meta.pop("quantization_annotation", None)
            return model

    return Quantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


def _dynamic_int8(float_tflite: bytes) -> bytes:
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(float_tflite)
    qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    return bytes(qt.quantize().quantized_model)


def export_tflite(score_model: torch.nn.Module, dim: int, calibration: np.ndarray | None = None,
                  mode: str | None = None, float_output_layer: bool = False, float_linears: bool = False,
                  float_pooling: bool = False) -> bytes:
    """Serialized .tflite of ``score_model`` ((1, dim) float32 -> (1,) float32).

    Args:
        calibration: standardized representative vectors, (n, dim) float32; needed for ``int8-static``.
        mode: one of :data:`MODES`; default ``int8-static`` when ``calibration`` is given, else ``float32``.
        float_output_layer: int8-static only, keep the decoder's output layer in float.
        float_linears: int8-static only, keep every Linear layer in float (an int8 convolutional body with a
            float head; the graph's own output is then float32 too).
        float_pooling: int8-static only, run the global average pooling in float on the dequantized feature map
            (its output, one value per channel, then needs no per-tensor int8 scale across channels of
            different ranges).
    """
    import litert_torch

    mode = mode or ("int8-static" if calibration is not None else "float32")
    if mode not in MODES:
        raise ValueError(f"unknown TFLite mode {mode!r}")
    score_model = score_model.eval()
    sample = (torch.zeros(1, dim),)
    with _quiet():
        if mode != "int8-static":
            data = _serialize(litert_torch.convert(score_model, sample))
            return _dynamic_int8(data) if mode == "int8-dynamic" else data
        if calibration is None:
            raise ValueError("int8-static needs calibration vectors")
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = _static_quantizer(float_output_layer, float_linears, float_pooling)
        # calibrated in batches (a dynamic batch axis): the observers see the same values as row by row,
        # 20x faster; litert-torch re-exports the quantized graph at batch 1 below
        batch = torch.export.Dim("n")
        exported = torch.export.export(score_model, (torch.zeros(2, dim),), dynamic_shapes=({0: batch},)).module()
        prepared = move_exported_model_to_eval(prepare_pt2e(exported, quantizer))
        rows = torch.from_numpy(np.ascontiguousarray(calibration, dtype=np.float32))
        with torch.no_grad():
            for i in range(0, len(rows), 256):
                prepared(rows[i:i + 256] if len(rows[i:i + 256]) > 1 else rows[i:i + 256].repeat(2, 1))
        quantized = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
        quantized.training = False  # its ops are in eval form already; the flag is what litert-torch checks
        return _serialize(litert_torch.convert(quantized, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer)))
