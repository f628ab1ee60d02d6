"""Calibration rules on window maxima (Koizumi et al. 2019, eq. 11): the monitor's windows of a recording,
the quantile rule at a target false-positive rate, the extreme-value false-alarm budget, and the held-out check."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.presets import get_preset
from edge_asd.edge.calibrate.rules import (
    calibrate,
    phi_for_budget,
    phi_maxima,
    realized_rate,
    rule_arguments,
    seconds_per_window,
    upper_bound,
    window_maxima,
    windows_needed,
)
from edge_asd.edge.calibrate.tail import TailFit, gumbel_fit
from edge_asd.edge.runtime.windows import EnergyGate, FixedWindows, WholeStream

CFG = get_preset("koizumi2019")  # 16 kHz, hop 256 samples, a context vector ends 5632 samples after it starts


def recording(seconds: float, level: float = 0.1):
    """(frame scores 0, 1, 2, ... (float), white noise at ``level``) of a ``seconds``-long recording."""
    samples = np.random.default_rng(0).uniform(-level, level, round(seconds * CFG.sample_rate)).astype(np.float32)
    n_frames = 1 + (len(samples) - CFG.samples_per_vector) // CFG.hop_samples
    return np.arange(n_frames, dtype=np.float64), samples


def test_fixed_windows_hold_the_scores_stamped_inside_them():
    """16 s in 5-s windows. Score i is stamped at (i * 256 + 5632) / 16000 s, the end of its vector: window 0
    holds frames 0-290 (0.352-4.992 s), window 1 291-602, window 2 603-915, window 3 916-978, cut short at 16 s."""
    scores, samples = recording(16.0)
    got = window_maxima(scores, samples, FixedWindows(5.0, CFG.sample_rate), CFG, "r")
    assert [(w.window, w.frames, w.max_score, w.complete) for w in got] == [
        (0, 291, 290.0, True), (1, 312, 602.0, True), (2, 313, 915.0, True), (3, 63, 978.0, False)]
    assert [(w.start_s, w.end_s) for w in got] == [(0.352, 4.992), (5.008, 9.984), (10.0, 14.992), (15.008, 16.0)]
    assert got[1].max_time_s == 9.984 and got[0].recording == "r"
    assert phi_maxima(got).tolist() == [290.0, 602.0, 915.0]  # the cut-short window is left out of phi
    # a window that ends exactly where the recording does is complete
    assert [w.complete for w in window_maxima(*recording(15.0), FixedWindows(5.0, CFG.sample_rate), CFG)] == [True] * 3
    with pytest.raises(EdgeAsdError, match="shorter than one window"):
        phi_maxima(window_maxima(*recording(4.0), FixedWindows(5.0, CFG.sample_rate), CFG))


def test_whole_and_gate_windows():
    scores, samples = recording(3.0)
    (whole,) = window_maxima(scores, samples, WholeStream(), CFG)
    assert (whole.window, whole.frames, whole.max_score, whole.complete) == (0, len(scores), scores[-1], True)
    # 1 s of near-silence, 2 s on: the gate opens 0.5 s after the machine starts; earlier frames are in no window
    quiet = np.r_[samples[:CFG.sample_rate] * 1e-4, samples[CFG.sample_rate:]]
    (on,) = window_maxima(scores, quiet, EnergyGate(CFG.sample_rate, CFG.hop_samples), CFG)
    assert on.start_s == pytest.approx(1.5, abs=0.02) and on.end_s == 2.992 and on.complete  # the last stamp
    assert on.frames == sum(1 for i in range(len(scores)) if (i * 256 + 5632) / 16000 >= on.start_s)
    with pytest.raises(EdgeAsdError, match="gate never found"):
        phi_maxima(window_maxima(scores, samples * 1e-4, EnergyGate(CFG.sample_rate, CFG.hop_samples), CFG))


def test_seconds_per_window():
    assert seconds_per_window(FixedWindows(2.5, 16000), [10.0, 12.0], 9) == 2.5
    assert seconds_per_window(WholeStream(), [10.0, 12.0, 30.0], 3) == 12.0  # median recording
    assert seconds_per_window(EnergyGate(16000, 256), [60.0, 60.0], 4) == 30.0  # one machine cycle per 30 s


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
    out = calibrate(np.array([s.max() for s in fit_scores]), 10.0, target_fpr=0.05,
                    heldout_maxima=np.array([s.max() for s in held]))
    assert out["rule"] == {"name": "clip-max-quantile", "quantile": 0.95, "margin": 1.0, "target_fpr": 0.05}
    assert out["phi"] == pytest.approx(np.quantile([s.max() for s in fit_scores], 0.95))
    c = out["check"]
    assert c["windows"] == 400 and 0.02 < c["rate_per_window"] < 0.09
    assert c["target_per_window"] == 0.05 and c["target_per_day"] == pytest.approx(0.05 * 8640)
    assert c["false_alarms"] == sum(s.max() >= out["phi"] for s in held)


def test_calibrate_rules_and_errors():
    maxima = np.arange(1.0, 11.0)
    out = calibrate(maxima, 5.0, quantile=1.0, margin=1.0)
    assert out["window_maxima"] == {"n": 10, "min": 1.0, "median": 5.5, "max": 10.0} and out["phi"] == 10.0
    assert calibrate(maxima, 5.0)["phi"] == pytest.approx(11.0)  # default: 1.1 x the worst window
    with pytest.raises(EdgeAsdError, match="not both"):
        calibrate(maxima, 5.0, target_fpr=0.1, alarms_per_day=1.0)
    with pytest.raises(EdgeAsdError, match="--margin"):
        calibrate(maxima, 0.5, alarms_per_day=1.0, margin=1.1)
    with pytest.raises(EdgeAsdError, match="--target-fpr"):
        calibrate(maxima, 5.0, target_fpr=1.5)
    with pytest.raises(EdgeAsdError, match="no normal recording"):
        calibrate(np.zeros(0), 5.0)


def test_numpy_gumbel_fit_equals_scipy():
    """The device's numpy maximum-likelihood Gumbel fit gives scipy.stats.gumbel_r.fit's estimates."""
    rng = np.random.default_rng(5)
    for sample in (stats.gumbel_r(300.0, 20.0).rvs(size=12, random_state=rng), rng.normal(5.0, 0.1, 50),
                   np.array([1.0, 2.0, 2.5, 10.0, 3.0])):
        ours = gumbel_fit(sample)
        assert ours == pytest.approx(stats.gumbel_r.fit(sample), rel=1e-5)


@pytest.mark.parametrize("options", [{}, {"target_fpr": 0.2}, {"quantile": 0.9, "margin": 1.05},
                                     {"alarms_per_day": 2.0, "tail": "gumbel"}])
def test_a_stored_rule_applies_again(options):
    """What edge-finetune relies on: the rule a record stores gives, through rule_arguments, the same rule and phi."""
    maxima = stats.gumbel_r(100.0, 10.0).rvs(40, random_state=1)
    first = calibrate(maxima, 1.0, n_boot=0, **options)
    again = calibrate(maxima, 1.0, n_boot=0, **rule_arguments(first["rule"]))
    assert again["rule"] == first["rule"] and again["phi"] == first["phi"]


@pytest.mark.parametrize("rule, words", [({"name": "false-alarm-budget", "tail": "gumbel"}, "lacks its parameters"),
                                         ({"name": "clip-max-quantile", "quantile": "high", "margin": 1}, "lacks"),
                                         ({"name": "median-times-3"}, "unknown phi rule"), ("quantile", "unknown phi rule")])
def test_a_damaged_or_unknown_rule_is_refused(rule, words):
    with pytest.raises(EdgeAsdError, match=words):
        rule_arguments(rule)
