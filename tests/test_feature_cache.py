"""edge-train's feature cache (train/feature_cache.py) on real recordings: the same audio and log-mel frames,
memory-mapped, keyed by file, preset and log-mel code version; damaged entries recomputed, an unwritable
cache skipped."""

from __future__ import annotations

import numpy as np

from edge_asd.core.features import extract, logmel
from edge_asd.core.presets import get_preset
from edge_asd.firmware_io.audio_file import read_audio
from edge_asd.train.feature_cache import FeatureCache

FEATURES = get_preset("koizumi2019")


def test_feature_cache_returns_the_same_audio_and_frames_memory_mapped(fan, tmp_path, monkeypatch):
    paths = fan["train"][:2]
    cache = FeatureCache(tmp_path / "c")
    first = [cache.audio(p, 16000) for p in paths]
    psi_first = [cache.logmel(p, a, FEATURES) for p, a in zip(paths, first)]
    assert (cache.hits, cache.misses) == (0, 4)
    again = FeatureCache(tmp_path / "c")
    second = [again.audio(p, 16000) for p in paths]
    psi = [again.logmel(p, a, FEATURES) for p, a in zip(paths, second)]
    assert (again.hits, again.misses) == (4, 0)
    for p, a, b, f0, f1 in zip(paths, first, second, psi_first, psi):
        assert isinstance(b, np.memmap) and isinstance(f1, np.memmap)
        np.testing.assert_array_equal(b, read_audio(p, 16000))
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(f1, logmel(read_audio(p, 16000), FEATURES))
        np.testing.assert_array_equal(f0, f1)
    # another preset is another entry, never a stale hit
    other = get_preset("dcase2020")
    assert again.logmel(paths[0], second[0], other).shape[1] == other.n_mels and again.misses == 1
    # so is the same preset from log-mel code that gives other bits (core.features.LOGMEL_VERSION)
    import edge_asd.train.feature_cache as feature_cache

    monkeypatch.setattr(feature_cache, "LOGMEL_VERSION", feature_cache.LOGMEL_VERSION + 1)
    again.logmel(paths[0], second[0], FEATURES)
    assert again.misses == 2
    # a damaged entry is recomputed
    for entry in (tmp_path / "c" / "audio").glob("*.npy"):
        entry.write_bytes(b"not numpy")
    fresh = FeatureCache(tmp_path / "c")
    np.testing.assert_array_equal(fresh.audio(paths[0], 16000), read_audio(paths[0], 16000))
    assert fresh.misses == 1
    np.testing.assert_array_equal(FeatureCache(tmp_path / "c").audio(paths[0], 16000), read_audio(paths[0], 16000))


def test_unwritable_cache_is_skipped(fan, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = FeatureCache(blocker / "sub")  # cannot mkdir below a file
    a = cache.audio(fan["train"][0], 16000)
    np.testing.assert_array_equal(a, read_audio(fan["train"][0], 16000))
    assert cache.root is None
    assert extract(a, FEATURES).shape[1] == FEATURES.dim
