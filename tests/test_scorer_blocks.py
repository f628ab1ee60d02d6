"""The block path of the device: many context vectors per model call give the scores of one call per
vector, bit for bit, on real audio; the monitor's blocks give the whole-file scores."""

from __future__ import annotations

import numpy as np
import pytest

from edge_asd.core.features import StreamingFeatures
from edge_asd.edge.runtime.backends import Backend
from edge_asd.edge.runtime.scorer import Scorer
from edge_asd.edge.runtime.stream_loop import BLOCK_HOPS


@pytest.fixture(scope="module", params=["int8", "onnx"])
def scorer(request, int8_model, onnx_model):
    return Scorer((int8_model if request.param == "int8" else onnx_model)[0])


def test_batched_scores_equal_one_vector_per_call(scorer, fan):
    from edge_asd.core.features import extract
    from edge_asd.firmware_io.audio_file import read_audio

    x = scorer.info.standardize(extract(read_audio(fan["test_anomaly"][0], 16000), scorer.features))
    one_by_one = Backend.score(scorer.backend, x)  # the adapter's generic loop: one invoke per vector
    for n in (604, 16, 7, 1, 16):  # batch sizes changing back and forth
        got = np.concatenate([scorer.backend.score(x[i:i + n]) for i in range(0, len(x), n)])
        np.testing.assert_array_equal(got, one_by_one)
    if scorer.kind == "tflite":
        assert scorer.backend._batchable  # the graph really ran batched, not through the fallback loop


def test_monitor_blocks_give_whole_file_scores(scorer, fan_audio):
    """The monitor's path (standardized streaming features, one model call per block) == score_audio."""
    feats = scorer.stream()
    block = BLOCK_HOPS * scorer.features.hop_samples
    got = np.concatenate([scorer.score_inputs(feats.push(fan_audio[i:i + block])) for i in range(0, len(fan_audio), block)])
    np.testing.assert_array_equal(got, scorer.score_audio(fan_audio))
    assert len(got) == 604


@pytest.mark.parametrize("chunk", [256, 1000, 8192])
def test_standardized_streaming_equals_standardize_of_extract(chunk, fan_audio):
    from edge_asd.core.features import extract, standardize
    from edge_asd.core.presets import get_preset

    cfg = get_preset("koizumi2019")
    rng = np.random.default_rng(0)
    mean = rng.normal(-3, 1, cfg.n_mels).astype(np.float32)
    std = rng.uniform(0.5, 2, cfg.n_mels).astype(np.float32)
    feats = StreamingFeatures(cfg, mean, std)
    got = np.concatenate([feats.push(fan_audio[i:i + chunk]) for i in range(0, len(fan_audio), chunk)])
    np.testing.assert_array_equal(got, standardize(extract(fan_audio, cfg), mean, std))
    assert got.dtype == np.float32
