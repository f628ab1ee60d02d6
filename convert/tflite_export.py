"""TFLite export through litert-torch (no TensorFlow): float32, or full-integer int8 by static PT2E.

Int8: every fully-connected layer runs in int8 with per-channel symmetric weights and per-tensor
activations calibrated (histogram observer) on representative standardized normal frames; the
squared-error sum of eq. (5) stays in float, after DEQUANTIZE, so the score keeps its resolution.
The graph is exported at batch 1, the streaming shape.
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


@contextlib.contextmanager
def _quiet():
    """litert-torch prints progress to stdout; keep stdout for results."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def export_tflite(score_model: torch.nn.Module, dim: int, calibration: np.ndarray | None = None) -> bytes:
    """Serialized .tflite of ``score_model`` ((1, dim) -> (1,)); int8 when ``calibration`` (n, dim) is given."""
    import litert_torch

    score_model = score_model.eval()
    sample = (torch.zeros(1, dim),)
    with _quiet():
        if calibration is None:
            edge_model = litert_torch.convert(score_model, sample)
        else:
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
            from litert_torch.quantize.quant_config import QuantConfig
            from torchao.quantization.pt2e import move_exported_model_to_eval
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            exported = torch.export.export(score_model, sample).module()
            prepared = move_exported_model_to_eval(prepare_pt2e(exported, quantizer))
            with torch.no_grad():
                for row in torch.from_numpy(np.ascontiguousarray(calibration, dtype=np.float32)):
                    prepared(row[None])
            quantized = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
            quantized.training = False  # its ops are in eval form already; the flag is what litert-torch checks
            edge_model = litert_torch.convert(quantized, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))
        fd, tmp = tempfile.mkstemp(suffix=".tflite")
        os.close(fd)
        try:
            edge_model.export(tmp)
            with open(tmp, "rb") as f:
                return f.read()
        finally:
            os.unlink(tmp)
