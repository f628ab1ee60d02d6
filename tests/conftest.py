"""Shared fixtures: the real recordings of ../shared/data and one small model trained and converted once.

Real-data tests skip when no data is found, except under ``EDGE_ASD_REQUIRE_DATA=1`` (CI), where a
missing data folder fails the run instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def cli(name: str, *args: str, input: bytes | None = None, env: dict | None = None, timeout: float = 600):
    """Run an installed console script as a user would; returns CompletedProcess (text stdout/stderr)."""
    exe = BIN / name
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", _MODULES[name]]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd + list(map(str, args)), input=input, capture_output=True, env=full_env, timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


_MODULES = {
    "edge-train": "edge_asd.train.cli",
    "edge-convert": "edge_asd.convert.cli",
    "edge-calibrate": "edge_asd.edge.cli.calibrate",
    "edge-monitor": "edge_asd.edge.cli.monitor",
    "edge-data": "edge_asd.datasets.cli",
    "edge-inspect": "edge_asd.edge.cli.inspect",
    "edge-report": "edge_asd.edge.cli.report",
    "edge-release": "edge_asd.edge.cli.release",
}


def assert_one_line_error(proc) -> None:
    """A user mistake: nonzero exit, no traceback, one 'Error: ...' line on stderr."""
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr


@pytest.fixture(scope="session")
def data_root() -> Path:
    from edge_asd.datasets.locate import local_data_root

    root = local_data_root()
    if root is None or not (root / "machines" / "fan").is_dir():
        if os.environ.get("EDGE_ASD_REQUIRE_DATA") == "1":
            pytest.fail("EDGE_ASD_REQUIRE_DATA=1 but no real data found (../shared/data or EDGE_ASD_DATA)")
        pytest.skip("no real recordings (../shared/data or EDGE_ASD_DATA)")
    return root


@pytest.fixture(scope="session")
def fan(data_root) -> dict[str, list[Path]]:
    """MIMII fan id_00: 10 train normals, 5 test normals, 10 test anomalies (paths)."""
    from edge_asd.datasets.layout import scan

    clips = scan(data_root, machine_type="fan", machine_id="00")
    pick = lambda split, label: [c.path for c in clips if c.split == split and c.label == label]  # noqa: E731
    return {"train": pick("train", "normal"), "test_normal": pick("test", "normal"), "test_anomaly": pick("test", "anomaly")}


@pytest.fixture(scope="session")
def something_else(data_root) -> Path:
    return data_root / "something_else" / "train"


@pytest.fixture(scope="session")
def fan_audio(fan) -> np.ndarray:
    """One real 10-s fan clip, mono float32 at 16 kHz."""
    from edge_asd.firmware_io.audio_file import read_audio

    return read_audio(fan["train"][0], 16000)


@pytest.fixture(scope="session")
def fan_int16(fan) -> np.ndarray:
    """The real fan clip of ``fan_audio`` as the int16 samples stored in its FLAC."""
    import soundfile as sf

    samples, rate = sf.read(fan["train"][0], dtype="int16")
    assert rate == 16000 and samples.ndim == 1
    return samples


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def checkpoint(data_root, fan, something_else, work) -> Path:
    """A small BU model of fan id_00 (120 updates, koizumi2019 preset, fcn-small)."""
    from edge_asd.core.presets import get_preset
    from edge_asd.firmware_io.audio_file import audio_files
    from edge_asd.train.checkpoint import save_checkpoint
    from edge_asd.train.data import band_statistics, fingerprint, load_clips
    from edge_asd.train.trainer import TrainConfig, train

    features = get_preset("koizumi2019")
    normals = load_clips(fan["train"], features)
    others = load_clips(audio_files(something_else)[::8], features)
    mean, std = band_statistics(normals, features)
    cfg = TrainConfig(machine_type="fan", machine_ids=["id_00"], preset="koizumi2019", epochs=4, batches_per_epoch=30)
    ckpt = train(cfg, features, normals, others, mean, std, progress=False)
    ckpt["training_data"] = fingerprint(fan["train"])
    path = work / "fan.pt"
    save_checkpoint(ckpt, path)
    return path


@pytest.fixture(scope="session")
def int8_model(checkpoint, data_root, work):
    """(path, parity) of the full-integer int8 TFLite file converted from ``checkpoint``."""
    from edge_asd.convert.pipeline import convert_checkpoint

    path = work / "fan_int8.tflite"
    _, result = convert_checkpoint(checkpoint, "tflite", path, int8=True, calibration_dir=data_root)
    return path, result


@pytest.fixture(scope="session")
def onnx_model(checkpoint, data_root, work):
    """(path, parity) of the float32 ONNX file converted from ``checkpoint``."""
    from edge_asd.convert.pipeline import convert_checkpoint

    path = work / "fan.onnx"
    _, result = convert_checkpoint(checkpoint, "onnx", path, calibration_dir=data_root)
    return path, result


# The command-line tests' shared setup ------------------------------------------------------------

@pytest.fixture(scope="module")
def model(int8_model):
    """The int8 .tflite file of the session's model."""
    return Path(int8_model[0])


@pytest.fixture(scope="module")
def scorer(model):
    """The device scorer (edge.runtime.scorer.Scorer) of the session's int8 model."""
    from edge_asd.edge.runtime.scorer import Scorer

    return Scorer(model)


@pytest.fixture(scope="module")
def anomaly(fan):
    """The first anomalous fan id_00 test clip, mono float32 at 16 kHz."""
    from edge_asd.firmware_io.audio_file import read_audio

    return read_audio(fan["test_anomaly"][0], 16000)


@pytest.fixture(scope="module")
def calibrated(model, fan, tmp_path_factory):
    """(store path, edge-calibrate process) after calibrating id_00 on the 10 real fan train normals with the
    decision of eq. 11 (``--votes 1/1``: phi 1.1 x the worst recording's max frame score)."""
    store = tmp_path_factory.mktemp("store") / "phi.json"
    proc = cli("edge-calibrate", *fan["train"], "--model", model, "--machine-id", "00", "--store", store, "--votes", "1/1")
    return store, proc


@pytest.fixture
def env(tmp_path):
    """Keep every command away from the user's config dir."""
    return {"EDGE_ASD_STORE": str(tmp_path / "default_store.json")}


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small matrices on a shared 2-core runner: one intra-op thread is faster and steadier."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def fan_training_clips(fan, something_else):
    """(normals, something-else sounds, mean, std) for the trainer tests: the fan id_00 training clips and
    every 16th something-else sound, decoded at the koizumi2019 rate, and the normals' per-band statistics."""
    from edge_asd.core.presets import get_preset
    from edge_asd.firmware_io.audio_file import audio_files
    from edge_asd.train.data import band_statistics, load_clips

    features = get_preset("koizumi2019")
    normals = load_clips(fan["train"], features)
    others = load_clips(audio_files(something_else)[::16], features)
    mean, std = band_statistics(normals, features)
    return normals, others, mean, std


@pytest.fixture(scope="session")
def oof_checkpoint(data_root, work) -> tuple[Path, str]:
    """(checkpoint, edge-train's stderr) of edge-train --oof-folds 5 on fan id_00's 10 train normals, at a tiny
    budget (5 updates per model, no validation split, coloured noise): 5 fold models and the final one."""
    out = work / "fan_oof.pt"
    proc = cli("edge-train", data_root / "machines" / "fan", "--machine-type", "fan", "--machine-id", "00",
               "--oof-folds", "5", "--val-fraction", "0", "--epochs", "1", "--batches-per-epoch", "5",
               "--device", "cpu", "--no-cache", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stderr


@pytest.fixture(scope="session")
def oof_model(oof_checkpoint, work) -> Path:
    """The float32 .tflite file edge-convert makes of ``oof_checkpoint`` (it carries the out-of-fold scores)."""
    out = work / "fan_oof.tflite"
    proc = cli("edge-convert", oof_checkpoint[0], "--to", "tflite", "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    return out


# The fleet tests' real broker ---------------------------------------------------------------------

@pytest.fixture
def broker(tmp_path):
    """mosquitto on a free loopback port (tests/mqtt_broker.py), stopped after the test; skips without
    mosquitto or paho-mqtt, fails instead under CI=true."""
    from mqtt_broker import Broker, missing

    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        missing("paho-mqtt (pip install 'edge-asd[mqtt]')")
    folder = tmp_path / "broker"
    folder.mkdir()
    b = Broker(folder).start()
    yield b
    b.stop()
