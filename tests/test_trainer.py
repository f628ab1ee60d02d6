"""edge_asd.train.trainer, .model, .checkpoint and .evaluate.torch_frame_scorer (Koizumi et al. 2019,
sec. 4.2.2): schedule, architecture, initialisation, reproducibility, a short BU run on real fan
recordings, and checkpoint files.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.presets import get_preset
from edge_asd.train.checkpoint import load_checkpoint, restore, save_checkpoint
from edge_asd.train.data import load_clips
from edge_asd.train.evaluate import torch_frame_scorer
from edge_asd.train.model import ARCHS, FCNAutoencoder, anomaly_score
from edge_asd.train.trainer import TrainConfig, lr_at, train

FEATURES = get_preset("koizumi2019")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(fan_training_clips):
    return fan_training_clips


def run(data, updates: int, seed: int = 0, **kw) -> dict:
    normals, others, mean, std = data
    cfg = TrainConfig(machine_type="fan", machine_ids=["id_00"], preset="koizumi2019", epochs=1,
                      batches_per_epoch=updates, seed=seed, device="cpu", **kw)
    return train(cfg, FEATURES, normals, others, mean, std, progress=False)


@pytest.fixture(scope="module")
def trained(data):
    """A short BU run (60 updates, default batches and step size) on real fan id_00 normals."""
    return run(data, 60)


def clip_frame_scores(ae, mean, std, paths) -> np.ndarray:
    score = torch_frame_scorer(ae, mean, std, FEATURES)
    return np.concatenate([score(x) for x in load_clips(paths, FEATURES)])


# --- learning-rate schedule ------------------------------------------------------------------------


def test_lr_is_fixed_for_the_first_half_then_decays_linearly_to_one_hundredth():
    base, total = 1e-3, 10
    lrs = [lr_at(s, total, base) for s in range(total)]
    assert lrs[:5] == [base] * 5
    np.testing.assert_allclose(lrs[5:], base * np.linspace(1.0, 0.01, 5), rtol=1e-12)
    assert lrs[-1] == pytest.approx(base / 100)


def test_lr_schedule_of_the_paper():
    """200 epochs x 500 updates from 1e-4: fixed for 100 epochs, linear down to 1e-6 by the last update."""
    base, total = 1e-4, 200 * 500
    assert lr_at(0, total, base) == base
    assert lr_at(total // 2 - 1, total, base) == base
    assert lr_at(total // 2, total, base) == pytest.approx(base)
    assert lr_at(total - 1, total, base) == pytest.approx(base / 100)
    mid = lr_at(total // 2 + (total // 2 - 1) // 2, total, base)
    assert mid == pytest.approx(base * (1 + 0.01) / 2, rel=1e-4)
    steps = np.arange(total // 2, total, 997)
    lrs = np.array([lr_at(int(s), total, base) for s in steps])
    assert np.all(np.diff(lrs) < 0)
    np.testing.assert_allclose(np.diff(lrs, 2), 0.0, atol=1e-15)  # linear


@pytest.mark.parametrize("total", [1, 2, 3, 4, 7, 101])
def test_lr_schedule_odd_and_tiny_totals(total):
    base = 0.5
    lrs = [lr_at(s, total, base) for s in range(total)]
    assert all(base / 100 - 1e-15 <= lr <= base for lr in lrs)
    assert lrs[0] == base
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    if total >= 3:  # (with 2 updates the decay half is a single step)
        assert lrs[-1] == pytest.approx(base / 100)
        assert lrs[: total // 2] == [base] * (total // 2)


# --- architecture and initialisation ---------------------------------------------------------------


def linear_sizes(seq: nn.Sequential) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in seq if isinstance(m, nn.Linear)]


def test_fcn_small_layer_sizes_and_activations():
    D = FEATURES.dim
    ae = FCNAutoencoder(D, **ARCHS["fcn-small"])
    assert ARCHS["fcn-small"] == {"hidden_layers": 2, "units": 128, "bottleneck": 40}
    assert linear_sizes(ae.encoder) == [(D, 128), (128, 128), (128, 128), (128, 40)]
    assert linear_sizes(ae.decoder) == [(40, 128), (128, 128), (128, 128), (128, D)]
    kinds = lambda seq: [type(m).__name__ for m in seq]  # noqa: E731
    assert kinds(ae.encoder) == ["Linear", "ReLU"] * 4  # ReLU after every encoder layer
    assert kinds(ae.decoder) == ["Linear", "ReLU"] * 3 + ["Linear"]  # none after the decoder's output
    x = torch.randn(64, D)
    assert torch.all(ae.encoder(x) >= 0)
    y = ae(x)
    assert y.shape == (64, D) and torch.any(y < 0)  # a linear output layer can go negative


def test_fcn_large_layer_sizes():
    ae = FCNAutoencoder(640, **ARCHS["fcn-large"])
    assert linear_sizes(ae.encoder) == [(640, 512)] + [(512, 512)] * 4 + [(512, 128)]
    assert linear_sizes(ae.decoder) == [(128, 512)] + [(512, 512)] * 4 + [(512, 640)]


def test_glorot_uniform_initialisation():
    torch.manual_seed(123)
    ae = FCNAutoencoder(FEATURES.dim, **ARCHS["fcn-small"])
    for m in ae.modules():
        if not isinstance(m, nn.Linear):
            continue
        fan_in, fan_out = m.in_features, m.out_features
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = m.weight.detach().double()
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.95 * bound  # uniform up to the bound, not a narrower law
        assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.06)
        assert abs(float(w.mean())) < 0.1 * bound
        assert torch.count_nonzero(m.bias) == 0


def test_anomaly_score_is_squared_reconstruction_error():
    ae = FCNAutoencoder(10, hidden_layers=1, units=8, bottleneck=3)
    x = torch.randn(7, 10)
    want = ((x - ae(x)) ** 2).sum(1)
    torch.testing.assert_close(anomaly_score(ae, x), want)
    assert anomaly_score(ae, x).shape == (7,)


# --- training --------------------------------------------------------------------------------------


def test_same_seed_same_weights_different_seed_different_weights(data):
    a = run(data, 3, seed=0)
    b = run(data, 3, seed=0)
    c = run(data, 3, seed=1)
    assert a["model_state"].keys() == b["model_state"].keys()
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert any(not torch.equal(a["model_state"][k], c["model_state"][k]) for k in a["model_state"])
    # and training did change the weights
    torch.manual_seed(0)
    init = FCNAutoencoder(FEATURES.dim, **ARCHS["fcn-small"]).state_dict()
    assert any(not torch.equal(init[k], a["model_state"][k]) for k in init)


def test_short_bu_run_lowers_scores_of_held_out_normal_clips(trained, fan):
    assert trained["loss"]["name"] == "bu"
    assert trained["loss"]["params"]["sigma"] == pytest.approx(1 / (2 * FEATURES.dim))
    assert trained["loss"]["params"]["lambda"] == pytest.approx(2 * FEATURES.n_mels)
    assert len(trained["history"]) == 60
    assert all(np.isfinite(h["loss"]) for h in trained["history"])

    ae, features, mean, std = restore(trained)
    assert features == FEATURES
    torch.manual_seed(0)  # the untrained network, initialised as train() initialises it
    untrained = FCNAutoencoder(FEATURES.dim, **ARCHS["fcn-small"]).eval()
    held_out = fan["test_normal"]
    assert held_out and not set(held_out) & set(fan["train"])
    before = clip_frame_scores(untrained, mean, std, held_out).mean()
    after = clip_frame_scores(ae, mean, std, held_out).mean()
    assert after < 0.9 * before, (before, after)


def test_torch_frame_scorer_standardizes_per_mel_band(trained, fan_audio):
    """The scorer standardizes each context vector with the band statistics tiled over the L frames."""
    from edge_asd.core.features import extract

    ae, _, mean, std = restore(trained)
    got = torch_frame_scorer(ae, mean, std, FEATURES)(fan_audio[: 2 * FEATURES.sample_rate])
    x = extract(fan_audio[: 2 * FEATURES.sample_rate], FEATURES).reshape(-1, FEATURES.n_context_frames, FEATURES.n_mels)
    x = ((x - mean) / std).reshape(len(x), -1).astype(np.float32)
    with torch.no_grad():
        want = anomaly_score(ae, torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)


# --- checkpoints -----------------------------------------------------------------------------------


def test_checkpoint_roundtrip_gives_the_same_scores(trained, fan, tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(trained, path)
    loaded = load_checkpoint(path)
    assert loaded["arch"] == trained["arch"] and loaded["features"] == trained["features"]
    assert loaded["normalization"] == trained["normalization"]
    for k, v in trained["model_state"].items():
        assert torch.equal(loaded["model_state"][k], v), k

    ae0, f0, m0, s0 = restore(trained)
    ae1, f1, m1, s1 = restore(loaded)
    assert f0 == f1
    np.testing.assert_array_equal(m0, m1)
    np.testing.assert_array_equal(s0, s1)
    clips = fan["test_normal"][:2] + fan["test_anomaly"][:2]
    np.testing.assert_array_equal(clip_frame_scores(ae0, m0, s0, clips), clip_frame_scores(ae1, m1, s1, clips))
    # saving again over an existing file replaces it
    save_checkpoint({**trained, "machine_type": "pump"}, path)
    assert load_checkpoint(path)["machine_type"] == "pump"


class _Foreign:
    pass


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "torch_dict", "torch_tensor",
                                  "wrong_schema", "no_weights", "pickled_object"])
def test_load_checkpoint_rejects_files_that_are_not_ours(kind, tmp_path):
    path = tmp_path / f"{kind}.pt"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "torch_dict":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif kind == "torch_tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "wrong_schema":
        torch.save({"schema": 999, "model_state": {}}, path)
    elif kind == "no_weights":
        torch.save({"schema": 1}, path)
    elif kind == "pickled_object":
        torch.save({"schema": 1, "model_state": {}, "x": _Foreign()}, path)
    with pytest.raises(EdgeAsdError) as info:
        load_checkpoint(path)
    assert str(path.name) in str(info.value)


def test_named_schedules_and_the_csv_log(data_root, tmp_path):
    import csv

    from conftest import cli
    from edge_asd.train.trainer import SCHEDULES

    assert SCHEDULES["paper"] == {"epochs": 200, "batches_per_epoch": 500, "lr": 1e-4}
    assert SCHEDULES["short"] == {"epochs": 12, "batches_per_epoch": 50, "lr": 1e-3}  # docs/defaults/updates.md
    out = tmp_path / "m.pt"
    proc = cli("edge-train", data_root, "--machine-type", "fan", "--machine-id", "00", "--schedule", "paper",
               "--epochs", "1", "--batches-per-epoch", "4", "--out", out, "-q",
               env={"EDGE_ASD_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(out.with_suffix(".log.csv"))))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[0]["lr"]) == 1e-4 and float(rows[-1]["lr"]) == pytest.approx(1e-6)  # paper lr, decayed to 1/100
    assert all(float(r["loss"]) == float(r["loss"]) for r in rows)  # no NaN
