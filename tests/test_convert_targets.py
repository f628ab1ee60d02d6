"""The converter's targets on the real fan recordings: TFLite dynamic-range int8, ONNX static int8 QDQ,
batch scoring, and the parity report with its targets (edge-convert --report / --allow-degraded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, cli
from edge_asd.convert.pipeline import convert_checkpoint
from edge_asd.core.features import extract
from edge_asd.core.model_file import read_model_file
from edge_asd.edge.runtime.scorer import Scorer


@pytest.fixture(scope="module")
def float_tflite(checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("float") / "fan.tflite"
    convert_checkpoint(checkpoint, "tflite", path)
    return path


def test_dynamic_range_int8_tflite(checkpoint, data_root, float_tflite, tmp_path):
    path = tmp_path / "dyn.tflite"
    scorer, parity = convert_checkpoint(checkpoint, "tflite", path, calibration_dir=data_root, quantization="int8-dynamic")
    assert scorer.meta["quantization"]["mode"] == "int8-dynamic"
    details = scorer.backend._it.get_tensor_details()
    weights = [d for d in details if len(d["shape"]) == 2 and min(d["shape"]) > 1 and d["index"] != scorer.backend._in]
    assert len(weights) == 8 and all(d["dtype"] == np.int8 for d in weights)  # every FC weight matrix
    assert scorer.backend.input_dtype == np.float32
    assert path.stat().st_size <= 0.3 * float_tflite.stat().st_size
    assert parity.n_clips == 15 and parity.spearman >= 0.999
    assert abs(parity.auc_converted - parity.auc_float) <= 0.005


def test_onnx_static_int8_qdq(checkpoint, data_root, onnx_model, tmp_path):
    import onnx

    path = tmp_path / "int8.onnx"
    scorer, parity = convert_checkpoint(checkpoint, "onnx", path, calibration_dir=data_root, quantization="int8-static")
    q = scorer.meta["quantization"]
    assert q["mode"] == "int8-static" and q["calibrate_method"] == "minmax" and q["pseudo_anomalous_frames"] == 500
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("Gemm") == 8 and "QuantizeLinear" in ops and "DequantizeLinear" in ops
    weight_scales = [i for i in graph.initializer if i.name.endswith("weight_scale")]
    assert len(weight_scales) == 8 and all(len(onnx.numpy_helper.to_array(s)) > 1 for s in weight_scales)  # per channel
    assert "ReduceSum" in ops  # eq. 5's sum, in float after the last DequantizeLinear
    assert path.stat().st_size <= 0.3 * Path(onnx_model[0]).stat().st_size
    assert parity.spearman >= 0.999 and abs(parity.auc_converted - parity.auc_float) <= 0.005


@pytest.mark.parametrize("fixture", ["int8_model", "onnx_model"])
def test_batch_scoring_equals_streaming(fixture, request, fan_audio):
    """Calibration and evaluation score batches; the device streams one frame at a time: same scores."""
    scorer = Scorer(request.getfixturevalue(fixture)[0])
    x = scorer.info.standardize(extract(fan_audio, scorer.features))[:300]  # 256 + a remainder chunk
    one = np.concatenate([scorer.backend.score_one(v[None]) for v in x])
    np.testing.assert_allclose(scorer.backend.score(x), one, rtol=1e-5)


def test_report_for_every_target(checkpoint, data_root, tmp_path, env):
    out, report = tmp_path / "all", tmp_path / "report.md"
    proc = cli("edge-convert", checkpoint, "--to", "all", "--calibration", data_root, "--out", out, "--report", report,
               "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    names = ["tflite-float32", "tflite-int8-dynamic", "tflite-int8-static", "onnx-float32", "onnx-int8-static"]
    for name in names:
        path = out / f"fan.{name}.{name.split('-')[0]}"
        assert read_model_file(path)[2].meta["quantization"]["mode"] == name.split("-", 1)[1]
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| target")]
    assert [r.split(" | ")[0][2:] for r in rows] == names
    header = [c.strip() for c in text.split("| target")[1].splitlines()[0].split("|")]
    assert "litert µs/frame" in header and "onnxruntime µs/frame" in header and "tflite-micro µs/frame" in header
    static = dict(zip(["target"] + header[1:], [c.strip() for c in rows[2].strip("|").split("|")]))
    assert float(static["Spearman"]) >= 0.999 and float(static["x float"]) <= 0.3
    assert float(static["tflite-micro µs/frame"]) > 0 and float(static["litert µs/frame"]) > 0
    assert "All targets met." in text
    assert "Loudness reference on the same 15 test clips (clip RMS level in dBFS as the score" in text


def test_missed_target_fails_unless_allowed(checkpoint, data_root, tmp_path, env):
    """One calibration frame: the int8 ranges fit nothing else, the scores lose their order, the target is missed."""
    out = tmp_path / "bad.tflite"
    args = ["edge-convert", checkpoint, "--to", "tflite", "--int8", "--calibration", data_root, "--calibration-frames",
            "1", "--pseudo-fraction", "0", "--out", out]
    proc = cli(*args, env=env)
    assert_one_line_error(proc)
    assert "target" in proc.stderr and "Spearman" in proc.stderr and "--allow-degraded" in proc.stderr
    assert out.exists()  # written, so it can be inspected
    proc = cli(*args, "--allow-degraded", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "target missed" in proc.stderr


def test_onnx_has_no_dynamic_int8(checkpoint, tmp_path, env):
    proc = cli("edge-convert", checkpoint, "--to", "onnx", "--quantize", "int8-dynamic", "--out", tmp_path / "m.onnx", env=env)
    assert_one_line_error(proc)
    assert "int8-static" in proc.stderr


def test_onnx_histogram_calibration_method(checkpoint, tmp_path):
    """The histogram calibrators (entropy, percentile, distribution) stack the calibration batches."""
    from edge_asd.convert.onnx_export import export_onnx
    from edge_asd.train.checkpoint import load_checkpoint, restore
    from edge_asd.train.model import ScoreModel

    ae, features, mean, std = restore(load_checkpoint(checkpoint))
    x = np.random.default_rng(0).normal(size=(100, features.dim)).astype(np.float32)  # 64 + a remainder
    data = export_onnx(ScoreModel(ae), features.dim, {"format": "test"}, x, "percentile")
    import onnx

    assert "QuantizeLinear" in [n.op_type for n in onnx.load_from_string(data).graph.node]



def test_histogram_calibration_keeps_its_activations_within_the_memory_bound(monkeypatch, caplog):
    """onnxruntime's histogram calibrators hold every activation of every row: the rows are cut to what
    HISTOGRAM_MEMORY_BYTES holds (an EfficientNet-Lite0 graph was killed at 24 GiB with 2000 windows), evenly
    spaced, and said; minmax and small graphs keep every row."""
    import logging

    import torch

    from edge_asd.convert import onnx_export

    net = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 1))
    graph = onnx_export._float_graph(net, 10)
    assert onnx_export._activation_bytes_per_row(graph) == 4 * (20 + 20 + 1)  # Gemm, Relu, output
    rows = np.arange(1000, dtype=np.float32)[:, None] * np.ones((1, 10), np.float32)
    assert onnx_export._histogram_rows(graph, rows, "percentile", 64) is rows
    monkeypatch.setattr(onnx_export, "HISTOGRAM_MEMORY_BYTES", 164 * 200)
    with caplog.at_level(logging.INFO, logger="edge_asd"):
        kept = onnx_export._histogram_rows(graph, rows, "percentile", 64)
    assert len(kept) == 200 and kept[0, 0] == 0 and kept[-1, 0] == 999 and np.all(np.diff(kept[:, 0]) > 0)
    assert "calibrating on 200 of the 1000 rows" in caplog.text
    monkeypatch.setattr(onnx_export, "HISTOGRAM_MEMORY_BYTES", 1)
    assert len(onnx_export._histogram_rows(graph, rows, "entropy", 64)) == 64  # never below one batch

@pytest.mark.parametrize("damage", [{"method": "bogus"}, {"method": "serial-oe"}, {"method": "transfer-metric"},
                                    {"loss": None}])
def test_damaged_checkpoint_is_one_line_error(checkpoint, tmp_path, env, damage):
    """A checkpoint naming an unknown method, or lacking an entry its method needs, is refused before anything
    is written (a damaged serial-oe checkpoint was a KeyError traceback after its .onnx was written)."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    bad = tmp_path / "bad.pt"
    torch.save({**ckpt, **damage}, bad)
    out = tmp_path / "bad.onnx"
    proc = cli("edge-convert", bad, "--to", "onnx", "--out", out, env=env)
    assert_one_line_error(proc)
    assert "checkpoint" in proc.stderr and not out.exists()
