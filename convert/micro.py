"""Microcontroller side of a full-integer int8 .tflite: run it with the tflite-micro Python interpreter
(``pip install --pre tflite-micro``, the reference kernels the firmware runs), measure the tensor arena it
needs, and compare its int8 tensors with LiteRT's."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile

import numpy as np

from edge_asd.core.errors import EdgeAsdError


def _runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise EdgeAsdError("the microcontroller check needs tflite-micro: pip install --pre tflite-micro") from None
    return runtime


@contextlib.contextmanager
def _capture_fd2():
    """Collect what C++ code writes to file descriptor 2 (tflite-micro prints its allocations there)."""
    out = {"text": ""}
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out["text"] = tmp.read().decode(errors="replace")


def micro_interpreter(data: bytes, arena_size: int = 1 << 20, preserve_all: bool = False):
    """A tflite-micro interpreter of ``data``; EdgeAsdError when tflite-micro cannot run it (an op it lacks)."""
    runtime = _runtime()
    config = runtime.InterpreterConfig.kPreserveAllTensors if preserve_all else runtime.InterpreterConfig.kAllocationRecording
    try:
        with _capture_fd2() as log:
            return runtime.Interpreter.from_bytes(data, arena_size=arena_size, intrepreter_config=config)
    except RuntimeError as e:
        raise EdgeAsdError(f"tflite-micro cannot load the model ({e}; {log['text'].strip()[:200]})") from None


def arena_bytes(data: bytes, dim: int) -> int:
    """Tensor-arena bytes the model needs on tflite-micro (RecordingMicroAllocator's total after one invoke)."""
    it = micro_interpreter(data)
    it.set_input(np.zeros((1, dim), np.float32), 0)
    it.invoke()
    with _capture_fd2() as log:
        it.print_allocations()
    match = re.search(r"Arena allocation total (\d+) bytes", log["text"])
    if not match:
        raise EdgeAsdError("tflite-micro did not report its arena allocation")
    return int(match.group(1))


def micro_scores(data: bytes, x: np.ndarray) -> np.ndarray:
    """Scores of standardized vectors (n, D) float32 on tflite-micro, one invoke per vector -> (n,) float32."""
    it = micro_interpreter(data)
    out = np.empty(len(x), np.float32)
    for i, v in enumerate(np.asarray(x, np.float32)):
        it.set_input(v[None], 0)
        it.invoke()
        out[i] = it.get_output(0).reshape(-1)[0]
    return out


def int8_tensors_lsb_diff(data: bytes, x: np.ndarray) -> tuple[int, int]:
    """(largest |difference| in LSB over every int8 tensor, number of int8 tensors compared) between
    tflite-micro and LiteRT's builtin kernels (no XNNPACK delegate, so intermediates are kept), over
    the vectors ``x`` (n, D) float32."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    lite = Interpreter(model_content=data, experimental_preserve_all_tensors=True,
                       experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    lite.allocate_tensors()
    inp = lite.get_input_details()[0]["index"]
    int8 = [d["index"] for d in lite.get_tensor_details() if d["dtype"] == np.int8 and "weight" not in d["name"].lower()]
    activations = sorted({o for op in lite._get_ops_details() for o in op["outputs"]} & set(int8))
    micro = micro_interpreter(data, preserve_all=True)
    worst = 0
    for v in np.asarray(x, np.float32):
        lite.set_tensor(inp, v[None])
        lite.invoke()
        micro.set_input(v[None], 0)
        micro.invoke()
        for i in activations:
            a = lite.get_tensor(i).astype(np.int32)
            b = np.asarray(micro.GetTensor(int(i), 0)["tensor_data"]).astype(np.int32).reshape(a.shape)
            worst = max(worst, int(np.abs(a - b).max()))
    return worst, len(activations)
