"""edge-convert --to c-array: tflite-micro firmware sources, and the same int8 file run by the tflite-micro
Python interpreter (the firmware's reference kernels) against LiteRT on real frames."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from conftest import cli
from edge_asd.core.features import extract
from edge_asd.core.model_file import read_model_file
from edge_asd.edge.runtime.scorer import Scorer

pytest.importorskip("tflite_micro", reason="pip install --pre tflite-micro")


def _real_vectors(scorer: Scorer, clip_paths, n: int = 40) -> np.ndarray:
    from edge_asd.firmware_io.audio_file import read_audio

    x = np.concatenate([extract(read_audio(p, 16000), scorer.features) for p in clip_paths])
    return scorer.info.standardize(x[np.random.default_rng(0).choice(len(x), n, replace=False)])


def test_tflite_micro_matches_litert_within_one_lsb(int8_model, fan):
    from edge_asd.convert.micro import arena_bytes, int8_tensors_lsb_diff, micro_scores

    scorer = Scorer(int8_model[0])
    data = Path(int8_model[0]).read_bytes()
    x = _real_vectors(scorer, fan["test_anomaly"][:2] + fan["test_normal"][:1])
    worst, n_tensors = int8_tensors_lsb_diff(data, x)
    assert n_tensors == 9  # the quantized input and the output of each of the 8 fully-connected layers
    assert worst <= 1
    # a 1-LSB difference in the 1344 reconstructed values moves a score by up to a few per cent
    np.testing.assert_allclose(micro_scores(data, x), scorer.backend.score(x), rtol=0.05)
    arena = arena_bytes(data, scorer.features.dim)
    assert 4096 < arena < 64 * 1024  # activations of a 1344-128-...-1344 MLP, plus tflite-micro's bookkeeping


def test_c_array_sources(checkpoint, data_root, tmp_path, env):
    out = tmp_path / "fw"
    proc = cli("edge-convert", checkpoint, "--to", "c-array", "--calibration", data_root, "--out", out, "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    model = (out / "model.tflite").read_bytes()
    cc, h, fc = ((out / n).read_text() for n in ("model_data.cc", "model_data.h", "feature_config.h"))
    assert "alignas(16) const unsigned char g_model_data[]" in cc
    body = cc.split("g_model_data[] = {")[1].split("};")[0]
    assert bytes(int(b, 16) for b in re.findall(r"0x([0-9a-f]{2})", body)) == model
    assert f"g_model_data_len = {len(model)};" in cc and f"kModelDataLen = {len(model)};" in h
    arena = int(re.search(r"kTensorArenaSize = (\d+);", h).group(1))
    line = [s for s in proc.stdout.splitlines() if s.startswith("microcontroller:")][0]
    assert f"flash {len(model)} bytes" in line and re.search(r"max [01] LSB", line)
    assert arena == int(re.search(r"tensor arena (\d+) bytes", line).group(1)) + 1024

    info = read_model_file(out / "model.tflite")[2]
    f = info.features
    for name, value in [("kSampleRate", f.sample_rate), ("kFftSize", f.n_fft), ("kHopSamples", f.hop_samples),
                        ("kMelCount", f.n_mels), ("kContextFrames", f.n_context_frames), ("kInputDim", f.dim)]:
        assert re.search(rf"constexpr int {name} = {value};", fc), name
    assert "constexpr bool kLogDecibel = false;" in fc  # koizumi2019: natural log
    for name, stats in (("kMelMean", info.mean), ("kMelStd", info.std)):
        values = re.search(rf"{name}\[kMelCount\] = {{(.*?)}};", fc).group(1)
        np.testing.assert_allclose([float(v.rstrip("f")) for v in values.split(", ")], stats, rtol=1e-7)
