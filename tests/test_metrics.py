"""AUC and pAUC in numpy equal scikit-learn's ``roc_auc_score`` (DCASE 2020's metric), ties included; the
clip level in dBFS; and the loudness reference on real fan id_00 clips, where the level alone is perfect."""

from __future__ import annotations

import numpy as np
import pytest

from edge_asd.core.loudness import SILENCE_DBFS, clip_level_dbfs, loudness_reference
from edge_asd.core.metrics import auc_pauc, partial_auc, roc_auc, roc_curve_points

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def sklearn_auc_pauc(y, s, max_fpr=0.1):
    return sklearn_metrics.roc_auc_score(y, s), sklearn_metrics.roc_auc_score(y, s, max_fpr=max_fpr)


@pytest.mark.parametrize("max_fpr", [0.1, 0.05, 0.3, 0.5, 1.0])
def test_equals_sklearn_on_random_scores_with_ties(max_fpr):
    rng = np.random.default_rng(14)
    checked = 0
    for i in range(400):
        n = int(rng.integers(2, 80))
        y = rng.random(n) < rng.uniform(0.1, 0.9)
        if y.all() or not y.any():
            continue
        if i % 2:  # few distinct values: many ties, between and within labels
            s = rng.integers(0, int(rng.integers(1, 12)), n).astype(np.float64)
        else:
            s = rng.normal(size=n) + y * rng.uniform(0, 2)
        assert auc_pauc(y, s, max_fpr) == pytest.approx(sklearn_auc_pauc(y, s, max_fpr), abs=1e-12)
        checked += 1
    assert checked > 300


def test_equals_sklearn_on_real_like_scores(fan_scores):
    """The clip maxima and means of a real model on the 15 fan id_00 test clips, and their levels."""
    y, columns = fan_scores
    for s in columns:
        assert auc_pauc(y, s) == pytest.approx(sklearn_auc_pauc(y, s), abs=1e-12)


@pytest.fixture(scope="module")
def fan_scores(fan):
    """(is_anomaly, [level dBFS, and two smooth functions of it with float32 rounding]) of fan id_00's test
    clips: real values without training a model here (edge-score's tests score with one)."""
    from edge_asd.firmware_io.audio_file import read_audio

    clips = fan["test_normal"] + fan["test_anomaly"]
    y = np.array([p in fan["test_anomaly"] for p in clips])
    levels = np.array([clip_level_dbfs(read_audio(p, 16000)) for p in clips])
    return y, [levels, np.float32(10 ** (levels / 20)), np.float32(np.round(levels))]


def test_known_values():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, [0.1, 0.4, 0.35, 0.8]) == 0.75  # the scikit-learn docs' example
    assert roc_auc(y, [1, 1, 1, 1]) == 0.5  # all tied: chance
    assert auc_pauc(y, [0, 1, 2, 3]) == (1.0, 1.0)
    assert auc_pauc(y, [3, 2, 1, 0]) == (0.0, pytest.approx(0.5 * (1 - 0.005 / 0.095)))  # McClish floor
    fpr, tpr = roc_curve_points(y, [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_array_equal(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_array_equal(tpr, [0, 0.5, 0.5, 1, 1])


@pytest.mark.parametrize("y, s, max_fpr, words", [
    ([0, 0, 0], [1, 2, 3], 0.1, "both"),
    ([0, 1], [1, np.nan], 0.1, "NaN"),
    ([0, 1], [1, 2, 3], 0.1, "labels"),
    ([0, 1], [1, 2], 0.0, "max_fpr"),
    ([0, 1], [1, 2], 1.5, "max_fpr"),
])
def test_refuses_what_sklearn_refuses(y, s, max_fpr, words):
    with pytest.raises(ValueError, match=words):
        auc_pauc(y, s) if max_fpr == 0.1 else partial_auc(y, s, max_fpr)


def test_clip_level_dbfs():
    t = np.arange(16000) / 16000
    assert clip_level_dbfs(np.sin(2 * np.pi * 440 * t)) == pytest.approx(-3.0103, abs=1e-4)  # full-scale sine
    assert clip_level_dbfs(np.ones(10)) == 0.0
    assert clip_level_dbfs(0.1 * np.ones(10, dtype=np.float32)) == pytest.approx(-20.0, abs=1e-5)
    assert clip_level_dbfs(np.zeros(100)) == SILENCE_DBFS == -200.0  # digital silence: the floor
    assert clip_level_dbfs(np.full(4, 1e-12)) == SILENCE_DBFS
    with pytest.raises(ValueError):
        clip_level_dbfs(np.zeros(0))


def test_loudness_alone_separates_fan_id_00(fan):
    """Why every evaluation shows the loudness reference: on fan id_00's 15 test clips (10 anomalous, 5
    normal) the RMS level gives AUC 1.000 and pAUC 1.000: the anomalies are 4-5 dB louder."""
    from edge_asd.firmware_io.audio_file import read_audio

    normal = [clip_level_dbfs(read_audio(p, 16000)) for p in fan["test_normal"]]
    anomaly = [clip_level_dbfs(read_audio(p, 16000)) for p in fan["test_anomaly"]]
    assert (len(normal), len(anomaly)) == (5, 10)
    assert 4 < min(anomaly) - max(normal) < 6
    y = np.r_[np.zeros(5, bool), np.ones(10, bool)]
    assert loudness_reference(y, normal + anomaly) == (1.0, 1.0)
