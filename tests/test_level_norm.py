"""edge-train --level-norm context / --gain-augment-db: what they write, and a model file that ignores the gain.

A tiny edge-train run on the real fan id_00 clips, converted to a float ONNX file: the option travels
through the checkpoint into the model file, edge-monitor's streamed scores equal edge-score's
whole-file scores, and +3 dB of gain leaves the scores where they were (docs/level.md).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import assert_one_line_error, cli
from edge_asd.core.presets import get_preset
from edge_asd.train.checkpoint import load_checkpoint
from edge_asd.train.data import band_statistics, load_clips


@pytest.fixture(scope="module")
def context_model(data_root, fan, tmp_path_factory):
    """(checkpoint path, ONNX model path) of a 4-update BU model with --level-norm context --gain-augment-db 1."""
    from edge_asd.convert.pipeline import convert_checkpoint

    work = tmp_path_factory.mktemp("context")
    ckpt = work / "fan_context.pt"
    proc = cli("edge-train", data_root, "--machine-type", "fan", "--machine-id", "00", "--level-norm", "context",
               "--gain-augment-db", "1", "--epochs", "1", "--batches-per-epoch", "4", "--val-fraction", "0",
               "--no-cache", "--out", ckpt, "-q")
    assert proc.returncode == 0, proc.stderr
    model = work / "fan_context.onnx"
    convert_checkpoint(ckpt, "onnx", model)
    return ckpt, model


def test_checkpoint_and_model_file_carry_the_options(context_model, fan):
    from edge_asd.edge.runtime.scorer import Scorer

    ckpt = load_checkpoint(context_model[0])
    assert ckpt["features"]["config"]["level_norm"] == "context"
    assert ckpt["train_config"]["batch"]["gain_db"] == 1.0
    cfg = replace(get_preset("koizumi2019"), level_norm="context")
    mean, std = band_statistics(load_clips(fan["train"], cfg), cfg)  # of the mean-removed vectors, unscaled audio
    np.testing.assert_allclose(ckpt["normalization"]["mean"], mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ckpt["normalization"]["std"], std, rtol=0, atol=1e-6)
    assert Scorer(context_model[1]).features == cfg


def test_context_model_scores_ignore_a_constant_gain_streamed_and_whole(context_model, fan):
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio

    scorer = Scorer(context_model[1])
    clip = read_audio(fan["test_normal"][0], 16000)
    whole = scorer.score_audio(clip)
    np.testing.assert_allclose(scorer.score_audio(clip * 10 ** (3 / 20)), whole, rtol=1e-3)
    feats = scorer.stream()
    streamed = np.concatenate([scorer.score_inputs(feats.push(clip[i:i + 1600])) for i in range(0, len(clip), 1600)])
    np.testing.assert_allclose(streamed, whole, rtol=1e-4)


@pytest.mark.parametrize("args", [["--level-norm", "clip"], ["--gain-augment-db", "-1"], ["--gain-augment-db", "30"]])
def test_bad_values_are_one_line_errors(args, data_root, tmp_path):
    proc = cli("edge-train", data_root, "--machine-type", "fan", *args, "--out", tmp_path / "m.pt")
    assert proc.returncode != 0
    assert_one_line_error(proc)
