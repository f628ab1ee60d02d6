"""Inference backends behind one adapter, imported lazily.

``.tflite``: ai-edge-litert (LiteRT, the maintained successor of tflite-runtime), else tflite-runtime
where that is what is installed. ``.onnx``: onnxruntime. Which one won is logged; threads are pinned
(``num_threads=1`` by default, one core per model on a Raspberry Pi).
"""

from __future__ import annotations

import logging

import numpy as np

from edge_asd.core.errors import EdgeAsdError

log = logging.getLogger("edge_asd")

MAX_THREADS = 64
"""Most inference threads one model may use. A Raspberry Pi has 4 cores and a desktop rarely more than 64;
far more threads only slow inference down, and 100 000 of them exhausted a host's process IDs."""


class Backend:
    """Runs a model file whose graph maps (1, D) float32 -> its output: the anomaly score, (1,) float32, or an
    embedding, (1, E) float32, that the model's head scores (:mod:`edge_asd.core.heads`)."""

    name = "?"
    out_dim = 1
    """Values per input vector: 1 (a score) or E (an embedding)."""

    def score_one(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        """The graph's output for one vector (1, D): (out_dim,) float32."""
        raise NotImplementedError

    def score(self, x: np.ndarray) -> np.ndarray:
        """Outputs of standardized vectors ``x``, shape (n, D) float32 -> (n,) float32 scores, or (n, E)
        embeddings when :attr:`out_dim` is E > 1."""
        out = np.zeros((len(x), self.out_dim), dtype=np.float32)
        for i, v in enumerate(x):
            out[i] = self.score_one(v[None])
        return out[:, 0] if self.out_dim == 1 else out


def _tflite_interpreter_cls():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        raise EdgeAsdError("running .tflite models needs ai-edge-litert: pip install 'edge-asd[edge]'") from None


class TFLiteBackend(Backend):
    """LiteRT / tflite-runtime. The file's graph is batch 1; :meth:`score` resizes its input to (n, D)
    for blocks of vectors (the monitor scores 32 hops per call, calibration and evaluation whole clips)."""

    batch_size = 256
    """Largest batch :meth:`score` resizes to; longer inputs go in chunks."""

    def __init__(self, data: bytes, dim: int, num_threads: int = 1, where: str = "model", out_dim: int = 1):
        cls, self.name = _tflite_interpreter_cls()
        try:
            self._it = cls(model_content=data, num_threads=num_threads)
            self._it.allocate_tensors()
        except Exception as e:
            raise EdgeAsdError(f"{where}: the TFLite interpreter cannot load it ({e})") from None
        inputs, outputs = self._it.get_input_details(), self._it.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1 or tuple(inputs[0]["shape"]) != (1, dim):
            shapes = [tuple(int(n) for n in d["shape"]) for d in inputs]
            raise EdgeAsdError(f"{where}: model input {shapes} disagrees with its metadata (1, {dim})")
        if int(np.prod(outputs[0]["shape"])) != out_dim:
            what = "one anomaly score" if out_dim == 1 else f"an embedding of {out_dim} (its head's dimension)"
            raise EdgeAsdError(f"{where}: model output {tuple(int(n) for n in outputs[0]['shape'])} is not {what}")
        self.out_dim = out_dim
        self.input_dtype = inputs[0]["dtype"]
        self._qin = _int_quantization(inputs[0])  # a full-int8 graph: its float input and output scales
        self._qout = _int_quantization(outputs[0])
        self._in, self._out = inputs[0]["index"], outputs[0]["index"]
        self._dim, self._batch, self._batchable = dim, 1, True
        log.info("backend: %s (%d thread%s)", self.name, num_threads, "" if num_threads == 1 else "s")

    def score_one(self, x: np.ndarray) -> np.ndarray:
        self._resize(1)
        self._it.set_tensor(self._in, self._input(x))
        self._it.invoke()
        return self._output().reshape(-1)

    def _input(self, x: np.ndarray) -> np.ndarray:
        """Float32 vectors as the graph's input tensor: quantized when the graph's input is integer."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._qin is None:
            return x
        (scale, zero), info = self._qin, np.iinfo(self.input_dtype)
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(self.input_dtype)

    def _output(self) -> np.ndarray:
        """The output tensor as float32 (dequantized when the graph's output is integer)."""
        out = self._it.get_tensor(self._out)
        if self._qout is None:
            return out.astype(np.float32)
        scale, zero = self._qout
        return ((out.astype(np.float32) - zero) * scale).astype(np.float32)

    def _resize(self, n: int) -> None:
        if n != self._batch:
            self._batch = n  # first: when allocating fails, the fallback's _resize(1) must resize back
            self._it.resize_tensor_input(self._in, [n, self._dim])
            self._it.allocate_tensors()

    def score(self, x: np.ndarray) -> np.ndarray:
        """Outputs of standardized vectors, (n, D) float32 -> (n,) float32 (or (n, E)): up to :attr:`batch_size` vectors
        per invoke, the batch-1 graph resized to the batch (LiteRT ``resize_tensor_input``; kept until the
        size changes); one invoke per vector for a graph that cannot be resized."""
        if len(x) <= 1 or not self._batchable:
            return super().score(x)
        return np.concatenate([self._score_batch(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)])

    def _score_batch(self, x: np.ndarray) -> np.ndarray:
        if not self._batchable:
            return super().score(x)
        try:
            self._resize(len(x))
            self._it.set_tensor(self._in, self._input(x))
            self._it.invoke()
            out = self._output().reshape(-1)
            if out.size != len(x) * self.out_dim:
                raise ValueError(f"batch {len(x)} gave {out.size} outputs")
        except (ValueError, RuntimeError) as e:
            log.info("backend: no batched invoke for this graph (%s); one vector per invoke", e)
            self._batchable = False
            self._resize(1)
            return super().score(x)
        out = out.astype(np.float32, copy=True)
        return out if self.out_dim == 1 else out.reshape(len(x), self.out_dim)


def _int_quantization(detail: dict) -> tuple[float, int] | None:
    """(scale, zero point) of an integer input or output tensor (a full-int8 graph), None for a float one."""
    if not np.issubdtype(detail["dtype"], np.integer):
        return None
    scale, zero = detail.get("quantization", (0.0, 0))
    if not scale:
        raise EdgeAsdError(f"model tensor {detail.get('name')!r} is {np.dtype(detail['dtype']).name} without a scale")
    return float(scale), int(zero)


class OnnxBackend(Backend):
    name = "onnxruntime"

    def __init__(self, data: bytes, dim: int, num_threads: int = 1, where: str = "model", out_dim: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        (inp,), outs = self._sess.get_inputs(), self._sess.get_outputs()
        if inp.shape[-1] != dim:
            raise EdgeAsdError(f"{where}: model input {inp.shape} disagrees with its metadata (n, {dim})")
        self._in, self._out = inp.name, outs[0].name
        self.out_dim = out_dim
        log.info("backend: onnxruntime (%d thread%s)", num_threads, "" if num_threads == 1 else "s")

    def score_one(self, x: np.ndarray) -> np.ndarray:
        return self._sess.run([self._out], {self._in: x})[0].reshape(-1).astype(np.float32)

    def score(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0 if self.out_dim == 1 else (0, self.out_dim), dtype=np.float32)
        out = self._sess.run([self._out], {self._in: x})[0].astype(np.float32)
        if out.size != len(x) * self.out_dim:
            raise EdgeAsdError(f"model output of {out.size} values for {len(x)} vectors; expected {self.out_dim} each")
        return out.reshape(-1) if self.out_dim == 1 else out.reshape(len(x), self.out_dim)


def make_backend(kind: str, data: bytes, dim: int, num_threads: int = 1, where: str = "model",
                 out_dim: int = 1) -> Backend:
    """The backend for a model file's ``kind`` (``tflite`` or ``onnx``), with ``num_threads`` inference threads;
    its graph maps (1, ``dim``) to ``out_dim`` values (1: a score; E: an embedding for the model's head).

    Raises:
        EdgeAsdError: an unknown kind, a thread count outside 1..:data:`MAX_THREADS`, or a model the backend
            refuses.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or not 1 <= num_threads <= MAX_THREADS:
        raise EdgeAsdError(f"threads = {num_threads!r}: use 1 to {MAX_THREADS} inference threads per model")
    if kind == "tflite":
        return TFLiteBackend(data, dim, num_threads, where, out_dim)
    if kind == "onnx":
        return OnnxBackend(data, dim, num_threads, where, out_dim)
    raise EdgeAsdError(f"{where}: unknown model kind {kind!r}")
