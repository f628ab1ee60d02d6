"""edge_asd.core.batches: the mini-batches of Koizumi et al. 2019, sec. 4.2.1, on real recordings.

Normal audio: MIMII fan id_00 train clips; something-else sound: a real ESC clip. The labelling of
x^(a) / x^(u) is recomputed here from the returned span with an explicit loop (vector i spans samples
[i * hop, i * hop + samples_per_vector)), and the realized ANR is measured on the returned signals.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge_asd.core.batches import (
    BatchBuilder,
    BatchConfig,
    coloured_noise,
    overlapping_vectors,
    segment,
    trim_silence,
)
from edge_asd.core.features import extract, standardize
from edge_asd.core.presets import get_preset
from edge_asd.firmware_io.audio_file import audio_files, read_audio
from edge_asd.train.data import band_statistics

CFG = get_preset("koizumi2019")
SR = CFG.sample_rate


@pytest.fixture(scope="module")
def normals(fan):
    return [read_audio(p, SR) for p in fan["train"]]


@pytest.fixture(scope="module")
def other_sound(something_else):
    """One real something-else clip: a short sneeze in a zero-padded ESC file when present."""
    files = audio_files(something_else)
    assert files, f"no audio under {something_else}"
    pick = [f for f in files if f.name.startswith("person_sneeze__esc10__3-143119")] or files
    return read_audio(pick[0], SR)


@pytest.fixture(scope="module")
def builder(normals, other_sound):
    return BatchBuilder(normals, [other_sound], CFG)


def expected_is_a(n_vectors: int, span: tuple[int, int]) -> np.ndarray:
    """Independent labelling: vector i covers samples [i*hop, i*hop + samples_per_vector)."""
    out = np.zeros(n_vectors, dtype=bool)
    for i in range(n_vectors):
        lo = i * CFG.hop_samples
        hi = lo + CFG.samples_per_vector
        out[i] = max(lo, span[0]) < min(hi, span[1])  # non-empty intersection of half-open intervals
    return out


def realized_anr_db(normal: np.ndarray, mixture: np.ndarray, span: tuple[int, int]) -> float:
    added = mixture[span[0]:span[1]].astype(np.float64) - normal[span[0]:span[1]].astype(np.float64)
    under = normal[span[0]:span[1]].astype(np.float64)
    return 10 * np.log10(np.mean(added ** 2) / np.mean(under ** 2))


# --- the builder on real audio ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_builder_labels_exactly_the_vectors_that_overlap_the_sound(builder, seed):
    batch = builder.draw(np.random.default_rng(seed))
    normal, mixture, span, anr_db = builder.mix(np.random.default_rng(seed))  # the same draw
    assert span == batch.span and anr_db == batch.anr_db
    assert len(normal) == len(mixture) == 10 * 3 * SR

    mixed = extract(mixture, CFG)
    is_a = expected_is_a(len(mixed), span)
    assert 0 < is_a.sum() < len(is_a)
    np.testing.assert_array_equal(overlapping_vectors(len(mixed), span, CFG), is_a)
    assert batch.x_a.shape == (is_a.sum(), CFG.dim) and batch.x_u.shape == ((~is_a).sum(), CFG.dim)
    assert batch.x_u.dtype == batch.x_a.dtype == np.float32
    np.testing.assert_array_equal(batch.x_a, mixed[is_a])
    np.testing.assert_array_equal(batch.x_u, mixed[~is_a])

    # x^(u) are the context vectors of the pure normal sound at those indices
    pure = extract(normal, CFG)
    np.testing.assert_allclose(batch.x_u, pure[~is_a], rtol=0, atol=1e-5)
    # and every x^(a) vector does see the sound (none of them equals the pure normal vector)
    differs = np.abs(batch.x_a - pure[is_a]).max(axis=1) > 0
    assert differs.all()

    # the sound lies inside the span only
    added = mixture.astype(np.float64) - normal
    assert not np.any(added[:span[0]]) and not np.any(added[span[1]:])
    assert np.any(added[span[0]:span[1]])


def test_span_holds_the_trimmed_something_else_sound(builder, other_sound):
    _, mixture, span, _ = builder.mix(np.random.default_rng(3))
    trimmed = trim_silence(other_sound)
    assert span[1] - span[0] == len(trimmed)
    assert 0 <= span[0] and span[1] <= len(mixture)


def test_normal_part_is_ten_whole_3s_segments(builder):
    normal, _, _, _ = builder.mix(np.random.default_rng(4))
    seg = 3 * SR
    for k in range(10):
        block = normal[k * seg:(k + 1) * seg]
        assert any(np.array_equal(block, s) for s in builder.segments), k


@pytest.mark.parametrize("seed", range(8))
def test_realized_anr_equals_the_drawn_anr(builder, seed):
    normal, mixture, span, anr_db = builder.mix(np.random.default_rng(100 + seed))
    assert -30.0 <= anr_db <= 10.0
    assert realized_anr_db(normal, mixture, span) == pytest.approx(anr_db, abs=0.01)


def test_anr_values_spread_over_the_range(builder):
    anrs = [builder.mix(np.random.default_rng(s))[3] for s in range(40)]
    assert min(anrs) >= -30.0 and max(anrs) <= 10.0
    assert min(anrs) < -20.0 and max(anrs) > 0.0  # uniform over [-30, 10], not a constant


def test_builder_cuts_real_clips_into_3s_segments(builder, normals):
    assert all(len(c) == 10 * SR for c in normals)
    assert len(builder.segments) == 3 * len(normals)  # 10-s clips: 3 segments, 1 s dropped each
    assert all(len(s) == 3 * SR for s in builder.segments)
    np.testing.assert_array_equal(builder.segments[4], normals[1][3 * SR:6 * SR])


# --- segment, trim_silence -------------------------------------------------------------------------


def test_segment_cuts_consecutive_segments_and_drops_remainders():
    a = np.arange(10, dtype=np.float32)
    b = np.arange(100, 103, dtype=np.float32)  # exactly one segment
    c = np.arange(200, 202, dtype=np.float32)  # too short: dropped
    out = segment([a, b, c], 3)
    assert [s.tolist() for s in out] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [100, 101, 102]]
    assert segment([c], 3) == []


def test_builder_without_a_whole_segment_raises():
    with pytest.raises(ValueError):
        BatchBuilder([np.ones(3 * SR - 1, np.float32)], None, CFG)


def test_trim_silence_removes_zero_padding():
    rng = np.random.default_rng(0)
    sound = rng.uniform(-0.5, 0.5, 4096).astype(np.float32)
    padded = np.concatenate([np.zeros(1024, np.float32), sound, np.zeros(3072, np.float32)])
    np.testing.assert_array_equal(trim_silence(padded), sound)
    # not aligned to the frame: the whole sound is kept, with less than a frame of padding per side
    padded = np.concatenate([np.zeros(1000, np.float32), sound, np.zeros(3000, np.float32)])
    out = trim_silence(padded)
    assert len(sound) <= len(out) < len(sound) + 2 * 256
    start = int(np.flatnonzero(out)[0])
    np.testing.assert_array_equal(out[start:start + len(sound)], sound)


def test_trim_silence_on_a_real_padded_clip(other_sound):
    out = trim_silence(other_sound)
    assert 0 < len(out) < len(other_sound)
    frames = out[: len(out) // 256 * 256].reshape(-1, 256).astype(np.float64)
    energy = (frames ** 2).mean(1)
    floor = energy.max() * 10 ** (-40 / 10)
    assert energy[0] > floor and energy[-1] > floor  # the first and last kept frames are active


# --- coloured noise ---------------------------------------------------------------------------------


def loglog_slope(x: np.ndarray) -> float:
    """Slope of log10(periodogram) against log10(frequency), DC excluded."""
    power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.arange(len(power))
    keep = slice(1, len(power) - 1)
    return float(np.polyfit(np.log10(f[keep]), np.log10(power[keep]), 1)[0])


@pytest.mark.parametrize("exponent, dB_per_decade", [(0.0, 0.0), (1.0, -10.0), (2.0, -20.0)])
def test_coloured_noise_has_unit_rms_and_the_expected_slope(exponent, dB_per_decade):
    x = coloured_noise(1 << 16, exponent, np.random.default_rng(7))
    assert x.dtype == np.float32 and x.shape == (1 << 16,)
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-4)
    assert 10 * loglog_slope(x) == pytest.approx(dB_per_decade, abs=1.0)


def test_coloured_noise_odd_length_and_randomness():
    a = coloured_noise(12345, 1.0, np.random.default_rng(1))
    b = coloured_noise(12345, 1.0, np.random.default_rng(2))
    assert a.shape == (12345,)
    assert np.sqrt(np.mean(a.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-4)
    assert not np.allclose(a, b)


# --- no something-else sounds: coloured noise stands in ---------------------------------------------


@pytest.mark.parametrize("something_else", [None, [], [np.ones(100, np.float32)]])
def test_builder_uses_coloured_noise_without_something_else_sounds(normals, something_else):
    b = BatchBuilder(normals[:3], something_else, CFG)
    assert b.something_else is None
    for seed in range(3):
        normal, mixture, span, anr_db = b.mix(np.random.default_rng(seed))
        assert 0.5 * SR - 1 <= span[1] - span[0] <= 5 * SR  # 0.5 to 5 s of noise
        added = mixture.astype(np.float64) - normal
        assert not np.any(added[:span[0]]) and not np.any(added[span[1]:])
        assert realized_anr_db(normal, mixture, span) == pytest.approx(anr_db, abs=0.01)
        # a coloured noise: 1/f^e with e in [0, 2], i.e. a slope between 0 and -20 dB per decade
        assert -23.0 < 10 * loglog_slope(added[span[0]:span[1]]) < 3.0
    batch = b.draw(np.random.default_rng(0))
    assert len(batch.x_a) > 0 and len(batch.x_u) > 0


# --- gain augmentation and level_norm "context" -----------------------------------------------------


def test_gain_augmentation_scales_each_segment_by_its_own_gain_within_the_range(normals, other_sound):
    seg = round(3.0 * SR)
    plain, _, _, _ = BatchBuilder(normals, [other_sound], CFG).mix(np.random.default_rng(5))
    scaled, _, _, _ = BatchBuilder(normals, [other_sound], CFG, BatchConfig(gain_db=3.0)).mix(np.random.default_rng(5))
    gains_db = []
    for k in range(10):  # the same segments, each scaled by one factor (no sample reaches full scale here)
        a, b = plain[k * seg:(k + 1) * seg].astype(np.float64), scaled[k * seg:(k + 1) * seg].astype(np.float64)
        factor = np.dot(a, b) / np.dot(a, a)
        np.testing.assert_allclose(b, factor * a, rtol=0, atol=1e-6)
        gains_db.append(20 * np.log10(factor))
    assert max(np.abs(gains_db)) <= 3.0 and max(gains_db) - min(gains_db) > 1.0


def test_without_gain_augmentation_the_batches_are_todays(normals, other_sound):
    mean, std = band_statistics(normals, CFG)
    a = BatchBuilder(normals, [other_sound], CFG).draw(np.random.default_rng(7), mean, std)
    b = BatchBuilder(normals, [other_sound], CFG, BatchConfig(gain_db=0.0)).draw(np.random.default_rng(7), mean, std)
    np.testing.assert_array_equal(a.x_u, b.x_u)
    np.testing.assert_array_equal(a.x_a, b.x_a)


def test_context_batches_and_band_statistics(normals, other_sound):
    """Standardized mini-batch vectors == standardize of the raw mean-removed ones; the band statistics
    standardize the training clips' mean-removed vectors to mean 0, std 1 per band."""
    cfg = replace(CFG, level_norm="context")
    mean, std = band_statistics(normals, cfg)
    builder = BatchBuilder(normals, [other_sound], cfg)
    raw, ready = builder.draw(np.random.default_rng(3)), builder.draw(np.random.default_rng(3), mean, std)
    np.testing.assert_allclose(raw.x_u.mean(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(ready.x_u, standardize(raw.x_u, mean, std), rtol=0, atol=1e-4)
    np.testing.assert_allclose(ready.x_a, standardize(raw.x_a, mean, std), rtol=0, atol=1e-4)
    values = np.concatenate([standardize(extract(c, cfg), mean, std) for c in normals]).reshape(-1, cfg.n_mels)
    np.testing.assert_allclose(values.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(values.std(0), 1.0, atol=1e-3)
    assert not np.allclose(mean, band_statistics(normals, CFG)[0], atol=0.1)  # not the plain frames' statistics
