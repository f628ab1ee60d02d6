"""The verification experiment of Koizumi et al. 2019, sec. 4.1 (Table 1, Figs. 2-3).

Normal samples lie on a disc: x = r (cos psi, sin psi), r ~ U[0, 2], psi ~ U[0, 2 pi), so that
p(x) = 1 / (4 pi r) is high near the centre and low at the rim ("rare normal"). Anomalies have
r ~ U[2, 3] (the text's second U[0, 2] is a typo: anomalies lie outside r = 2) and are used directly
as x^(a). An AE 2-20-10-20-2 with sigmoid activations is trained with RE, SNP and BU from the same
initial weights, and q_theta(x) = exp(-A(x)) / Z (eq. 6) is compared with p(x) and with the uniform
distribution U(x) = 1 / (4 pi) on the disc by the Kullback-Leibler divergence, on a grid over
[-3, 3]^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edge_asd.train.losses import bu_loss, kde_weights, re_loss, snp_loss

PAPER_TABLE1 = {"re": (1.395, 0.913), "snp": (0.222, 0.333), "bu": (0.403, 0.083)}
"""(D(p || q_theta), D(U || q_theta)) as printed in Table 1."""


@dataclass(frozen=True)
class RingConfig:
    n_samples: int = 10_000
    batch: int = 500
    """M_u = M_a."""
    updates: int = 5000
    lr: float = 1e-3
    sigma: float = 4.0
    """2D with D = 2 (sec. 4.1.1)."""
    lam: float = 4.0
    """2D (sec. 4.1.1)."""
    epsilon: float = 1e-6
    grid: int = 301
    """Grid points per axis over [-3, 3]."""


def ring_samples(n: int, r_low: float, r_high: float, rng: np.random.Generator) -> np.ndarray:
    """n points with radius ~ U[r_low, r_high] and angle ~ U[0, 2 pi): shape (n, 2), float32."""
    r = rng.uniform(r_low, r_high, n)
    psi = rng.uniform(0.0, 2 * np.pi, n)
    return np.stack([r * np.cos(psi), r * np.sin(psi)], axis=1).astype(np.float32)


def ring_autoencoder() -> nn.Sequential:
    """2-20-10-20-2, sigmoid after every layer but the last, Glorot-uniform weights, zero biases."""
    ae = nn.Sequential(nn.Linear(2, 20), nn.Sigmoid(), nn.Linear(20, 10), nn.Sigmoid(),
                       nn.Linear(10, 20), nn.Sigmoid(), nn.Linear(20, 2))
    for m in ae:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return ae


def train_ring(loss: str, init_state: dict, normal: np.ndarray, anomalous: np.ndarray, cfg: RingConfig,
               seed: int) -> nn.Sequential:
    """Train one AE from ``init_state`` with loss "re", "snp" or "bu" (eqs. 7, 9, 16)."""
    torch.manual_seed(seed)
    ae = ring_autoencoder()
    ae.load_state_dict(init_state)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr, amsgrad=True)
    xn, xa = torch.from_numpy(normal), torch.from_numpy(anomalous)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.updates):
        x_u = xn[torch.randint(len(xn), (cfg.batch,), generator=gen)]
        x_a = xa[torch.randint(len(xa), (cfg.batch,), generator=gen)]
        a_u = (x_u - ae(x_u)).pow(2).sum(-1)
        a_a = (x_a - ae(x_a)).pow(2).sum(-1)
        if loss == "re":
            objective = re_loss(a_u)
        elif loss == "snp":
            objective = snp_loss(a_u, a_a, cfg.lam)
        else:  # the 2-D experiment uses the raw samples for the KDE (standardization is sec. 4.2.2's)
            objective = bu_loss(a_u, a_a, kde_weights(x_u, cfg.sigma, cfg.epsilon, standardize=False), cfg.lam)
        opt.zero_grad(set_to_none=True)
        objective.backward()
        opt.step()
    return ae.eval()


def grid_points(cfg: RingConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """(axis values (G,), points (G*G, 2) float32, cell area) of the grid over [-3, 3]^2."""
    axis = np.linspace(-3.0, 3.0, cfg.grid)
    xx, yy = np.meshgrid(axis, axis, indexing="xy")
    return axis, np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32), float((axis[1] - axis[0]) ** 2)


def kl_divergences(ae: nn.Module, cfg: RingConfig) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(D(p || q), D(U || q), q on the grid (G, G), A on the grid (G, G)), q from eq. (6) normalized on the grid."""
    _, pts, cell = grid_points(cfg)
    with torch.no_grad():
        x = torch.from_numpy(pts)
        score = (x - ae(x)).pow(2).sum(-1).double().numpy()
    log_q = -score - np.log(np.exp(-(score - score.min())).sum() * cell) + score.min()
    r = np.hypot(pts[:, 0], pts[:, 1])
    inside = (r <= 2.0) & (r > 0)
    p = np.where(inside, 1.0 / (4 * np.pi * np.maximum(r, 1e-12)), 0.0)
    p /= p.sum() * cell  # the grid's own normalization (the 1/r peak is sampled, not integrated)
    u = np.where(r <= 2.0, 1.0, 0.0)
    u /= u.sum() * cell
    kl_p = float(np.sum(p[inside] * (np.log(p[inside]) - log_q[inside])) * cell)
    kl_u = float(np.sum(u[r <= 2.0] * (np.log(u[r <= 2.0]) - log_q[r <= 2.0])) * cell)
    g = cfg.grid
    return kl_p, kl_u, np.exp(log_q).reshape(g, g), score.reshape(g, g)


def run(seed: int, cfg: RingConfig = RingConfig(), losses=("re", "snp", "bu")) -> dict[str, dict]:
    """One seed of the experiment: {loss: {"kl_p", "kl_u", "q", "score"}}, same initial weights for all."""
    rng = np.random.default_rng(seed)
    normal = ring_samples(cfg.n_samples, 0.0, 2.0, rng)
    anomalous = ring_samples(cfg.n_samples, 2.0, 3.0, rng)
    torch.manual_seed(seed)
    init_state = {k: v.clone() for k, v in ring_autoencoder().state_dict().items()}
    out = {}
    for loss in losses:
        ae = train_ring(loss, init_state, normal, anomalous, cfg, seed)
        kl_p, kl_u, q, score = kl_divergences(ae, cfg)
        out[loss] = {"kl_p": kl_p, "kl_u": kl_u, "q": q, "score": score}
    return out
