"""Choosing the threshold phi from normal recordings.

The decision of Koizumi et al. 2019 (eq. 11) is per window: a window is anomalous when its max frame
score reaches phi, so every rule here works on *window maxima* of frame scores. A window is one
recording (the default) or ``window_s`` seconds of frames, the recordings' frame scores taken back to
back as the monitor would hear them (trailing partial window dropped).

Rules:

- ``clip-max-quantile``: ``phi = margin * quantile_q(window maxima)``. q = 1, margin 1.1 (the default)
  puts phi 10 % above the worst normal window seen; ``q = 1 - fpr``, margin 1 targets a false-positive
  rate ``fpr`` per window.
- ``false-alarm-budget``: fit an extreme-value distribution to the window maxima (:mod:`.evt`) and take
  the score a window max exceeds with probability ``alarms_per_day / windows_per_day``.

:func:`realized_rate` checks a phi on held-out normal windows.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import EdgeAsdError

DEFAULT_QUANTILE = 1.0
DEFAULT_MARGIN = 1.1
SECONDS_PER_DAY = 86400.0


def phi_from_clip_maxima(clip_maxima: np.ndarray, quantile: float = DEFAULT_QUANTILE, margin: float = DEFAULT_MARGIN) -> float:
    """phi = margin * quantile(clip_maxima, q), clip_maxima shape (n_clips,), same unit as the score.

    Raises EdgeAsdError when there is no clip, a score is not finite, or q / margin are out of range.
    """
    maxima = np.asarray(clip_maxima, dtype=np.float64)
    if maxima.size == 0:
        raise EdgeAsdError("no normal recording to calibrate on")
    if not np.all(np.isfinite(maxima)):
        raise EdgeAsdError("a normal recording got a non-finite anomaly score; check the audio and the model")
    if not 0.0 < quantile <= 1.0:
        raise EdgeAsdError(f"--quantile must be in (0, 1], not {quantile}")
    if margin <= 0:
        raise EdgeAsdError(f"--margin must be positive, not {margin}")
    return float(margin * np.quantile(maxima, quantile))


def window_frames(window_s: float, hop_s: float) -> int:
    """Frames per decision window of ``window_s`` seconds at one frame per ``hop_s`` seconds (>= 1)."""
    if not window_s > 0:
        raise EdgeAsdError(f"--window must be positive seconds, not {window_s}")
    return max(1, round(window_s / hop_s))


def window_maxima(frame_scores: list[np.ndarray], frames_per_window: int | None = None) -> np.ndarray:
    """Max frame score of each decision window (eq. 11), shape (n_windows,), float64.

    Args:
        frame_scores: per recording, its frame scores, shape (n_frames_i,).
        frames_per_window: None: one window per recording. Else the recordings' scores are joined in
            order and cut into windows of that many frames; a trailing partial window is dropped.
    Raises:
        EdgeAsdError: no recording, or fewer frames than one window.
    """
    if not frame_scores:
        raise EdgeAsdError("no normal recording to calibrate on")
    if frames_per_window is None:
        return np.array([float(np.max(s)) for s in frame_scores])
    joined = np.concatenate([np.asarray(s, dtype=np.float64) for s in frame_scores])
    n = len(joined) // frames_per_window
    if n == 0:
        raise EdgeAsdError(f"the recordings hold {len(joined)} frames, fewer than one window ({frames_per_window} frames);"
                           " give more recordings or a shorter --window")
    return joined[: n * frames_per_window].reshape(n, frames_per_window).max(axis=1)


def windows_per_day(window_s: float) -> float:
    return SECONDS_PER_DAY / window_s


def phi_for_budget(maxima: np.ndarray, alarms_per_day: float, window_s: float, family: str = "gumbel",
                   n_boot: int = 200, seed: int = 0) -> tuple[float, dict]:
    """phi from an extreme-value fit of window maxima for ``alarms_per_day`` false alarms a day.

    Per-window false-alarm probability ``p = alarms_per_day * window_s / 86400``; ``phi`` is the fit's
    ``1 - p`` quantile. Returns (phi, report) where report holds the fit (:class:`.evt.TailFit`), p,
    and the 5 / 50 / 95 % percentiles of phi over a parametric bootstrap of ``n_boot`` refits
    (``n_boot`` 0 skips it). Raises EdgeAsdError for a budget out of range or an unfittable sample.
    """
    from .evt import TailFit

    if not alarms_per_day > 0:
        raise EdgeAsdError(f"--false-alarms-per-day must be positive, not {alarms_per_day}")
    p = alarms_per_day / windows_per_day(window_s)
    if p >= 1:
        raise EdgeAsdError(f"{alarms_per_day} false alarms a day is more than one per {window_s:g}-s window")
    fit = TailFit.fit(maxima, family)
    phi = fit.phi_for(p)
    if not math.isfinite(phi):
        raise EdgeAsdError(f"the {family} fit gives no finite phi for p = {p:.3g}; try --tail gumbel")
    report = {"p_window": p, "windows_per_day": windows_per_day(window_s), "fit": fit.to_dict()}
    if n_boot > 0:
        boot = fit.bootstrap_phi(p, n_boot, seed)
        boot = boot[np.isfinite(boot)]
        lo, mid, hi = np.percentile(boot, [5, 50, 95])
        report["bootstrap"] = {"method": "parametric", "n": int(n_boot), "phi_p5": float(lo), "phi_p50": float(mid),
                               "phi_p95": float(hi)}
    return phi, report


def _binom_cdf(k: int, n: int, p: float) -> float:
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
            for i in range(k + 1)]
    return math.fsum(math.exp(v) for v in logs)


def upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate after ``k`` events in ``n`` trials: the p at
    which P(X <= k | n, p) = 1 - confidence (bisection, no scipy)."""
    if k >= n:
        return 1.0
    if k == 0:
        return 1.0 - (1.0 - confidence) ** (1.0 / n)  # closed form
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _binom_cdf(k, n, mid) > 1.0 - confidence else (lo, mid)
    return (lo + hi) / 2


def realized_rate(maxima: np.ndarray, phi: float, window_s: float) -> dict:
    """False alarms of ``phi`` on held-out normal window maxima, shape (n,): counts, per-window rate,
    per-day rate and its 95 % upper bound (Clopper-Pearson)."""
    maxima = np.asarray(maxima, dtype=np.float64)
    n, k = int(maxima.size), int(np.sum(maxima >= phi))
    per_day = windows_per_day(window_s)
    return {"windows": n, "false_alarms": k, "rate_per_window": k / n if n else float("nan"),
            "per_day": k / n * per_day if n else float("nan"),
            "per_day_upper95": upper_bound(k, n) * per_day if n else float("nan")}


def windows_needed(p_window: float, confidence: float = 0.95) -> int:
    """Held-out windows with no false alarm needed to show a rate <= ``p_window`` at ``confidence``."""
    return math.ceil(math.log(1.0 - confidence) / math.log1p(-p_window))


def calibrate(frame_scores: list[np.ndarray], hop_s: float, recording_s: float, window_s: float | None = None, *,
              quantile: float = DEFAULT_QUANTILE, margin: float | None = None, target_fpr: float | None = None,
              alarms_per_day: float | None = None, tail: str = "gumbel", n_boot: int = 200,
              heldout_scores: list[np.ndarray] | None = None) -> dict:
    """phi from the frame scores of normal recordings by one of the rules above, checked on held-out ones.

    Args:
        frame_scores: per recording, its frame scores, shape (n_frames_i,).
        hop_s: seconds between frames; ``recording_s``: typical recording length, s (the window length
            when ``window_s`` is None).
        window_s: decision window, s; None = one window per recording.
        quantile, margin: the quantile rule (margin defaults to 1.1, or 1.0 with a ``target_fpr``).
        target_fpr: false-positive rate per window; sets ``quantile = 1 - target_fpr``.
        alarms_per_day: false-alarm budget rule with an extreme-value ``tail`` ("gumbel" or "gev").
        heldout_scores: frame scores of normal recordings kept out of the fit, for the check.
    Returns:
        {"phi", "rule", "window_s", "window_maxima": {n, min, median, max}, "fit"?, "check"?}.
    Raises:
        EdgeAsdError on conflicting rules, out-of-range values, or too little data.
    """
    if target_fpr is not None and alarms_per_day is not None:
        raise EdgeAsdError("give either --target-fpr or --false-alarms-per-day, not both")
    per_window = None if window_s is None else window_frames(window_s, hop_s)
    length_s = recording_s if window_s is None else per_window * hop_s
    maxima = window_maxima(frame_scores, per_window)
    out = {"window_s": window_s, "window_maxima": {"n": int(maxima.size), "min": float(maxima.min()),
                                                   "median": float(np.median(maxima)), "max": float(maxima.max())}}
    if alarms_per_day is not None:
        if margin is not None:
            raise EdgeAsdError("--margin applies to the quantile rule, not to --false-alarms-per-day")
        phi, fit = phi_for_budget(maxima, alarms_per_day, length_s, tail, n_boot)
        out["rule"] = {"name": "false-alarm-budget", "false_alarms_per_day": alarms_per_day, "tail": tail}
        out["fit"] = fit
        target_p = fit["p_window"]
    else:
        if target_fpr is not None:
            if not 0.0 < target_fpr < 1.0:
                raise EdgeAsdError(f"--target-fpr must be in (0, 1), not {target_fpr}")
            quantile = 1.0 - target_fpr
        margin = (1.0 if target_fpr is not None else DEFAULT_MARGIN) if margin is None else margin
        phi = phi_from_clip_maxima(maxima, quantile, margin)
        out["rule"] = {"name": "clip-max-quantile", "quantile": quantile, "margin": margin}
        if target_fpr is not None:
            out["rule"]["target_fpr"] = target_fpr
        target_p = target_fpr
    out["phi"] = phi
    if heldout_scores:
        held = window_maxima(heldout_scores, per_window)
        check = realized_rate(held, phi, length_s)
        if target_p is not None:
            check["target_per_window"] = target_p
            check["target_per_day"] = target_p * windows_per_day(length_s)
            check["windows_needed"] = windows_needed(target_p)
            check["meets_target"] = check["rate_per_window"] <= target_p
        out["check"] = check
    return out
