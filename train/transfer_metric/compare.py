"""The comparison hook (``examples/compare_methods.py``): one anomaly score per test clip for each method on the
same frozen YAMNet embeddings. ``fit_score`` is the proposed method (Deep SVDD head, :mod:`.head`);
``fit_score_mahalanobis``, ``fit_score_vae`` and ``fit_score_knn`` are the comparators (:mod:`.comparators`).

Every function takes the contract's keywords ``data_dir, machine_type, machine_id, train_clips, test_clips,
something_else_dir, seed, budget`` (``budget`` "short": the default training budget; "smoke": the smallest run
that exercises every step) and returns (len(test_clips),) float64, higher = more anomalous. ``something_else_dir``
is not used: the methods train on normal clips only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.train.feature_cache import FeatureCache, default_cache_dir
from edge_asd.train.transfer_metric import comparators
from edge_asd.train.transfer_metric.extractor import load_extractor
from edge_asd.train.transfer_metric.features import clip_embeddings
from edge_asd.train.transfer_metric.head import HeadConfig, fit_head, svdd_scores

DEFAULT_EXTRACTOR = "yamnet:layer10"
BUDGETS = {"short": {"head": HeadConfig(), "vae_epochs": 100}, "smoke": {"head": HeadConfig(max_epochs=3), "vae_epochs": 2}}


def embeddings(train_clips: list[Path], test_clips: list[Path], extractor: str = DEFAULT_EXTRACTOR):
    """(per train clip, per test clip) patch embeddings, cached in the user's feature cache."""
    run = load_extractor(extractor)
    cache = FeatureCache(default_cache_dir())
    return clip_embeddings(list(train_clips), extractor, run, cache), clip_embeddings(list(test_clips), extractor, run, cache)


def _budget(budget: str) -> dict:
    if budget not in BUDGETS:
        raise EdgeAsdError(f"budget {budget!r}: use {' or '.join(BUDGETS)}")
    return BUDGETS[budget]


def _clip_means(score, test: list[np.ndarray]) -> np.ndarray:
    return np.array([float(np.mean(score(e))) for e in test], np.float64)


def fit_score(*, data_dir: Path, machine_type: str, machine_id: str, train_clips: list[Path], test_clips: list[Path],
              something_else_dir: Path | None, seed: int, budget: str = "short", extractor: str = DEFAULT_EXTRACTOR) -> np.ndarray:
    """Deep SVDD head on frozen embeddings: clip score = mean over patches of ||phi(e) - c||^2."""
    b = _budget(budget)
    train, test = embeddings(train_clips, test_clips, extractor)
    phi, centre, _ = fit_head(train, b["head"], seed)
    return _clip_means(lambda e: svdd_scores(phi, centre, e), test)


def fit_score_mahalanobis(*, data_dir: Path, machine_type: str, machine_id: str, train_clips: list[Path],
                          test_clips: list[Path], something_else_dir: Path | None, seed: int, budget: str = "short",
                          extractor: str = DEFAULT_EXTRACTOR) -> np.ndarray:
    """Ledoit-Wolf Mahalanobis distance of the embeddings (no training; ``seed`` and ``budget`` unused)."""
    _budget(budget)
    train, test = embeddings(train_clips, test_clips, extractor)
    mean, precision = comparators.fit_mahalanobis(np.concatenate(train))
    return _clip_means(lambda e: comparators.mahalanobis_scores(mean, precision, e), test)


def fit_score_vae(*, data_dir: Path, machine_type: str, machine_id: str, train_clips: list[Path], test_clips: list[Path],
                  something_else_dir: Path | None, seed: int, budget: str = "short", extractor: str = DEFAULT_EXTRACTOR) -> np.ndarray:
    """A small VAE on the embeddings: negative ELBO."""
    b = _budget(budget)
    train, test = embeddings(train_clips, test_clips, extractor)
    vae, mean, std = comparators.fit_vae(np.concatenate(train), b["vae_epochs"], seed)
    return _clip_means(lambda e: comparators.vae_scores(vae, mean, std, e), test)


def fit_score_knn(*, data_dir: Path, machine_type: str, machine_id: str, train_clips: list[Path], test_clips: list[Path],
                  something_else_dir: Path | None, seed: int, budget: str = "short", extractor: str = DEFAULT_EXTRACTOR) -> np.ndarray:
    """1-NN cosine distance to the normal training embeddings (no training)."""
    _budget(budget)
    train, test = embeddings(train_clips, test_clips, extractor)
    bank = np.concatenate(train)
    return _clip_means(lambda e: comparators.knn_cosine_scores(bank, e), test)
