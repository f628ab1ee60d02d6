"""The paper's 2-D verification experiment (sec. 4.1) at a reduced budget keeps Table 1's orderings."""

import numpy as np
import torch

from edge_asd.train.verification import RingConfig, kl_divergences, ring_autoencoder, ring_samples, run


def test_ring_samples_radius_and_angle():
    x = ring_samples(20_000, 2.0, 3.0, np.random.default_rng(0))
    r = np.hypot(x[:, 0], x[:, 1])
    assert x.shape == (20_000, 2) and r.min() >= 2.0 and r.max() <= 3.0
    assert abs(np.mean(r) - 2.5) < 0.02
    assert abs(np.mean(np.arctan2(x[:, 1], x[:, 0]) > 0) - 0.5) < 0.02


def test_kl_of_a_uniform_disc_model_is_zero_against_u():
    """A model whose score is 0 inside r = 2 and huge outside is U itself: D(U || q) ~ 0."""

    class Disc(torch.nn.Module):
        def forward(self, x):  # reconstruction error = 0 inside the disc, 50 outside
            outside = (x.pow(2).sum(-1, keepdim=True) > 4).float()
            return x + outside * np.sqrt(50.0 / 2)

    kl_p, kl_u, q, _ = kl_divergences(Disc(), RingConfig(grid=201))
    assert kl_u < 1e-3
    assert kl_p > 0.1  # p = 1/(4 pi r) is not uniform


def test_table1_orderings_hold_at_a_reduced_budget():
    torch.set_num_threads(1)
    result = run(0, RingConfig(updates=1000, grid=151))
    kl_p = {k: v["kl_p"] for k, v in result.items()}
    kl_u = {k: v["kl_u"] for k, v in result.items()}
    assert kl_p["re"] > max(kl_p["snp"], kl_p["bu"])  # RE worst on D(p || q)
    assert kl_u["re"] > max(kl_u["snp"], kl_u["bu"])  # RE worst on D(U || q)
    assert kl_u["bu"] < kl_u["snp"]  # BU closest to the uniform distribution


def test_same_initial_weights_for_every_loss():
    torch.manual_seed(3)
    a = ring_autoencoder().state_dict()
    torch.manual_seed(3)
    b = ring_autoencoder().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
