"""The shipped int8 .tflite as the fine-tuning start and end: weights read back out of it match the float
checkpoint, and a file rewritten with new weights scores as the numpy float model does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import extract
from edge_asd.core.model_file import read_model_file
from edge_asd.edge.finetune.autoencoder import anomaly_score
from edge_asd.edge.finetune.tflite_weights import read_layers, write_layers
from edge_asd.edge.runtime.scorer import Scorer
from edge_asd.train.checkpoint import load_checkpoint, restore


def test_dequantized_weights_are_the_checkpoint_within_one_int8_step(int8_model, checkpoint):
    data, _, _ = read_model_file(int8_model[0])
    layers, int8 = read_layers(data)
    ae = restore(load_checkpoint(checkpoint))[0]
    lin = [m for m in ae.modules() if isinstance(m, torch.nn.Linear)]
    assert int8 and len(layers) == len(lin) == 8
    for (w, b), m in zip(layers, lin):
        ref = m.weight.detach().numpy()
        step = np.abs(ref).max(1, keepdims=True) / 127  # per-channel symmetric int8
        assert np.all(np.abs(w - ref) <= 0.51 * step + 1e-7)
        np.testing.assert_allclose(b, m.bias.detach().numpy(), atol=1e-3)


def test_rewritten_int8_file_scores_like_the_numpy_model(int8_model, fan_audio, tmp_path):
    data, _, info = read_model_file(int8_model[0])
    layers, _ = read_layers(data)
    rng = np.random.default_rng(0)
    changed = [(w * (1 + 0.2 * rng.standard_normal(w.shape)).astype(np.float32), b + 0.01) for w, b in layers]
    changed[-1] = (changed[-1][0], changed[-1][1] + 0.3)  # the output layer's bias moves every reconstruction
    x = info.standardize(extract(fan_audio, info.features))
    meta = {**info.meta, "fine_tuning": [{"machine_id": "id_00"}]}
    path = tmp_path / "new.tflite"
    path.write_bytes(write_layers(data, changed, meta, x[::4]))

    scorer = Scorer(path)  # loads through the edge runtime: seal, metadata, interpreter
    assert scorer.meta["fine_tuning"] == [{"machine_id": "id_00"}]
    assert scorer.meta["normalization"] == info.meta["normalization"]
    assert 0 < scorer.size_bytes - len(data) < 100  # the metadata grew by its new entry; nothing orphaned
    ref = anomaly_score(changed, x)
    got = scorer.score_vectors(extract(fan_audio, info.features))
    assert np.corrcoef(ref, got)[0, 1] > 0.999
    assert np.median(np.abs(got - ref) / ref) < 0.01
    old = Scorer(int8_model[0]).score_vectors(extract(fan_audio, info.features))
    assert np.median(np.abs(old - ref) / ref) > 0.05  # the new weights are really in the file


def test_rewrite_refuses_weights_of_another_shape(int8_model):
    data, _, info = read_model_file(int8_model[0])
    layers, _ = read_layers(data)
    with pytest.raises(EdgeAsdError, match="fully-connected layers"):
        write_layers(data, layers[:-1], info.meta, np.zeros((4, info.features.dim), np.float32))
    with pytest.raises(EdgeAsdError, match="calibration"):
        write_layers(data, layers, info.meta, None)
