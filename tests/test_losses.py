"""edge_asd.train.losses against hand computations of Koizumi et al. 2019, eqs. (7), (9)-(10), (15)-(16).

The reference values are computed with explicit Python loops in float64, independently of the
vectorized implementation (matrix-product KDE, torch reductions).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edge_asd.train.losses import (
    bu_loss,
    default_params,
    kde_weights,
    pseudo_anomaly_term,
    re_loss,
    snp_loss,
)

# a tiny batch: M_u = 5 normal vectors, M_a = 3 pseudo-anomalous ones, D = 4
X_U = [
    [0.3, -1.2, 2.0, 0.5],
    [0.1, -0.9, 1.7, 0.4],
    [2.5, 0.8, -0.3, 0.1],
    [0.2, -1.0, 1.9, 0.7],
    [-1.4, 3.1, 0.6, -2.2],
]
A_U = [3.0, 1.5, 7.25, 0.4, 12.0]
A_A = [0.5, 4.0, 30.0]


def hand_standardize(x):
    """Per dimension: mean 0, variance 1 (population variance, sec. 4.2.2)."""
    m, d = len(x), len(x[0])
    out = [[0.0] * d for _ in range(m)]
    for k in range(d):
        mean = sum(x[i][k] for i in range(m)) / m
        var = sum((x[i][k] - mean) ** 2 for i in range(m)) / m
        for i in range(m):
            out[i][k] = (x[i][k] - mean) / math.sqrt(var)
    return out


def hand_weights(x, sigma, eps):
    """w_i = 1 / (K(x_i) + eps), K(x_i) = 1/M_u sum_j exp(-sigma ||x_i - x_j||^2) (eqs. 15-16)."""
    z = hand_standardize(x)
    m = len(z)
    w = []
    for i in range(m):
        k = 0.0
        for j in range(m):
            dist2 = sum((z[i][d] - z[j][d]) ** 2 for d in range(len(z[i])))
            k += math.exp(-sigma * dist2)
        k /= m
        w.append(1.0 / (k + eps))
    return w


def hand_la(a_a, lam):
    """L_a = 1/M_a sum_j lambda tanh(A_j / lambda) (eq. 10); 0 without x^(a)."""
    if not a_a:
        return 0.0
    return sum(lam * math.tanh(a / lam) for a in a_a) / len(a_a)


def t(values):
    return torch.tensor(values, dtype=torch.float64)


# --- BU (eqs. 15-16) -------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma, eps", [(1.0 / (2 * 4), 1e-6), (0.3, 0.05), (0.02, 1e-6)])
def test_kde_weights_equal_hand_computation(sigma, eps):
    want = hand_weights(X_U, sigma, eps)
    got = kde_weights(t(X_U), sigma, eps)
    assert got.shape == (5,)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5)
    # the weights are not all equal on this batch: the test would notice a missing kernel term
    assert max(want) / min(want) > 1.15


def test_kde_weights_use_the_standardized_batch():
    """Standardization per dimension (sec. 4.2.2): any per-dimension affine rescaling gives the same weights."""
    x = t(X_U)
    scaled = x * t([100.0, 0.01, 3.0, 7.0]) + t([5.0, -2.0, 0.0, 1e3])
    np.testing.assert_allclose(kde_weights(scaled, 0.3, 1e-6).numpy(), kde_weights(x, 0.3, 1e-6).numpy(),
                               rtol=1e-4)
    # and the raw (unstandardized) batch would give different weights
    raw_hand = []
    for i in range(5):
        k = sum(math.exp(-0.3 * sum((X_U[i][d] - X_U[j][d]) ** 2 for d in range(4))) for j in range(5)) / 5
        raw_hand.append(1.0 / (k + 1e-6))
    assert not np.allclose(kde_weights(x, 0.3, 1e-6).numpy(), raw_hand, rtol=1e-3)


def test_bu_loss_equals_hand_computation():
    sigma, eps, lam = 0.3, 0.05, 6.0
    w = hand_weights(X_U, sigma, eps)
    want = sum(wi * ai for wi, ai in zip(w, A_U)) / sum(w) - hand_la(A_A, lam)
    got = bu_loss(t(A_U), t(A_A), kde_weights(t(X_U), sigma, eps).double(), lam)
    assert got.shape == ()
    assert got.item() == pytest.approx(want, rel=1e-6)
    # the weighted mean differs from the plain mean on this batch (so the weights matter)
    assert abs(want - (sum(A_U) / 5 - hand_la(A_A, lam))) > 0.1


def test_kde_weights_favour_the_isolated_sample_and_stay_below_m_u():
    rng = np.random.default_rng(0)
    cluster = rng.normal(0.0, 0.1, size=(11, 6))
    rare = np.full((1, 6), 3.0)
    x = torch.from_numpy(np.concatenate([cluster[:4], rare, cluster[4:]]))  # the rare one is at index 4
    m_u = len(x)
    for sigma in (1.0 / (2 * 6), 0.5):
        w = kde_weights(x, sigma, 1e-6)
        assert int(torch.argmax(w)) == 4
        assert w[4] > 2 * torch.cat([w[:4], w[5:]]).max()
        assert torch.all(w > 0)
        assert torch.all(w <= m_u * (1 + 1e-5))


@pytest.mark.parametrize("seed", range(5))
def test_kde_weights_are_bounded_by_m_u_on_random_batches(seed):
    """The j = i kernel term is exp(0) = 1, so K >= 1/M_u and w < M_u, whatever sigma."""
    rng = np.random.default_rng(seed)
    m_u, d = int(rng.integers(2, 40)), int(rng.integers(1, 30))
    x = torch.from_numpy(rng.normal(0, 1, (m_u, d)) * rng.uniform(0.1, 10, d))
    for sigma in (1.0 / (2 * d), 1.0, 50.0):
        w = kde_weights(x, sigma, 1e-6)
        assert torch.all(torch.isfinite(w)) and torch.all(w > 0)
        assert torch.all(w <= m_u * (1 + 1e-5)), (sigma, float(w.max()), m_u)


@pytest.mark.parametrize("dim", [64, 1344])
def test_kde_self_term_is_exact_for_a_large_bandwidth_parameter(dim):
    """sigma = 2D (the choice of sec. 4.1.1): distinct standardized samples are all isolated, so
    K(x_i) = 1/M_u exactly (only the j = i term) and every w_i = M_u / (1 + M_u eps)."""
    m_u, eps = 20, 1e-6
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (m_u, dim)))
    w = kde_weights(x, 2.0 * dim, eps)
    np.testing.assert_allclose(w.numpy(), m_u / (1 + m_u * eps), rtol=1e-5)


def test_kde_weights_survive_a_constant_dimension():
    x = t(X_U)
    x[:, 2] = 4.2  # zero variance in one dimension
    w = kde_weights(x, 0.3, 1e-6)
    assert torch.all(torch.isfinite(w))
    # the constant dimension contributes no distance: same as the batch without it
    want = hand_weights([row[:2] + row[3:] for row in X_U], 0.3, 1e-6)
    np.testing.assert_allclose(w.double().numpy(), want, rtol=1e-5)


# --- RE (eq. 7) and SNP (eqs. 9-10) ----------------------------------------------------------------


def test_re_loss_equals_hand_computation():
    assert re_loss(t(A_U)).item() == pytest.approx(sum(A_U) / len(A_U), rel=1e-12)


@pytest.mark.parametrize("lam", [2.0, 6.0, 128.0])
def test_snp_loss_and_pseudo_anomaly_term_equal_hand_computation(lam):
    assert pseudo_anomaly_term(t(A_A), lam).item() == pytest.approx(hand_la(A_A, lam), rel=1e-12)
    want = sum(A_U) / len(A_U) - hand_la(A_A, lam)
    assert snp_loss(t(A_U), t(A_A), lam).item() == pytest.approx(want, rel=1e-12)


def test_pseudo_anomaly_term_is_clipped_at_lambda():
    lam = 5.0
    la = pseudo_anomaly_term(t([1e6, 1e9]), lam).item()
    assert la == pytest.approx(lam, rel=1e-9)
    assert pseudo_anomaly_term(t([1e-3]), lam).item() == pytest.approx(1e-3, rel=1e-6)  # ~identity near 0


def test_empty_x_a_gives_zero_pseudo_anomaly_term():
    empty = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    la = pseudo_anomaly_term(empty, 6.0)
    assert la.item() == 0.0 and la.shape == ()
    a_u = t(A_U).requires_grad_(True)
    w = kde_weights(t(X_U), 0.3, 0.05).double()
    loss = bu_loss(a_u, empty, w, 6.0)
    want = sum(wi * ai for wi, ai in zip(w.tolist(), A_U)) / float(w.sum())
    assert torch.isfinite(loss) and loss.item() == pytest.approx(want, rel=1e-9)
    assert snp_loss(a_u, empty, 6.0).item() == pytest.approx(sum(A_U) / 5, rel=1e-12)
    loss.backward()  # no NaN from a mean over nothing
    assert torch.all(torch.isfinite(a_u.grad))


# --- gradients -------------------------------------------------------------------------------------


def test_bu_gradients_flow_through_scores_but_not_through_weights():
    sigma, eps, lam = 0.3, 0.05, 6.0
    x_u = t(X_U).requires_grad_(True)
    a_u = (x_u ** 2).sum(1)  # a score that depends on x_u, like A(x) of an autoencoder
    a_a = t(A_A).requires_grad_(True)
    w = kde_weights(x_u, sigma, eps)
    assert not w.requires_grad and w.grad_fn is None
    loss = bu_loss(a_u, a_a, w.double(), lam)
    loss.backward()

    wn = np.array(hand_weights(X_U, sigma, eps))
    # d/dx_i [sum_k w_k A_k / sum w] with the weights held constant: (w_i / sum w) 2 x_i
    want_x = (wn / wn.sum())[:, None] * 2 * np.array(X_U)
    np.testing.assert_allclose(x_u.grad.numpy(), want_x, rtol=1e-5)
    # d/dA_j [-L_a] = -(1/M_a) (1 - tanh^2(A_j / lambda))
    want_a = [-(1 - math.tanh(a / lam) ** 2) / len(A_A) for a in A_A]
    np.testing.assert_allclose(a_a.grad.numpy(), want_a, rtol=1e-9)


def test_snp_gradients():
    lam = 6.0
    a_u = t(A_U).requires_grad_(True)
    a_a = t(A_A).requires_grad_(True)
    snp_loss(a_u, a_a, lam).backward()
    np.testing.assert_allclose(a_u.grad.numpy(), [1 / 5] * 5, rtol=1e-12)
    np.testing.assert_allclose(a_a.grad.numpy(), [-(1 - math.tanh(a / lam) ** 2) / 3 for a in A_A], rtol=1e-9)


# --- parameters ------------------------------------------------------------------------------------


def test_default_params_follow_sec_4_2_2():
    p = default_params(1344, 64)
    assert p["sigma"] == pytest.approx(1 / (2 * 1344))
    assert p["lambda"] == pytest.approx(2 * 64)
    assert 0 < p["epsilon"] < 1e-3
    p = default_params(640, 128)
    assert p["sigma"] == pytest.approx(1 / 1280) and p["lambda"] == pytest.approx(256)


def test_resolve_lambda_names_and_numbers():
    from edge_asd.train.losses import resolve_lambda

    assert resolve_lambda(None, 1344, 64) == resolve_lambda("2M", 1344, 64) == 128.0
    assert resolve_lambda("D", 1344, 64) == resolve_lambda("d", 1344, 64) == 1344.0
    assert resolve_lambda("2D", 1344, 64) == 2688.0
    assert resolve_lambda("2d", 1344, 64) == 2688.0
    assert resolve_lambda("300", 1344, 64) == 300.0
    for bad in ("-1", "0", "nan", "two"):
        with pytest.raises(ValueError):
            resolve_lambda(bad, 1344, 64)


def test_unsaturated_lambda_keeps_the_pseudo_anomaly_gradient():
    """Why 2D exists: at A(x^(a)) ~ 1000, lambda = 128 leaves almost no gradient; lambda = 2688 keeps most."""
    for lam, low, high in ((128.0, 0.0, 1e-5), (2688.0, 0.8, 1.0)):
        a_a = torch.tensor([1000.0], requires_grad=True)
        pseudo_anomaly_term(a_a, lam).backward()
        assert low <= float(a_a.grad) <= high
