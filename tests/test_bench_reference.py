"""bench/edge_bench.py compares like with like: its reference pipeline (librosa + onnxruntime, what a user
would otherwise write) computes the same context vectors and anomaly scores as the device path, so the
ratios it prints are about speed alone. bench/speedup_bound.py counts the model's multiply-adds right."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
pytest.importorskip("librosa")


def test_reference_computes_what_the_device_path_computes(onnx_model, fan_audio):
    from edge_bench import Reference

    from edge_asd.core.features import extract
    from edge_asd.edge.runtime.scorer import Scorer

    onnx_path = Path(onnx_model[0])
    ref, ours = Reference(onnx_path), Scorer(onnx_path)
    x_ref = ref.vectors(fan_audio)
    x_ours = ours.info.standardize(extract(fan_audio, ours.features))
    assert x_ref.shape == x_ours.shape == (604, 1344) and x_ref.dtype == np.float32
    np.testing.assert_allclose(x_ref, x_ours, atol=1e-4)  # librosa's STFT vs numpy's (measured: 2e-6), standardized
    scores = ref.scores(fan_audio)
    np.testing.assert_array_equal(scores, ref.model(x_ref))
    np.testing.assert_allclose(scores, ours.score_audio(fan_audio), rtol=1e-5)


def test_breakdowns_split_a_hop_into_features_and_model(onnx_model, model, fan_audio):
    from edge_bench import run_breakdown, run_reference_breakdown

    ours = run_breakdown(model, [fan_audio], 20.0, 16)
    ref = run_reference_breakdown(Path(onnx_model[0]), [fan_audio], 20.0)
    for parts in (ours, ref):
        assert set(parts) == {"features_us", "model_us"} and all(0 < v < 1e4 for v in parts.values())


def test_macs_per_frame_of_the_paper_architectures():
    from speedup_bound import macs_per_frame

    small = {"dim": 1344, "hidden_layers": 2, "units": 128, "bottleneck": 40}
    # encoder 1344-128-128-128-40, decoder mirrored
    assert macs_per_frame(small) == 2 * (1344 * 128 + 2 * 128 * 128 + 128 * 40) == 419_840
    large = {"dim": 1344, "hidden_layers": 4, "units": 512, "bottleneck": 128}
    assert macs_per_frame(large) == 2 * (1344 * 512 + 4 * 512 * 512 + 512 * 128) == 3_604_480
