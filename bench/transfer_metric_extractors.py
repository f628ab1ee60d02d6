"""Which frozen extractor for ``edge-train --method transfer-metric``: clip AUC / pAUC (max FPR 0.1) per machine
ID, extractor and method on the same embeddings (docs/transfer-metric.md, "Extractor choice").

    python bench/transfer_metric_extractors.py DATA --ids fan:00,slider:00 --seeds 0,1,2

Extractors: yamnet:layer6, yamnet:layer10, yamnet:layer14 (edge_asd.train.transfer_metric.compare), and
speech_embedding, Google's speech embedding from openWakeWord 0.4.0 (pip install --no-deps openwakeword==0.4.0)
with openWakeWord's own mel front-end (melspectrogram.onnx, x / 10 + 2) and 76-frame windows every 48 frames.
Methods: svdd (Deep SVDD head), vae, mahalanobis (Ledoit-Wolf), knn (1-NN cosine). Prints one line per run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

import numpy as np
import soundfile as sf
from sklearn.metrics import roc_auc_score

from edge_asd.datasets.layout import scan
from edge_asd.train.transfer_metric import comparators, compare
from edge_asd.train.transfer_metric.head import fit_head, svdd_scores

METHODS = ("svdd", "vae", "mahalanobis", "knn")


def speech_embedding_scores(train, test, method: str, seed: int) -> np.ndarray:
    import onnxruntime as ort

    d = os.path.join(os.path.dirname(importlib.util.find_spec("openwakeword").origin), "resources", "models")
    mel, emb = ort.InferenceSession(f"{d}/melspectrogram.onnx"), ort.InferenceSession(f"{d}/embedding_model.onnx")

    def embed(path):
        x, rate = sf.read(path, dtype="int16")
        spec = np.squeeze(mel.run(None, {"input": x[None].astype(np.float32)})[0]) / 10 + 2
        w = np.stack([spec[i:i + 76] for i in range(0, len(spec) - 75, 48)])[..., None].astype(np.float32)
        return emb.run(None, {"input_1": w})[0].reshape(len(w), -1)

    tr, te = [embed(p) for p in train], [embed(p) for p in test]
    bank = np.concatenate(tr)
    if method == "svdd":
        phi, c, _ = fit_head(tr, compare.BUDGETS["short"]["head"], seed)
        score = lambda e: svdd_scores(phi, c, e)  # noqa: E731
    elif method == "vae":
        vae, m, s = comparators.fit_vae(bank, compare.BUDGETS["short"]["vae_epochs"], seed)
        score = lambda e: comparators.vae_scores(vae, m, s, e)  # noqa: E731
    elif method == "mahalanobis":
        m, p = comparators.fit_mahalanobis(bank)
        score = lambda e: comparators.mahalanobis_scores(m, p, e)  # noqa: E731
    else:
        score = lambda e: comparators.knn_cosine_scores(bank, e)  # noqa: E731
    return np.array([score(e).mean() for e in te])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data")
    ap.add_argument("--ids", default="fan:00,slider:00")
    ap.add_argument("--extractors", default="yamnet:layer6,yamnet:layer10,yamnet:layer14,speech_embedding")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0")
    a = ap.parse_args()
    for mid in a.ids.split(","):
        machine_type, machine_id = mid.split(":")
        clips = scan(a.data, machine_type=machine_type, machine_id=machine_id)
        train = [c.path for c in clips if c.split == "train" and c.label == "normal"]
        test = [c.path for c in clips if c.split == "test"]
        y = [c.label == "anomaly" for c in clips if c.split == "test"]
        for ext in a.extractors.split(","):
            for method in a.methods.split(","):
                seeds = a.seeds.split(",") if method in ("svdd", "vae") else ["-"]
                for seed in seeds:
                    s0 = 0 if seed == "-" else int(seed)
                    if ext == "speech_embedding":
                        s = speech_embedding_scores(train, test, method, s0)
                    else:
                        fn = compare.fit_score if method == "svdd" else getattr(compare, f"fit_score_{method}")
                        s = fn(data_dir=a.data, machine_type=machine_type, machine_id=machine_id, train_clips=train,
                               test_clips=test, something_else_dir=None, seed=s0, extractor=ext)
                    print(f"{mid} {ext} {method} seed {seed}: train {len(train)} test {len(test)} "
                          f"AUC {roc_auc_score(y, s):.3f} pAUC {roc_auc_score(y, s, max_fpr=0.1):.3f}", flush=True)


if __name__ == "__main__":
    main()
