"""The device's numpy BU trainer is the paper's loss: same value and gradients as train/losses.py under
torch.autograd, and the same AMSGrad steps as torch.optim.Adam(amsgrad=True)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_asd.edge.finetune import autoencoder as nf
from edge_asd.train import losses
from edge_asd.train.model import FCNAutoencoder, anomaly_score


def _setup(seed=0, dim=24):
    torch.manual_seed(seed)
    ae = FCNAutoencoder(dim, hidden_layers=1, units=16, bottleneck=6)
    for p in ae.parameters():  # non-zero biases, so their gradients are tested too
        torch.nn.init.normal_(p, std=0.3)
    rng = np.random.default_rng(seed)
    x_u = rng.standard_normal((50, dim)).astype(np.float32)
    x_a = (rng.standard_normal((9, dim)) * 2.0).astype(np.float32)
    lin = [m for m in ae.modules() if isinstance(m, torch.nn.Linear)]
    layers = [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in lin]
    return ae, lin, layers, x_u, x_a


def test_kde_weights_match_torch():
    _, _, _, x_u, _ = _setup()
    sigma = 1.0 / (2 * x_u.shape[1])
    ref = losses.kde_weights(torch.from_numpy(x_u), sigma, 1e-6).numpy()
    np.testing.assert_allclose(nf.kde_weights(x_u, sigma, 1e-6), ref, rtol=1e-4)


@pytest.mark.parametrize("loss", ["bu", "snp", "re"])
def test_loss_and_gradients_match_torch_autograd(loss):
    ae, lin, layers, x_u, x_a = _setup()
    dim = x_u.shape[1]
    sigma, lam, eps = 1.0 / (2 * dim), 2.0 * dim, 1e-6
    tu, ta = torch.from_numpy(x_u), torch.from_numpy(x_a)
    a_u, a_a = anomaly_score(ae, tu), anomaly_score(ae, ta)
    ref = {"re": lambda: losses.re_loss(a_u), "snp": lambda: losses.snp_loss(a_u, a_a, lam),
           "bu": lambda: losses.bu_loss(a_u, a_a, losses.kde_weights(tu, sigma, eps), lam)}[loss]()
    ref.backward()

    j, grads, nu, na = nf.loss_and_grads(layers, x_u, x_a, loss, sigma, lam, eps)
    assert j == pytest.approx(ref.item(), rel=1e-4)
    np.testing.assert_allclose(nu, a_u.detach().numpy(), rtol=1e-4)
    for (gw, gb), m in zip(grads, lin):
        np.testing.assert_allclose(gw, m.weight.grad.numpy(), rtol=1e-3, atol=1e-5 * np.abs(m.weight.grad.numpy()).max())
        np.testing.assert_allclose(gb, m.bias.grad.numpy(), rtol=1e-3, atol=1e-5 * np.abs(m.bias.grad.numpy()).max())


def test_amsgrad_follows_torch_adam_amsgrad():
    ae, lin, layers, x_u, x_a = _setup(seed=1)
    dim = x_u.shape[1]
    opt_t = torch.optim.Adam(ae.parameters(), lr=1e-2, amsgrad=True)
    opt_n = nf.AMSGrad(lr=1e-2)
    params = nf.flat_params(layers)
    for _ in range(5):
        opt_t.zero_grad()
        tu = torch.from_numpy(x_u)
        losses.bu_loss(anomaly_score(ae, tu), anomaly_score(ae, torch.from_numpy(x_a)),
                       losses.kde_weights(tu, 1 / (2 * dim), 1e-6), 2.0 * dim).backward()
        opt_t.step()
        _, grads, _, _ = nf.loss_and_grads(layers, x_u, x_a, "bu", 1 / (2 * dim), 2.0 * dim, 1e-6)
        opt_n.step(params, [g for pair in grads for g in pair])
    for (w, b), m in zip(layers, lin):
        np.testing.assert_allclose(w, m.weight.detach().numpy(), atol=1e-4)
        np.testing.assert_allclose(b, m.bias.detach().numpy(), atol=1e-4)


def test_training_lowers_the_normal_scores():
    """A few hundred numpy updates on Gaussian 'normal' data bring A(x_u) down, as the paper's loss should."""
    _, _, layers, x_u, x_a = _setup(seed=2)
    dim = x_u.shape[1]
    before = nf.anomaly_score(layers, x_u).mean()
    opt, params = nf.AMSGrad(lr=3e-3), nf.flat_params(layers)
    for _ in range(300):
        _, grads, _, _ = nf.loss_and_grads(layers, x_u, x_a, "bu", 1 / (2 * dim), 2.0 * dim, 1e-6)
        opt.step(params, [g for pair in grads for g in pair])
    assert nf.anomaly_score(layers, x_u).mean() < 0.5 * before
