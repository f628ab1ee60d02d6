"""The model file: the one contract between desktop and device.

A ``.tflite`` or ``.onnx`` file whose graph maps one standardized context vector, ``shape = (1, D)``
float32, to its anomaly score ``A(x) = ||x - D(E(x))||_2^2`` (Koizumi et al. 2019, eq. 5),
``shape = (1,)`` float32, and which carries a JSON metadata entry named ``edge_asd``: the feature
preset (name and values), the normalization statistics, architecture, loss, training-data
fingerprint, machine type, schema and kit versions. TFLite keeps it in the flatbuffer's
``metadata`` table (read and written with ``ai_edge_litert.schema_py_generated`` + ``flatbuffers``);
ONNX in ``metadata_props``. ``edge-monitor --model fan.tflite`` needs no other file.

A model whose graph outputs an embedding, ``shape = (1, E)``, carries the inlier model that scores it as the
``head`` entry (:mod:`edge_asd.core.heads`): the device's anomaly score is ``head.score(graph(x))``. The features'
``context_hop_frames`` declares how far apart its windows are (one score per window with that hop).

Optional entries: ``training_data.file_sha256_prefixes`` (short digests of the training files,
:mod:`edge_asd.core.provenance`), ``fine_tuning`` (one record per on-device fine-tune) and ``oof``, the
out-of-fold frame scores of the training clips from ``edge-train --oof-folds K`` (folds, seed, encoding,
and per clip its file-digest prefix, fold, number of frames and float16 scores; layout and reader:
:mod:`edge_asd.core.oof`), which edge-calibrate sets phi on. A reader ignores entries it does not use.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import standardize
from edge_asd.core.heads import Head
from edge_asd.core.presets import FeatureConfig
from edge_asd.core.provenance import sha256_bytes

METADATA_NAME = "edge_asd"
DIGEST_KEY = "content_sha256"
"""sha256 of the whole file with this field's value written as 64 zeros: any changed byte shows."""
_UNSEALED = "0" * 64
SCHEMA_VERSION = 1
FORMAT = "edge-asd-model"
_TFLITE_ID = b"TFL3"
MAX_MODEL_BYTES = 256 << 20
"""Largest model file read, bytes (the kit's models: 0.1-10 MB): ``--model /dev/zero`` or a wrong path
to a disk image is refused instead of filling the memory."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about itself (its ``edge_asd`` metadata, validated)."""

    meta: dict
    features: FeatureConfig
    mean: np.ndarray
    """Per-mel-band mean of psi over the training frames, shape (n_mels,), float32."""
    std: np.ndarray
    """Per-mel-band standard deviation, shape (n_mels,), float32, > 0."""
    head: Head | None = None
    """The inlier model that scores the graph's embedding; None: the graph outputs the anomaly score."""

    @classmethod
    def from_meta(cls, meta: dict, where: str) -> ModelInfo:
        if meta.get("format") != FORMAT:
            raise EdgeAsdError(f"{where}: not an edge-asd model (metadata format {meta.get('format')!r})")
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise EdgeAsdError(
                f"{where}: model schema version {version} is not supported by this kit "
                f"(it reads version {SCHEMA_VERSION}); convert the model again or upgrade edge-asd"
            )
        try:
            features = FeatureConfig.from_dict(meta["features"]["config"])
            mean = np.asarray(meta["normalization"]["mean"], dtype=np.float32)
            std = np.asarray(meta["normalization"]["std"], dtype=np.float32)
        except (KeyError, TypeError, ValueError, OverflowError) as e:  # OverflowError: a JSON integer like 10**400
            raise EdgeAsdError(f"{where}: edge-asd metadata is incomplete or damaged ({str(e)[:80]})") from None
        except EdgeAsdError as e:  # feature values out of range (FeatureConfig)
            raise EdgeAsdError(f"{where}: {e}") from None
        if mean.shape != (features.n_mels,) or std.shape != (features.n_mels,):
            raise EdgeAsdError(f"{where}: normalization statistics do not match {features.n_mels} mel bands")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise EdgeAsdError(f"{where}: damaged normalization statistics (a mean or std that is not finite, or a "
                               "std <= 0): every score would be NaN or infinite")
        head = Head.from_meta(meta["head"], where) if meta.get("head") is not None else None
        return cls(meta=meta, features=features, mean=mean, std=std, head=head)

    def standardize(self, vectors: np.ndarray) -> np.ndarray:
        """(n, D) context vectors -> standardized per mel band, float32 (the model's input)."""
        return standardize(vectors, self.mean, self.std)


def _digest_field(value: str) -> bytes:
    return json.dumps({DIGEST_KEY: value})[1:-1].encode()  # '"content_sha256": "..."', as sort_keys json writes it


def unsealed_digest() -> str:
    """The placeholder the converter puts in the metadata before :func:`seal`."""
    return _UNSEALED


def seal(data: bytes) -> bytes:
    """Write the file's own digest into its metadata (same length, so nothing else moves)."""
    field = _digest_field(_UNSEALED)
    if data.count(field) != 1:
        raise ValueError("model bytes must hold exactly one unsealed content_sha256 field")
    return data.replace(field, _digest_field(sha256_bytes(data)))


def check_seal(data: bytes, meta: dict, where: str) -> None:
    """EdgeAsdError unless the file's bytes still match the digest sealed into its metadata."""
    digest = meta.get(DIGEST_KEY) if isinstance(meta, dict) else None
    field = _digest_field(str(digest))
    if not isinstance(digest, str) or data.count(field) != 1:
        raise EdgeAsdError(f"{where}: edge-asd metadata has no valid {DIGEST_KEY}; convert the model again")
    if sha256_bytes(data.replace(field, _digest_field(_UNSEALED))) != digest:
        raise EdgeAsdError(f"{where}: damaged model file (content checksum mismatch); copy or convert it again")


def _schema():
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - depends on the install
        raise EdgeAsdError("reading .tflite metadata needs ai-edge-litert: pip install 'edge-asd[edge]'") from None
    return flatbuffers, schema


def read_tflite_metadata(data: bytes, where: str) -> dict:
    """The ``edge_asd`` JSON entry of a TFLite flatbuffer; EdgeAsdError if damaged or not ours."""
    if len(data) < 8 or data[4:8] != _TFLITE_ID:
        raise EdgeAsdError(f"{where}: not a TFLite model file (no TFL3 identifier)")
    _, schema = _schema()
    try:
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == METADATA_NAME.encode():
                raw = model.Buffers(entry.Buffer()).DataAsNumpy()
                return json.loads(bytes(raw).decode("utf-8"))
    except EdgeAsdError:
        raise
    except Exception as e:  # a damaged flatbuffer fails in many ways
        raise EdgeAsdError(f"{where}: damaged TFLite file ({type(e).__name__}: {e})") from None
    raise EdgeAsdError(f"{where}: not an edge-asd model (no '{METADATA_NAME}' metadata); convert it with edge-convert")


def write_tflite_metadata(data: bytes, meta: dict) -> bytes:
    """Return the flatbuffer with ``meta`` stored (replacing any previous ``edge_asd`` entry)."""
    flatbuffers, schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for b in model.buffers or []:  # buffers stored after the flatbuffer (offset/size): inline them, repacking drops the tail
        if b.offset and b.offset > 1:
            b.data = np.frombuffer(data[b.offset:b.offset + b.size], dtype=np.uint8)
            b.offset = b.size = 0
    buf = schema.BufferT()
    buf.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(data) + 65536)
    builder.Finish(model.Pack(builder), file_identifier=_TFLITE_ID)
    return bytes(builder.Output())


def read_onnx_metadata(data: bytes, where: str) -> dict:
    """The ``edge_asd`` entry of an ONNX model's ``metadata_props`` (read through onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EdgeAsdError("reading .onnx models needs onnxruntime: pip install onnxruntime") from None
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise EdgeAsdError(f"{where}: damaged or unreadable ONNX file ({type(e).__name__})") from None
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_NAME not in props:
        raise EdgeAsdError(f"{where}: not an edge-asd model (no '{METADATA_NAME}' metadata); convert it with edge-convert")
    return json.loads(props[METADATA_NAME])


def model_kind(path: Path, data: bytes) -> str:
    """"tflite" or "onnx", from the file's content (its name may lie)."""
    if len(data) >= 8 and data[4:8] == _TFLITE_ID:
        return "tflite"
    if path.suffix.lower() == ".onnx" or data[:1] == b"\x08":  # ONNX protobuf starts with field 1 (ir_version)
        return "onnx"
    raise EdgeAsdError(f"{path}: not a model file edge-asd can read (expected .tflite or .onnx)")


def _read_bounded(path: Path) -> bytes:
    """The file's bytes; EdgeAsdError for a missing file, a folder, a device or a file over MAX_MODEL_BYTES."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise EdgeAsdError(f"{path}: not a regular file (a device or a pipe); give the model file's path")
            if st.st_size > MAX_MODEL_BYTES:
                raise EdgeAsdError(f"{path}: {st.st_size >> 20} MiB, larger than any model file "
                                   f"({MAX_MODEL_BYTES >> 20} MiB at most)")
            return f.read(MAX_MODEL_BYTES + 1)
    except FileNotFoundError:
        raise EdgeAsdError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise EdgeAsdError(f"{path}: is a directory, not a model file") from None
    except OSError as e:
        raise EdgeAsdError(f"{path}: cannot read model file ({e.strerror})") from None


def read_model_file(path: str | Path) -> tuple[bytes, str, ModelInfo]:
    """Read a model file: (bytes, kind, info). The metadata entry is found, the seal checked against the bytes,
    and only then is the metadata interpreted, so a damaged file is refused as damaged. Raises EdgeAsdError for
    missing, damaged, foreign or oversized files."""
    path = Path(path)
    data = _read_bounded(path)
    if not data:
        raise EdgeAsdError(f"{path}: model file is empty")
    kind = model_kind(path, data)
    meta = read_tflite_metadata(data, str(path)) if kind == "tflite" else read_onnx_metadata(data, str(path))
    check_seal(data, meta, str(path))
    info = ModelInfo.from_meta(meta, str(path))
    return data, kind, info
