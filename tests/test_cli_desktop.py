"""The desktop commands as users run them: edge-train and edge-convert on the real recordings."""

from __future__ import annotations

from conftest import assert_one_line_error, cli

# edge-train / edge-convert -------------------------------------------------------------------------

def test_train_tiny_budget(data_root, tmp_path, env):
    out = tmp_path / "tiny.pt"
    proc = cli("edge-train", data_root / "machines", "--machine-type", "fan", "--machine-id", "00", "--epochs", "1",
               "--batches-per-epoch", "2", "--device", "cpu", "--out", out, "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert "coloured noise stands in" in proc.stderr
    from edge_asd.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out)
    assert ckpt["machine_type"] == "fan" and ckpt["machine_ids"] == ["id_00"]
    assert ckpt["features"]["preset"] == "koizumi2019"
    assert ckpt["something_else"] == {"dir": None, "n_sounds": 0}
    assert len(ckpt["normalization"]["mean"]) == 64


def test_train_unknown_machine_type(data_root, tmp_path, env):
    proc = cli("edge-train", data_root / "machines", "--machine-type", "toaster", "--out", tmp_path / "x.pt", env=env)
    assert_one_line_error(proc)
    assert "toaster" in proc.stderr and "fan" in proc.stderr
    assert not (tmp_path / "x.pt").exists()


def test_train_options_are_typed_and_checked(tmp_path):
    """edge-train's Python API: a frozen options record whose named choices are checked at once."""
    import dataclasses

    import pytest

    from edge_asd.core.errors import EdgeAsdError
    from edge_asd.train.run import TrainOptions

    opts = TrainOptions(tmp_path, "fan", tmp_path / "m.pt")
    assert opts.val_fraction == 0.0 and opts.schedule == "short" and opts.lam == "D"
    assert opts.state_path == tmp_path / "m.state.pt"
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.seed = 1
    with pytest.raises(EdgeAsdError, match="loss 'l2': use one of bu, snp, re"):
        TrainOptions(tmp_path, "fan", tmp_path / "m.pt", loss="l2")


def test_convert_plans_the_files_of_each_target():
    import pytest

    from edge_asd.convert.pipeline import TARGETS
    from edge_asd.convert.run import plan_jobs
    from edge_asd.core.errors import EdgeAsdError

    assert plan_jobs("tflite", None) == [("tflite-float32", "tflite", "float32")]
    assert plan_jobs("onnx", "int8-static") == [("onnx-int8-static", "onnx", "int8-static")]
    assert [name for name, _, _ in plan_jobs("all", None)] == list(TARGETS)
    assert plan_jobs("c-array", None) == [("tflite-int8-static", "tflite", "int8-static")]
    for target, quantize in (("all", "float32"), ("c-array", "int8-dynamic"), ("keras", None)):
        with pytest.raises(EdgeAsdError):
            plan_jobs(target, quantize)


def test_convert_onnx_prints_parity(checkpoint, data_root, tmp_path, env):
    out = tmp_path / "fan.onnx"
    proc = cli("edge-convert", checkpoint, "--to", "onnx", "--calibration", data_root, "--out", out, "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"wrote {out}") and "onnx" in lines[0] and "float32" in lines[0]
    parity = [line for line in lines if line.startswith("frame scores on")]
    assert len(parity) == 1 and "Pearson" in parity[0] and "Spearman" in parity[0] and "max |error|" in parity[0]
    spearman = float(parity[0].split("Spearman ")[1].split(",")[0])
    assert spearman > 0.999
    assert any(line.startswith("clip AUC on") for line in lines)
    from edge_asd.core.model_file import read_model_file

    assert read_model_file(out)[1] == "onnx"


def test_convert_prints_the_loudness_reference_beside_the_clip_auc(checkpoint, data_root, fan, tmp_path, env):
    """The level's AUC on the same 15 fan id_00 test clips, as edge_asd.core.loudness computes it."""
    import pytest

    from edge_asd.core.loudness import clip_level_dbfs, loudness_reference
    from edge_asd.firmware_io.audio_file import read_audio

    proc = cli("edge-convert", checkpoint, "--to", "onnx", "--calibration", data_root, "--out", tmp_path / "fan.onnx",
               "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("clip AUC on 15 test clips"))
    reference = lines[at + 1]
    assert reference.startswith("loudness reference on the same 15 clips (clip RMS level as the score): AUC ")
    clips = fan["test_normal"] + fan["test_anomaly"]
    auc, pauc = loudness_reference([False] * 5 + [True] * 10, [clip_level_dbfs(read_audio(p, 16000)) for p in clips])
    assert reference.endswith(f"AUC {auc:.3f}, pAUC(0.1) {pauc:.3f}")
    assert float(reference.split("AUC ")[1].split(",")[0]) == pytest.approx(auc, abs=5e-4)


def test_convert_int8_needs_calibration(checkpoint, tmp_path, env):
    proc = cli("edge-convert", checkpoint, "--to", "tflite", "--int8", "--out", tmp_path / "m.tflite", env=env)
    assert_one_line_error(proc)
    assert "--calibration" in proc.stderr
    assert not (tmp_path / "m.tflite").exists()
