"""Inlier models of the embeddings: what turns a window's embedding e into its anomaly score.

The rule, fixed before any test score was seen (docs/serial-oe.md):

- cross-fitted networks (K >= 2, the default): each network's inlier model is a Mahalanobis distance with the
  Ledoit-Wolf shrunk covariance (Ledoit & Wolf 2004), fitted on the windows of the clips it did not train on; the
  clip counts of the local IDs give tens to a few hundred windows for E = 128 dimensions, where an empirical
  covariance is singular and a GMM over-fits. The K distances are summed: one Mahalanobis head over the
  concatenated embedding with a block-diagonal precision.
- one network (K = 1, the authors' way: the inlier model sees the network's own training clips): Ledoit-Wolf
  Mahalanobis below :data:`GMM_MIN_WINDOWS` windows, else a full-covariance Gaussian mixture of 1-4 components
  chosen by BIC (scikit-learn ``GaussianMixture``), anomaly score -log p(e) (shifted to >= 0 by core.heads).

Every fit returns an :class:`edge_asd.core.heads.Head`; ``Head.to_meta()`` is the model file's ``head`` entry.
"""

from __future__ import annotations

import numpy as np

from edge_asd.core.heads import Head, gmm_head, mahalanobis_head

GMM_MIN_WINDOWS = 300
"""Fewest windows for a GMM inlier model (K = 1 only); fewer: Ledoit-Wolf Mahalanobis."""
GMM_COMPONENTS = (1, 2, 3, 4)


def fit_mahalanobis(emb: np.ndarray) -> Head:
    """Ledoit-Wolf mean and precision of embeddings (n, E): a ``mahalanobis`` head."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(np.asarray(emb, np.float64))
    return mahalanobis_head(lw.location_, lw.precision_)


def fit_gmm(emb: np.ndarray, seed: int = 0) -> Head:
    """Full-covariance GMM of 1-4 components, the lowest BIC: a ``gmm`` head (scikit-learn's weights, means,
    precisions_cholesky)."""
    from sklearn.mixture import GaussianMixture

    x = np.asarray(emb, np.float64)
    fits = [GaussianMixture(k, covariance_type="full", random_state=seed).fit(x) for k in GMM_COMPONENTS if k < len(x)]
    best = min(fits, key=lambda g: g.bic(x))
    return gmm_head(best.weights_, best.means_, best.precisions_cholesky_)


def fit_inlier(emb: np.ndarray, seed: int = 0) -> Head:
    """The rule of the module docstring for one network fitted on its own clips (K = 1)."""
    return fit_gmm(emb, seed) if len(emb) >= GMM_MIN_WINDOWS else fit_mahalanobis(emb)


def stack_mahalanobis(blocks: list[Head]) -> Head:
    """One Mahalanobis head over concatenated embeddings from per-network ones: means concatenated, precisions on
    the block diagonal, so its score is the sum of the blocks' scores."""
    dims = [b.dim for b in blocks]
    precision = np.zeros((sum(dims), sum(dims)))
    at = 0
    for b, d in zip(blocks, dims):
        precision[at:at + d, at:at + d] = b.params["precision"]
        at += d
    return mahalanobis_head(np.concatenate([b.params["mean"] for b in blocks]), precision)
