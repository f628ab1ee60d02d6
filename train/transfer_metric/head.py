"""Deep SVDD compactness head (Ruff et al., "Deep One-Class Classification", ICML 2018, sec. 3.1, eq. 4).

An MLP phi without bias terms (a bias would let phi map everything onto the centre, the trivial solution)
maps standardized embeddings e, ``(n, E)``, to ``(n, Z)``; the loss is the one-class objective
``mean_i ||phi(e_i) - c||^2`` (plus weight decay), the centre c fixed to the mean of phi over the normal
training embeddings at initialisation (coordinates nearer 0 than ``eps`` pushed to +-eps, as Ruff's code
does). The anomaly score of a patch is ``||phi(e) - c||^2``; a clip's is the mean over its patches.

The number of epochs is chosen on cross-fitted normals: the clips split into 2 folds, phi trained on one and
its loss measured on the other after every epoch; the epoch with the lowest mean held-out loss (relative to
its first epoch's, so the folds weigh alike) is the count the final phi, trained on all clips, runs for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

EPS = 0.1
"""Ruff et al.'s eps: centre coordinates with |c_j| < eps become +-eps."""


class Phi(nn.Module):
    """E -> hidden -> Z, LeakyReLU, no biases; the input standardization (mean, std of the training embeddings)
    is a fixed part of it, so the exported graph takes raw embeddings."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: int = 256, z: int = 64):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.net = nn.Sequential(nn.Linear(len(mean), hidden, bias=False), nn.LeakyReLU(0.1),
                                 nn.Linear(hidden, z, bias=False))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net((e - self.mean) / self.std)


def svdd_loss(z: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """One-class Deep SVDD objective without the weight decay: mean over the batch of ||z_i - c||^2."""
    return ((z - centre) ** 2).sum(dim=1).mean()


def initial_centre(phi: Phi, e: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """c = mean of phi(e) over the training embeddings, small coordinates pushed to +-eps."""
    with torch.no_grad():
        c = phi(e).mean(dim=0)
    c[(c.abs() < eps) & (c < 0)] = -eps
    c[(c.abs() < eps) & (c >= 0)] = eps
    return c


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 256
    z: int = 64
    max_epochs: int = 60
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-6


def _fit(train: np.ndarray, cfg: HeadConfig, epochs: int, seed: int, held_out: np.ndarray | None = None):
    """Train phi on ``train`` (n, E) for ``epochs``; returns (phi, centre, held-out loss per epoch)."""
    torch.manual_seed(seed)
    mean, std = train.mean(0), np.maximum(train.std(0), 1e-3)
    phi = Phi(mean, std, cfg.hidden, cfg.z)
    x = torch.from_numpy(np.ascontiguousarray(train, np.float32))
    centre = initial_centre(phi, x)
    opt = torch.optim.Adam(phi.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(seed)
    held = None if held_out is None else torch.from_numpy(np.ascontiguousarray(held_out, np.float32))
    curve = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), cfg.batch):
            loss = svdd_loss(phi(x[order[i:i + cfg.batch]]), centre)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if held is not None:
            with torch.no_grad():
                curve.append(float(svdd_loss(phi(held), centre)))
    return phi.eval(), centre, np.array(curve)


def choose_epochs(clips: list[np.ndarray], cfg: HeadConfig, seed: int) -> tuple[int, np.ndarray]:
    """The epoch count with the lowest mean relative held-out loss over 2 cross-fitted folds of the clips
    (per clip embeddings (n_i, E)); returns it and the mean curve. Fewer than 2 clips: ``cfg.max_epochs``."""
    if len(clips) < 2:
        return cfg.max_epochs, np.array([])
    fold = np.random.default_rng(seed).permutation(len(clips)) % 2
    curves = []
    for k in (0, 1):
        train = np.concatenate([c for c, f in zip(clips, fold) if f != k])
        held = np.concatenate([c for c, f in zip(clips, fold) if f == k])
        curve = _fit(train, cfg, cfg.max_epochs, seed, held)[2]
        curves.append(curve / curve[0])
    mean = np.mean(curves, axis=0)
    return int(np.argmin(mean)) + 1, mean


def fit_head(clips: list[np.ndarray], cfg: HeadConfig = HeadConfig(), seed: int = 0) -> tuple[Phi, np.ndarray, dict]:
    """Deep SVDD on the normal clips' patch embeddings; returns phi, the centre c (Z,) float32, and a record
    {"epochs", "heldout_curve"} of the early stopping."""
    epochs, curve = choose_epochs(clips, cfg, seed)
    phi, centre, _ = _fit(np.concatenate(clips), cfg, epochs, seed)
    return phi, centre.numpy().astype(np.float32), {"epochs": epochs, "heldout_curve": [round(float(v), 5) for v in curve]}


def svdd_scores(phi: Phi, centre: np.ndarray, e: np.ndarray) -> np.ndarray:
    """||phi(e) - c||^2 per row of e (n, E): (n,) float64."""
    with torch.no_grad():
        z = phi(torch.from_numpy(np.array(e, np.float32))).numpy().astype(np.float64)
    return ((z - centre) ** 2).sum(axis=1)
