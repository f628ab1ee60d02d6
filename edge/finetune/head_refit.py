"""On-device adaptation of an embedding model: the network stays frozen, its inlier model (the file's ``head``)
is fitted again on the embeddings of this machine's own normal audio, in numpy.

- ``centre`` (Deep SVDD): the centre becomes the mean embedding (Ruff et al. 2018 set c the same way, from the
  initial forward pass);
- ``mahalanobis`` and ``gmm``: a Ledoit-Wolf Mahalanobis model of the new embeddings (one Gaussian). A device
  records minutes, tens to hundreds of windows: too few for a full-covariance mixture in 128 dimensions, which
  is also the trainer's rule below a few hundred windows (docs/serial-oe.md).

The shrinkage is Ledoit & Wolf (2004, "A well-conditioned estimator for large-dimensional covariance
matrices", eq. 14), computed as scikit-learn's ``ledoit_wolf_shrinkage`` does (tests compare the two).
"""

from __future__ import annotations

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import extract
from edge_asd.core.heads import Head, centre_head, mahalanobis_head
from edge_asd.core.model_file import DIGEST_KEY, seal, unsealed_digest, write_tflite_metadata

MIN_WINDOWS = 8
"""Fewest accepted windows a head is refitted on."""


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean (E,), shrunk covariance (E, E), shrinkage in [0, 1]) of samples ``x``, (n, E) float.

    ``(1 - s) S + s mu I`` with S the empirical covariance and mu its mean eigenvalue, s the Ledoit-Wolf
    shrinkage.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    n, p = xc.shape
    cov = xc.T @ xc / n
    mu = np.trace(cov) / p
    x2 = xc ** 2
    beta_ = (x2.T @ x2).sum()
    delta_ = ((xc.T @ xc) ** 2).sum() / n ** 2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2 * mu * np.trace(cov) + p * mu ** 2) / p
    shrinkage = 0.0 if delta == 0 else min(beta, delta) / delta
    return mean, (1 - shrinkage) * cov + shrinkage * mu * np.eye(p), float(shrinkage)


def window_embeddings(scorer, runs: list[np.ndarray]) -> np.ndarray:
    """The network's embeddings of every window of ``runs`` (mono audio at the model's rate): (n, E) float32."""
    out = [scorer.embed(scorer.info.standardize(extract(r, scorer.features))) for r in runs]
    return np.concatenate(out) if out else np.zeros((0, scorer.head.dim), np.float32)


def refit_head(scorer, runs: list[np.ndarray]) -> tuple[Head, dict]:
    """A new head for the frozen network of ``scorer`` from the windows of ``runs`` (the audio the guard rail
    accepted), and what was done: ``{"head": kind before -> after, "windows": n, "shrinkage": s or None}``.

    Raises:
        EdgeAsdError: the model has no head (an autoencoder: its weights are fine-tuned instead), or fewer
            than :data:`MIN_WINDOWS` windows were accepted.
    """
    if scorer.head is None:
        raise EdgeAsdError(f"{scorer.path}: the model has no inlier model (head) to refit")
    emb = window_embeddings(scorer, runs).astype(np.float64)
    if len(emb) < MIN_WINDOWS:
        raise EdgeAsdError(f"only {len(emb)} windows of accepted audio; the inlier model needs at least {MIN_WINDOWS} "
                           f"({MIN_WINDOWS * scorer.features.vector_hop_s:.0f} s or more of normal recordings)")
    if scorer.head.kind == "centre":
        head, shrinkage = centre_head(emb.mean(axis=0)), None
    else:
        mean, cov, shrinkage = ledoit_wolf(emb)
        head = mahalanobis_head(mean, np.linalg.inv(cov))
    return head, {"head": f"{scorer.head.kind} -> {head.kind}", "windows": int(len(emb)),
                  "shrinkage": None if shrinkage is None else round(shrinkage, 4)}


def with_head(data: bytes, meta: dict, head: Head) -> bytes:
    """The .tflite ``data`` (graph unchanged) with ``meta`` as its metadata and ``head`` as its inlier model,
    sealed again."""
    return seal(write_tflite_metadata(data, {**meta, "head": head.to_meta(), DIGEST_KEY: unsealed_digest()}))
