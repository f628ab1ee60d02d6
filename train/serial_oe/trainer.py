"""Training one Serial-OE network: read it top to bottom.

Each update draws a balanced mini-batch of 2-s crops (half normal clips of the target type, half negatives:
:class:`.data.CropSampler`), mixes it with waveform mixup with a probability ramped 0 -> 1 by mid-training
(:mod:`.mixup`), computes the log-mel windows exactly as the device does (standardized per band), and steps AdamW
under a one-cycle learning-rate schedule (Smith & Topin 2019) on L_machine + 10 L_product (:mod:`.losses`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from edge_asd.core.presets import FeatureConfig
from edge_asd.train.serial_oe.data import CropSampler, windows
from edge_asd.train.serial_oe.losses import total_loss
from edge_asd.train.serial_oe.mixup import mix, mixup_probability
from edge_asd.train.serial_oe.network import SerialOENet

log = logging.getLogger("edge_asd")

BUDGETS = {
    "short": {"updates": 300, "batch_size": 32},  # the default: docs/serial-oe.md
    "smoke": {"updates": 2, "batch_size": 4},  # the smallest run that takes every step (tests)
}
"""Named training budgets (updates of ``batch_size`` crops each)."""


@dataclass
class NetConfig:
    backbone: str = "cnn-small"
    updates: int = 300
    batch_size: int = 32
    """Crops per update, half target, half negatives."""
    lr: float = 1e-3
    """AdamW peak learning rate of the one-cycle schedule (the authors')."""
    seed: int = 0
    pretrained: bool = True
    """efficientnet-lite0: start from the ImageNet weights."""


def batch_windows(waves: np.ndarray, features: FeatureConfig, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The one window of each crop of ``features.samples_per_vector`` samples: (n, D) float32."""
    return np.concatenate([windows(w, features, mean, std)[:1] for w in waves])


def train_network(cfg: NetConfig, features: FeatureConfig, mean: np.ndarray, std: np.ndarray, sampler: CropSampler,
                  n_ids: int, progress: bool = False) -> tuple[SerialOENet, list[dict]]:
    """Train one network; return it in eval mode and the per-update log (step, lr, loss, L_machine, L_product,
    mixed). Deterministic for a seed on the CPU."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = SerialOENet(cfg.backbone, features.n_context_frames, features.n_mels, n_ids, cfg.pretrained)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.updates)
    history, t0 = [], time.perf_counter()
    net.train()
    for step in range(cfg.updates):
        waves, y_m, y_p = sampler.draw(rng, cfg.batch_size)
        mixed = rng.random() < mixup_probability(step, cfg.updates)
        if mixed:
            waves, (y_m, y_p) = mix(waves, [y_m, y_p], rng)
        x = torch.from_numpy(batch_windows(waves, features, mean, std))
        logit, logits, _ = net(x)
        loss, lm, lp = total_loss(logit, logits, torch.from_numpy(y_m), torch.from_numpy(y_p))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.append({"step": step, "lr": opt.param_groups[0]["lr"], "loss": loss.item(), "l_machine": lm.item(),
                        "l_product": lp.item(), "mixed": int(mixed)})
        if progress and (step + 1) % 50 == 0:
            log.info("update %d/%d: loss %.4f (machine %.4f, product %.4f), %.0f s", step + 1, cfg.updates,
                     loss.item(), lm.item(), lp.item(), time.perf_counter() - t0)
    return net.eval(), history


def embed(net: torch.nn.Module, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Embeddings of standardized windows (n, D) -> (n, E) float32, in eval mode."""
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(net.embed(torch.from_numpy(x[i:i + batch])).numpy())
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)
