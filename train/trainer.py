"""The training loop: read it top to bottom.

One update = one mini-batch of sec. 4.2.1 (a 30-s mixture split into x^(u) and x^(a)); the loss is RE,
SNP or BU; the optimizer is AMSGrad (sec. 4.2.2) with the paper's schedule shape: the learning rate is
fixed for the first half of training, then decays linearly to 1/100 of it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import torch

from edge_asd.edge.features import standardize
from edge_asd.edge.presets import FeatureConfig

from .batches import BatchBuilder, BatchConfig
from .losses import bu_loss, kde_weights, re_loss, resolve_lambda, snp_loss
from .model import ARCHS, anomaly_score, build_autoencoder

log = logging.getLogger("edge_asd")
CHECKPOINT_SCHEMA = 1


@dataclass
class TrainConfig:
    machine_type: str
    machine_ids: list[str]
    preset: str
    arch: str = "fcn-small"
    loss: str = "bu"
    epochs: int = 20
    batches_per_epoch: int = 50
    lr: float = 1e-3
    """Initial AMSGrad step size (paper: 1e-4 over 200 x 500 updates)."""
    seed: int = 0
    device: str = "auto"
    sigma: float | None = None
    """KDE bandwidth of eq. (15); None = 1/(2D)."""
    lam: float | str | None = None
    """lambda of eq. (10): a number, "2M" or "2D"; None = 2M."""
    epsilon: float = 1e-6
    """epsilon of eq. (16)."""
    batch: BatchConfig = field(default_factory=BatchConfig)


SCHEDULES = {
    "short": {"epochs": 20, "batches_per_epoch": 50, "lr": 1e-3},  # a laptop: ~1000 updates, minutes on 2 cores
    "paper": {"epochs": 200, "batches_per_epoch": 500, "lr": 1e-4},  # sec. 4.2.2: 100 epochs fixed, 100 decaying
}
"""Named budgets; both use :func:`lr_at`'s shape."""


def lr_at(step: int, total: int, base: float) -> float:
    """Fixed for the first half, then linear decay to base/100 at the last step (sec. 4.2.2)."""
    half = total // 2
    if step < half:
        return base
    frac = (step - half) / max(1, total - 1 - half)
    return base * (1.0 - 0.99 * frac)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from edge_asd.edge.errors import EdgeAsdError

        raise EdgeAsdError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto")
    return torch.device(name)


def train(cfg: TrainConfig, features: FeatureConfig, normal_clips: list[np.ndarray],
          something_else: list[np.ndarray] | None, mean: np.ndarray, std: np.ndarray,
          progress: bool = True) -> dict:
    """Train an autoencoder; return the checkpoint dict (weights, arch, features, normalization, loss).

    ``normal_clips`` / ``something_else``: mono float32 at ``features.sample_rate``; ``mean``/``std``:
    per-mel-band statistics (n_mels,) used to standardize every context vector.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    dim = features.dim
    sigma = cfg.sigma if cfg.sigma is not None else 1.0 / (2 * dim)
    lam = resolve_lambda(cfg.lam, dim, features.n_mels)
    arch = {"name": cfg.arch, "dim": dim, **ARCHS[cfg.arch]}
    ae = build_autoencoder(arch).to(device).train()
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr, amsgrad=True)
    builder = BatchBuilder(normal_clips, something_else, features, cfg.batch)

    total = cfg.epochs * cfg.batches_per_epoch
    history = []
    bar = _progress(total, progress)
    t_start, n_frames = time.perf_counter(), 0
    for step in range(total):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, cfg.lr)
        batch = builder.draw(rng)
        x_u = torch.as_tensor(standardize(batch.x_u, mean, std), device=device)  # the device's own code
        x_a = torch.as_tensor(standardize(batch.x_a, mean, std), device=device)
        a_u, a_a = anomaly_score(ae, x_u), anomaly_score(ae, x_a)
        if cfg.loss == "re":
            loss = re_loss(a_u)
        elif cfg.loss == "snp":
            loss = snp_loss(a_u, a_a, lam)
        else:
            loss = bu_loss(a_u, a_a, kde_weights(x_u, sigma, cfg.epsilon), lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n_frames += len(x_u) + len(x_a)
        history.append({"step": step, "lr": opt.param_groups[0]["lr"], "loss": loss.item(), "score_u": a_u.mean().item(),
                        "score_a": a_a.mean().item() if len(x_a) else float("nan")})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]['loss']:.1f}", A_u=f"{history[-1]['score_u']:.0f}",
                            fps=f"{n_frames / (time.perf_counter() - t_start):.0f}")
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t_start
    log.info("trained %d updates in %.1f s (%.0f frames/s) on %s", total, elapsed, n_frames / elapsed, device)
    return {
        "schema": CHECKPOINT_SCHEMA,
        "model_state": {k: v.detach().cpu() for k, v in ae.state_dict().items()},
        "arch": arch,
        "features": {"preset": cfg.preset, "config": features.to_dict()},
        "normalization": {"axis": "mel_band", "mean": mean.tolist(), "std": std.tolist()},
        "loss": {"name": cfg.loss, "params": {"sigma": sigma, "lambda": lam, "epsilon": cfg.epsilon}},
        "machine_type": cfg.machine_type,
        "machine_ids": cfg.machine_ids,
        "train_config": _jsonable(asdict(cfg)),
        "history": history,
        "train_seconds": elapsed,
        "device": str(device),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="edge-train", unit="batch", dynamic_ncols=True)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
