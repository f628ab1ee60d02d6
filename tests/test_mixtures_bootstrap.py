"""Paper-style ANR mixtures (sec. 4.2) and bootstrap intervals of clip AUC, on the real recordings."""

import numpy as np
import pytest

from edge_asd.firmware_io.audio_file import read_audio
from edge_asd.train.bootstrap import auc_ci, paired_difference_ci
from edge_asd.train.mixtures import PAPER_ANRS_DB, anomaly_sound_files, mix_at_anr, plan_mixtures, render


def test_paper_anomalies_are_the_140_dcase2016_clips(data_root):
    files = anomaly_sound_files(data_root / "something_else" / "test")
    assert len(files) == 140
    kinds = {p.name.split("__")[0] for p in files}
    assert kinds == {"door_slam", "door_knock", "keys_on_table", "keyboard_typing", "drawer", "page_turning",
                     "phone_ringing"}
    assert len(anomaly_sound_files(data_root / "something_else" / "test", subset=None)) > 140


@pytest.mark.parametrize("anr_db", PAPER_ANRS_DB)
def test_mixture_has_the_requested_anr(fan_audio, data_root, anr_db):
    sound = read_audio(anomaly_sound_files(data_root / "something_else" / "test")[0], 16000)
    start = 20000
    mixed = mix_at_anr(fan_audio, sound, anr_db, start)
    added = (mixed - fan_audio)[start:start + len(sound)].astype(np.float64)
    normal = fan_audio[start:start + len(sound)].astype(np.float64)
    measured = 10 * np.log10(np.mean(added**2) / np.mean(normal**2))
    assert measured == pytest.approx(anr_db, abs=0.05)
    assert np.array_equal(mixed[:start], fan_audio[:start]) and len(mixed) == len(fan_audio)


def test_mixture_rejects_silence_and_bad_start(fan_audio):
    with pytest.raises(ValueError, match="silent"):
        mix_at_anr(fan_audio, np.zeros(100, np.float32), -10.0, 0)
    with pytest.raises(ValueError, match="outside"):
        mix_at_anr(fan_audio, np.ones(100, np.float32), -10.0, len(fan_audio))


def test_plan_uses_every_sound_once_per_anr_and_is_deterministic():
    plan = plan_mixtures([160000, 160000, 176000], [8000, 200000, 16000], seed=3)
    assert len(plan) == 9
    assert sorted((m.anr_db, m.sound_index) for m in plan) == sorted((a, j) for a in PAPER_ANRS_DB for j in range(3))
    assert plan == plan_mixtures([160000, 160000, 176000], [8000, 200000, 16000], seed=3)
    long = [m for m in plan if m.sound_index == 1]
    assert all(m.start == 0 for m in long)  # longer than any clip: starts at 0 and is cut
    audio = render(plan, [np.ones(n, np.float32) for n in (160000, 160000, 176000)],
                   [np.ones(n, np.float32) for n in (8000, 200000, 16000)])
    assert [len(a) for a in audio] == [(160000, 160000, 176000)[m.normal_index] for m in plan]


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_clips():
    rng = np.random.default_rng(0)

    def sample(n):
        y = np.r_[np.zeros(n), np.ones(n)].astype(bool)
        return y, np.r_[rng.normal(0, 1, n), rng.normal(1, 1, n)]

    auc_small, pauc_small = auc_ci(*sample(10), n_boot=300)
    auc_big, _ = auc_ci(*sample(400), n_boot=300)
    for iv in (auc_small, pauc_small, auc_big):
        assert iv.low <= iv.value <= iv.high
    assert (auc_big.high - auc_big.low) < (auc_small.high - auc_small.low) / 3
    assert 0.65 < auc_big.value < 0.85  # d' = 1 gives AUC 0.76


def test_paired_difference_separates_a_better_scoring_and_not_an_identical_one():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(200), np.ones(200)].astype(bool)
    good = np.r_[rng.normal(0, 1, 200), rng.normal(2, 1, 200)]
    weak = good + rng.normal(0, 3, 400)
    d_auc, _ = paired_difference_ci(y, good, weak, n_boot=300)
    assert d_auc.low > 0
    same, _ = paired_difference_ci(y, good, good, n_boot=50)
    assert same.value == same.low == same.high == 0.0
    with pytest.raises(ValueError, match="both"):
        auc_ci(np.zeros(5, bool), np.arange(5.0))
