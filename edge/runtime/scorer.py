"""Anomaly scores from a model file: features -> standardization -> backend (-> the file's head, for a network
that outputs an embedding)."""

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
        self.head = self.info.head
        self.backend = make_backend(self.kind, data, self.info.features.dim, num_threads, str(self.path),
                                    1 if self.head is None else self.head.dim)

    @property
    def features(self):
        return self.info.features

    @property
    def meta(self) -> dict:
        return self.info.meta

    def score_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """Anomaly scores of raw context vectors, (n, D) float32 -> (n,) float32 (an autoencoder's: eq. 5 of
        Koizumi et al. 2019; an embedding network's: its head's, :mod:`edge_asd.core.heads`)."""
        return self.score_inputs(self.info.standardize(vectors) if len(vectors) else vectors)

    def embed(self, x: np.ndarray) -> np.ndarray:
        """The graph's raw output for standardized vectors: (n, D) float32 -> (n, E) float32 embeddings ((n, 1)
        for a graph that outputs scores)."""
        if len(x) == 0:
            return np.zeros((0, self.backend.out_dim), dtype=np.float32)
        return self.backend.score(x).reshape(len(x), -1)

    def stream(self) -> StreamingFeatures:
        """Streaming features for this model whose vectors are already standardized: its input for
        :meth:`score_inputs` (the monitor's block path)."""
        return StreamingFeatures(self.info.features, self.info.mean, self.info.std)

    def score_inputs(self, x: np.ndarray) -> np.ndarray:
        """Anomaly scores of standardized vectors (from :meth:`stream`), (n, D) float32 -> (n,) float32,
        in one model call."""
        if len(x) == 0:
            return np.zeros(0, dtype=np.float32)
        out = self.backend.score(x)
        return out if self.head is None else self.head.score(out)

    def score_audio(self, samples: np.ndarray) -> np.ndarray:
        """Window scores of a whole mono recording at the model's sample rate, (N,) -> (n_vectors,) float32, one
        per ``features.vector_hop_samples``."""
        return self.score_vectors(extract(samples, self.info.features))

