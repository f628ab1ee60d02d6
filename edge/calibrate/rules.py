"""Choosing the threshold phi from normal recordings.

The decision of Koizumi et al. 2019 (eq. 11) is per window: a window is anomalous when its max frame
score reaches phi, so every rule here works on *window maxima* of frame scores (of the alert policy's
policy scores, :mod:`edge_asd.edge.runtime.alert`, when phi is set for k-of-n votes). The windows are the
ones edge-monitor decides on: each recording is taken as a stream of its own, starting at 0 s, and
its frame scores are stamped and assigned to windows by the same code as the monitor's
(:func:`.windows.recording_windows`: a score is stamped at the end of its context vector), so
:func:`window_maxima` gives, window by window, what the monitor's ``verdict`` lines would say for that
recording with the same ``--window``: ``whole`` (one window per recording), ``SECONDS`` or ``gate``.
A fixed window that the end of a recording cuts short (its span runs past the last sample) is reported
but left out of phi: on a continuous stream it would have held more frames.

Rules:

- ``clip-max-quantile``: ``phi = margin * quantile_q(window maxima)``. q = 1, margin 1.1 (the default)
  puts phi 10 % above the worst normal window seen; ``q = 1 - fpr``, margin 1 targets a false-positive
  rate ``fpr`` per window.
- ``false-alarm-budget``: fit an extreme-value distribution to the window maxima (:mod:`.evt`) and take
  the score a window max exceeds with probability ``alarms_per_day / windows_per_day``.

:func:`realized_rate` checks a phi on held-out normal windows. :func:`rule_arguments` turns the rule a
phi record stores back into :func:`calibrate`'s arguments, so a later calibration (edge-finetune's) applies
the same rule with the same parameters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.alert import EQ11, AlertPolicy, policy_scores
from edge_asd.edge.runtime.windows import OFF, EnergyGate, FixedWindows, recording_windows

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


@dataclass(frozen=True)
class WindowMax:
    """One operation window of one recording and its max frame score: what edge-monitor's ``verdict``
    line says for that window when it monitors the recording alone (times rounded like it, 4 decimals)."""

    recording: str
    window: int
    """Window index, as the verdict's ``window``."""
    start_s: float
    """Stamp of the window's first frame score, s from the recording's start."""
    end_s: float
    """Stamp of its last frame score, s."""
    frames: int
    max_score: float
    """max over the window's frames of the policy score (:mod:`edge_asd.edge.runtime.alert`; 1/1: max_t A(x_t),
    eq. 11); -inf when no frame of the window has one."""
    max_time_s: float
    """Stamp of the (first) frame with that score, s."""
    complete: bool
    """False when the recording ended before the window's span did (a fixed window cut short): left out of phi."""

    def to_dict(self) -> dict:
        return asdict(self)


def window_maxima(scores: np.ndarray, samples: np.ndarray, windows, cfg, recording: str = "",
                  policy: AlertPolicy = EQ11) -> list[WindowMax]:
    """The operation windows of one recording and their max policy scores, in stream order.

    Args:
        scores: the recording's frame scores, shape (n_frames,), as ``Scorer.score_audio`` gives them.
        samples: the recording, shape (N,), at ``cfg.sample_rate`` Hz (the energy gate listens to it).
        windows: a fresh ``windows.make_windows(...)`` object (one per recording).
        cfg: the model's FeatureConfig. recording: a name carried into each WindowMax.
        policy: the alert policy: the frame scores become its policy scores as edge-monitor computes them
            (:mod:`edge_asd.edge.runtime.alert`; frames outside every window vote -inf, a frame without a
            policy score counts as -inf); 1/1 (default): the frame scores themselves.
    Frames outside every window (gated off) belong to none; a NaN score makes its window's max NaN.
    """
    stamps, index = recording_windows(windows, samples, len(scores), cfg)
    scores = np.asarray(scores, dtype=np.float64)
    if policy != EQ11:
        votes, ok = policy_scores(scores, policy, index != OFF)
        scores = np.where(ok, votes, -np.inf)
    sr = cfg.sample_rate
    cuts = np.flatnonzero(np.diff(index)) + 1
    out = []
    for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(index)]):
        w = int(index[a])
        if w == OFF:
            continue
        k = a + int(np.argmax(scores[a:b]))
        out.append(WindowMax(recording, w, round(int(stamps[a]) / sr, 4), round(int(stamps[b - 1]) / sr, 4), b - a,
                             float(scores[k]), round(int(stamps[k]) / sr, 4), not windows.cut_short(w, len(samples))))
    return out


def phi_maxima(windows: list[WindowMax], what: str = "normal recordings") -> np.ndarray:
    """Max scores of the complete windows, shape (n,), float64: the sample phi is fitted to (or checked on).
    A window with no policy score (a vote longer than the window: max -inf) is left out.

    Raises:
        EdgeAsdError: no complete window (every recording shorter than one window, or the gate never opened).
    """
    maxima = np.array([w.max_score for w in windows if w.complete and w.max_score != -np.inf], dtype=np.float64)
    if maxima.size == 0:
        why = ("the gate never found the machine running (check --gate-db)" if not windows
               else "every recording is shorter than one window; give longer recordings or a shorter --window")
        raise EdgeAsdError(f"the {what} hold no complete decision window: {why}")
    return maxima


def seconds_per_window(windows, durations_s: list[float], n_windows: int) -> float:
    """Stream time one window stands for, s, to turn per-window rates into per-day ones: ``W`` for fixed
    windows, the median recording length for ``whole``, and for ``gate`` the recordings' total length
    over their number of machine-on windows (the machine's cycle as the recordings show it)."""
    if isinstance(windows, FixedWindows):
        return windows.window_s
    if isinstance(windows, EnergyGate):
        return float(np.sum(durations_s)) / max(1, n_windows)
    return float(np.median(durations_s))


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
    from edge_asd.edge.calibrate.tail import TailFit

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


def calibrate(maxima: np.ndarray, window_length_s: float, *, quantile: float = DEFAULT_QUANTILE,
              margin: float | None = None, target_fpr: float | None = None, alarms_per_day: float | None = None,
              tail: str = "gumbel", n_boot: int = 200, heldout_maxima: np.ndarray | None = None) -> dict:
    """phi from the window maxima of normal recordings by one of the rules above, checked on held-out ones.

    Args:
        maxima: max frame score of each complete window (:func:`phi_maxima`), shape (n,).
        window_length_s: stream time one window stands for, s (:func:`seconds_per_window`): turns the
            per-window rates into per-day ones.
        quantile, margin: the quantile rule (margin defaults to 1.1, or 1.0 with a ``target_fpr``).
        target_fpr: false-positive rate per window; sets ``quantile = 1 - target_fpr``.
        alarms_per_day: false-alarm budget rule with an extreme-value ``tail`` ("gumbel" or "gev").
        heldout_maxima: window maxima of normal recordings kept out of the fit, for the check.
    Returns:
        {"phi", "rule", "window_maxima": {n, min, median, max}, "fit"?, "check"?}.
    Raises:
        EdgeAsdError on conflicting rules, out-of-range values, or too little data.
    """
    if target_fpr is not None and alarms_per_day is not None:
        raise EdgeAsdError("give either --target-fpr or --false-alarms-per-day, not both")
    maxima = np.asarray(maxima, dtype=np.float64)
    if maxima.size == 0:
        raise EdgeAsdError("no normal recording to calibrate on")
    length_s = window_length_s
    out = {"window_maxima": {"n": int(maxima.size), "min": float(maxima.min()), "median": float(np.median(maxima)),
                             "max": float(maxima.max())}}
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
    if heldout_maxima is not None and len(heldout_maxima):
        check = realized_rate(heldout_maxima, phi, length_s)
        if target_p is not None:
            check["target_per_window"] = target_p
            check["target_per_day"] = target_p * windows_per_day(length_s)
            check["windows_needed"] = windows_needed(target_p)
            check["meets_target"] = check["rate_per_window"] <= target_p
        out["check"] = check
    return out


def rule_arguments(rule: dict) -> dict:
    """The keyword arguments of :func:`calibrate` that apply a stored rule again (``result["rule"]`` of an
    earlier calibration): ``quantile`` and ``margin``, ``target_fpr`` and ``margin``, or ``alarms_per_day``
    and ``tail``. :func:`calibrate` with them gives a ``rule`` equal to the stored one.

    Raises:
        EdgeAsdError: a rule this kit does not know, or one without its parameters (a damaged record).
    """
    name = rule.get("name") if isinstance(rule, dict) else None
    try:
        if name == "clip-max-quantile":
            if rule.get("target_fpr") is not None:
                return {"target_fpr": float(rule["target_fpr"]), "margin": float(rule["margin"])}
            return {"quantile": float(rule["quantile"]), "margin": float(rule["margin"])}
        if name == "false-alarm-budget":
            return {"alarms_per_day": float(rule["false_alarms_per_day"]), "tail": str(rule["tail"])}
    except (KeyError, TypeError, ValueError):
        raise EdgeAsdError(f"the stored {name} rule lacks its parameters ({rule}); set phi again with edge-calibrate") from None
    raise EdgeAsdError(f"unknown phi rule {name!r} in the store (known: clip-max-quantile, false-alarm-budget); "
                       "set phi again with edge-calibrate")
