"""What the input-health checker measures on audio: per hop, its power, sum, clipped samples and high-band
energy (:func:`hop_measures`); per second of calibration recordings, the level statistics the phi record
keeps as ``input_level`` (:func:`level_statistics`). Numpy only; :mod:`edge_asd.edge.runtime.health` turns
these figures into health states."""

from __future__ import annotations

import functools

import numpy as np

from edge_asd.core.loudness import clip_level_dbfs


@functools.lru_cache(maxsize=4)
def _hann(n: int) -> np.ndarray:
    return np.hanning(n)


def hop_measures(hops: np.ndarray, clip_level: float) -> dict[str, np.ndarray]:
    """Per hop: ``power`` (mean x^2), ``sum`` (sum of x), ``clipped`` (samples with |x| >= clip_level),
    ``high`` and ``total`` (Hann-windowed spectral energy above rate/4 and in all bins).

    Args:
        hops: (n_hops, hop_samples) float samples, full scale 1.
    Returns:
        dict of (n_hops,) float64 arrays.
    """
    h = np.asarray(hops, dtype=np.float64)
    spec = np.abs(np.fft.rfft(h * _hann(h.shape[1]), axis=1)) ** 2  # (n_hops, hop/2 + 1)
    quarter = spec.shape[1] // 2  # bin of rate/4
    return {"power": np.mean(h * h, axis=1), "sum": h.sum(axis=1),
            "clipped": np.count_nonzero(np.abs(h) >= clip_level, axis=1).astype(np.float64),
            "high": spec[:, quarter:].sum(axis=1), "total": spec.sum(axis=1)}


def level_statistics(recordings: list[np.ndarray], sample_rate: int, hop_samples: int = 256) -> dict:
    """Level statistics of calibration recordings, as the phi record keeps them (``input_level``).

    Per whole second of each recording: the RMS level, dBFS (:func:`edge_asd.core.loudness.clip_level_dbfs`'s
    ) and the high-band share (energy above rate/4 over the total, as the health checker measures it).

    Args:
        recordings: mono float arrays (N,), full scale 1, at ``sample_rate`` Hz.
    Returns:
        ``{"seconds", "median_dbfs", "p5_dbfs", "p95_dbfs", "spread_db" (p95 - p5), "high_band_share" (median)}``,
        or None when no recording holds a whole second.
    """
    levels, shares = [], []
    for x in recordings:
        n = len(x) // sample_rate
        for k in range(n):
            sec = np.asarray(x[k * sample_rate:(k + 1) * sample_rate], dtype=np.float64)
            levels.append(clip_level_dbfs(sec))
            m = hop_measures(sec[: len(sec) // hop_samples * hop_samples].reshape(-1, hop_samples), clip_level=1.0)
            total = float(m["total"].sum())
            if total > 0:
                shares.append(float(m["high"].sum()) / total)
    if not levels:
        return None
    p5, median, p95 = (float(v) for v in np.percentile(levels, [5, 50, 95]))
    return {"seconds": len(levels), "median_dbfs": round(median, 2), "p5_dbfs": round(p5, 2),
            "p95_dbfs": round(p95, 2), "spread_db": round(p95 - p5, 2),
            "high_band_share": float(np.median(shares)) if shares else None}
