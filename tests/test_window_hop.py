"""One score per window with a hop, declared by the model file; embedding networks scored by the file's head.

The model here is a fixed random projection of 2-s log-mel windows (hop ~1 s) to an 8-d embedding, with a
Ledoit-Wolf Mahalanobis head fitted on the real fan id_00 training clips: the shape of a serial-OE or
transfer-learning model file, small enough to build in a second. The runtime and the CLIs must treat it exactly
as an autoencoder: same commands, same event semantics, scores stamped at the end of each window.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re

import numpy as np
import pytest

from conftest import assert_one_line_error, cli
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import StreamingFeatures, extract, n_vectors, standardize, vector_end_s
from edge_asd.core.heads import Head, centre_head, gmm_head, mahalanobis_head
from edge_asd.core.model_file import DIGEST_KEY, FORMAT, SCHEMA_VERSION, seal, unsealed_digest
from edge_asd.core.presets import PRESETS
from edge_asd.firmware_io.audio_file import read_audio

CFG = dataclasses.replace(PRESETS["dcase2020"], n_context_frames=62, context_hop_frames=31)  # 2.016-s windows every 0.992 s
EMBED = 8


def test_windows_with_a_hop_stream_like_whole_files(fan_audio):
    """Chunked streaming gives the windows of the whole file, with and without level_norm and standardization."""
    rng = np.random.default_rng(0)
    for cfg in (CFG, dataclasses.replace(CFG, level_norm="context")):
        whole = extract(fan_audio, cfg)
        assert len(whole) == n_vectors(len(fan_audio), cfg) == 9  # 10 s: windows end at 2.016, 3.008, ... 9.952 s
        np.testing.assert_allclose(vector_end_s(np.arange(9), cfg), 2.016 + 0.992 * np.arange(9))
        mean, std = rng.standard_normal(cfg.n_mels).astype(np.float32), (1 + rng.random(cfg.n_mels)).astype(np.float32)
        stream, got, i = StreamingFeatures(cfg, mean, std), [], 0
        while i < len(fan_audio):
            step = int(rng.integers(1, 9000))
            got.append(stream.push(fan_audio[i:i + step]))
            i += step
        np.testing.assert_allclose(np.concatenate(got), standardize(whole, mean, std), atol=1e-5)
        # window i is frames [31 i, 31 i + 62) of the K = 1 vectors: the same numbers, every 31st vector
        np.testing.assert_array_equal(whole, extract(fan_audio, dataclasses.replace(cfg, context_hop_frames=1))[::31])


def test_heads_agree_with_scikit_learn():
    from sklearn.covariance import LedoitWolf
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(1)
    train, test = rng.standard_normal((400, 6)), 1.5 * rng.standard_normal((60, 6))
    lw = LedoitWolf().fit(train)
    maha = Head.from_meta(json.loads(json.dumps(mahalanobis_head(lw.location_, lw.precision_).to_meta())))
    np.testing.assert_allclose(maha.score(test), lw.mahalanobis(test), rtol=1e-5)
    gmm = GaussianMixture(3, covariance_type="full", random_state=0).fit(train)
    head = Head.from_meta(gmm_head(gmm.weights_, gmm.means_, gmm.precisions_cholesky_).to_meta())
    shift = head.score(test) + gmm.score_samples(test)  # -log p(e) less a constant that keeps every score >= 0
    np.testing.assert_allclose(shift, shift[0], atol=1e-4)
    assert head.score(gmm.means_).min() >= 0 and head.score(test).min() >= 0
    c = rng.standard_normal(6)
    np.testing.assert_allclose(centre_head(c).score(test), ((test - c) ** 2).sum(axis=1), rtol=1e-5)


@pytest.mark.parametrize("damage", [{"kind": "svm"}, {"kind": "centre"}, {"kind": "centre", "centre": [1.0, "x"]},
                                    {"kind": "mahalanobis", "mean": [0.0, 0.0], "precision": [[1.0]]},
                                    {"kind": "gmm", "weights": [0.5, 0.6], "means": [[0.0], [1.0]],
                                     "precisions_cholesky": [[[1.0]], [[1.0]]]},
                                    {"kind": "centre", "centre": [float("nan")]}, "centre",
                                    {"kind": "centre", "centre": {"dtype": "float32", "shape": [3], "base64": "AACAPw=="}},
                                    {"kind": "centre", "centre": {"dtype": "float64", "shape": [1], "base64": "AACAPw=="}},
                                    {"kind": "centre", "centre": {"dtype": "float32", "shape": [1], "base64": "AA*APw=="}}])
def test_damaged_head_is_one_clear_error(damage):
    with pytest.raises(EdgeAsdError, match="^m.tflite: "):
        Head.from_meta(damage, "m.tflite")


def test_head_arrays_are_float32_base64_and_json_lists_still_load():
    """The metadata holds each parameter as base64 of little-endian float32 (a quarter of the JSON text); a head
    written as JSON lists (older files) reads back to the same scores."""
    rng = np.random.default_rng(2)
    mix = rng.standard_normal((64, 64))  # correlated embeddings: a dense precision
    train, test = rng.standard_normal((300, 64)) @ mix, 2 * rng.standard_normal((50, 64)) @ mix
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(train)
    head = mahalanobis_head(lw.location_, lw.precision_)
    meta = head.to_meta()
    assert meta["precision"]["dtype"] == "float32" and meta["precision"]["shape"] == [64, 64]
    assert np.frombuffer(base64.b64decode(meta["mean"]["base64"]), "<f4")[0] == np.float32(lw.location_[0])
    old = {"kind": "mahalanobis", "mean": lw.location_.tolist(), "precision": lw.precision_.tolist()}
    assert len(json.dumps(meta)) < 0.4 * len(json.dumps(old))
    np.testing.assert_allclose(Head.from_meta(json.loads(json.dumps(meta))).score(test),
                               Head.from_meta(old).score(test), rtol=1e-5)


def _projection():
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(CFG.dim, EMBED)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(EMBED, CFG.dim, generator=gen) / np.sqrt(CFG.dim))
        layer.bias.zero_()
    return layer.eval()


@pytest.fixture(scope="module")
def window_model(fan, tmp_path_factory):
    """A sealed ONNX model file: 2-s windows (hop 0.992 s) -> 8-d embedding -> Ledoit-Wolf Mahalanobis head."""
    torch = pytest.importorskip("torch")
    from sklearn.covariance import LedoitWolf

    from edge_asd.convert.onnx_export import export_onnx

    train = [extract(read_audio(f, CFG.sample_rate), CFG) for f in fan["train"]]
    psi = np.concatenate(train).reshape(-1, CFG.n_mels)
    mean, std = psi.mean(axis=0), psi.std(axis=0) + 1e-3
    net = _projection()
    with torch.no_grad():
        emb = net(torch.from_numpy(standardize(np.concatenate(train), mean, std))).numpy()
    lw = LedoitWolf().fit(emb)
    meta = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "target": "onnx", "machine_type": "fan",
            "machine_ids": ["id_00"], "features": {"name": "test-windows", "config": CFG.to_dict()},
            "normalization": {"mean": mean.tolist(), "std": std.tolist()},
            "head": mahalanobis_head(lw.location_, lw.precision_).to_meta(), DIGEST_KEY: unsealed_digest()}
    folder = tmp_path_factory.mktemp("window_model")
    path = folder / "fan_windows.onnx"
    path.write_bytes(seal(export_onnx(net, CFG.dim, meta)))
    from edge_asd.convert.tflite_export import export_tflite
    from edge_asd.core.model_file import write_tflite_metadata

    x = standardize(np.concatenate(train), mean, std)
    int8 = write_tflite_metadata(export_tflite(net, CFG.dim, calibration=x), {**meta, "target": "tflite",
                                                                                 "quantization": {"mode": "int8-static"}})
    (folder / "fan_windows.tflite").write_bytes(seal(int8))
    return path, net, (mean, std), lw


def test_scorer_applies_the_head_per_window(window_model, fan):
    torch = pytest.importorskip("torch")
    from edge_asd.edge.runtime.scorer import Scorer

    path, net, (mean, std), lw = window_model
    scorer = Scorer(path)
    assert scorer.head.kind == "mahalanobis" and scorer.backend.out_dim == EMBED
    clip = read_audio(fan["test_anomaly"][0], CFG.sample_rate)
    x = standardize(extract(clip, CFG), mean, std)
    with torch.no_grad():
        expected = lw.mahalanobis(net(torch.from_numpy(x)).numpy())
    np.testing.assert_allclose(scorer.score_audio(clip), expected, rtol=1e-4)
    assert scorer.embed(x).shape == (9, EMBED)
    stream = scorer.stream()  # the monitor's block path: same scores
    np.testing.assert_allclose(np.concatenate([scorer.score_inputs(stream.push(clip[i:i + 4096]))
                                               for i in range(0, len(clip), 4096)]), expected, rtol=1e-4)


def test_the_commands_need_nothing_new(window_model, fan, tmp_path, env):
    """edge-calibrate, edge-score and edge-monitor run a window model as they run an autoencoder: phi from the
    training clips' window scores, events stamped at window ends (every 0.992 s from 2.016 s)."""
    path = window_model[0]
    store = tmp_path / "phi.json"
    proc = cli("edge-calibrate", *fan["train"], "--model", path, "--machine-id", "00", "--store", store,
               "--votes", "1/1", env=env)
    assert proc.returncode == 0, proc.stderr
    phi = json.loads(store.read_text())
    assert "Traceback" not in proc.stderr
    proc = cli("edge-monitor", "--model", path, "--store", store, "--machine-id", "00", "--input",
               fan["test_anomaly"][0], "--window", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    verdicts = [r for r in lines if r["event"] == "verdict"]
    summary = next(r for r in lines if r["event"] == "summary")
    assert summary["frames"] == 9 and sum(v["frames"] for v in verdicts) == 9  # one score per window
    assert len(verdicts) == summary["windows"] == 4  # --window 2: windows ending in [2, 4), [4, 6), [6, 8), [8, 10) s
    for t in [v["start_s"] for v in verdicts] + [v["end_s"] for v in verdicts] + [summary["max_time_s"]]:
        assert (t - 2.016) / 0.992 == pytest.approx(round((t - 2.016) / 0.992), abs=1e-6)  # stamped at window ends
    assert phi
    proc = cli("edge-score", "--model", path, "--machine-id", "00", *fan["test_anomaly"][:2], env=env)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(",") for line in proc.stdout.splitlines()[1:]]
    assert len(rows) == 2 and all(r[4] == "9" for r in rows), proc.stdout  # 9 window scores per 10-s clip


def test_unsupported_head_file_is_refused_cleanly(window_model, tmp_path, env):
    path = window_model[0]
    data = path.read_bytes()
    digest = re.search(rb'"content_sha256": "([0-9a-f]{64})"', data).group(1)
    unsealed = data.replace(digest, unsealed_digest().encode())
    broken = tmp_path / "broken.onnx"  # a sealed file (the seal holds) whose head names no known inlier model
    broken.write_bytes(seal(unsealed.replace(b'"kind": "mahalanobis"', b'"kind": "mahalanobiz"')))
    proc = cli("edge-inspect", broken, env=env)
    assert_one_line_error(proc)


def test_finetune_refits_the_head_with_rollback(window_model, fan, tmp_path, env):
    """edge-finetune on a model with a head: the network stays, the inlier model is refitted on the machine's own
    windows (a Ledoit-Wolf Mahalanobis of their embeddings), phi is set again, and --rollback restores both."""
    import shutil

    from sklearn.covariance import LedoitWolf

    from edge_asd.edge.runtime.scorer import Scorer

    model = tmp_path / "fan.tflite"
    shutil.copy(window_model[0].with_suffix(".tflite"), model)
    store, before = tmp_path / "phi.json", model.read_bytes()
    assert cli("edge-calibrate", *fan["train"][:5], "--model", model, "--machine-id", "00", "--store", store,
               "--votes", "1/1", env=env).returncode == 0
    proc = cli("edge-finetune", *fan["train"], "--model", model, "--machine-id", "00", "--store", store, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "inlier model refit" in proc.stderr and "network frozen" in proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["head_refit"]["head"] == "mahalanobis -> mahalanobis" and summary["steps"] == 0
    old, new = Scorer(window_model[0].with_suffix(".tflite")), Scorer(model)
    assert new.sha256 != old.sha256 and new.meta["fine_tuning"][-1]["head_refit"] == summary["head_refit"]
    trained = [read_audio(f, CFG.sample_rate) for f in fan["train"][:summary["recordings_trained"]]]
    emb = np.concatenate([new.embed(new.info.standardize(extract(c, CFG))) for c in trained])
    assert len(emb) == summary["head_refit"]["windows"]  # every window of the recordings trained on (none rejected)
    lw = LedoitWolf().fit(emb.astype(np.float64))  # the device's numpy fit is scikit-learn's
    np.testing.assert_allclose(new.head.params["mean"], lw.location_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.head.score(emb[:5]), lw.mahalanobis(emb[:5]), rtol=1e-4)
    inspect = cli("edge-inspect", model, env=env)
    assert "inlier model refit (mahalanobis -> mahalanobis) on 63 windows of" in inspect.stdout, inspect.stdout
    back = cli("edge-finetune", "--model", model, "--store", store, "--rollback", env=env)
    assert back.returncode == 0, back.stderr
    assert model.read_bytes() == before


def test_family_bench_measures_per_score_window(window_model, fan_audio):
    """bench/family_bench.py (the device cost of each family) counts per score window, not per STFT frame: one
    window's call brings one window hop of audio, and compute per window x windows per second = compute per
    second of audio; each cell after the first carries its ratio to the first model."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from family_bench import measure, table

    row = measure(window_model[0].with_suffix(".tflite"), [fan_audio], 30.0, 1)
    assert row["hop_s"] == pytest.approx(0.992) and row["window_s"] == pytest.approx(2.016)
    windows_per_s = (1 + (30.0 - row["window_s"]) // row["hop_s"]) / 30.0  # 29 windows: the first ends at 2.016 s
    assert row["ms_per_window"] * windows_per_s == pytest.approx(row["ms_per_audio_s"], rel=1e-6)
    assert 0 < row["window_p50_ms"] <= row["window_p99_ms"] and row["rss_mb"] > 0 and row["cold_start_s"] > 0
    md = table({"a": row, "b": {**row, "rtf": 2 * row["rtf"]}})
    assert "| real-time factor |" in md and "(2.0x)" in md and "| <= 0.05 |" in md
