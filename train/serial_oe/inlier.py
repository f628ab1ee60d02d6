"""Inlier models of the embeddings: what turns a window's embedding e into its anomaly score.

The rule, fixed before any test score was seen (docs/serial-oe.md):

- cross-fitted networks (K >= 2, the default): each network's inlier model is a Mahalanobis distance with the
  Ledoit-Wolf shrunk covariance (Ledoit & Wolf 2004), fitted on the windows of the clips it did not train on; the
  clip counts of the local IDs give tens to a few hundred windows for E = 128 dimensions, where an empirical
  covariance is singular and a GMM over-fits. The K distances are summed: one Mahalanobis head over the
  concatenated embedding with a block-diagonal precision.
- one network (K = 1, the authors' way: the inlier model sees the network's own training clips): Ledoit-Wolf
  Mahalanobis below :data:`GMM_MIN_WINDOWS` windows, else a full-covariance Gaussian mixture of 1-4 components
  chosen by BIC (scikit-learn ``GaussianMixture``), anomaly score -log p(e).

Parameters are stored as the model file's ``head`` entry (``edge_asd.core.heads`` layout).
"""

from __future__ import annotations

import numpy as np

GMM_MIN_WINDOWS = 300
"""Fewest windows for a GMM inlier model (K = 1 only); fewer: Ledoit-Wolf Mahalanobis."""
GMM_COMPONENTS = (1, 2, 3, 4)


def fit_mahalanobis(emb: np.ndarray) -> dict:
    """Ledoit-Wolf mean and precision of embeddings (n, E): the ``mahalanobis`` head entry, float64 lists."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(np.asarray(emb, np.float64))
    return {"kind": "mahalanobis", "mean": lw.location_.tolist(), "precision": lw.precision_.tolist()}


def fit_gmm(emb: np.ndarray, seed: int = 0) -> dict:
    """Full-covariance GMM of 1-4 components, the lowest BIC: the ``gmm`` head entry (weights, means,
    precisions_cholesky as scikit-learn stores them)."""
    from sklearn.mixture import GaussianMixture

    x = np.asarray(emb, np.float64)
    fits = [GaussianMixture(k, covariance_type="full", random_state=seed).fit(x) for k in GMM_COMPONENTS if k < len(x)]
    best = min(fits, key=lambda g: g.bic(x))
    return {"kind": "gmm", "weights": best.weights_.tolist(), "means": best.means_.tolist(),
            "precisions_cholesky": best.precisions_cholesky_.tolist()}


def fit_inlier(emb: np.ndarray, seed: int = 0) -> dict:
    """The rule of the module docstring for one network fitted on its own clips (K = 1)."""
    return fit_gmm(emb, seed) if len(emb) >= GMM_MIN_WINDOWS else fit_mahalanobis(emb)


def stack_mahalanobis(blocks: list[dict]) -> dict:
    """One Mahalanobis head over concatenated embeddings from per-network ones: means concatenated, precisions on
    the block diagonal, so its score is the sum of the blocks' scores."""
    dims = [len(b["mean"]) for b in blocks]
    precision = np.zeros((sum(dims), sum(dims)))
    at = 0
    for b, d in zip(blocks, dims):
        precision[at:at + d, at:at + d] = b["precision"]
        at += d
    return {"kind": "mahalanobis", "mean": np.concatenate([b["mean"] for b in blocks]).tolist(),
            "precision": precision.tolist()}


def score(head: dict, emb: np.ndarray) -> np.ndarray:
    """Anomaly scores (n,) float64 of embeddings (n, E) under a head entry: (e - m)^T P (e - m) for
    ``mahalanobis``, -log p(e) for ``gmm``, ||e - c||^2 for ``centre``."""
    e = np.asarray(emb, np.float64)
    if head["kind"] == "mahalanobis":
        d = e - np.asarray(head["mean"])
        return np.einsum("ni,ij,nj->n", d, np.asarray(head["precision"]), d)
    if head["kind"] == "centre":
        return ((e - np.asarray(head["centre"])) ** 2).sum(1)
    # GMM: log N(e; mu_k, P_k) with P_k = L_k L_k^T, L_k = precisions_cholesky (scikit-learn's parameterisation)
    logs = []
    for w, mu, chol in zip(head["weights"], np.asarray(head["means"]), np.asarray(head["precisions_cholesky"])):
        y = (e - mu) @ chol
        logs.append(np.log(w) + np.log(np.diag(chol)).sum() - 0.5 * (y ** 2).sum(1) - 0.5 * e.shape[1] * np.log(2 * np.pi))
    logs = np.stack(logs, 1)
    top = logs.max(1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(logs - top).sum(1)))
