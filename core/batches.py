"""Mini-batches of Koizumi et al. 2019, sec. 4.2.1.

The normal training audio is cut into 3-s segments; a mini-batch concatenates 10 randomly chosen
segments, mixes one something-else sound in at a random anomaly-to-normal ratio (ANR) in [-30, 10] dB
(eq. 8: x^(a) = x^(u) + alpha a), computes the context vectors of the mixture, and splits them: the
vectors whose samples overlap the something-else sound are x^(a), the others x^(u). With gain
augmentation (``BatchConfig.gain_db`` > 0) each normal segment is first scaled by its own random gain,
so the model meets the level changes a microphone brings (docs/level.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_asd.core.features import LogMel, context_vectors, frame_means, logmel
from edge_asd.core.presets import FeatureConfig


@dataclass(frozen=True)
class BatchConfig:
    segment_s: float = 3.0
    """Length of one normal segment, s."""
    segments_per_batch: int = 10
    anr_db: tuple[float, float] = (-30.0, 10.0)
    """Range of the ANR, dB: 10 log10(power of alpha a / power of the normal sound under it)."""
    gain_db: float = 0.0
    """Gain augmentation G, dB: each normal segment is scaled by 10^(g/20), g uniform in [-G, +G], and
    clipped to [-1, 1], before the something-else sound is mixed in; 0 = off (no random draw)."""


@dataclass
class MiniBatch:
    x_u: np.ndarray
    """Normal context vectors, (M_u, D) float32 (raw log-mel unless ``draw`` was given mean/std)."""
    x_a: np.ndarray
    """Context vectors that contain the something-else sound, (M_a, D) float32."""
    anr_db: float
    span: tuple[int, int]
    """Samples [start, stop) of the mixture where the something-else sound lies."""
    psi: np.ndarray | None = None
    """Log-mel frames of the whole mixture, (T, M) float32; vector i stacks frames i .. i + L - 1."""
    is_a: np.ndarray | None = None
    """(T - L + 1,) bool: which of the mixture's vectors are x^(a) (the rest, in order, are x^(u))."""


def segment(clips: list[np.ndarray], segment_samples: int) -> list[np.ndarray]:
    """Cut each clip into consecutive segments of ``segment_samples``; shorter remainders are dropped."""
    out = []
    for clip in clips:
        for start in range(0, len(clip) - segment_samples + 1, segment_samples):
            out.append(clip[start:start + segment_samples])
    return out


def trim_silence(sound: np.ndarray, frame: int = 256, floor_db: float = -40.0) -> np.ndarray:
    """Drop leading and trailing frames more than ``floor_db`` below the loudest frame (ESC clips are
    zero-padded to 5 s), so that x^(a) is where the sound is, not where its file is."""
    n = len(sound) // frame
    if n == 0:
        return sound
    energy = (sound[: n * frame].reshape(n, frame).astype(np.float64) ** 2).mean(1)
    active = np.flatnonzero(energy > energy.max() * 10 ** (floor_db / 10))
    return sound[active[0] * frame:(active[-1] + 1) * frame]


def coloured_noise(n_samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectral density ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = rng.standard_normal(n_samples // 2 + 1) + 1j * rng.standard_normal(n_samples // 2 + 1)
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spec / f ** (exponent / 2), n_samples)
    return (noise / np.sqrt(np.mean(noise ** 2))).astype(np.float32)


def mix_in(normal: np.ndarray, sound: np.ndarray, start: int, anr_db: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Eq. (8): ``normal`` with ``alpha * sound`` added from sample ``start``, alpha set so that the ANR
    (power of alpha a over the power of the normal samples under it) is ``anr_db`` dB.

    Returns (mixture float32 (N,), span [start, stop) in samples)."""
    span = (start, start + len(sound))
    p_normal = float(np.mean(normal[span[0]:span[1]].astype(np.float64) ** 2)) + 1e-12
    p_sound = float(np.mean(sound.astype(np.float64) ** 2)) + 1e-12
    alpha = np.sqrt(p_normal / p_sound * 10 ** (anr_db / 10))
    mixture = np.array(normal, dtype=np.float32)
    mixture[span[0]:span[1]] += (alpha * sound).astype(np.float32)
    return mixture, span


def overlapping_vectors(n_vectors: int, span: tuple[int, int], cfg: FeatureConfig) -> np.ndarray:
    """Boolean mask of the context vectors whose samples overlap ``span`` = [start, stop)."""
    first = np.arange(n_vectors) * cfg.vector_hop_samples
    last = first + cfg.samples_per_vector  # exclusive
    return (first < span[1]) & (last > span[0])


class BatchBuilder:
    """Draws mini-batches from normal clips and something-else sounds (sec. 4.2.1).

    Args:
        normal_clips: mono float32 clips at ``cfg.sample_rate``.
        something_else: mono float32 sounds; None -> coloured noise stands in (eq. 8 allows pink noise).
    Raises:
        ValueError: no normal clip is as long as one segment.
    """

    def __init__(self, normal_clips: list[np.ndarray], something_else: list[np.ndarray] | None,
                 cfg: FeatureConfig, batch_cfg: BatchConfig = BatchConfig()):
        self.cfg, self.batch_cfg = cfg, batch_cfg
        self.segments = segment(normal_clips, round(batch_cfg.segment_s * cfg.sample_rate))
        if not self.segments:
            raise ValueError(f"no normal clip is at least {batch_cfg.segment_s} s long")
        self.something_else = [s for s in (trim_silence(x) for x in something_else or []) if len(s) >= cfg.n_fft] or None
        self.logmel = LogMel(cfg)  # the mel matrix once, not once per batch

    def draw_something_else(self, rng: np.random.Generator, max_samples: int) -> np.ndarray:
        if self.something_else is None:
            length = int(rng.uniform(0.5, 5.0) * self.cfg.sample_rate)
            sound = coloured_noise(min(length, max_samples), rng.uniform(0.0, 2.0), rng)
        else:
            sound = self.something_else[rng.integers(len(self.something_else))]
        if len(sound) > max_samples:
            start = rng.integers(len(sound) - max_samples + 1)
            sound = sound[start:start + max_samples]
        return sound

    def mix(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[int, int], float]:
        """(normal, mixture, span, anr_db): the 10 concatenated segments and the same with a sound added."""
        k = self.batch_cfg.segments_per_batch
        idx = rng.choice(len(self.segments), size=k, replace=len(self.segments) < k)
        segments = [self.segments[i] for i in idx]
        if self.batch_cfg.gain_db > 0:
            gains = 10.0 ** (rng.uniform(-self.batch_cfg.gain_db, self.batch_cfg.gain_db, size=k) / 20.0)
            segments = [np.clip(s * g, -1.0, 1.0).astype(np.float32) for s, g in zip(segments, gains)]
        normal = np.concatenate(segments)
        sound = self.draw_something_else(rng, len(normal))
        start = int(rng.integers(len(normal) - len(sound) + 1))
        anr_db = float(rng.uniform(*self.batch_cfg.anr_db))
        mixture, span = mix_in(normal, sound, start, anr_db)
        return normal, mixture, span, anr_db

    def draw(self, rng: np.random.Generator, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> MiniBatch:
        """One mini-batch; with ``mean``/``std`` (n_mels,), psi and the vectors come standardized per mel
        band, equal to ``core.features.standardize`` of the raw vectors but with L times less work. With
        ``level_norm == "context"`` the vectors are centred as :func:`core.features.context_vectors` says;
        psi (the frames KDE's input) is not: the BU weights see the frames' level, the model does not."""
        _, mixture, span, anr_db = self.mix(rng)
        psi = logmel(mixture, self.cfg, self.logmel)  # == edge.features.extract, without rebuilding the mel matrix
        means = frame_means(psi) if self.cfg.level_norm == "context" else None
        if mean is not None:
            psi = ((psi - mean) / std).astype(np.float32)
        vectors = context_vectors(psi, self.cfg, means, None if mean is None else std)
        is_a = overlapping_vectors(len(vectors), span, self.cfg)
        return MiniBatch(vectors[~is_a], vectors[is_a], anr_db, span, psi, is_a)
