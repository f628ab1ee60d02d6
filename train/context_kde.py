"""BU weights of eq. (15)-(16) from log-mel frames instead of context vectors: ~L times less arithmetic.

A context vector stacks L consecutive log-mel frames, x_i = (psi_i, ..., psi_{i+L-1}), so

    ||x_i - x_j||^2 = sum_{c=0}^{L-1} ||psi_{i+c} - psi_{j+c}||^2,

a sum of L frame distances along one diagonal of the (T, T) frame-distance matrix G. G costs
T^2 M multiply-adds (M = 64 mel bands) instead of M_u^2 D (D = L M = 1344) for the vectors' Gram
matrix. Koizumi et al. (sec. 4.2.2) normalize {x_i^(u)} to mean 0 and variance 1 per dimension before eq. (15); here each mel band m is
normalized with its statistics pooled over the L frame slots, which is the same up to the few frames
at the batch's edges (``losses.kde_weights`` is the per-dimension reference; the test compares them).
The L-term diagonal sums take log2(L) shifted additions (:func:`diagonal_window_sum`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def context_kde_weights(psi: torch.Tensor, is_u: torch.Tensor, n_context: int, sigma: float, eps: float) -> torch.Tensor:
    """w_i = 1 / (K(x_i^(u)) + eps) (eq. 15-16) for the x^(u) vectors of one mixture.

    Args:
        psi: log-mel frames of the mixture, (T, M) float; vector i stacks frames i .. i + n_context - 1.
        is_u: (T - n_context + 1,) bool, which vectors are x^(u).
        n_context: L, frames per context vector.
        sigma: KDE bandwidth of eq. (15) (sec. 4.2.2: 1 / (2D)).
        eps: epsilon of eq. (16).
    Returns:
        (M_u,) float32 weights, in the order of the x^(u) vectors; M_u = is_u.sum(). w_i <= M_u.
    """
    psi = psi.float()
    n_vec = is_u.shape[0]
    u = is_u.to(psi.dtype)
    m_u = int(is_u.sum())
    # how many x^(u) vectors hold frame t: the pooled statistics of x^(u) per mel band
    mult = F.conv1d(F.pad(u, (n_context - 1, n_context - 1))[None, None], psi.new_ones(1, 1, n_context))[0, 0]
    total = mult.sum().clamp_min(1.0)
    mean = (mult[:, None] * psi).sum(0) / total
    var = (mult[:, None] * (psi - mean) ** 2).sum(0) / total
    z = (psi - mean) / var.sqrt().clamp_min(1e-6)
    sq = z.pow(2).sum(1)
    g = torch.addmm(sq[None, :], z, z.T, alpha=-2.0).add_(sq[:, None]).clamp_min_(0.0)  # (T, T) frame distances
    g.fill_diagonal_(0.0)  # exact: the j = i term of eq. (15) is exp(0) = 1
    d2 = diagonal_window_sum(g, n_context)[:n_vec, :n_vec]  # ||x_i - x_j||^2
    k_sum = torch.exp(d2.mul_(-sigma)) @ u  # sum over j in x^(u), for every i
    return 1.0 / (k_sum[is_u] / m_u + eps)


def diagonal_window_sum(g: torch.Tensor, length: int) -> torch.Tensor:
    """out[i, j] = sum_{c < length} g[i + c, j + c], shape (T - length + 1,) * 2, by doubling (log2 passes)."""
    out, done, block, size, rest = None, 0, g, 1, length
    while rest:
        if rest & 1:  # add block (sums over `size` diagonal steps) shifted by the steps already summed
            part = block[done:, done:]
            out = part if out is None else out[:len(part), :len(part)] + part[:len(out), :len(out)]
            done += size
        rest >>= 1
        if rest:
            n = len(block) - size
            block = block[:n, :n] + block[size:size + n, size:size + n]
            size *= 2
    return out
