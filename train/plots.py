"""Training curves as a PNG (matplotlib, no display needed): loss per update, validation per epoch."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edge_asd.core.atomic_io import atomic_write_bytes


def write_curves(ckpt: dict, path: str | Path) -> None:
    """Left: the loss of every update and its running mean over one epoch. Right: per epoch, the
    pseudo-anomaly validation AUC and the held-out normal score (when the run had validation), else the
    epoch's mean loss; the best epoch is marked and the title names the one the checkpoint holds. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    history, epochs = ckpt.get("history", []), ckpt.get("epochs", [])
    per_epoch = max(1, int(ckpt.get("train_config", {}).get("batches_per_epoch", 1)))
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_val = fig.subplots(1, 2)
    steps = np.array([h["step"] for h in history])
    loss = np.array([h["loss"] for h in history])
    ax_loss.plot(steps, loss, lw=0.5, alpha=0.4, label="loss per update")
    if len(loss) >= per_epoch:
        ax_loss.plot(steps[per_epoch - 1:], np.convolve(loss, np.ones(per_epoch) / per_epoch, "valid"), label="mean of one epoch")
    ax_loss.set(xlabel="update", ylabel=f"J ({ckpt.get('loss', {}).get('name', '?').upper()})", title="training loss")
    ax_loss.legend(loc="upper right", fontsize=8)
    ep = [e["epoch"] for e in epochs]
    validation = ckpt.get("validation")
    if validation and epochs:
        ax_val.plot(ep, [e["val_auc"] for e in epochs], "o-", color="C2", label="pseudo-anomaly AUC")
        ax_val.set(xlabel="epoch", ylabel="validation AUC", title="validation")
        ax_score = ax_val.twinx()
        ax_score.plot(ep, [e["val_score_u"] for e in epochs], "s--", color="C1", ms=3, label="held-out normal score")
        ax_score.set_ylabel("mean A(x) of held-out normal vectors")
        if validation.get("best_epoch"):
            ax_val.axvline(validation["best_epoch"], color="k", lw=0.8, ls=":", label=f"best: epoch {validation['best_epoch']}")
        if validation.get("kept_epoch"):
            ax_val.set_title(f"validation (checkpoint: epoch {validation['kept_epoch']})")
        lines = ax_val.get_legend_handles_labels()
        more = ax_score.get_legend_handles_labels()
        ax_val.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right", fontsize=8)
    else:
        ax_val.plot(ep, [e["loss"] for e in epochs], "o-")
        ax_val.set(xlabel="epoch", ylabel="mean loss", title="per epoch (no validation split)")
    from matplotlib.ticker import MaxNLocator

    ax_val.xaxis.set_major_locator(MaxNLocator(integer=True))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(Path(path), buf.getvalue())
