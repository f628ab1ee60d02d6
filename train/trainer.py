"""The training loop: read it top to bottom.

One update = one mini-batch of sec. 4.2.1 (a 30-s mixture split into x^(u) and x^(a)); the loss is RE,
SNP or BU; the optimizer is AMSGrad (sec. 4.2.2) with the paper's schedule shape: the learning rate is
fixed for the first half of training, then decays linearly to 1/100 of it. Mini-batches are prepared
in a background thread (``pipeline``); on CUDA the forward pass runs under autocast (bf16, or fp16 with
a GradScaler). With a validation split, every epoch ends with the pseudo-anomaly AUC (``validation``),
the best epoch's weights are kept, training stops after ``patience`` epochs without improvement, and
the full training state is written to ``state_path`` so that ``resume=True`` continues it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from edge_asd.core.batches import BatchBuilder, BatchConfig
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.presets import FeatureConfig
from edge_asd.train.checkpoint import CHECKPOINT_SCHEMA, load_checkpoint, save_checkpoint
from edge_asd.train.context_kde import context_kde_weights
from edge_asd.train.losses import bu_loss, kde_weights, re_loss, resolve_lambda, snp_loss
from edge_asd.train.model import ARCHS, anomaly_score, build_autoencoder
from edge_asd.train.pipeline import Prefetcher
from edge_asd.train.validation import build_validation, criterion, split_normals, validate

log = logging.getLogger("edge_asd")


@dataclass
class TrainConfig:
    machine_type: str
    machine_ids: list[str]
    preset: str
    arch: str = "fcn-small"
    loss: str = "bu"
    epochs: int = 12
    batches_per_epoch: int = 50
    """epochs x batches_per_epoch updates; the defaults are ``SCHEDULES["short"]``."""
    lr: float = 1e-3
    """Initial AMSGrad step size (paper: 1e-4 over 200 x 500 updates)."""
    seed: int = 0
    device: str = "auto"
    sigma: float | None = None
    """KDE bandwidth of eq. (15); None = 1/(2D)."""
    lam: float | str | None = None
    """lambda of eq. (10): a number, "D", "2D" or "2M"; None = 2M, the paper's printed value (edge-train passes
    its own default, D: docs/defaults.md)."""
    epsilon: float = 1e-6
    """epsilon of eq. (16)."""
    batch: BatchConfig = field(default_factory=BatchConfig)
    precision: str = "auto"
    """auto (bf16 or fp16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp16 (CUDA only)."""
    val_fraction: float = 0.0
    """Share of the normal audio held out for validation (whole clips, or time when < 5 clips); 0 = none."""
    patience: int = 0
    """Early stopping: epochs without a better validation criterion; 0 = never stop early."""
    keep: str = "auto"
    """Which weights the checkpoint holds with validation: "best" epoch, "last", or "auto" = best when
    early stopping is on (patience > 0), else last."""
    val_metric: str = "auc"
    """Validation criterion: "auc" (pseudo-anomaly AUC, ties to the lower normal score) or "score"."""
    kde: str = "frames"
    """How eq. (15) is computed: "frames" (context_kde, per-band batch normalization) or "vectors"."""
    prefetch: int = 4
    """Mini-batches prepared ahead in a background thread; 0 = drawn in the loop."""


SCHEDULES = {
    "short": {"epochs": 12, "batches_per_epoch": 50, "lr": 1e-3},  # 600 updates, chosen by docs/defaults/updates.md
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
        raise EdgeAsdError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32): auto picks bf16 on CUDA GPUs that have it, else fp16, and fp32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and device.type != "cuda":
        raise EdgeAsdError("--precision fp16 needs --device cuda; use fp32 or bf16 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


RESUME_IGNORED = ("device", "precision", "prefetch", "keep")
"""TrainConfig fields that may differ between an interrupted run and its resumption."""


def train(cfg: TrainConfig, features: FeatureConfig, normal_clips: list[np.ndarray],
          something_else: list[np.ndarray] | None, mean: np.ndarray, std: np.ndarray,
          progress: bool = True, *, val_clips: list[np.ndarray] | None = None, val_split: str | None = None,
          state_path: str | Path | None = None, resume: bool = False, on_epoch=None) -> dict:
    """Train an autoencoder; return the model's part of the checkpoint dict (weights, arch, features,
    normalization, loss, history, validation: :mod:`checkpoint` lists the keys).

    :func:`edge_asd.train.run.train_checkpoint` (edge-train) calls it with the validation split already
    made and adds what the model was trained on; call it directly for audio you already hold.

    Args:
        normal_clips / something_else: mono float32 at ``features.sample_rate``.
        mean / std: per-mel-band statistics (n_mels,) used to standardize every context vector.
        val_clips: held-out normal audio for validation; None with ``cfg.val_fraction > 0`` splits
            ``normal_clips`` (:func:`validation.split_normals`).
        val_split: how ``val_clips`` were held out ("clips" or "time", as in
            :class:`validation.RecordingSplit`), recorded as ``validation["split"]``; None = "given".
        state_path: where the full training state is written at the end of every epoch (atomic).
        resume: continue from ``state_path`` (same config and normalization, else EdgeAsdError).
        on_epoch: called as ``on_epoch(row, ae)`` after every epoch, with the epoch's row (loss and
            validation) and the autoencoder (in train mode; switch to eval and back to score with it).
    With validation, the returned weights are those of the best epoch when ``cfg.keep`` says so
    (``validation["kept_epoch"]``), else those of the last.
    Raises EdgeAsdError when the loss becomes NaN/inf or the resume state does not fit.
    """
    device = resolve_device(cfg.device)
    amp_dtype = resolve_precision(cfg.precision, device)
    dim = features.dim
    sigma = cfg.sigma if cfg.sigma is not None else 1.0 / (2 * dim)
    lam = resolve_lambda(cfg.lam, dim, features.n_mels)
    split = (val_split or "given") if val_clips else None
    if val_clips is None and cfg.val_fraction > 0:
        normal_clips, val_clips, split = split_normals(normal_clips, cfg.val_fraction, cfg.seed)
    builder = BatchBuilder(normal_clips, something_else, features, cfg.batch)
    val_set = build_validation(val_clips, builder, mean, std, cfg.seed) if val_clips else None

    torch.manual_seed(cfg.seed)
    arch = {"name": cfg.arch, "dim": dim, **ARCHS[cfg.arch]}
    ae = build_autoencoder(arch).to(device).train()
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr, amsgrad=True)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    total = cfg.epochs * cfg.batches_per_epoch
    run = {"step": 0, "history": [], "epochs": [], "best": None, "bad_epochs": 0, "stopped_early": False}
    if resume:
        run = _load_state(state_path, cfg, mean, std, ae, opt, scaler)

    def score(x: np.ndarray) -> np.ndarray:  # standardized vectors -> A(x), in eval mode
        ae.eval()
        with torch.no_grad(), _autocast(device, amp_dtype):
            out = [anomaly_score(ae, torch.from_numpy(x[i:i + 8192]).to(device)).float().cpu() for i in range(0, len(x), 8192)]
        ae.train()
        return torch.cat(out).numpy()

    bar = _progress(total, progress, initial=run["step"])
    t_start, n_frames, start = time.perf_counter(), 0, run["step"]
    stop = start if run["stopped_early"] else total
    with Prefetcher(builder, mean, std, cfg.seed, start, stop, depth=cfg.prefetch) as batches:
        for step in range(start, stop):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg.lr)
            batch = batches.get()
            x_u = torch.from_numpy(batch.x_u).to(device, non_blocking=True)
            x_a = torch.from_numpy(batch.x_a).to(device, non_blocking=True)
            if cfg.loss != "bu":
                weights = None
            elif cfg.kde == "frames":
                weights = context_kde_weights(torch.from_numpy(batch.psi).to(device), torch.from_numpy(~batch.is_a).to(device),
                                              features.n_context_frames, sigma, cfg.epsilon)
            else:
                weights = kde_weights(x_u, sigma, cfg.epsilon)
            loss, a_u, a_a = update(ae, opt, scaler, x_u, x_a, cfg.loss, lam, weights, amp_dtype)
            n_frames += len(x_u) + len(x_a)
            row = {"step": step, "lr": opt.param_groups[0]["lr"], "loss": loss.item(), "score_u": a_u.mean().item(),
                   "score_a": a_a.mean().item() if len(x_a) else float("nan")}
            if not math.isfinite(row["loss"]):
                raise EdgeAsdError(f"training diverged: the loss is {row['loss']} at update {step}; try a smaller --lr")
            run["history"].append(row)
            run["step"] = step + 1
            if run["step"] % cfg.batches_per_epoch == 0 or run["step"] == total:
                _end_of_epoch(run, cfg, ae, score, val_set)
                if on_epoch is not None:
                    on_epoch(run["epochs"][-1], ae)
                if state_path is not None:
                    _save_state(state_path, run, cfg, mean, std, ae, opt, scaler)
                if run["stopped_early"]:
                    break
            if bar is not None:
                bar.update(1)
                last_val = run["epochs"][-1].get("val_auc") if run["epochs"] else None
                bar.set_postfix(loss=f"{row['loss']:.1f}", A_u=f"{row['score_u']:.0f}",
                                fps=f"{n_frames / (time.perf_counter() - t_start):.0f}",
                                **({"val_auc": f"{last_val:.3f}"} if last_val is not None else {}))
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t_start
    log.info("trained %d updates in %.1f s (%.0f frames/s) on %s%s", run["step"] - start, elapsed,
             n_frames / max(elapsed, 1e-9), device, f" ({amp_dtype})" if amp_dtype else "")
    best = run["best"]
    keep_best = best is not None and (cfg.keep == "best" or (cfg.keep == "auto" and cfg.patience > 0))
    weights = best["model_state"] if keep_best else {k: v.detach().cpu() for k, v in ae.state_dict().items()}
    if best:
        row = run["epochs"][best["epoch"] - 1]
        log.info("best epoch %d of %d: validation AUC %.3f, held-out normal score %.1f%s; the checkpoint holds the %s epoch",
                 best["epoch"], len(run["epochs"]), row["val_auc"], row["val_score_u"],
                 " (stopped early)" if run["stopped_early"] else "", "best" if keep_best else "last")
    return {
        "schema": CHECKPOINT_SCHEMA,
        "model_state": weights,
        "arch": arch,
        "features": {"preset": cfg.preset, "config": features.to_dict()},
        "normalization": {"axis": "mel_band", "mean": mean.tolist(), "std": std.tolist()},
        "loss": {"name": cfg.loss, "params": {"sigma": sigma, "lambda": lam, "epsilon": cfg.epsilon}},
        "machine_type": cfg.machine_type,
        "machine_ids": cfg.machine_ids,
        "train_config": _jsonable(asdict(cfg)),
        "history": run["history"],
        "epochs": run["epochs"],
        "validation": None if val_set is None else {
            "split": split, "metric": cfg.val_metric, "n_normal": len(val_set.x_normal), "n_pseudo": len(val_set.x_pseudo),
            "best_epoch": best["epoch"] if best else None, "stopped_early": run["stopped_early"],
            "kept_epoch": best["epoch"] if keep_best else len(run["epochs"])},
        "train_seconds": elapsed,
        "train_frames": n_frames,
        "device": str(device),
        "precision": str(amp_dtype or torch.float32).replace("torch.", ""),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def update(ae, opt, scaler, x_u: torch.Tensor, x_a: torch.Tensor, loss_name: str, lam: float,
           weights: torch.Tensor | None, amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One AMSGrad update on standardized x^(u) (M_u, D) and x^(a) (M_a, D): returns (loss, A(x^(u)), A(x^(a))).

    ``weights``: the BU weights w_i of eq. (16), (M_u,), for ``loss_name == "bu"``. The forward pass
    runs under autocast when ``amp_dtype`` is set; scores, weights and loss stay float32. For RE the
    scores of x^(a) are computed without gradients, for the log only."""
    device = x_u.device
    with _autocast(device, amp_dtype):
        a_u = anomaly_score(ae, x_u).float()
        with torch.set_grad_enabled(loss_name != "re"):
            a_a = anomaly_score(ae, x_a).float()
    if loss_name == "re":
        loss = re_loss(a_u)
    elif loss_name == "snp":
        loss = snp_loss(a_u, a_a, lam)
    else:
        loss = bu_loss(a_u, a_a, weights, lam)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss, a_u, a_a


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _end_of_epoch(run: dict, cfg: TrainConfig, ae, score, val_set) -> None:
    """Append the epoch's summary; with validation, keep the best weights and count epochs without progress."""
    epoch = len(run["epochs"]) + 1
    losses = [h["loss"] for h in run["history"][-cfg.batches_per_epoch:]]
    row = {"epoch": epoch, "step": run["step"], "loss": float(np.mean(losses))}
    if val_set is not None:
        row.update(validate(score, val_set))
        key = list(criterion(row, cfg.val_metric))
        if run["best"] is None or key > run["best"]["key"]:
            run["best"] = {"epoch": epoch, "key": key,
                           "model_state": {k: v.detach().cpu().clone() for k, v in ae.state_dict().items()}}
            run["bad_epochs"] = 0
        else:
            run["bad_epochs"] += 1
        run["stopped_early"] = cfg.patience > 0 and run["bad_epochs"] >= cfg.patience
    run["epochs"].append(row)


def _comparable(cfg: TrainConfig) -> dict:
    return {k: v for k, v in _jsonable(asdict(cfg)).items() if k not in RESUME_IGNORED}


def _save_state(path, run: dict, cfg: TrainConfig, mean, std, ae, opt, scaler) -> None:
    save_checkpoint({"schema": CHECKPOINT_SCHEMA, "kind": "train_state", "train_config": _comparable(cfg),
                     "normalization": {"mean": mean.tolist(), "std": std.tolist()},
                     "model_state": {k: v.detach().cpu() for k, v in ae.state_dict().items()},
                     "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "run": run}, path)


def _load_state(path, cfg: TrainConfig, mean, std, ae, opt, scaler) -> dict:
    if path is None:
        raise EdgeAsdError("resume: no training-state file given")
    state = load_checkpoint(path)
    if state.get("kind") != "train_state":
        raise EdgeAsdError(f"{path}: not an edge-train state file")
    if state["train_config"] != _comparable(cfg):
        diff = sorted(k for k in set(state["train_config"]) | set(_comparable(cfg))
                      if state["train_config"].get(k) != _comparable(cfg).get(k))
        raise EdgeAsdError(f"{path}: written with other settings ({', '.join(diff)}); use the same options or drop --resume")
    if state["normalization"] != {"mean": mean.tolist(), "std": std.tolist()}:
        raise EdgeAsdError(f"{path}: written for other training audio (normalization differs); drop --resume")
    ae.load_state_dict(state["model_state"])
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    log.info("resuming at update %d from %s", state["run"]["step"], path)
    return state["run"]


def _progress(total: int, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="edge-train", unit="batch", dynamic_ncols=True)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
