"""The DCASE 2020 Task 2 baseline autoencoder (--arch dcase2020) as a second family beside the paper's FCNs."""

import numpy as np
import torch
from torch import nn

from conftest import cli
from edge_asd.train.model import ARCHS, build_autoencoder


def test_layer_sizes_and_batch_norm():
    ae = build_autoencoder({"name": "dcase2020", "dim": 640, **ARCHS["dcase2020"]})
    sizes = [(m.in_features, m.out_features) for m in ae.modules() if isinstance(m, nn.Linear)]
    assert sizes == [(640, 128), (128, 128), (128, 128), (128, 128), (128, 8),
                     (8, 128), (128, 128), (128, 128), (128, 128), (128, 640)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in ae.modules()) == 9  # every layer but the output
    assert not any(isinstance(m, nn.BatchNorm1d) for m in build_autoencoder({"name": "fcn-small", "dim": 640,
                                                                             **ARCHS["fcn-small"]}).modules())


def test_train_and_export_on_the_dcase2020_preset(data_root, tmp_path):
    ckpt = tmp_path / "dcase.pt"
    proc = cli("edge-train", data_root, "--machine-type", "fan", "--machine-id", "00", "--preset", "dcase2020",
               "--arch", "dcase2020", "--loss", "re", "--epochs", "1", "--batches-per-epoch", "4", "--out", ckpt, "-q")
    assert proc.returncode == 0, proc.stderr
    from edge_asd.convert.pipeline import convert_checkpoint
    from edge_asd.train.checkpoint import load_checkpoint, restore

    ae, features, mean, std = restore(load_checkpoint(ckpt))
    assert features.dim == 640 and not ae.training
    scorer, _ = convert_checkpoint(ckpt, "onnx", tmp_path / "dcase.onnx")
    x = np.random.default_rng(0).normal(size=(16, 640)).astype(np.float32)
    with torch.no_grad():
        expected = (torch.from_numpy(x) - ae(torch.from_numpy(x))).pow(2).sum(-1).numpy()
    np.testing.assert_allclose(scorer.backend.score(x), expected, rtol=1e-4)  # BatchNorm in eval form
