"""edge-inspect MODEL: the metadata and tensor details of a model file, on the device (no torch/onnx);
refusals as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import assert_one_line_error, cli
from edge_asd.edge.model_inspect import tflite_ops
from edge_asd.edge.runtime.scorer import Scorer


def test_inspect_int8_tflite(int8_model, env):
    proc = cli("edge-inspect", int8_model[0], env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for words in ["schema 1", "kit 0.1.0", "created 20", "preset koizumi2019", "n_fft=512", "hop_samples=256",
                  "n_mels=64", "n_context_frames=21", "normalization: per mel band, 64 bands", "name=fcn-small",
                  "loss: bu", "training data: sha256 ", "over 10 files", "mode=int8-static", "machine: fan id_00"]:
        assert words in out, words
    assert "operators: QUANTIZE v1 x1, FULLY_CONNECTED v" in out and "SUM v1 x1" in out
    tensor_lines = [line for line in out.splitlines() if " int8 " in line]
    assert len(tensor_lines) == 8 + 9  # 8 weight matrices, 9 activations
    assert all("scale" in line for line in tensor_lines)


def test_inspect_json_matches_the_interpreter(int8_model, env):
    proc = cli("edge-inspect", int8_model[0], "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["metadata"]["features"]["config"]["n_mels"] == 64 and doc["kind"] == "tflite"
    details = {d["index"]: d for d in Scorer(int8_model[0]).backend._it.get_tensor_details()}
    for t in doc["tensors"]:
        d = details[t["index"]]
        assert t["shape"] == list(d["shape"]) and t["dtype"] == np.dtype(d["dtype"]).name
        if t["quantization"]:
            np.testing.assert_allclose(t["quantization"]["scales"], d["quantization_parameters"]["scales"])
    assert {o["op"] for o in doc["operators"]} == {"QUANTIZE", "FULLY_CONNECTED", "DEQUANTIZE", "SUB", "MUL", "SUM"}


def test_ops_and_versions(int8_model):
    ops = {o["op"]: o for o in tflite_ops(Path(int8_model[0]).read_bytes())}
    assert ops["FULLY_CONNECTED"]["count"] == 8 and ops["QUANTIZE"]["count"] == ops["DEQUANTIZE"]["count"] == 1
    assert all(o["version"] >= 1 for o in ops.values())


def test_inspect_onnx(onnx_model, env):
    proc = cli("edge-inspect", onnx_model[0], env=env)
    assert proc.returncode == 0, proc.stderr
    assert "onnx" in proc.stdout and "preset koizumi2019" in proc.stdout
    assert "input context_vectors: ['n', 1344] tensor(float)" in proc.stdout


def test_inspect_refuses_like_the_device(int8_model, tmp_path, env):
    from test_model_file import strip_tflite_metadata

    foreign = tmp_path / "foreign.tflite"
    foreign.write_bytes(strip_tflite_metadata(Path(int8_model[0]).read_bytes()))
    proc = cli("edge-inspect", foreign, env=env)
    assert_one_line_error(proc)
    assert "not an edge-asd model" in proc.stderr
    proc = cli("edge-inspect", tmp_path / "missing.tflite", env=env)
    assert_one_line_error(proc)


def test_inspect_imports_no_training_stack(int8_model):
    code = ("import sys, json\nfrom edge_asd.edge.cli.inspect import main\n"
            f"main([{str(int8_model[0])!r}], standalone_mode=False)\n"
            "print('MODULES=' + json.dumps(sorted(m for m in ('torch', 'onnx', 'librosa', 'litert_torch') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.split("MODULES=")[1]) == []
