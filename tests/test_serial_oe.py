"""Serial outlier exposure (train/serial_oe): the losses, mixup, the inlier models and the leakage rule, on hand
computations, scikit-learn and the real recordings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import extract, standardize
from edge_asd.core.heads import Head
from edge_asd.core.presets import get_preset
from edge_asd.train.serial_oe.data import SOMETHING_ELSE, training_sets
from edge_asd.train.serial_oe.inlier import fit_gmm, fit_mahalanobis, stack_mahalanobis
from edge_asd.train.serial_oe.losses import PRODUCT_WEIGHT, total_loss
from edge_asd.train.serial_oe.mixup import mix, mixup_probability


def bce(z: float, y: float) -> float:
    """-[y log sigma(z) + (1 - y) log(1 - sigma(z))], by hand."""
    p = 1 / (1 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_losses_equal_a_hand_computation():
    logit = torch.tensor([2.0, -1.0, 0.5])
    logits = torch.tensor([[1.0, -2.0], [0.0, 3.0], [-1.0, -1.0]])
    y_m = torch.tensor([1.0, 0.0, 0.3])  # the last one mixed
    y_p = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.3, 0.0]])
    total, lm, lp = total_loss(logit, logits, y_m, y_p)
    want_m = sum(bce(z, y) for z, y in zip(logit.tolist(), y_m.tolist())) / 3
    want_p = sum(bce(z, y) for zs, ys in zip(logits.tolist(), y_p.tolist()) for z, y in zip(zs, ys)) / 6
    assert lm.item() == pytest.approx(want_m, rel=1e-6)
    assert lp.item() == pytest.approx(want_p, rel=1e-6)
    assert total.item() == pytest.approx(want_m + PRODUCT_WEIGHT * want_p, rel=1e-6)
    assert PRODUCT_WEIGHT == 10.0


def test_mixup_mixes_waves_and_labels_alike():
    rng = np.random.default_rng(0)
    waves = rng.standard_normal((3, 8)).astype(np.float32)
    y_m = np.array([1, 0, 0], np.float32)
    y_p = np.array([[1, 0], [0, 0], [0, 0]], np.float32)
    lam, perm = np.array([0.25, 0.5, 1.0]), np.array([1, 2, 0])
    w, (m, p) = mix(waves, [y_m, y_p], rng, lam, perm)
    np.testing.assert_allclose(w[0], 0.25 * waves[0] + 0.75 * waves[1], rtol=1e-6)
    np.testing.assert_allclose(w[2], waves[2])
    np.testing.assert_allclose(m, [0.25, 0.0, 0.0])
    np.testing.assert_allclose(p, [[0.25, 0], [0, 0], [0, 0]])
    # drawn lambdas: Beta(0.2, 0.2) is U-shaped (most mass near 0 and 1), mean 1/2
    lams = np.random.default_rng(1).beta(0.2, 0.2, 20000)
    w, (m,) = mix(np.ones((2, 4), np.float32), [np.array([1.0, 0.0], np.float32)], np.random.default_rng(1))
    assert 0 <= m[0] <= 1 and m[0] + m[1] == pytest.approx(1.0)  # a pair swapped: lam and 1 - lam
    assert abs(lams.mean() - 0.5) < 0.01 and ((lams < 0.1) | (lams > 0.9)).mean() > 0.5
    assert [mixup_probability(s, 100) for s in (0, 25, 50, 99)] == [0.0, 0.5, 1.0, 1.0]


def test_inlier_models_agree_with_scikit_learn():
    from sklearn.covariance import LedoitWolf
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    train = np.concatenate([rng.normal(0, 1, (200, 6)), rng.normal(4, 0.5, (200, 6))])
    test = rng.normal(1, 2, (50, 6))
    head = Head.from_meta(fit_mahalanobis(train).to_meta())  # as the device reads it back
    np.testing.assert_allclose(head.score(test), LedoitWolf().fit(train).mahalanobis(test), rtol=1e-5)
    gmm = Head.from_meta(fit_gmm(train, seed=0).to_meta())
    assert len(gmm.params["weights"]) == 2  # BIC finds the two clusters
    ref = GaussianMixture(2, covariance_type="full", random_state=0).fit(train)
    shift = gmm.score(test) + ref.score_samples(test)  # -log p(e), less core.heads' constant lower bound
    assert np.ptp(shift) < 1e-3 * np.abs(ref.score_samples(test)).max() and gmm.score(test).min() >= 0
    # two networks side by side: the stacked head's score is the sum of theirs
    other = fit_mahalanobis(train[:, :3] * 2)
    both = stack_mahalanobis([head, other])
    np.testing.assert_allclose(both.score(np.hstack([test, test[:, :3]])), head.score(test) + other.score(test[:, :3]),
                               rtol=1e-5)


def test_leakage_rule_on_the_real_folders(data_root):
    machines = data_root / "machines"
    sets = training_sets(machines, "fan", data_root / "something_else" / "train")
    assert all("/fan/" not in str(p) for p in sets.negatives)  # fan's own clips are never negatives
    assert all(Path(p).parent.name == "train" for p in sets.positives + sets.negatives)  # no test clip trains
    assert {"slider", "valve", SOMETHING_ELSE} <= set(sets.negative_kinds)
    assert sets.ids == ["id_00", "section_00"] and len(sets.positives) == 12
    # a test folder given as something-else sounds, or the target type's own clips: refused
    for bad in (machines / "slider" / "test", machines / "fan" / "train", data_root / "something_else" / "test",
                data_root / "something_else"):  # everyday test sounds are the evaluation's mixed-in anomalies
        with pytest.raises(EdgeAsdError, match="would train|cannot be a negative|in a test/ folder"):
            training_sets(machines, "fan", bad)
    # excluded clips (a comparison's test clips) train nothing
    first = sets.positives[0]
    assert first not in training_sets(machines, "fan", exclude=[first]).positives


def test_windows_are_the_devices_context_vectors(fan_audio):
    from edge_asd.train.serial_oe.data import windows

    cfg = get_preset("serial-oe")
    mean, std = np.full(cfg.n_mels, -3.0, np.float32), np.full(cfg.n_mels, 2.0, np.float32)
    x = windows(fan_audio, cfg, mean, std)
    assert x.shape == (9, 59 * 224)  # 10-s clip: 2-s windows every 0.992 s
    np.testing.assert_allclose(x, standardize(extract(fan_audio, cfg), mean, std), atol=1e-5)


@pytest.mark.slow
def test_edge_train_serial_oe_and_edge_convert_end_to_end(data_root, fan, tmp_path):
    """edge-train --method serial-oe (smallest budget) on fan with slider as the other type, then edge-convert: sealed
    model files whose Scorer gives the float model's window scores (float32 exactly, int8 in rank)."""
    from conftest import cli
    from edge_asd.convert.pipeline import Conversion, Options
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio
    from edge_asd.train.serial_oe.data import windows

    data = tmp_path / "data"
    for t in ("fan", "slider"):
        (data / t).mkdir(parents=True)
        (data / t / "train").symlink_to(data_root / "machines" / t / "train")
    (data / "fan" / "test").symlink_to(data_root / "machines" / "fan" / "test")
    ckpt = tmp_path / "soe.pt"
    proc = cli("edge-train", data, "--machine-type", "fan", "--machine-id", "00", "--method", "serial-oe",
               "--updates", "2", "--batch-size", "4", "--out", ckpt, "-q")
    assert proc.returncode == 0, proc.stderr
    conv = Conversion(ckpt, data, Options(calibration_frames=200))
    assert conv.ckpt["method"] == "serial-oe" and conv.ckpt["negatives"]["kinds"] == {"slider": 76}
    assert conv.ckpt["loss"]["params"]["product_classes"] == ["id_00", "section_00"]
    names = [p.name for p in conv.parity_paths]
    want = conv.float_scores()[names.index(fan["test_anomaly"][0].name)]
    clip = read_audio(fan["test_anomaly"][0], 16000)
    x = windows(clip, conv.features, conv.mean, conv.std)
    assert want.shape == (9,)  # one score per 0.992-s hop of a 10-s clip
    for fmt, quant in (("onnx", "float32"), ("onnx", "int8-static"), ("tflite", "float32"), ("tflite", "int8-static")):
        out = tmp_path / f"soe.{quant}.{fmt}"
        proc = cli("edge-convert", ckpt, "--to", fmt, "--quantize", quant, "--calibration", data,
                   "--calibration-frames", "200", "--allow-degraded", "--out", out)
        assert proc.returncode == 0, proc.stderr
        assert "Spearman" in proc.stdout  # parity against the float model, printed
        scorer = Scorer(out)
        assert scorer.head is not None and scorer.head.dim == 256  # two cross-fitted networks side by side
        got = np.concatenate([scorer.score_inputs(x[i:i + 1]) for i in range(len(x))])
        if quant == "float32":
            np.testing.assert_allclose(got, want, rtol=1e-3)
            np.testing.assert_allclose(scorer.score_audio(clip), want, rtol=1e-3)  # batched windows
        else:
            # a 2-update network: no parity target (docs/serial-oe.md measures the trained one), the same ranking trend
            assert np.all(np.isfinite(got)) and np.corrcoef(got, want)[0, 1] > 0.5, (got, want)
            line = cli("edge-inspect", out).stdout
            assert "output=float32 embedding; the head scores it in numpy" in line and "output_layer" not in line


def test_edge_train_serial_oe_without_negatives_is_a_one_line_error(data_root, tmp_path):
    from conftest import assert_one_line_error, cli

    (tmp_path / "fan").mkdir()
    (tmp_path / "fan" / "train").symlink_to(data_root / "machines" / "fan" / "train")
    proc = cli("edge-train", tmp_path, "--machine-type", "fan", "--method", "serial-oe", "--out", tmp_path / "x.pt")
    assert_one_line_error(proc)
    assert "needs negatives" in proc.stderr and "--something-else" in proc.stderr


def test_backbones_give_the_embedding_and_efficientnet_loads_every_imagenet_weight():
    from edge_asd.train.serial_oe.network import EfficientNetLite0, SerialOENet, imagenet_weights

    cfg = get_preset("serial-oe")
    x = torch.randn(2, cfg.dim)
    for backbone in ("cnn-small", "efficientnet-lite0"):
        net = SerialOENet(backbone, cfg.n_context_frames, cfg.n_mels, n_ids=3).eval()
        with torch.no_grad():
            logit, logits, e = net(x)
        assert logit.shape == (2,) and logits.shape == (2, 3) and e.shape == (2, 128)
    stem = EfficientNetLite0(cfg.n_context_frames, cfg.n_mels).net._conv_stem.weight
    assert torch.equal(stem, imagenet_weights()["_conv_stem.weight"])  # strict load: none missing, none unexpected


def test_options_a_method_does_not_read_are_named(tmp_path):
    """--oof-folds or --loss with --method serial-oe (or --backbone with the autoencoder) is said to be ignored,
    before anything runs; here the data folder is missing, so the command then stops with its one-line error."""
    from conftest import assert_one_line_error, cli

    proc = cli("edge-train", tmp_path / "none", "--machine-type", "fan", "--method", "serial-oe", "--oof-folds", "5",
               "--loss", "snp", "--updates", "3", "--out", tmp_path / "x.pt")
    assert "--method serial-oe does not use --loss, --oof-folds: ignored" in proc.stderr, proc.stderr
    assert_one_line_error(proc)
    proc = cli("edge-train", tmp_path / "none", "--machine-type", "fan", "--backbone", "cnn-small", "--out", tmp_path / "y.pt")
    assert "--method autoencoder does not use --backbone: ignored" in proc.stderr, proc.stderr
