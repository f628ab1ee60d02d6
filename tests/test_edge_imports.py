"""The device install has no torch, onnx, librosa, jax or litert-torch: edge-monitor, edge-calibrate and
edge-report on a .tflite file must not import them (a Raspberry Pi has neither the memory nor the
wheels); the monitor does not import matplotlib or scipy either (the report and calibrate extras), nor
OpenSSL (hashlib) or importlib.metadata, which a service would keep resident for nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "onnx", "librosa", "jax", "litert_torch", "tensorflow", "edge_asd.train", "edge_asd.convert")
OPTIONAL = ("matplotlib", "scipy", "sklearn")
RESIDENT = ("_hashlib", "importlib.metadata")
"""Kept out of the monitor for its memory (docs/device.md, Memory over hours): OpenSSL's libcrypto 3.6 MB,
importlib.metadata and what it pulls 3.0 MB."""

SNIPPET = """
import json, sys
from edge_asd.edge.{module} import main
main({args!r}, standalone_mode=False)
print("MODULES=" + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def run_in_fresh_python(module: str, args: list[str], env_store, heavy=HEAVY) -> tuple[list[str], subprocess.CompletedProcess]:
    code = SNIPPET.format(module=module, args=[str(a) for a in args], heavy=heavy)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "EDGE_ASD_STORE": str(env_store)})
    assert proc.returncode == 0, proc.stderr
    marker = [line for line in proc.stdout.splitlines() if line.startswith("MODULES=")]
    assert len(marker) == 1, proc.stdout
    return json.loads(marker[0][len("MODULES="):]), proc


def test_monitor_on_tflite_imports_no_training_stack(int8_model, fan, tmp_path):
    loaded, proc = run_in_fresh_python(
        "cli.monitor", ["--model", int8_model[0], "--phi", "0", "--input", fan["test_anomaly"][0]], tmp_path / "s.json",
        heavy=HEAVY + OPTIONAL + RESIDENT)
    assert loaded == []
    # it really scored the clip (events on stdout with phi 0), so the whole path was exercised
    events = [e for line in proc.stdout.splitlines() if line.startswith("{") and (e := json.loads(line))["event"] == "anomaly"]
    assert len(events) >= 1 and events[0]["frame"] == 0
    assert "604 frames" in proc.stderr


def test_monitor_with_mqtt_imports_no_training_stack(int8_model, fan, tmp_path):
    """edge-monitor --mqtt adds paho-mqtt and sqlite3, nothing heavy (the broker is down: lines stay in the outbox)."""
    from mqtt_broker import free_port

    pytest.importorskip("paho.mqtt")
    loaded, proc = run_in_fresh_python(
        "cli.monitor", ["--model", int8_model[0], "--phi", "0", "--input", fan["test_anomaly"][0], "--mqtt",
                        f"mqtt://127.0.0.1:{free_port()}", "--mqtt-outbox", tmp_path / "outbox.sqlite"],
        tmp_path / "s.json", heavy=HEAVY + OPTIONAL)
    assert loaded == []
    assert "fleet: mqtt://127.0.0.1" in proc.stderr


def test_calibrate_on_tflite_imports_no_training_stack(int8_model, fan, tmp_path):
    store = tmp_path / "phi.json"
    loaded, proc = run_in_fresh_python(
        "cli.calibrate", [*fan["train"][:2], "--model", int8_model[0], "--machine-id", "00", "--store", store],
        tmp_path / "unused.json")
    assert loaded == []
    assert json.loads(store.read_text())["machines"]["id_00"]["phi"] > 0


def test_calibrate_budget_rule_imports_no_training_stack(int8_model, fan, tmp_path):
    store = tmp_path / "phi.json"
    loaded, _ = run_in_fresh_python(
        "cli.calibrate", [*fan["train"][:3], "--model", int8_model[0], "--machine-id", "00", "--store", store, "--window",
                          "1", "--false-alarms-per-day", "1", "--holdout", "0.34", "--bootstrap", "5"],
        tmp_path / "unused.json")
    assert loaded == []
    assert json.loads(store.read_text())["machines"]["id_00"]["fit"]["p_window"] > 0


def test_report_on_tflite_imports_no_training_stack(int8_model, fan, tmp_path):
    out = tmp_path / "report"
    loaded, _ = run_in_fresh_python(
        "cli.report", ["--model", int8_model[0], "--phi", "1", "--recording", fan["test_anomaly"][0], "--normals",
                       fan["train"][0], "--normals", fan["train"][1], "--test-dir", fan["test_normal"][0].parent,
                       "--out", out], tmp_path / "unused.json")
    assert loaded == []
    assert sorted(p.name for p in out.glob("*.png")) == ["normal_maxima.png", "roc.png", "timeline.png"]


def test_the_check_sees_heavy_imports(tmp_path):
    """The detector of this file works: a snippet that imports onnx is reported."""
    code = f"import json, sys, onnx\nprint('MODULES=' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "onnx" in json.loads(proc.stdout.split("MODULES=")[1])
