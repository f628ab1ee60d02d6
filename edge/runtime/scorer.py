"""Anomaly scores from a model file: features -> standardization -> backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_asd.core.features import StreamingFeatures, extract
from edge_asd.core.model_file import read_model_file
from edge_asd.core.provenance import sha256_bytes
from edge_asd.edge.runtime.backends import make_backend


class Scorer:
    """A loaded model file.

    Attributes:
        info: the file's metadata (feature config, normalization, training details).
        sha256: hex digest of the file's bytes (reported with every event).
        backend: the inference backend that runs it.
    Raises:
        EdgeAsdError: the file is missing, damaged, not an edge-asd model, or its tensors disagree
            with its metadata.
    """

    def __init__(self, path: str | Path, num_threads: int = 1):
        self.path = Path(path)
        data, self.kind, self.info = read_model_file(self.path)
        self.sha256 = sha256_bytes(data)
        self.size_bytes = len(data)
        self.backend = make_backend(self.kind, data, self.info.features.dim, num_threads, str(self.path))

    @property
    def features(self):
        return self.info.features

    @property
    def meta(self) -> dict:
        return self.info.meta

    def score_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """Anomaly scores (eq. 5) of raw context vectors, (n, D) float32 -> (n,) float32."""
        if len(vectors) == 0:
            return np.zeros(0, dtype=np.float32)
        return self.backend.score(self.info.standardize(vectors))

    def stream(self) -> StreamingFeatures:
        """Streaming features for this model whose vectors are already standardized: its input for
        :meth:`score_inputs` (the monitor's block path)."""
        return StreamingFeatures(self.info.features, self.info.mean, self.info.std)

    def score_inputs(self, x: np.ndarray) -> np.ndarray:
        """Anomaly scores of standardized vectors (from :meth:`stream`), (n, D) float32 -> (n,) float32,
        in one model call."""
        if len(x) == 0:
            return np.zeros(0, dtype=np.float32)
        return self.backend.score(x)

    def score_audio(self, samples: np.ndarray) -> np.ndarray:
        """Frame scores of a whole mono recording at the model's sample rate, (N,) -> (n_vectors,)."""
        return self.score_vectors(extract(samples, self.info.features))

