"""Training objectives of Koizumi et al. 2019: RE (eq. 7), SNP (eqs. 9-10), BU (eqs. 15-16).

All take anomaly scores A(x) (eq. 5): ``a_u`` of the normal frames x^(u), shape (M_u,), and ``a_a``
of the frames that contain a something-else sound x^(a), shape (M_a,).
"""

from __future__ import annotations

import torch


def re_loss(a_u: torch.Tensor) -> torch.Tensor:
    """J^RE = mean of A(x^(u)) (eq. 7)."""
    return a_u.mean()


def pseudo_anomaly_term(a_a: torch.Tensor, lam: float) -> torch.Tensor:
    """L_a = mean of lambda * tanh(A(x^(a)) / lambda) (eq. 10); 0 when the batch has no x^(a)."""
    if a_a.numel() == 0:
        return a_a.new_zeros(())
    return (lam * torch.tanh(a_a / lam)).mean()


def snp_loss(a_u: torch.Tensor, a_a: torch.Tensor, lam: float) -> torch.Tensor:
    """J^SNP = mean A(x^(u)) - L_a (eq. 9)."""
    return a_u.mean() - pseudo_anomaly_term(a_a, lam)


@torch.no_grad()
def kde_weights(x_u: torch.Tensor, sigma: float, eps: float, standardize: bool = True) -> torch.Tensor:
    """BU weights w_i = 1 / (K(x_i) + eps) with the Gaussian KDE of eq. (15), shape (M_u,).

    K(x_i) = (1/M_u) sum_j exp(-sigma ||x_i - x_j||^2), on the mini-batch standardized to mean 0 and
    variance 1 per dimension (sec. 4.2.2; ``standardize=False`` keeps the raw samples, as the 2-D
    verification experiment of sec. 4.1). The M_u x M_u kernel is one matrix product, no loop.
    Since the j = i term is 1, K >= 1/M_u and w <= M_u.
    """
    x = x_u.float()
    if standardize:
        x = (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-6)
    sq = x.pow(2).sum(1)
    dist2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    dist2.fill_diagonal_(0.0)  # exact self-distance: float rounding must not shrink the j = i term
    k = torch.exp(-sigma * dist2).mean(1)
    return 1.0 / (k + eps)


def bu_loss(a_u: torch.Tensor, a_a: torch.Tensor, w: torch.Tensor, lam: float) -> torch.Tensor:
    """J^BU = sum_i w_i A(x_i^(u)) / sum_i w_i - L_a (eq. 16)."""
    return (w * a_u).sum() / w.sum() - pseudo_anomaly_term(a_a, lam)


LOSSES = ("bu", "snp", "re")


def default_params(dim: int, n_mels: int) -> dict:
    """sigma = 1/(2D) and lambda = 2M (sec. 4.2.2); epsilon of eq. (16), a small positive value."""
    return {"sigma": 1.0 / (2 * dim), "lambda": 2.0 * n_mels, "epsilon": 1e-6}


def resolve_lambda(value: str | float | None, dim: int, n_mels: int) -> float:
    """lambda of eq. (10) from ``"2M"`` (sec. 4.2.2, the paper's printed value; ``None``), ``"2D"``
    (sec. 4.1.1), ``"D"`` or a number; ``dim`` = D, the context vector's dimension, ``n_mels`` = M.

    With the sum of squared errors over D standardized dimensions (eq. 5), normal frames score in
    the hundreds to thousands, so 2M = 128 (koizumi2019) saturates tanh and L_a stops pushing the
    pseudo-anomalies' scores up; 2D and D follow the paper's stated policy (lambda near the largest
    anomaly score of normal training samples) instead. edge-train's default is D, measured best on the
    local IDs (docs/defaults.md). Raises ValueError for anything else.
    """
    named = {"2M": 2.0 * n_mels, "2D": 2.0 * dim, "D": float(dim)}
    if value is None:
        return named["2M"]
    if str(value).upper() in named:
        return named[str(value).upper()]
    lam = float(value)
    if not lam > 0:
        raise ValueError(f"lambda must be positive, not {value}")
    return lam
