"""edge_asd.core.features and .presets, and firmware_io.audio_file.read_audio.

The log-mel is checked against librosa on a real fan clip, the streaming front end against the
whole-file one (chunk sizes and random chunkings), and the context layout against the definition of
Koizumi et al. 2019 sec. 4.2.2: x_t = (psi_{t-C}, ..., psi_{t+C}), D = (2C + 1) M.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import (
    StreamingFeatures,
    extract,
    logmel,
    mel_filterbank,
    stack_context,
    standardize,
    vector_end_s,
)
from edge_asd.core.presets import PRESETS, FeatureConfig, get_preset
from edge_asd.firmware_io.audio_file import read_audio

librosa = pytest.importorskip("librosa")

PRESET_NAMES = ["koizumi2019", "dcase2020"]
STREAM_ATOL = 1e-4  # psi units (ln or dB); streaming and whole-file differ only by float rounding


def librosa_psi_db(samples: np.ndarray, cfg) -> np.ndarray:
    """Reference log-mel in dB, (n_frames, n_mels): librosa's mel spectrogram, then the preset's log.

    koizumi2019: psi = ln(Mel(|X|) + floor)  -> in dB: 20 log10(Mel(|X|) + floor)
    dcase2020:   psi = 20/power log10(Mel(|X|^2) + floor) = 10 log10(...)  (DCASE 2020 baseline)
    """
    mel = librosa.feature.melspectrogram(
        y=np.asarray(samples, dtype=np.float64), sr=cfg.sample_rate, n_fft=cfg.n_fft,
        hop_length=cfg.hop_samples, n_mels=cfg.n_mels, fmin=cfg.fmin_hz, fmax=cfg.fmax_hz,
        center=False, power=cfg.magnitude_power,
    ).T
    return (20.0 / cfg.magnitude_power) * np.log10(mel + cfg.log_floor)


def psi_in_db(psi: np.ndarray, cfg) -> np.ndarray:
    if cfg.log == "ln":  # psi = ln(|.|): 20 log10(|.|) = 20 / ln(10) * ln(|.|)
        return psi.astype(np.float64) * (20.0 / np.log(10.0))
    return psi.astype(np.float64)  # already dB


def stream(samples: np.ndarray, cfg, chunk_sizes, mean=None, std=None) -> np.ndarray:
    """Push ``samples`` through StreamingFeatures in the given chunk sizes (cycled), concatenate the output."""
    sf_ = StreamingFeatures(cfg, mean, std)
    out, pos, k = [], 0, 0
    while pos < len(samples):
        n = chunk_sizes[k % len(chunk_sizes)]
        out.append(sf_.push(samples[pos:pos + n]))
        pos += n
        k += 1
    return np.concatenate(out) if out else np.zeros((0, cfg.dim), np.float32)


# --- presets ---------------------------------------------------------------------------------------


def test_preset_dimensions_match_the_papers():
    k = get_preset("koizumi2019")
    assert (k.sample_rate, k.n_fft, k.hop_samples, k.n_mels) == (16000, 512, 256, 64)
    assert k.n_context_frames == 2 * 10 + 1 and k.dim == (2 * 10 + 1) * 64 == 1344
    assert k.magnitude_power == 1.0 and k.log == "ln"
    d = get_preset("dcase2020")
    assert (d.sample_rate, d.n_fft, d.hop_samples, d.n_mels, d.n_context_frames) == (16000, 1024, 512, 128, 5)
    assert d.dim == 5 * 128 == 640
    assert d.magnitude_power == 2.0 and d.log == "db"
    assert k.samples_per_vector == 20 * 256 + 512
    assert d.samples_per_vector == 4 * 512 + 1024


# --- log-mel against librosa ---------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_mel_filterbank_equals_librosa(name):
    cfg = get_preset(name)
    ref = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin_hz,
                              fmax=cfg.fmax_hz, dtype=np.float64)
    ours = mel_filterbank(cfg)
    assert ours.shape == ref.shape == (cfg.n_mels, cfg.n_fft // 2 + 1)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_logmel_equals_librosa_in_db_on_a_real_clip(name, fan_audio):
    cfg = get_preset(name)
    psi = logmel(fan_audio, cfg)
    ref_db = librosa_psi_db(fan_audio, cfg)
    assert psi.dtype == np.float32
    assert psi.shape == ref_db.shape == (1 + (len(fan_audio) - cfg.n_fft) // cfg.hop_samples, cfg.n_mels)
    err = np.abs(psi_in_db(psi, cfg) - ref_db)
    assert err.max() < 1e-3, f"{name}: log-mel differs from librosa by up to {err.max():.4g} dB"


# --- streaming == whole file -----------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 255, 256, 1000, 4096])
def test_streaming_equals_whole_file_on_real_audio(chunk, fan_audio):
    cfg = get_preset("koizumi2019")
    audio = fan_audio[:24000] if chunk == 1 else fan_audio  # chunk 1: the first 1.5 s, for speed
    whole = extract(audio, cfg)
    got = stream(audio, cfg, [chunk])
    assert got.shape == whole.shape and len(whole) > 0
    np.testing.assert_allclose(got, whole, rtol=0, atol=STREAM_ATOL)


@pytest.mark.parametrize("chunk", [255, 1000, 4096])
def test_streaming_equals_whole_file_dcase2020(chunk, fan_audio):
    cfg = get_preset("dcase2020")
    whole = extract(fan_audio, cfg)
    got = stream(fan_audio, cfg, [chunk])
    assert got.shape == whole.shape and len(whole) > 0
    np.testing.assert_allclose(got, whole, rtol=0, atol=STREAM_ATOL)


def test_vectors_become_complete_at_vector_end_s(fan_audio):
    """Sample by sample: vector i is emitted exactly when the stream reaches vector_end_s(i)."""
    cfg = get_preset("koizumi2019")
    audio = fan_audio[:24000]
    sf_ = StreamingFeatures(cfg)
    emitted_at = []  # samples pushed when each vector came out
    for n in range(len(audio)):
        out = sf_.push(audio[n:n + 1])
        emitted_at += [n + 1] * len(out)
    assert sf_.n_vectors == len(emitted_at) == len(extract(audio, cfg))
    expected_s = vector_end_s(np.arange(len(emitted_at)), cfg)
    np.testing.assert_allclose(np.array(emitted_at) / cfg.sample_rate, expected_s, rtol=0, atol=1e-12)


def test_reset_starts_a_new_stream(fan, fan_audio):
    cfg = get_preset("koizumi2019")
    a = fan_audio[:40000]
    b = read_audio(fan["train"][1], cfg.sample_rate)[:50000]
    sf_ = StreamingFeatures(cfg)
    first = np.concatenate([sf_.push(a[i:i + 777]) for i in range(0, len(a), 777)])
    np.testing.assert_allclose(first, extract(a, cfg), rtol=0, atol=STREAM_ATOL)
    sf_.push(b[:3000])  # a partial stream (leftover samples and frames) that reset must drop
    sf_.reset()
    assert sf_.n_vectors == 0
    second = np.concatenate([sf_.push(b[i:i + 1000]) for i in range(0, len(b), 1000)])
    np.testing.assert_allclose(second, extract(b, cfg), rtol=0, atol=STREAM_ATOL)
    assert sf_.n_vectors == len(second)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(PRESET_NAMES),
    seed=st.integers(0, 2**32 - 1),
    n_samples=st.integers(0, 12000),
    cuts=st.lists(st.integers(0, 12000), max_size=12),
    scale=st.sampled_from([0.0, 1e-4, 0.05, 1.0]),
    level_norm=st.sampled_from(["none", "context"]),
)
def test_random_chunkings_give_the_whole_file_vectors(name, seed, n_samples, cuts, scale, level_norm):
    cfg = replace(get_preset(name), level_norm=level_norm)
    audio = (np.random.default_rng(seed).uniform(-1, 1, n_samples) * scale).astype(np.float32)
    bounds = [0] + sorted(c for c in cuts if c <= n_samples) + [n_samples]
    sf_ = StreamingFeatures(cfg)
    parts = [sf_.push(audio[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]  # empty chunks included
    got = np.concatenate(parts)
    whole = extract(audio, cfg)
    assert got.shape == whole.shape == (max(0, 1 + (n_samples - cfg.samples_per_vector) // cfg.hop_samples), cfg.dim)
    np.testing.assert_allclose(got, whole, rtol=0, atol=STREAM_ATOL)
    assert sf_.n_vectors == len(whole)


# --- context layout --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_context_vector_i_stacks_frames_i_to_i_plus_L(name, fan_audio):
    cfg = get_preset(name)
    audio = fan_audio[:3 * cfg.sample_rate]
    psi = logmel(audio, cfg)
    x = extract(audio, cfg)
    L = cfg.n_context_frames
    assert x.shape == (len(psi) - L + 1, cfg.dim)
    assert x.dtype == np.float32
    for i in range(len(x)):
        np.testing.assert_array_equal(x[i], psi[i:i + L].ravel())
    # oldest frame first: the first M values are psi_i, the last M are psi_{i+L-1}
    np.testing.assert_array_equal(x[3, :cfg.n_mels], psi[3])
    np.testing.assert_array_equal(x[3, -cfg.n_mels:], psi[3 + L - 1])


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_vector_covers_its_documented_samples(name, fan_audio):
    """Vector i depends only on samples [i*hop, i*hop + samples_per_vector)."""
    cfg = get_preset(name)
    audio = fan_audio[:2 * cfg.sample_rate].copy()
    x = extract(audio, cfg)
    i = 5
    lo, hi = i * cfg.hop_samples, i * cfg.hop_samples + cfg.samples_per_vector
    np.testing.assert_array_equal(extract(audio[lo:hi], cfg)[0], x[i])
    assert len(extract(audio[lo:hi], cfg)) == 1
    changed = audio.copy()
    changed[hi] += 0.5  # first sample after vector i: i is unchanged, i + 1 changes
    y = extract(changed, cfg)
    np.testing.assert_array_equal(y[i], x[i])
    assert not np.array_equal(y[i + 1], x[i + 1])


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_too_short_input_gives_zero_vectors(name):
    cfg = get_preset(name)
    rng = np.random.default_rng(0)
    for n in (0, 1, cfg.n_fft - 1, cfg.n_fft, cfg.samples_per_vector - 1):
        audio = rng.uniform(-0.5, 0.5, n).astype(np.float32)
        x = extract(audio, cfg)
        assert x.shape == (0, cfg.dim), n
        assert StreamingFeatures(cfg).push(audio).shape == (0, cfg.dim)
    assert logmel(np.zeros(cfg.n_fft - 1, np.float32), cfg).shape == (0, cfg.n_mels)
    assert extract(rng.uniform(-0.5, 0.5, cfg.samples_per_vector), cfg).shape == (1, cfg.dim)


def test_vector_end_s():
    k = get_preset("koizumi2019")
    assert vector_end_s(0, k) == pytest.approx((20 * 256 + 512) / 16000)  # 0.352 s
    assert vector_end_s(10, k) == pytest.approx((10 * 256 + 20 * 256 + 512) / 16000)
    d = get_preset("dcase2020")
    np.testing.assert_allclose(vector_end_s(np.array([0, 1, 7]), d),
                               (np.array([0, 1, 7]) * 512 + 4 * 512 + 1024) / 16000)


def test_presets_by_name():
    assert set(PRESETS) >= set(PRESET_NAMES)
    from edge_asd.core.errors import EdgeAsdError

    with pytest.raises(EdgeAsdError):
        get_preset("no-such-preset")


# --- read_audio ------------------------------------------------------------------------------------


def test_read_audio_resamples_and_mixes_down_with_log_lines(tmp_path, caplog):
    rate, n = 44100, 200_001  # ~4.5 s, more than one resampler block
    t = np.arange(n) / rate
    left = 0.6 * np.sin(2 * np.pi * 440 * t)
    right = 0.2 * np.sin(2 * np.pi * 1000 * t)
    path = tmp_path / "stereo44k.wav"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")

    with caplog.at_level(logging.INFO, logger="edge_asd"):
        y = read_audio(path, 16000)

    assert y.ndim == 1 and y.dtype == np.float32
    assert abs(len(y) - n * 16000 / rate) <= 1
    # mono = mean of the channels, at 16 kHz: 0.3 sin(440) + 0.1 sin(1000) (edges skipped: filter ramp)
    tt = np.arange(len(y)) / 16000
    expected = 0.3 * np.sin(2 * np.pi * 440 * tt) + 0.1 * np.sin(2 * np.pi * 1000 * tt)
    assert np.abs(y[500:-500] - expected[500:-500]).max() < 1e-3

    records = [r for r in caplog.records if r.name == "edge_asd"]
    text = "\n".join(r.getMessage() for r in records)
    assert any("resampl" in r.getMessage() and "44100" in r.getMessage() and "16000" in r.getMessage()
               for r in records), text
    assert any("mix" in r.getMessage() and "2 channels" in r.getMessage() for r in records), text


def test_read_audio_16k_mono_is_read_as_is_without_log_lines(tmp_path, caplog):
    x = (np.random.default_rng(1).uniform(-0.5, 0.5, 16001)).astype(np.float32)
    path = tmp_path / "mono16k.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    with caplog.at_level(logging.INFO, logger="edge_asd"):
        y = read_audio(path, 16000)
    np.testing.assert_array_equal(y, x)
    assert not [r for r in caplog.records if r.name == "edge_asd"]


# --- level_norm: "none" keeps today's bits, "context" cancels a constant gain ------------------------


def test_level_norm_is_stored_checked_and_defaults_to_none():
    cfg = get_preset("koizumi2019")
    assert cfg.level_norm == "none" and cfg.to_dict()["level_norm"] == "none"
    old = {k: v for k, v in cfg.to_dict().items() if k != "level_norm"}  # a file written before the key existed
    assert FeatureConfig.from_dict(old) == cfg
    ctx = replace(cfg, level_norm="context")
    assert FeatureConfig.from_dict(ctx.to_dict()) == ctx
    with pytest.raises(EdgeAsdError, match="level_norm"):
        replace(cfg, level_norm="clip")


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_level_norm_none_gives_todays_bits(name, fan_audio):
    """Today's definitions, written out: stacked log-mel frames; streamed, each frame standardized first."""
    cfg = get_preset(name)
    psi = logmel(fan_audio, cfg)
    mean, std = psi.mean(0), psi.std(0)
    np.testing.assert_array_equal(extract(fan_audio, cfg), stack_context(psi, cfg.n_context_frames))
    sf_ = StreamingFeatures(cfg, mean, std)
    got = np.concatenate([sf_.push(fan_audio[i:i + 4096]) for i in range(0, len(fan_audio), 4096)])
    np.testing.assert_array_equal(got, stack_context((psi - mean) / std, cfg.n_context_frames))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_context_mean_removal_cancels_a_constant_gain(name, fan_audio):
    cfg = replace(get_preset(name), level_norm="context")
    x, louder = extract(fan_audio, cfg), extract(fan_audio * 10 ** (3 / 20), cfg)
    np.testing.assert_allclose(louder, x, rtol=0, atol=1e-4)
    np.testing.assert_allclose(x.mean(1), 0.0, atol=1e-5)
    raw = get_preset(name)  # without it, +3 dB shifts every value: 3 ln(10) / 20 (ln) or 3 dB (power in dB)
    shift = (extract(fan_audio * 10 ** (3 / 20), raw) - extract(fan_audio, raw)).mean()
    assert shift == pytest.approx(3 * np.log(10) / 20 if raw.log == "ln" else 3.0, rel=1e-3)


@pytest.mark.parametrize("chunk", [1000, 4096])
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_context_streaming_equals_whole_file_with_and_without_standardization(name, chunk, fan_audio):
    cfg = replace(get_preset(name), level_norm="context")
    whole = extract(fan_audio, cfg)
    np.testing.assert_array_equal(stream(fan_audio, cfg, [chunk]), whole)  # the same float ops on the same frames
    values = whole.reshape(-1, cfg.n_mels)
    mean, std = values.mean(0), values.std(0)
    got = stream(fan_audio, cfg, [chunk], mean, std)
    np.testing.assert_allclose(got, standardize(whole, mean, std), rtol=0, atol=STREAM_ATOL)
