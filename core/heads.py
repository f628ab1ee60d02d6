"""Inlier models in numpy: they turn a network's embedding into an anomaly score on the device.

A model file whose graph outputs an embedding ``e``, ``shape = (1, E)`` float32, rather than a score carries
one of these as its ``head`` metadata entry (:mod:`edge_asd.core.model_file`). The trainer fits them (with
scikit-learn, on the desktop); the device only scores. Every score is higher = more anomalous:

- ``mahalanobis``: ``(e - mu)^T P (e - mu)``, P the precision matrix (inverse covariance, e.g. Ledoit-Wolf's);
- ``gmm``: ``-log p(e) - b`` of a Gaussian mixture with full covariances: the negative of scikit-learn's
  ``GaussianMixture.score_samples`` (parameters as it stores them: weights, means, precisions_cholesky) less its
  lower bound ``b = -log sum_k w_k peak_k``, ``peak_k = (2 pi)^(-E/2) det(U_k)`` the k-th density's maximum,
  so that every score is >= 0 as the kit's phi and records require;
- ``centre``: ``||e - c||^2``, the Deep SVDD score (Ruff et al., ICML 2018, eq. 3 / 4).

In the metadata each parameter is ``{"dtype": "float32", "shape": [...], "base64": "..."}``, the array's
little-endian float32 bytes in base64 (:func:`encode_array`): a 256 x 256 precision takes 350 KB instead of about
1.2 MB of JSON numbers. Entries written as JSON lists of numbers (kit versions before this encoding) still load.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass

import numpy as np

from edge_asd.core.errors import EdgeAsdError

KINDS = ("mahalanobis", "gmm", "centre")
MAX_EMBEDDING = 4096
"""Largest embedding a head accepts (the kit's networks: 128-1024)."""
MAX_COMPONENTS = 64


def encode_array(a: np.ndarray) -> dict:
    """An array as the metadata stores it: ``{"dtype": "float32", "shape": [...], "base64": ...}``, the bytes of
    ``a`` as little-endian float32 (C order). float64 parameters are rounded to float32 here."""
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"dtype": "float32", "shape": list(a.shape), "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(value: dict) -> np.ndarray:
    """The inverse of :func:`encode_array`, float64. ValueError when the entry is damaged (dtype, shape, base64 or
    byte count)."""
    if value.get("dtype") != "float32":
        raise ValueError(f"dtype {value.get('dtype')!r}, expected 'float32'")
    shape = value.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"shape {shape!r}")
    try:
        raw = base64.b64decode(value.get("base64", ""), validate=True)
    except (binascii.Error, TypeError):
        raise ValueError("base64 text is damaged") from None
    if len(raw) != 4 * math.prod(shape):
        raise ValueError(f"{len(raw)} bytes for shape {shape}")
    return np.frombuffer(raw, dtype="<f4").astype(np.float64).reshape(shape)


def _array(value, shape_rank: int, name: str, where: str) -> np.ndarray:
    try:
        if isinstance(value, dict):
            value = decode_array(value)
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as e:
        raise EdgeAsdError(f"{where}: head {name} is not an array of numbers ({str(e)[:60]})") from None
    if a.ndim != shape_rank or a.size == 0 or not np.all(np.isfinite(a)):
        raise EdgeAsdError(f"{where}: head {name} is damaged (shape {a.shape}, or a value that is not finite)")
    return a


@dataclass(frozen=True)
class Head:
    """An inlier model over embeddings of dimension :attr:`dim` (see the module docstring for the formulas)."""

    kind: str
    params: dict
    """float64 arrays: mahalanobis {mean (E,), precision (E, E)}; gmm {weights (k,), means (k, E),
    precisions_cholesky (k, E, E)}; centre {centre (E,)}."""

    @property
    def dim(self) -> int:
        """E, the embedding dimension."""
        key = "centre" if self.kind == "centre" else "mean" if self.kind == "mahalanobis" else "means"
        return self.params[key].shape[-1]

    def score(self, emb: np.ndarray) -> np.ndarray:
        """Anomaly scores of embeddings, (n, E) float -> (n,) float32."""
        e = np.asarray(emb, dtype=np.float64).reshape(len(emb), -1)
        if e.shape[1] != self.dim:
            raise EdgeAsdError(f"embedding of dimension {e.shape[1]}, the {self.kind} head expects {self.dim}")
        p = self.params
        if self.kind == "centre":
            out = ((e - p["centre"]) ** 2).sum(axis=1)
        elif self.kind == "mahalanobis":
            d = e - p["mean"]
            out = np.einsum("ni,ij,nj->n", d, p["precision"], d)
        else:
            out = _gmm_log_peak(p) - _gmm_log_likelihood(e, p["weights"], p["means"], p["precisions_cholesky"])
            out = np.maximum(out, 0.0)  # >= 0 up to rounding
        return out.astype(np.float32)

    def to_meta(self) -> dict:
        """The ``head`` metadata entry: the kind and each parameter as :func:`encode_array` (float32, base64)."""
        return {"kind": self.kind, **{k: encode_array(v) for k, v in self.params.items()}}

    @classmethod
    def from_meta(cls, d: dict, where: str = "model") -> Head:
        """Read a ``head`` entry. Raises EdgeAsdError for an unknown kind or damaged, inconsistent parameters."""
        if not isinstance(d, dict) or d.get("kind") not in KINDS:
            kind = d.get("kind") if isinstance(d, dict) else d
            raise EdgeAsdError(f"{where}: unknown head kind {kind!r} (known: {', '.join(KINDS)})")
        try:
            if d["kind"] == "centre":
                return centre_head(_array(d["centre"], 1, "centre", where))
            if d["kind"] == "mahalanobis":
                return mahalanobis_head(_array(d["mean"], 1, "mean", where), _array(d["precision"], 2, "precision", where))
            return gmm_head(_array(d["weights"], 1, "weights", where), _array(d["means"], 2, "means", where),
                            _array(d["precisions_cholesky"], 3, "precisions_cholesky", where))
        except KeyError as e:
            raise EdgeAsdError(f"{where}: {d['kind']} head lacks {e}") from None
        except EdgeAsdError as e:
            raise EdgeAsdError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None


def _check_dim(e: int) -> None:
    if not 1 <= e <= MAX_EMBEDDING:
        raise EdgeAsdError(f"head: embedding dimension {e} outside 1..{MAX_EMBEDDING}")


def centre_head(centre: np.ndarray) -> Head:
    """Deep SVDD: score ``||e - c||^2``; ``centre`` (E,)."""
    c = np.asarray(centre, dtype=np.float64).reshape(-1)
    _check_dim(len(c))
    return Head("centre", {"centre": c})


def mahalanobis_head(mean: np.ndarray, precision: np.ndarray) -> Head:
    """Squared Mahalanobis distance; ``mean`` (E,), ``precision`` (E, E) symmetric positive semi-definite."""
    mu, prec = np.asarray(mean, np.float64).reshape(-1), np.asarray(precision, np.float64)
    _check_dim(len(mu))
    if prec.shape != (len(mu), len(mu)):
        raise EdgeAsdError(f"head: precision of shape {prec.shape} for a mean of {len(mu)}")
    return Head("mahalanobis", {"mean": mu, "precision": (prec + prec.T) / 2})


def gmm_head(weights: np.ndarray, means: np.ndarray, precisions_cholesky: np.ndarray) -> Head:
    """Gaussian mixture with full covariances (scikit-learn's parameters): ``weights`` (k,) summing to 1,
    ``means`` (k, E), ``precisions_cholesky`` (k, E, E) upper-triangular factors with positive diagonals."""
    w, mu, pc = (np.asarray(a, np.float64) for a in (weights, means, precisions_cholesky))
    k = len(w)
    if not 1 <= k <= MAX_COMPONENTS or mu.ndim != 2 or len(mu) != k:
        raise EdgeAsdError(f"head: {k} mixture weights for means of shape {mu.shape}")
    _check_dim(mu.shape[1])
    if pc.shape != (k, mu.shape[1], mu.shape[1]):
        raise EdgeAsdError(f"head: precisions_cholesky of shape {pc.shape}, expected {(k, mu.shape[1], mu.shape[1])}")
    if np.any(w <= 0) or not math.isclose(w.sum(), 1.0, abs_tol=1e-6):
        raise EdgeAsdError("head: mixture weights must be > 0 and sum to 1")
    if np.any(np.diagonal(pc, axis1=1, axis2=2) <= 0):
        raise EdgeAsdError("head: a precision Cholesky factor with a diagonal value <= 0")
    return Head("gmm", {"weights": w, "means": mu, "precisions_cholesky": pc})


def _gmm_log_peak(p: dict) -> float:
    """log sum_k w_k peak_k, an upper bound of log p(e) (each Gaussian's density is largest at its mean)."""
    dim = p["means"].shape[1]
    log_det = np.log(np.diagonal(p["precisions_cholesky"], axis1=1, axis2=2)).sum(axis=1)
    terms = np.log(p["weights"]) - 0.5 * dim * np.log(2 * np.pi) + log_det
    top = terms.max()
    return float(top + np.log(np.exp(terms - top).sum()))


def _gmm_log_likelihood(e: np.ndarray, weights: np.ndarray, means: np.ndarray, prec_chol: np.ndarray) -> np.ndarray:
    """log p(e) of a full-covariance mixture, (n, E) -> (n,): log-sum-exp over components of
    ``log w_k - E/2 log(2 pi) + log det(U_k) - ||(e - mu_k) U_k||^2 / 2`` (U_k = precisions_cholesky[k]),
    as scikit-learn's ``_estimate_log_gaussian_prob``."""
    dim = e.shape[1]
    log_det = np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)  # (k,)
    maha = np.stack([(((e @ u) - m @ u) ** 2).sum(axis=1) for m, u in zip(means, prec_chol)], axis=1)  # (n, k)
    log_prob = np.log(weights) - 0.5 * (dim * np.log(2 * np.pi) + maha) + log_det
    top = log_prob.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(log_prob - top).sum(axis=1, keepdims=True)))[:, 0]
