"""The comparators on the same frozen embeddings (patch level; a clip's score is the mean of its patches'):

- Mahalanobis distance with the Ledoit-Wolf shrunk covariance (Ledoit & Wolf 2004, scikit-learn's
  ``LedoitWolf``): ``(e - mean)^T P (e - mean)``, P the precision; ships as a "mahalanobis" head.
- A small VAE (Kingma & Welling 2014) on the standardized embeddings, E -> 128 -> 16 -> 128 -> E; score =
  the negative ELBO with the mean latent: squared reconstruction error / 2 + KL(q(z|e) || N(0, I)).
- 1-NN cosine distance to the normal training embeddings: the frozen-feature reference, no training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def fit_mahalanobis(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ledoit-Wolf mean (E,) and precision (E, E), float64, of the training embeddings (n, E)."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(np.asarray(train, np.float64))
    return lw.location_, lw.precision_


def mahalanobis_scores(mean: np.ndarray, precision: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance per row of e (n, E): (n,) float64."""
    d = np.asarray(e, np.float64) - mean
    return np.einsum("ij,jk,ik->i", d, precision, d)


def knn_cosine_scores(train: np.ndarray, e: np.ndarray) -> np.ndarray:
    """1 - max cosine similarity to the training embeddings, per row of e: (n,) float64."""
    unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)  # noqa: E731
    return 1.0 - (unit(np.asarray(e, np.float64)) @ unit(np.asarray(train, np.float64)).T).max(axis=1)


class VAE(nn.Module):
    def __init__(self, dim: int, hidden: int = 128, latent: int = 16):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: (reconstruction term, KL term), each (n,)."""
        mu, logvar = self.enc(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        recon = 0.5 * ((self.dec(z) - x) ** 2).sum(dim=1)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(dim=1)
        return recon, kl


def fit_vae(train: np.ndarray, epochs: int = 100, seed: int = 0) -> tuple[VAE, np.ndarray, np.ndarray]:
    """A VAE on standardized embeddings (Adam 1e-3, batch 64); returns it and the standardization mean, std."""
    torch.manual_seed(seed)
    mean, std = train.mean(0), np.maximum(train.std(0), 1e-3)
    x = torch.from_numpy(((train - mean) / std).astype(np.float32))
    vae = VAE(x.shape[1])
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), 64):
            recon, kl = vae(x[order[i:i + 64]])
            loss = (recon + kl).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return vae.eval(), mean, std


def vae_scores(vae: VAE, mean: np.ndarray, std: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Negative ELBO with the mean latent per row of e: (n,) float64."""
    with torch.no_grad():
        recon, kl = vae(torch.from_numpy(((e - mean) / std).astype(np.float32)), sample=False)
    return (recon + kl).numpy().astype(np.float64)
