"""A disk cache of decoded audio and log-mel frames, so that a second run never decodes or resamples again.

Entries are ``.npy`` files read memory-mapped, keyed by the sha256 of the audio file's bytes and by the
sample rate (audio) or the full feature configuration and LOGMEL_VERSION (log-mel frames), so an edited
file, another preset or log-mel code that gives other bits never hits a stale entry. Location:
``$EDGE_ASD_CACHE_DIR``, else the platformdirs user cache dir (``~/.cache/edge-asd`` on Linux);
``edge-train --cache-dir`` overrides both. A cache that cannot be
written (read-only or full disk) is logged once and skipped; training goes on.

The pseudo-anomaly mixtures of the mini-batches (sec. 4.2.1) differ for every update and are computed
per batch, in the background thread of ``pipeline``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from edge_asd.core.features import LOGMEL_VERSION, LogMel, logmel
from edge_asd.core.presets import FeatureConfig
from edge_asd.core.provenance import file_sha256
from edge_asd.firmware_io.audio_file import read_audio

log = logging.getLogger("edge_asd")
ENV = "EDGE_ASD_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$EDGE_ASD_CACHE_DIR`` or ``platformdirs.user_cache_dir("edge-asd")`` + ``/features``."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("edge-asd")) / "features"


class FeatureCache:
    """Cached :func:`read_audio` and log-mel frames; ``root=None`` disables caching (plain computation)."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root is not None else None
        self.hits = self.misses = 0
        self._digests: dict[Path, str] = {}

    def digest(self, path: Path) -> str:
        if path not in self._digests:
            self._digests[path] = file_sha256(path)
        return self._digests[path]

    def audio(self, path: Path, sample_rate: int) -> np.ndarray:
        """Mono float32 samples (N,) at ``sample_rate`` Hz, memory-mapped when cached."""
        if self.root is None:
            return read_audio(path, sample_rate)
        return self._get(f"audio/{self.digest(Path(path))}-{sample_rate}.npy", lambda: read_audio(path, sample_rate))

    def logmel(self, path: Path, samples: np.ndarray, cfg: FeatureConfig, fn: LogMel | None = None) -> np.ndarray:
        """psi of the whole file, (T, n_mels) float32 (``edge.features.logmel`` of ``samples``)."""
        if self.root is None:
            return logmel(samples, cfg, fn)
        spec = {**cfg.to_dict(), "logmel_version": LOGMEL_VERSION}
        spec.pop("level_norm")  # psi does not depend on it: the entries written before it existed stay valid
        spec.pop("context_hop_frames")  # nor on this
        for name, default in (("win_samples", None), ("mel_scale", "slaney")):  # psi does; their defaults are the old psi
            if spec[name] == default:
                spec.pop(name)
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        return self._get(f"logmel/{self.digest(Path(path))}-{key}.npy", lambda: logmel(samples, cfg, fn))

    def cached(self, name: str, compute) -> np.ndarray:
        """Any array under ``name`` (a relative .npy path keyed by its inputs), ``compute()`` on a miss."""
        return self._get(name, compute)

    def _get(self, name: str, compute) -> np.ndarray:
        path = self.root / name
        if path.is_file():
            try:
                out = np.load(path, mmap_mode="r")
                self.hits += 1
                return out
            except (OSError, ValueError):
                log.warning("feature cache: %s is damaged; recomputing it", path)
        self.misses += 1
        value = np.ascontiguousarray(compute(), dtype=np.float32)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, value)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as e:
            if self.root is not None:
                log.warning("feature cache: cannot write under %s (%s); going on without it", self.root, e.strerror or e)
            self.root = None
        return value
