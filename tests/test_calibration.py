"""Calibration rules on window maxima (Koizumi et al. 2019, eq. 11): windows, the quantile rule at a
target false-positive rate, the extreme-value false-alarm budget, and the held-out check."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from edge_asd.edge.calibration import (
    calibrate,
    phi_for_budget,
    realized_rate,
    upper_bound,
    window_frames,
    window_maxima,
    windows_needed,
)
from edge_asd.edge.errors import EdgeAsdError
from edge_asd.edge.evt import TailFit, gumbel_fit

HOP_S = 0.016


def test_window_maxima_one_per_recording_and_fixed_length():
    a, b = np.array([1.0, 5.0, 2.0]), np.array([3.0, 0.5, 4.0, 9.0, 1.0])
    assert window_maxima([a, b]).tolist() == [5.0, 9.0]
    # joined back to back: [1 5 2 3 0.5 4 9 1] in windows of 3 -> [1 5 2] [3 .5 4]; [9 1] dropped
    assert window_maxima([a, b], 3).tolist() == [5.0, 4.0]
    assert window_maxima([a, b], 1).tolist() == [1, 5, 2, 3, 0.5, 4, 9, 1]
    with pytest.raises(EdgeAsdError, match="fewer than one window"):
        window_maxima([a, b], 9)
    with pytest.raises(EdgeAsdError, match="no normal recording"):
        window_maxima([])


def test_window_frames():
    assert window_frames(10.0, HOP_S) == 625
    assert window_frames(0.001, HOP_S) == 1
    with pytest.raises(EdgeAsdError, match="--window"):
        window_frames(0.0, HOP_S)


@pytest.mark.parametrize("family", ["gumbel", "gev"])
def test_tail_fit_recovers_a_known_quantile(family):
    """On 400 true Gumbel maxima the fitted 1e-3 quantile lands near the true one, inside the bootstrap band."""
    truth = stats.gumbel_r(loc=100.0, scale=8.0)
    maxima = truth.rvs(size=400, random_state=np.random.default_rng(1))
    fit = TailFit.fit(maxima, family)
    p = 1e-3
    assert fit.phi_for(p) == pytest.approx(truth.isf(p), rel=0.06)
    assert fit.exceedance(fit.phi_for(p)) == pytest.approx(p, rel=1e-6)
    boot = fit.bootstrap_phi(p, n_boot=60, seed=2)
    assert np.percentile(boot, 2.5) < truth.isf(p) < np.percentile(boot, 97.5)
    assert fit.ks_pvalue > 0.01


def test_budget_rule_meets_its_rate_on_new_windows():
    """phi for 1 false alarm/day with 10-s windows (p = 1/8640) on 2000 Gumbel maxima: on 2 million new
    windows from the same distribution the realized rate is near 1/day."""
    truth = stats.gumbel_r(loc=50.0, scale=3.0)
    rng = np.random.default_rng(3)
    phi, report = phi_for_budget(truth.rvs(size=2000, random_state=rng), 1.0, 10.0, n_boot=20)
    assert report["p_window"] == pytest.approx(10 / 86400)
    assert report["fit"]["family"] == "gumbel" and set(report["fit"]["params"]) == {"loc", "scale"}
    b = report["bootstrap"]
    assert b["method"] == "parametric" and b["phi_p5"] < phi < b["phi_p95"]
    check = realized_rate(truth.rvs(size=2_000_000, random_state=rng), phi, 10.0)
    assert 0.5 < check["per_day"] < 2.0


def test_budget_rule_errors():
    maxima = np.linspace(1, 2, 20)
    with pytest.raises(EdgeAsdError, match="--false-alarms-per-day"):
        phi_for_budget(maxima, 0.0, 10.0)
    with pytest.raises(EdgeAsdError, match="more than one per"):
        phi_for_budget(maxima, 10000.0, 10.0)
    with pytest.raises(EdgeAsdError, match="at least 5"):
        phi_for_budget(maxima[:3], 1.0, 10.0)
    with pytest.raises(EdgeAsdError, match="all window maxima are equal"):
        phi_for_budget(np.ones(10), 1.0, 10.0)
    with pytest.raises(EdgeAsdError, match="non-finite"):
        phi_for_budget(np.r_[maxima, np.nan], 1.0, 10.0)
    with pytest.raises(EdgeAsdError, match="--tail"):
        TailFit.fit(maxima, "weibull")


def test_upper_bound_matches_clopper_pearson():
    for k, n in [(0, 5), (0, 100), (3, 50), (10, 10)]:
        exact = 1.0 if k == n else stats.beta.ppf(0.95, k + 1, n - k)
        assert upper_bound(k, n) == pytest.approx(exact, rel=1e-9)
    # zero alarms in windows_needed(p) windows bounds the rate at p
    p = 1e-3
    n = windows_needed(p)
    assert upper_bound(0, n) <= p < upper_bound(0, n - 1)


def test_quantile_rule_at_target_fpr_and_check():
    rng = np.random.default_rng(4)
    fit_scores = [rng.normal(10, 1, 625) for _ in range(200)]  # 200 recordings of 10 s
    held = [rng.normal(10, 1, 625) for _ in range(400)]
    out = calibrate(fit_scores, HOP_S, 10.0, target_fpr=0.05, heldout_scores=held)
    assert out["rule"] == {"name": "clip-max-quantile", "quantile": 0.95, "margin": 1.0, "target_fpr": 0.05}
    assert out["phi"] == pytest.approx(np.quantile([s.max() for s in fit_scores], 0.95))
    c = out["check"]
    assert c["windows"] == 400 and 0.02 < c["rate_per_window"] < 0.09
    assert c["target_per_window"] == 0.05 and c["target_per_day"] == pytest.approx(0.05 * 8640)
    assert c["false_alarms"] == sum(s.max() >= out["phi"] for s in held)


def test_calibrate_with_a_window_length():
    scores = [np.arange(1000, dtype=float)]  # 16 s of frames, windows of 5 s = 312 frames -> 3 windows
    out = calibrate(scores, HOP_S, 16.0, window_s=5.0, quantile=1.0, margin=1.0)
    assert out["window_maxima"]["n"] == 3 and out["phi"] == 935.0 and out["window_s"] == 5.0
    with pytest.raises(EdgeAsdError, match="not both"):
        calibrate(scores, HOP_S, 16.0, target_fpr=0.1, alarms_per_day=1.0)
    with pytest.raises(EdgeAsdError, match="--margin"):
        calibrate(scores, HOP_S, 16.0, window_s=0.5, alarms_per_day=1.0, margin=1.1)
    with pytest.raises(EdgeAsdError, match="--target-fpr"):
        calibrate(scores, HOP_S, 16.0, target_fpr=1.5)


def test_numpy_gumbel_fit_equals_scipy():
    """The device's numpy maximum-likelihood Gumbel fit gives scipy.stats.gumbel_r.fit's estimates."""
    rng = np.random.default_rng(5)
    for sample in (stats.gumbel_r(300.0, 20.0).rvs(size=12, random_state=rng), rng.normal(5.0, 0.1, 50),
                   np.array([1.0, 2.0, 2.5, 10.0, 3.0])):
        ours = gumbel_fit(sample)
        assert ours == pytest.approx(stats.gumbel_r.fit(sample), rel=1e-5)
