"""The pictures of ``edge-report``, drawn with matplotlib (Agg, PNG files).

matplotlib is imported inside each function: importing this module costs nothing, and the monitor
never imports it. Each function takes plain arrays and writes one PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 110


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        from edge_asd.core.errors import EdgeAsdError

        raise EdgeAsdError("edge-report needs matplotlib: pip install 'edge-asd[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def running_max(scores: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Running max of ``scores`` (n,) restarted where ``windows`` (n,) changes (eq. 11's max so far); NaN (a
    frame without a policy score) is passed over."""
    out = np.empty(len(scores))
    for w in np.unique(windows):
        idx = np.flatnonzero(windows == w)
        out[idx] = np.fmax.accumulate(scores[idx])
    return out


def timeline(path: Path, phi: float, events: list[dict], times_s: np.ndarray | None = None,
             scores: np.ndarray | None = None, windows: np.ndarray | None = None, title: str = "") -> Path:
    """Score timeline: frame scores (when given, times_s/scores/windows shape (n,)), their running max
    per window, phi, and the events (dicts with ``time_s`` and ``score``) marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    if scores is not None:
        windows = np.zeros(len(scores), dtype=int) if windows is None else windows
        ax.plot(times_s, scores, lw=0.6, color="0.55", label="score (policy score; 1/1: A(x_t))")
        ax.plot(times_s, running_max(scores, windows), lw=1.2, color="tab:blue", label="running max (eq. 11)")
    if events:
        t = [e["time_s"] for e in events]
        s = [e["score"] for e in events]
        if scores is None:
            ax.vlines(t, min(min(s), phi) * 0.98, s, color="tab:red", lw=0.8)
        ax.scatter(t, s, color="tab:red", s=18, zorder=3, label=f"events ({len(events)})")
    ax.axhline(phi, color="tab:orange", ls="--", lw=1.2, label=f"phi = {phi:.4g}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("anomaly score")
    ax.set_title(title or "score timeline")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def maxima_histogram(path: Path, maxima: np.ndarray, phi: float, fit=None, p_window: float | None = None,
                     title: str = "") -> Path:
    """Left: histogram of normal window maxima (n,) with phi and the fitted density (``fit``: an
    :class:`.evt.TailFit` or None). Right: their exceedance probability on a log scale with the
    fitted tail, phi and the target per-window false-alarm probability ``p_window``."""
    plt = _pyplot()
    from edge_asd.edge.calibrate.tail import _cdf

    maxima = np.sort(np.asarray(maxima, dtype=np.float64))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax.hist(maxima, bins=min(30, max(5, len(maxima) // 2)), density=True, color="tab:blue", alpha=0.6,
            label=f"{len(maxima)} normal window maxima")
    ax.axvline(phi, color="tab:orange", ls="--", label=f"phi = {phi:.4g}")
    bx.scatter(maxima, 1.0 - np.arange(1, len(maxima) + 1) / (len(maxima) + 1), s=12, color="tab:blue",
               label="empirical (rank / (n+1))")
    if fit is not None:
        hi = max(phi, maxima[-1]) + 0.2 * np.ptp(maxima)
        x = np.linspace(maxima[0] - 0.2 * np.ptp(maxima), hi, 400)
        cdf = _cdf(fit.family, x, fit.params)
        ax.plot(x[1:], np.diff(cdf) / np.diff(x), color="k", lw=1, label=f"{fit.family} fit")
        bx.plot(x, np.clip(1.0 - cdf, 1e-12, 1), color="k", lw=1, label=f"{fit.family} tail")
    bx.axvline(phi, color="tab:orange", ls="--", label="phi")
    if p_window:
        bx.axhline(p_window, color="tab:red", ls=":", label=f"target p = {p_window:.2g} / window")
    bx.set_yscale("log")
    bx.set_xlabel("window max score")
    bx.set_ylabel("P(window max > x)")
    ax.set_xlabel("window max score")
    ax.set_ylabel("density")
    ax.set_title(title or "normal window maxima")
    for a in (ax, bx):
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    return _save(fig, path)


def roc(path: Path, is_anomaly: np.ndarray, scores: np.ndarray, phi: float | None = None, title: str = "",
        levels_dbfs: np.ndarray | None = None) -> tuple[Path, dict]:
    """ROC of clip scores (n,) against labels (n,) bool, with AUC / pAUC (max FPR 0.1, DCASE) and the
    operating point of ``phi``; with ``levels_dbfs`` (n,), the clips' levels in dBFS, the loudness reference
    beside it: the ROC a plain level meter gets on the same clips (:func:`edge_asd.core.loudness.loudness_reference`).

    Returns (path, {"auc", "pauc", "fpr_at_phi", "tpr_at_phi", "level_auc", "level_pauc"}), the last four
    only when ``phi`` / ``levels_dbfs`` are given."""
    plt = _pyplot()
    from edge_asd.core.loudness import loudness_reference
    from edge_asd.core.metrics import auc_pauc, roc_curve_points

    y = np.asarray(is_anomaly, dtype=bool)
    fpr, tpr = roc_curve_points(y, scores)
    auc, pauc = auc_pauc(y, scores)
    info = {"auc": auc, "pauc": pauc}
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot(fpr, tpr, color="tab:blue", lw=1.5, label=f"model: AUC {auc:.3f}, pAUC {pauc:.3f}")
    if levels_dbfs is not None:
        info["level_auc"], info["level_pauc"] = loudness_reference(y, levels_dbfs)
        level_fpr, level_tpr = roc_curve_points(y, levels_dbfs)
        ax.plot(level_fpr, level_tpr, color="0.45", lw=1.2, ls="--",
                label=f"loudness reference (clip level): AUC {info['level_auc']:.3f}, pAUC {info['level_pauc']:.3f}")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":")
    ax.axvspan(0, 0.1, color="0.9", zorder=0, label="pAUC range (FPR <= 0.1)")
    if phi is not None:
        info["fpr_at_phi"] = float(np.mean(scores[~y] >= phi))
        info["tpr_at_phi"] = float(np.mean(scores[y] >= phi))
        ax.scatter([info["fpr_at_phi"]], [info["tpr_at_phi"]], color="tab:orange", zorder=3, label=f"phi = {phi:.4g}")
    ax.set_xlabel("false-positive rate (normal clips)")
    ax.set_ylabel("true-positive rate (anomalous clips)")
    ax.set_title(title or f"ROC, {int(y.sum())} anomalous / {int((~y).sum())} normal clips", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path), info


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
