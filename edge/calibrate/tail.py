"""Extreme-value tail of the window-max anomaly score, for a false-alarm budget.

The max of many frame scores over a window is, by the Fisher-Tippett-Gnedenko theorem, close to a
generalized extreme-value (GEV) distribution; Gumbel is its shape-0 case (light tail, 2 parameters,
the stable choice for the tens of windows a calibration usually has). phi for a per-window false-alarm
probability p is the fitted upper quantile, ``phi = F^-1(1 - p)``. Its uncertainty comes from a
parametric bootstrap: draw as many maxima as were observed from the fitted distribution, refit, take
phi again; the spread of those phis is what the sample size allows one to know.

The Gumbel maximum-likelihood fit is done here in numpy (same estimates as ``scipy.stats.gumbel_r.fit``),
so the device install needs no scipy; the GEV fit (``scipy.stats.genextreme``) and the
Kolmogorov-Smirnov p-value import scipy on first use (``pip install 'edge-asd[calibrate]'``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_asd.core.errors import EdgeAsdError

FAMILIES = ("gumbel", "gev")
MIN_MAXIMA = 5


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError:
        return None
    return stats


def gumbel_fit(x: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood Gumbel (max) parameters (loc, scale) of a sample, shape (n,), not all equal.

    Solves ``scale = mean(x) - sum(x w) / sum(w)``, ``w = exp(-x / scale)``, by Newton's method from
    the moment estimate, then ``loc = -scale * ln(mean(w))``.
    """
    x = np.asarray(x, dtype=np.float64)
    shift = x.max()
    z = x - shift  # <= 0: exp(-z / scale) stays finite for any scale
    scale = max(np.std(z) * np.sqrt(6) / np.pi, 1e-12)
    for _ in range(100):
        w = np.exp(-z / scale)
        s0, s1, s2 = w.sum(), (z * w).sum(), (z * z * w).sum()
        g = scale - z.mean() + s1 / s0  # g(scale) = 0 at the ML estimate
        dg = 1.0 + (s2 / s0 - (s1 / s0) ** 2) / scale**2
        step = g / dg
        scale = max(scale - step, scale / 10)
        if abs(step) < 1e-12 * scale:
            break
    w = np.exp(-z / scale)
    return float(shift - scale * np.log(w.mean())), float(scale)


def _fit(family: str, maxima: np.ndarray) -> tuple[float, ...]:
    loc, scale = gumbel_fit(maxima)
    if family == "gumbel":
        return loc, scale
    stats = _scipy_stats()
    if stats is None:
        raise EdgeAsdError("--tail gev needs scipy: pip install 'edge-asd[calibrate]' (or use --tail gumbel)")
    # GEV from the Gumbel fit (shape 0); scipy's sign convention c = -xi (c < 0: heavy tail)
    return tuple(float(v) for v in stats.genextreme.fit(maxima, 0.0, loc=loc, scale=scale))  # (c, loc, scale)


def _isf(family: str, p: float, params: tuple[float, ...]) -> float:
    if family == "gumbel":
        loc, scale = params
        return float(loc - scale * np.log(-np.log1p(-p)))
    return float(_scipy_stats().genextreme.isf(p, *params))


def _cdf(family: str, x: np.ndarray, params: tuple[float, ...]) -> np.ndarray:
    if family == "gumbel":
        loc, scale = params
        return np.exp(-np.exp(-(np.asarray(x, dtype=np.float64) - loc) / scale))
    return _scipy_stats().genextreme.cdf(x, *params)


def _sample(family: str, params: tuple[float, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    if family == "gumbel":
        loc, scale = params
        return loc - scale * np.log(-np.log(rng.random(n)))
    return _scipy_stats().genextreme.rvs(*params, size=n, random_state=rng)


@dataclass
class TailFit:
    """A fitted extreme-value distribution of window maxima (scipy.stats parameter order)."""

    family: str
    """"gumbel" (as scipy.stats.gumbel_r: loc, scale) or "gev" (scipy.stats.genextreme: c, loc, scale)."""
    params: tuple[float, ...]
    n_maxima: int
    ks_statistic: float
    """Kolmogorov-Smirnov distance between the maxima and the fit."""
    ks_pvalue: float | None
    """Its p-value (optimistic: the fit saw the data); None without scipy."""

    @classmethod
    def fit(cls, maxima: np.ndarray, family: str = "gumbel") -> TailFit:
        """Maximum-likelihood fit to window maxima, shape (n,), n >= 5, finite, not all equal.

        Raises EdgeAsdError otherwise.
        """
        if family not in FAMILIES:
            raise EdgeAsdError(f"--tail must be one of {', '.join(FAMILIES)}, not {family!r}")
        maxima = np.asarray(maxima, dtype=np.float64)
        if maxima.size < MIN_MAXIMA:
            raise EdgeAsdError(f"a tail fit needs at least {MIN_MAXIMA} window maxima, got {maxima.size}; "
                               "give more normal recordings or a shorter --window")
        if not np.all(np.isfinite(maxima)):
            raise EdgeAsdError("a normal window got a non-finite anomaly score; check the audio and the model")
        if np.ptp(maxima) == 0:
            raise EdgeAsdError("all window maxima are equal; no tail to fit (a constant input?)")
        params = _fit(family, maxima)
        n = maxima.size
        cdf = _cdf(family, np.sort(maxima), params)
        ks = float(max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n)))
        stats = _scipy_stats()
        pvalue = float(stats.kstwo.sf(ks, n)) if stats is not None else None
        return cls(family, params, int(n), ks, pvalue)

    def phi_for(self, p_window: float) -> float:
        """The score a window max exceeds with probability ``p_window`` (0 < p < 1)."""
        return _isf(self.family, p_window, self.params)

    def exceedance(self, phi: float) -> float:
        """P(window max > phi) under the fit."""
        return float(1.0 - _cdf(self.family, phi, self.params))

    def bootstrap_phi(self, p_window: float, n_boot: int = 200, seed: int = 0) -> np.ndarray:
        """phi for ``p_window`` refitted on ``n_boot`` parametric resamples of n maxima, shape (n_boot,)."""
        rng = np.random.default_rng(seed)
        out = np.empty(n_boot)
        for b in range(n_boot):
            sample = _sample(self.family, self.params, self.n_maxima, rng)
            out[b] = _isf(self.family, p_window, _fit(self.family, sample))
        return out

    def to_dict(self) -> dict:
        names = ("loc", "scale") if self.family == "gumbel" else ("c", "loc", "scale")
        return {"family": self.family, "scipy_name": "gumbel_r" if self.family == "gumbel" else "genextreme",
                "params": dict(zip(names, self.params)), "n_maxima": self.n_maxima,
                "ks_statistic": self.ks_statistic, "ks_pvalue": self.ks_pvalue}
