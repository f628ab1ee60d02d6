"""The model file, the one contract between desktop and device: metadata in .tflite/.onnx, parity
against the float torch model on real clips, and refusal of damaged, foreign or inconsistent files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_asd.core.commands import kit_version
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.model_file import (
    DIGEST_KEY,
    FORMAT,
    METADATA_NAME,
    SCHEMA_VERSION,
    read_model_file,
    read_tflite_metadata,
    seal,
    unsealed_digest,
    write_tflite_metadata,
)
from edge_asd.core.presets import get_preset
from edge_asd.edge.runtime.scorer import Scorer


def strip_tflite_metadata(data: bytes) -> bytes:
    """The same TFLite graph without our ``edge_asd`` metadata entry: a TFLite file that is not ours."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    model.metadata = [m for m in model.metadata or [] if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _meta(path: Path) -> dict:
    return read_tflite_metadata(Path(path).read_bytes(), str(path))


def _rewrite(int8_model, tmp_path, change) -> Path:
    src = Path(int8_model[0])
    meta = json.loads(json.dumps(_meta(src)))
    change(meta)
    meta[DIGEST_KEY] = unsealed_digest()  # re-sealed: a consistent file whose metadata says something else
    out = tmp_path / "changed.tflite"
    out.write_bytes(seal(write_tflite_metadata(src.read_bytes(), meta)))
    return out


def _check_common_metadata(meta: dict, target: str):
    preset = get_preset("koizumi2019")
    assert meta["format"] == FORMAT == "edge-asd-model"
    assert meta["schema_version"] == SCHEMA_VERSION == 1
    assert meta["kit_version"] == kit_version()
    assert meta["target"] == target
    assert meta["features"]["preset"] == "koizumi2019"
    assert meta["features"]["config"] == preset.to_dict()
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    assert len(mean) == len(std) == preset.n_mels == 64
    assert all(np.isfinite(mean)) and all(s > 0 for s in std)
    assert meta["loss"]["name"] == "bu"
    assert meta["architecture"]["name"] == "fcn-small" and meta["architecture"]["dim"] == preset.dim == 1344
    assert meta["machine_type"] == "fan" and meta["machine_ids"] == ["id_00"]


def test_int8_tflite_metadata(int8_model, checkpoint):
    path, _ = int8_model
    data, kind, info = read_model_file(path)
    assert kind == "tflite" and data == Path(path).read_bytes()
    _check_common_metadata(info.meta, "tflite")
    assert info.meta["quantization"]["mode"] == "int8-static"
    assert info.meta["quantization"]["calibration_frames"] == 2000
    assert info.meta["quantization"]["pseudo_anomalous_frames"] == 500
    assert info.features == get_preset("koizumi2019")
    # the normalization in the file is the checkpoint's
    from edge_asd.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    np.testing.assert_allclose(info.mean, np.asarray(ckpt["normalization"]["mean"], np.float32))
    np.testing.assert_allclose(info.std, np.asarray(ckpt["normalization"]["std"], np.float32))
    assert info.mean.dtype == np.float32 and info.mean.shape == (64,)


def test_int8_graph_is_integer(int8_model):
    scorer = Scorer(int8_model[0])
    assert scorer.kind == "tflite" and scorer.backend.name == "ai-edge-litert"
    details = scorer.backend._it.get_tensor_details()
    assert any(d["dtype"] == np.int8 for d in details), "no int8 tensor in an int8-static model"
    assert scorer.backend.input_dtype == np.float32  # the edge feeds float vectors (quantized inside)


def test_onnx_metadata(onnx_model):
    path, _ = onnx_model
    _, kind, info = read_model_file(path)
    assert kind == "onnx"
    _check_common_metadata(info.meta, "onnx")
    assert info.meta["quantization"]["mode"] == "float32"


def test_int8_parity_on_real_clips(int8_model):
    _, parity = int8_model
    assert parity is not None
    assert parity.n_clips == parity.n_auc_clips == 15  # the held-out real fan test clips, none used to calibrate
    assert parity.n_frames == 15 * 604
    assert parity.spearman >= 0.999
    # pseudo-anomalous calibration frames keep anomalous frames (scores up to ~10x normal) unsaturated;
    # calibrated on normal frames only, Pearson was 0.94 on this data
    assert parity.pearson >= 0.99
    assert parity.auc_converted is not None and abs(parity.auc_converted - parity.auc_float) <= 0.005


def test_onnx_parity_on_real_clips(onnx_model):
    _, parity = onnx_model
    assert parity.spearman >= 0.9999
    assert parity.max_abs_error < 0.02  # scores are ~1e3: float32 rounding only
    assert parity.auc_converted == parity.auc_float


def test_int8_against_torch_float_independently(int8_model, checkpoint, fan):
    """Recompute parity here (not trusting the pipeline's own report) on real test clips."""
    from scipy.stats import spearmanr

    from edge_asd.firmware_io.audio_file import read_audio
    from edge_asd.train.checkpoint import load_checkpoint, restore
    from edge_asd.train.evaluate import torch_frame_scorer

    ae, features, mean, std = restore(load_checkpoint(checkpoint))
    float_score = torch_frame_scorer(ae, mean, std, features)
    scorer = Scorer(int8_model[0])
    clips = fan["test_anomaly"][:3] + fan["test_normal"][:2]
    a, b = [], []
    for clip in clips:
        audio = read_audio(clip, 16000)
        a.append(np.asarray(float_score(audio)))
        b.append(scorer.score_audio(audio))
        assert len(a[-1]) == len(b[-1]) == 604
    a, b = np.concatenate(a), np.concatenate(b)
    assert spearmanr(a, b)[0] >= 0.99
    assert np.median(np.abs(a - b) / a) < 0.05


# refusals -----------------------------------------------------------------------------------------

def _refused(path: Path, words: str | None = None):
    with pytest.raises(EdgeAsdError, match=words) as e:
        Scorer(path)
    assert str(path) in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("fixture, suffix", [("int8_model", ".tflite"), ("onnx_model", ".onnx")])
def test_truncated_model(fixture, suffix, request, tmp_path):
    data = Path(request.getfixturevalue(fixture)[0]).read_bytes()
    path = tmp_path / f"half{suffix}"
    path.write_bytes(data[: len(data) // 2])
    _refused(path, "damaged")


def test_bit_flipped_tflite(int8_model, tmp_path):
    """Bytes flipped in the middle of the file (a bad SD card sector): the device must not score with
    silently corrupted weights."""
    data = bytearray(Path(int8_model[0]).read_bytes())
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
    path = tmp_path / "flipped.tflite"
    path.write_bytes(bytes(data))
    _refused(path)


def test_damaged_header_tflite(int8_model, tmp_path):
    data = bytearray(Path(int8_model[0]).read_bytes())
    data[100:116] = bytes(b ^ 0xFF for b in data[100:116])
    path = tmp_path / "header.tflite"
    path.write_bytes(bytes(data))
    _refused(path)


def test_tflite_without_our_metadata(int8_model, tmp_path):
    path = tmp_path / "foreign.tflite"
    path.write_bytes(strip_tflite_metadata(Path(int8_model[0]).read_bytes()))
    msg = _refused(path, "not an edge-asd model")
    assert "edge-convert" in msg
    with pytest.raises(EdgeAsdError, match="not an edge-asd model"):
        read_model_file(path)


def test_unknown_schema_version(int8_model, tmp_path):
    def bump(meta):
        meta["schema_version"] = 99

    path = _rewrite(int8_model, tmp_path, bump)
    msg = _refused(path, "schema version 99")
    assert "upgrade" in msg or "convert" in msg


def test_foreign_format_field(int8_model, tmp_path):
    def other(meta):
        meta["format"] = "someone-elses-model"

    _refused(_rewrite(int8_model, tmp_path, other), "not an edge-asd model")


def test_metadata_n_mels_disagrees_with_normalization(int8_model, tmp_path):
    def shrink(meta):
        meta["features"]["config"]["n_mels"] = 32

    _refused(_rewrite(int8_model, tmp_path, shrink), "32 mel bands")


def test_metadata_dimension_disagrees_with_tensors(int8_model, tmp_path):
    """Self-consistent metadata (32 bands, 32 statistics) that does not match the graph's (1, 1344) input."""

    def shrink(meta):
        meta["features"]["config"]["n_mels"] = 32
        meta["normalization"]["mean"] = meta["normalization"]["mean"][:32]
        meta["normalization"]["std"] = meta["normalization"]["std"][:32]

    path = _rewrite(int8_model, tmp_path, shrink)
    read_model_file(path)  # the metadata alone is valid ...
    msg = _refused(path, "disagrees with its metadata")  # ... the tensors are not
    assert "672" in msg


def test_incomplete_metadata(int8_model, tmp_path):
    def drop(meta):
        del meta["normalization"]

    _refused(_rewrite(int8_model, tmp_path, drop), "incomplete")


@pytest.mark.parametrize("name", ["model.tflite", "model.onnx", "model.bin"])
def test_text_file_as_model(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not a model\n" * 50)
    _refused(path)


def test_empty_and_missing_model(tmp_path):
    path = tmp_path / "empty.tflite"
    path.write_bytes(b"")
    _refused(path, "empty")
    _refused(tmp_path / "missing.tflite", "not found")


def test_onnx_without_our_metadata(onnx_model, tmp_path):
    import onnx

    model = onnx.load_from_string(Path(onnx_model[0]).read_bytes())
    kept = [p for p in model.metadata_props if p.key != METADATA_NAME]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    path = tmp_path / "foreign.onnx"
    path.write_bytes(model.SerializeToString())
    _refused(path, "not an edge-asd model")


def test_onnx_model_under_a_tflite_name_is_read_by_content(onnx_model, tmp_path):
    path = tmp_path / "actually_onnx.tflite"
    path.write_bytes(Path(onnx_model[0]).read_bytes())
    _, kind, _ = read_model_file(path)
    assert kind == "onnx"


def test_a_device_or_an_oversized_file_is_refused_before_it_is_read(int8_model, tmp_path, monkeypatch):
    """``--model /dev/zero`` read forever (a MemoryError traceback in a probe)."""
    with pytest.raises(EdgeAsdError, match="not a regular file"):
        read_model_file("/dev/zero")
    monkeypatch.setattr("edge_asd.core.model_file.MAX_MODEL_BYTES", 1000)
    with pytest.raises(EdgeAsdError, match="larger than any model file"):
        read_model_file(int8_model[0])


def test_metadata_changed_without_resealing_is_refused_as_damaged_before_it_is_interpreted(int8_model, tmp_path):
    """The metadata is interpreted only once the seal holds: a changed feature value is damage, not a config."""
    data = Path(int8_model[0]).read_bytes()
    changed = data.replace(b'"hop_samples": 256', b'"hop_samples": 128')  # same length: the file stays whole
    assert changed != data
    path = tmp_path / "changed.tflite"
    path.write_bytes(changed)
    _refused(path, "damaged model file")


@pytest.mark.parametrize("key, value, words", [
    ("n_fft", float("inf"), "n_fft = inf should be an integer"),  # was an OverflowError traceback (make fuzz)
    ("hop_samples", 128.0, "hop_samples = 128.0 should be an integer"),
    ("sample_rate", 1, "sample_rate = 1 should be an integer from 4000"),
    ("n_mels", True, "n_mels = True"),
    ("magnitude_power", float("nan"), "magnitude_power = nan should be a finite number > 0"),
    ("log_floor", 0, "log_floor = 0 should be a finite number > 0"),
    ("fmax_hz", 0, "need 0 <= fmin_hz < fmax_hz"),
    ("fmax_hz", 16000.0, "need 0 <= fmin_hz < fmax_hz <= sample_rate / 2"),
    ("fmin_hz", 10**400, "need 0 <= fmin_hz"),
])
def test_feature_values_a_device_cannot_use_are_refused(int8_model, tmp_path, key, value, words):
    """Re-sealed metadata with feature values out of range or of the wrong type: one line naming the value
    and the range, never a traceback, and never a model that loads and scores NaN."""
    def change(meta):
        meta["features"]["config"][key] = value

    msg = _refused(_rewrite(int8_model, tmp_path, change), "feature config")
    assert words in msg, msg


@pytest.mark.parametrize("key, value, words", [
    ("mean", 10**400, "incomplete or damaged (int too large"),  # an OverflowError traceback (make fuzz)
    ("std", 10**400, "incomplete or damaged"),
    ("mean", float("nan"), "damaged normalization statistics"),
    ("std", 1e300, "damaged normalization statistics"),  # inf as float32
    ("std", 0.0, "damaged normalization statistics"),
])
def test_damaged_normalization_statistics_are_refused(int8_model, tmp_path, key, value, words):
    """Re-sealed metadata with one normalization value that no float32 holds, NaN or a std <= 0: one line,
    never a traceback, never a model whose every score is NaN."""
    def change(meta):
        meta["normalization"][key][3] = value

    assert words in _refused(_rewrite(int8_model, tmp_path, change))
