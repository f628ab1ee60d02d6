"""Fully-connected autoencoders of Koizumi et al. 2019, sec. 4.2.2, and the anomaly-score head.

Encoder: one input FCN layer (D -> U), H hidden layers (U -> U), one output layer (U -> Z); the
decoder mirrors it (Z -> U, H x U -> U, U -> D). ReLU follows every layer except the decoder's output
layer; weights use Glorot (Xavier) uniform initialisation, biases start at 0.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHS: dict[str, dict] = {
    "fcn-small": {"hidden_layers": 2, "units": 128, "bottleneck": 40},  # FCN40/64-small
    "fcn-large": {"hidden_layers": 4, "units": 512, "bottleneck": 128},  # FCN40/64-large
    "dcase2020": {"hidden_layers": 3, "units": 128, "bottleneck": 8},  # DCASE 2020 Task 2 baseline, with BatchNorm
}


class FCNAutoencoder(nn.Module):
    """``forward``: (n, D) float32 -> reconstruction (n, D).

    ``batch_norm=True`` puts BatchNorm before each ReLU: the DCASE 2020 Task 2 baseline
    (640-128-128-128-128-8 and its mirror, trained with MSE, i.e. ``--loss re``).
    """

    def __init__(self, dim: int, hidden_layers: int, units: int, bottleneck: int, batch_norm: bool = False):
        super().__init__()
        self.config = {"dim": dim, "hidden_layers": hidden_layers, "units": units, "bottleneck": bottleneck}
        enc = [dim] + [units] * (hidden_layers + 1) + [bottleneck]
        dec = enc[::-1]
        self.encoder = _mlp(enc, relu_last=True, batch_norm=batch_norm)
        self.decoder = _mlp(dec, relu_last=False, batch_norm=batch_norm)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _mlp(sizes: list[int], relu_last: bool, batch_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if relu_last or i < len(sizes) - 2:
            layers += [nn.BatchNorm1d(b), nn.ReLU()] if batch_norm else [nn.ReLU()]
    return nn.Sequential(*layers)


def anomaly_score(ae: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A(x) = ||x - D(E(x))||_2^2 (eq. 5), (n, D) -> (n,)."""
    return (x - ae(x)).pow(2).sum(dim=-1)


class ScoreModel(nn.Module):
    """The exported graph: standardized context vectors (n, D) -> anomaly scores (n,) (eq. 5)."""

    def __init__(self, ae: nn.Module):
        super().__init__()
        self.ae = ae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return anomaly_score(self.ae, x)


def build_autoencoder(arch: dict) -> FCNAutoencoder:
    """From a checkpoint's ``arch`` dict: {"name", "dim", "hidden_layers", "units", "bottleneck"}."""
    return FCNAutoencoder(arch["dim"], arch["hidden_layers"], arch["units"], arch["bottleneck"],
                          batch_norm=arch["name"] == "dcase2020")
