"""Patch embeddings of whole clips: YAMNet log-mel patches (preset ``yamnet``) through a frozen extractor.

A clip's log-mel frames ``psi`` (T, 64) give patches of 96 frames every 48 (0.96 s every 0.48 s), each
flattened row-major, oldest frame first, ``(n_patches, 6144)`` float32 (raw log-mel: YAMNet takes
``ln(mel + 0.001)`` as is, so the model file's normalization is mean 0, std 1). The extractor maps each to an
embedding; embeddings are computed once per (file content, extractor) and kept in the feature cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import LOGMEL_VERSION, stack_context
from edge_asd.core.presets import get_preset
from edge_asd.train.feature_cache import FeatureCache

PRESET = "yamnet"
PATCH_HOP_FRAMES = get_preset(PRESET).context_hop_frames
"""Patch hop K, frames (48, 0.48 s): YAMNet's own."""


def patches(psi: np.ndarray, n_frames: int = 96, hop_frames: int = PATCH_HOP_FRAMES) -> np.ndarray:
    """:func:`edge_asd.core.features.stack_context` (what the device computes): log-mel frames (T, M) -> patches (1 + (T - n_frames) // hop_frames, n_frames * M) float32, patch i =
    frames [i * hop_frames, i * hop_frames + n_frames); (0, n_frames * M) when T < n_frames."""
    return stack_context(np.asarray(psi, np.float32), n_frames, hop_frames)


def clip_embeddings(paths: list[Path], spec: str, extractor, cache: FeatureCache | None = None) -> list[np.ndarray]:
    """Per clip its patch embeddings (n_patches, E) float32, ``extractor`` being :func:`.extractor.load_extractor`
    of ``spec``. Raises EdgeAsdError for a clip shorter than one patch (0.985 s)."""
    cfg = get_preset(PRESET)
    cache = cache or FeatureCache(None)
    key = hashlib.sha256(f"{spec}:{LOGMEL_VERSION}:{cfg.to_dict()}:{PATCH_HOP_FRAMES}".encode()).hexdigest()[:16]
    out = []
    for path in paths:
        def compute(path=path):
            x = patches(cache.logmel(path, cache.audio(path, cfg.sample_rate), cfg))
            if len(x) == 0:
                raise EdgeAsdError(f"{path}: shorter than one 0.96-s patch")
            return extractor(x)
        if cache.root is None:
            out.append(compute())
        else:
            out.append(np.asarray(cache.cached(f"embeddings/{cache.digest(Path(path))}-{key}.npy", compute)))
    return out
