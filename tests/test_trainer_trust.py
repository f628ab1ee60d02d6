"""A trainer people trust: validation split, early stopping, best-epoch weights, resume, precision,
the frame-based KDE and the background batch pipeline, on real recordings (the feature cache:
test_feature_cache.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edge_asd.core.batches import BatchBuilder
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.presets import get_preset
from edge_asd.firmware_io.audio_file import read_audio
from edge_asd.train import pipeline
from edge_asd.train.checkpoint import restore
from edge_asd.train.context_kde import context_kde_weights, diagonal_window_sum
from edge_asd.train.losses import kde_weights
from edge_asd.train.model import anomaly_score
from edge_asd.train.pipeline import Prefetcher
from edge_asd.train.trainer import TrainConfig, resolve_precision, train
from edge_asd.train.validation import build_validation, split_normals, validate

FEATURES = get_preset("koizumi2019")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(fan_training_clips):
    return fan_training_clips


def config(**kw) -> TrainConfig:
    base = {"machine_type": "fan", "machine_ids": ["id_00"], "preset": "koizumi2019", "device": "cpu"}
    return TrainConfig(**{**base, **kw})


# --- eq. (15) from log-mel frames ------------------------------------------------------------------


def test_diagonal_window_sum_equals_the_explicit_sum():
    g = torch.randn(40, 40)
    for length in (1, 2, 5, 7, 16, 21):
        want = torch.stack([torch.stack([sum(g[i + c, j + c] for c in range(length)) for j in range(41 - length)])
                            for i in range(41 - length)])
        torch.testing.assert_close(diagonal_window_sum(g, length), want, rtol=1e-5, atol=1e-4)


def test_frame_kde_gives_the_distances_of_the_context_vectors():
    """Without the batch normalization (bands of equal spread), K(x) from frames == K(x) from vectors."""
    rng = np.random.default_rng(0)
    psi = rng.standard_normal((300, 8)).astype(np.float32)
    is_u = rng.random(300 - 5 + 1) > 0.3
    x = torch.from_numpy(np.stack([psi[i:i + 5].ravel() for i in range(len(is_u))])[is_u])
    got = context_kde_weights(torch.from_numpy(psi), torch.from_numpy(is_u), 5, sigma=0.05, eps=1e-6)
    # the reference with the same per-band normalization applied to the vectors
    counts = np.convolve(is_u.astype(float), np.ones(5))
    mean = (counts[:, None] * psi).sum(0) / counts.sum()
    std = np.sqrt((counts[:, None] * (psi - mean) ** 2).sum(0) / counts.sum())
    xn = ((x.numpy().reshape(len(x), 5, 8) - mean) / std).reshape(len(x), -1)
    want = kde_weights(torch.from_numpy(xn.astype(np.float32)), 0.05, 1e-6, standardize=False)
    torch.testing.assert_close(got, want, rtol=2e-4, atol=0)


def test_frame_kde_matches_the_papers_per_dimension_weights_on_real_batches(data):
    normals, others, mean, std = data
    builder = BatchBuilder(normals, others, FEATURES)
    for seed in range(3):
        b = builder.draw(np.random.default_rng(seed), mean, std)
        ref = kde_weights(torch.from_numpy(b.x_u), 1 / (2 * FEATURES.dim), 1e-6)  # sec. 4.2.2, per dimension
        got = context_kde_weights(torch.from_numpy(b.psi), torch.from_numpy(~b.is_a), FEATURES.n_context_frames,
                                  1 / (2 * FEATURES.dim), 1e-6)
        assert got.shape == ref.shape == (len(b.x_u),)
        rel = ((got - ref).abs() / ref).numpy()
        assert np.median(rel) < 1e-3 and rel.max() < 0.03, (np.median(rel), rel.max())
        assert np.corrcoef(got, ref)[0, 1] > 0.999
        assert ref.max() / ref.min() > 1.5  # the weights do vary: the comparison is not between constants


def test_standardized_draw_equals_standardizing_the_vectors(data):
    from edge_asd.core.features import standardize

    normals, others, mean, std = data
    builder = BatchBuilder(normals, others, FEATURES)
    raw = builder.draw(np.random.default_rng(5))
    std_batch = builder.draw(np.random.default_rng(5), mean, std)
    np.testing.assert_array_equal(std_batch.x_u, standardize(raw.x_u, mean, std))
    np.testing.assert_array_equal(std_batch.x_a, standardize(raw.x_a, mean, std))


# --- the background pipeline -----------------------------------------------------------------------


def test_prefetched_batches_equal_batches_drawn_in_the_loop(data):
    normals, others, mean, std = data
    builder = BatchBuilder(normals, others, FEATURES)
    with Prefetcher(builder, mean, std, seed=3, start=2, stop=6, depth=0) as a, \
            Prefetcher(builder, mean, std, seed=3, start=2, stop=6, depth=3) as b:
        for _ in range(4):
            x, y = a.get(), b.get()
            assert x.span == y.span and x.anr_db == y.anr_db
            np.testing.assert_array_equal(x.x_u, y.x_u)
        with pytest.raises(IndexError):
            b.get()


def test_an_error_in_the_pipeline_thread_reaches_the_training_loop(data, monkeypatch):
    normals, others, mean, std = data
    builder = BatchBuilder(normals, others, FEATURES)
    real = pipeline.batch_rng
    monkeypatch.setattr(pipeline, "batch_rng", lambda seed, step: real(seed, step) if step < 1 else 1 / 0)
    with Prefetcher(builder, mean, std, seed=0, start=0, stop=5, depth=2) as p:
        p.get()
        with pytest.raises(ZeroDivisionError):
            p.get()


def test_numpy_blas_runs_on_one_thread_while_batches_are_drawn(data):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    normals, others, mean, std = data

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        if not before:
            pytest.skip("numpy has no BLAS that threadpoolctl can see")
        with Prefetcher(BatchBuilder(normals, others, FEATURES), mean, std, seed=0, start=0, stop=2, depth=1) as p:
            p.get()
            assert blas_threads() == [1] * len(before)
        assert blas_threads() == before


# --- validation split and criterion ----------------------------------------------------------------


def test_split_by_clips_when_there_are_enough(data):
    normals = data[0]
    train_clips, val_clips, how = split_normals(normals, 0.2, seed=0)
    assert how == "clips" and len(val_clips) == 2 and len(train_clips) == 8
    ids = lambda cs: {id(c) for c in cs}  # noqa: E731
    assert not ids(train_clips) & ids(val_clips) and ids(train_clips) | ids(val_clips) == ids(normals)
    assert any(ids(split_normals(normals, 0.2, seed=s)[1]) != ids(val_clips) for s in range(1, 6))  # the seed picks them


def test_split_by_time_with_two_clips(data_root):
    clips = [read_audio(p, 16000) for p in sorted((data_root / "machines" / "ToyCar" / "train").glob("*.flac"))]
    assert len(clips) == 2
    train_clips, val_clips, how = split_normals(clips, 0.25, seed=0)
    assert how == "time"
    for whole, a, b in zip(clips, train_clips, val_clips):
        np.testing.assert_array_equal(np.concatenate([a, b]), whole)
        assert len(b) == round(0.25 * len(whole))
    with pytest.raises(ValueError):
        split_normals(clips, 1.0)


@pytest.mark.parametrize("n_clips", [2, 10])
def test_split_recordings_divides_paths_and_audio_as_split_normals_does(n_clips):
    from pathlib import Path

    from edge_asd.train.validation import split_recordings

    clips = [np.full(1000 + i, i, np.float32) for i in range(n_clips)]
    paths = [Path(f"clip_{i}.wav") for i in range(n_clips)]
    split = split_recordings(paths, clips, 0.2, seed=3)
    train_clips, val_clips, how = split_normals(clips, 0.2, seed=3)
    assert split.how == how
    for got, want in ((split.train_clips, train_clips), (split.val_clips, val_clips)):
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    if how == "clips":  # each path follows its audio
        assert [int(p.stem[5:]) for p in split.held_paths] == [int(c[0]) for c in val_clips]
        assert [int(p.stem[5:]) for p in split.trained_paths] == [int(c[0]) for c in train_clips]
    else:  # every recording is partly trained on; none is held out whole
        assert split.trained_paths == paths and split.held_paths == []
    with pytest.raises(ValueError):
        split_recordings(paths[:-1], clips, 0.2)


def test_validation_auc_separates_loud_pseudo_anomalies_and_ranks_a_trained_model(data, fan):
    """On an autoencoder trained briefly, held-out normal vectors score lower than the same audio with
    something-else sounds; and the set is fixed: the same seed gives the same vectors."""
    normals, others, mean, std = data
    train_clips, val_clips, _ = split_normals(normals, 0.2)
    builder = BatchBuilder(train_clips, others, FEATURES)
    vs = build_validation(val_clips, builder, mean, std, seed=0)
    again = build_validation(val_clips, builder, mean, std, seed=0)
    np.testing.assert_array_equal(vs.x_pseudo, again.x_pseudo)
    assert vs.x_normal.shape[1] == FEATURES.dim and len(vs.x_pseudo) > 100
    ck = train(config(epochs=1, batches_per_epoch=30, loss="re"), FEATURES, train_clips, others, mean, std, progress=False)
    ae, *_ = restore(ck)
    with torch.no_grad():
        res = validate(lambda x: anomaly_score(ae, torch.from_numpy(x)).numpy(), vs)
    assert res["val_score_a"] > res["val_score_u"]
    assert 0.55 < res["val_auc"] <= 1.0


# --- early stopping, best epoch, resume --------------------------------------------------------------


def test_early_stopping_when_validation_does_not_improve(data):
    """A step size of 1e-12 leaves the weights as they are, so no epoch beats the first: training stops
    after `patience` more epochs and keeps epoch 1."""
    normals, others, mean, std = data
    ck = train(config(epochs=10, batches_per_epoch=2, lr=1e-12, val_fraction=0.2, patience=2), FEATURES, normals, others,
               mean, std, progress=False)
    assert [e["epoch"] for e in ck["epochs"]] == [1, 2, 3]
    assert len(ck["history"]) == 6
    assert ck["validation"]["stopped_early"] and ck["validation"]["best_epoch"] == 1
    assert ck["validation"]["split"] == "clips"
    assert len({round(e["val_auc"], 6) for e in ck["epochs"]}) == 1


def test_validation_tracking_replays_the_trainers_early_stopping(data):
    """examples/validation_tracking.py says which epoch each --val-metric/--patience would keep; that
    must be the epoch edge-train itself keeps."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "validation_tracking", Path(__file__).resolve().parents[1] / "examples" / "validation_tracking.py")
    tracking = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tracking)
    normals, others, mean, std = data
    run = dict(epochs=6, batches_per_epoch=2, lr=3e-3, val_fraction=0.2)
    rows = []  # every epoch of one run without early stopping, as the script records them
    train(config(**run), FEATURES, normals, others, mean, std, progress=False, on_epoch=lambda row, ae: rows.append(row))
    kept = set()
    for metric in ("score", "auc"):
        for patience in (0, 1, 2):
            ck = train(config(**run, patience=patience, keep="best", val_metric=metric), FEATURES, normals, others, mean,
                       std, progress=False)
            assert tracking.kept_epoch(rows, metric, patience) == ck["validation"]["kept_epoch"]
            kept.add((ck["validation"]["kept_epoch"], ck["validation"]["stopped_early"]))
    assert any(stopped for _, stopped in kept) and len(kept) > 1  # the runs differ: the check has teeth


def test_checkpoint_holds_the_best_epochs_weights(data):
    normals, others, mean, std = data
    ck = train(config(epochs=4, batches_per_epoch=4, val_fraction=0.2, keep="best"), FEATURES, normals, others, mean, std,
               progress=False)
    best = ck["validation"]["best_epoch"]
    keys = [(round(e["val_auc"], 4), -e["val_score_u"]) for e in ck["epochs"]]
    assert keys[best - 1] == max(keys) and len(ck["epochs"]) == 4 and ck["validation"]["kept_epoch"] == best
    # recompute the validation of the returned weights: it is the best epoch's row
    train_clips, val_clips, _ = split_normals(normals, 0.2, 0)
    vs = build_validation(val_clips, BatchBuilder(train_clips, others, FEATURES), mean, std, 0)
    ae, *_ = restore(ck)
    with torch.no_grad():
        res = validate(lambda x: anomaly_score(ae, torch.from_numpy(x)).numpy(), vs)
    assert res["val_auc"] == pytest.approx(ck["epochs"][best - 1]["val_auc"], abs=1e-6)
    assert res["val_score_u"] == pytest.approx(ck["epochs"][best - 1]["val_score_u"], rel=1e-5)


def test_resume_after_an_interruption_gives_the_same_weights(data, tmp_path, monkeypatch):
    normals, others, mean, std = data
    cfg = config(epochs=3, batches_per_epoch=2, val_fraction=0.2, patience=0, seed=4)
    whole = train(cfg, FEATURES, normals, others, mean, std, progress=False)

    state = tmp_path / "m.state.pt"
    real = pipeline.batch_rng
    monkeypatch.setattr(pipeline, "batch_rng", lambda seed, step: real(seed, step) if step < 3 else 1 / 0)
    with pytest.raises(ZeroDivisionError):  # "killed" during epoch 2
        train(cfg, FEATURES, normals, others, mean, std, progress=False, state_path=state)
    monkeypatch.setattr(pipeline, "batch_rng", real)
    resumed = train(cfg, FEATURES, normals, others, mean, std, progress=False, state_path=state, resume=True)
    assert [h["step"] for h in resumed["history"]] == list(range(6))
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    for k, v in whole["model_state"].items():
        assert torch.equal(resumed["model_state"][k], v), k
    assert resumed["epochs"] == whole["epochs"]

    with pytest.raises(EdgeAsdError, match="other settings"):
        train(config(epochs=3, batches_per_epoch=2, val_fraction=0.2, patience=0, seed=5), FEATURES, normals, others,
              mean, std, progress=False, state_path=state, resume=True)


# --- precision ---------------------------------------------------------------------------------------


def test_precision_choices_on_the_cpu(data):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None and resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    with pytest.raises(EdgeAsdError, match="fp16"):
        resolve_precision("fp16", cpu)
    normals, others, mean, std = data
    ck = train(config(epochs=1, batches_per_epoch=2, precision="bf16"), FEATURES, normals, others, mean, std, progress=False)
    assert ck["precision"] == "bfloat16" and all(np.isfinite(h["loss"]) for h in ck["history"])
    assert all(v.dtype == torch.float32 for v in ck["model_state"].values())  # autocast keeps fp32 master weights


# --- edge-train ------------------------------------------------------------------------------------


def test_edge_train_with_two_clips_validates_on_time_segments_and_resumes(data_root, tmp_path):
    """A DCASE 2023 section with 2 normal training clips: the validation split is by time; the run
    writes the checkpoint, the per-update and per-epoch logs, the curves and the training state."""
    import csv

    from conftest import assert_one_line_error, cli

    env = {"EDGE_ASD_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "toycar.pt"
    args = [data_root, "--machine-type", "ToyCar", "--machine-id", "section_00", "--val-fraction", "0.2", "--epochs", "2",
            "--batches-per-epoch", "2", "--out", out, "-q"]
    proc = cli("edge-train", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    epochs = list(csv.DictReader(open(out.with_suffix(".epochs.csv"))))
    assert [int(e["epoch"]) for e in epochs] == [1, 2]
    assert all(0.0 <= float(e["val_auc"]) <= 1.0 and float(e["val_score_u"]) > 0 for e in epochs)
    assert out.with_suffix(".curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(csv.DictReader(open(out.with_suffix(".log.csv"))))) == 4
    assert any((tmp_path / "cache").rglob("*.npy"))
    from edge_asd.train.checkpoint import load_checkpoint

    ck = load_checkpoint(out)
    assert ck["validation"]["split"] == "time" and ck["validation"]["best_epoch"] in (1, 2)

    # resuming a finished run changes nothing; other settings are refused in one line
    again = cli("edge-train", *args, "--resume", env=env)
    assert again.returncode == 0, again.stderr
    for k, v in ck["model_state"].items():
        assert torch.equal(load_checkpoint(out)["model_state"][k], v), k
    assert_one_line_error(cli("edge-train", *args, "--resume", "--lr", "0.5", env=env))
    assert_one_line_error(cli("edge-train", *args[:-3], "--out", tmp_path / "new.pt", "--resume", env=env))


def test_edge_train_help_documents_every_hyper_parameter():
    from conftest import cli

    proc = cli("edge-train", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for needle in ["sigma", "eq. 15", "lambda", "eq. 10", "epsilon", "eq. 16", "ANR", "dB", "sec. 4.2.2", "sec. 4.2.1",
                   "1/(2D)", "H=2, U=128, Z=40", "D=1344", "1e-4", "[default: 0.0;", "12 epochs x 50", "--patience",
                   "--resume", "--precision", "--device", "bf16", "--cache-dir", "--val-metric", "AMSGrad"]:
        assert needle in text, needle


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_agrees_with_the_cpu(data, precision):
    """The same 3 updates on CUDA (fp32, or autocast with bf16 / fp16 + GradScaler) and on the CPU:
    same batches, losses within the precision's rounding, fp32 weights, a usable validation."""
    normals, others, mean, std = data
    kw = {"epochs": 1, "batches_per_epoch": 3, "val_fraction": 0.2, "patience": 0}
    cpu = train(config(**kw), FEATURES, normals, others, mean, std, progress=False)
    gpu = train(config(device="cuda", precision=precision, **kw), FEATURES, normals, others, mean, std, progress=False)
    assert gpu["device"].startswith("cuda")
    rtol = {"fp32": 1e-3, "bf16": 0.05, "fp16": 0.02}[precision]
    np.testing.assert_allclose([h["score_u"] for h in gpu["history"]], [h["score_u"] for h in cpu["history"]], rtol=rtol)
    assert all(v.dtype in (torch.float32, torch.int64) and v.device.type == "cpu" for v in gpu["model_state"].values())
    assert 0.0 <= gpu["epochs"][0]["val_auc"] <= 1.0
