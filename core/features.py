"""Log-mel context frames in numpy: the one feature implementation, used by the trainer and the device.

``extract(samples, cfg)`` computes the context vectors of a whole recording; ``StreamingFeatures``
computes the same vectors from a stream pushed in chunks of any size (remainder carried over), so
training and serving cannot drift apart. Formulas: Koizumi et al. 2019 sec. 4.2.2,
``psi_t = ln(Mel_M(|X_t|))``, ``x_t = (psi_{t-C}, ..., psi_{t+C})``; the DCASE 2020 baseline uses the
power spectrum in dB and 5 frames. The mel matrix reproduces librosa's default (Slaney scale and
area normalisation) without importing librosa.
"""

from __future__ import annotations

import numpy as np

from edge_asd.core.presets import FeatureConfig

_SLANEY_F_SP = 200.0 / 3  # Hz per mel below 1 kHz
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale (linear below 1 kHz, logarithmic above), as librosa with ``htk=False``."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _SLANEY_F_SP
    min_log_mel = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
    log_part = min_log_mel + np.log(np.maximum(hz, 1e-10) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
    return np.where(hz >= _SLANEY_MIN_LOG_HZ, log_part, mel)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    min_log_mel = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
    log_part = _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOGSTEP * (mel - min_log_mel))
    return np.where(mel >= min_log_mel, log_part, _SLANEY_F_SP * mel)


def htk_mel(hz: np.ndarray) -> np.ndarray:
    """HTK mel scale, ``1127 ln(1 + f / 700)``, as ``tf.signal``'s ``_hertz_to_mel``."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def tf_mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """Triangular mel filters as ``tf.signal.linear_to_mel_weight_matrix(n_mels, n_freqs, sample_rate, fmin,
    fmax)``, transposed: ``shape = (n_mels, n_fft // 2 + 1)``, float64. Triangles are linear in HTK mel, peak 1,
    not area-normalised; the DC bin gets no weight."""
    fmax = cfg.sample_rate / 2 if cfg.fmax_hz is None else cfg.fmax_hz
    bins_mel = htk_mel(np.linspace(0.0, cfg.sample_rate / 2, cfg.n_freqs))[1:, None]  # (n_freqs - 1, 1)
    edges = np.linspace(htk_mel(cfg.fmin_hz), htk_mel(fmax), cfg.n_mels + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    weights = np.maximum(0.0, np.minimum((bins_mel - lower) / (centre - lower), (upper - bins_mel) / (upper - centre)))
    return np.concatenate([np.zeros((1, cfg.n_mels)), weights]).T


def mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """Triangular mel filters, ``shape = (n_mels, n_fft // 2 + 1)``, float64.

    ``cfg.mel_scale == "slaney"``: same construction as ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)``
    (its defaults: Slaney scale, area-normalised); ``"htk-tf"``: :func:`tf_mel_filterbank`.
    """
    if cfg.mel_scale == "htk-tf":
        return tf_mel_filterbank(cfg)
    fmax = cfg.sample_rate / 2 if cfg.fmax_hz is None else cfg.fmax_hz
    fft_hz = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_freqs)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin_hz), hz_to_mel(fmax), cfg.n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights


LOGMEL_VERSION = 1
"""Bumped whenever :class:`LogMel` can give other bits for the same samples: feature caches key on it."""


class LogMel:
    """Frame-wise log-mel, ``shape = (n_frames, n_mels)``, float32, for frames of ``n_fft`` samples."""

    def __init__(self, cfg: FeatureConfig):
        self.cfg = cfg
        win = cfg.win_samples or cfg.n_fft
        self.window = np.zeros(cfg.n_fft)  # periodic Hann of win samples, zero-padded to n_fft (tf.signal.stft)
        self.window[:win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
        # float64 throughout, rounded to float32 once at the end: a float32 product or logarithm would be
        # faster (2x for the dcase2020 preset's 513 x 128 product), but BLAS sums a 1-frame block (the stream)
        # and a 600-frame one (a whole file) in different orders, and the two must give the same bits; and any
        # change of these bits changes every model trained from them (LOGMEL_VERSION)
        self.mel_t = np.ascontiguousarray(mel_filterbank(cfg).T)  # (n_freqs, n_mels)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``frames``: (n_frames, n_fft) samples in [-1, 1] -> psi, (n_frames, n_mels) float32."""
        spec = np.abs(np.fft.rfft(frames * self.window, axis=-1))
        if self.cfg.magnitude_power != 1.0:
            spec = spec ** self.cfg.magnitude_power
        mel = spec @ self.mel_t + self.cfg.log_floor
        if self.cfg.log == "ln":
            return np.log(mel).astype(np.float32)
        return ((20.0 / self.cfg.magnitude_power) * np.log10(mel)).astype(np.float32)


def _strided(base: np.ndarray, shape: tuple[int, int], strides: tuple[int, int]) -> np.ndarray:
    """A read-only view of C-contiguous ``base`` (np.ndarray on its buffer: a few us cheaper per call
    than ``as_strided``, which matters once per block on the device)."""
    if shape[0] == 0:
        return np.zeros(shape, dtype=base.dtype)
    view = np.ndarray(shape, base.dtype, buffer=base, strides=strides)
    view.flags.writeable = False
    return view


def frame_signal(samples: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Overlapping frames as a strided view, ``shape = (1 + (N - n_fft) // hop, n_fft)``; (0, n_fft) if short."""
    samples = np.ascontiguousarray(samples)
    n_frames = 1 + (len(samples) - n_fft) // hop if len(samples) >= n_fft else 0
    step = samples.strides[0]
    return _strided(samples, (n_frames, n_fft), (hop * step, step))


def stack_context(psi: np.ndarray, n_context_frames: int, context_hop_frames: int = 1) -> np.ndarray:
    """Context vectors from log-mel frames: (T, M) -> (1 + (T - L) // K, L * M), oldest frame first; vector i
    stacks frames ``[i K, i K + L)`` (L = ``n_context_frames``, K = ``context_hop_frames``)."""
    psi = np.ascontiguousarray(psi)
    n_vectors = 1 + (psi.shape[0] - n_context_frames) // context_hop_frames if psi.shape[0] >= n_context_frames else 0
    # consecutive rows of a C-contiguous array are contiguous: vector i is the flat run from row i K
    # (itemsize, not strides[1]: numpy may give a length-1 axis any stride)
    return _strided(psi, (n_vectors, n_context_frames * psi.shape[1]),
                    (context_hop_frames * psi.strides[0], psi.itemsize)).copy()


def logmel(samples: np.ndarray, cfg: FeatureConfig, logmel_fn: LogMel | None = None) -> np.ndarray:
    """Log-mel frames of a whole recording.

    Args:
        samples: mono audio at ``cfg.sample_rate``, shape (N,), float in [-1, 1].
    Returns:
        psi, shape (1 + (N - n_fft) // hop, n_mels), float32; empty when N < n_fft.
    """
    fn = logmel_fn or LogMel(cfg)
    frames = frame_signal(np.asarray(samples, dtype=np.float64), cfg.n_fft, cfg.hop_samples)
    return fn(frames)


def frame_means(psi: np.ndarray) -> np.ndarray:
    """Mean of each raw log-mel frame over its M bands: (T, M) -> (T,) float64."""
    return np.asarray(psi).mean(axis=1, dtype=np.float64)


def context_vectors(psi: np.ndarray, cfg: FeatureConfig, means: np.ndarray | None = None,
                    std: np.ndarray | None = None) -> np.ndarray:
    """Context vectors of log-mel frames as the model sees them, (T, M) -> (1 + (T - L) // K, L * M) float32.

    The frames are stacked, every K = ``cfg.context_hop_frames`` frames (:func:`stack_context`). With ``cfg.level_norm == "context"`` each vector then
    loses the mean m_i of its L x M raw log-mel values (a constant input gain cancels exactly); m_i comes
    from the raw frames' ``means`` (:func:`frame_means`; None: taken from ``psi``, which must then be raw).
    When ``psi`` is already standardized per band, ``(psi - mean[band]) / std[band]``, pass ``std``
    (n_mels,): m_i / std[band] is subtracted, which equals :func:`standardize` of the mean-removed raw
    vectors up to float rounding.
    """
    out = stack_context(psi, cfg.n_context_frames, cfg.context_hop_frames)
    if cfg.level_norm != "context" or len(out) == 0:
        return out
    means = frame_means(psi) if means is None else means
    windows = np.lib.stride_tricks.sliding_window_view(means, cfg.n_context_frames)[::cfg.context_hop_frames]
    m = windows.mean(axis=1)  # (n,) float64
    if std is None:
        out -= m[:, None].astype(np.float32)
    else:
        shaped = out.reshape(len(out), cfg.n_context_frames, cfg.n_mels)  # a view of out
        shaped -= (m[:, None, None] / np.asarray(std, np.float64)).astype(np.float32)
    return out


def extract(samples: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Context vectors of a whole recording, ``shape = (n_vectors, cfg.dim)``, float32.

    Vector ``i`` stacks frames ``i K .. i K + L - 1`` (K = ``cfg.context_hop_frames``); it covers samples
    ``[i * cfg.vector_hop_samples, i * cfg.vector_hop_samples + cfg.samples_per_vector)``. With ``cfg.level_norm == "context"`` each vector is
    then centred on the mean of its own values (:func:`context_vectors`).
    """
    return context_vectors(logmel(samples, cfg), cfg)


def standardized_vectors(psi: np.ndarray, cfg: FeatureConfig, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The model's input from raw log-mel frames (T, M): each frame standardized per band once, then
    :func:`context_vectors`; equal to ``standardize(context_vectors(psi, cfg), mean, std)`` up to float
    rounding, at 1/L of its cost. (1 + (T - L) // K, L * M) float32."""
    means = frame_means(psi) if cfg.level_norm == "context" else None
    return context_vectors(((psi - mean) / std).astype(np.float32), cfg, means, None if means is None else std)


def n_vectors(n_samples: int, cfg: FeatureConfig) -> int:
    """How many context vectors :func:`extract` gives for ``n_samples`` samples (0 when fewer than one vector's)."""
    return 0 if n_samples < cfg.samples_per_vector else 1 + (n_samples - cfg.samples_per_vector) // cfg.vector_hop_samples


def standardize(vectors: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Context vectors (n, L * M) standardized per mel band with ``mean``/``std`` of shape (M,): float32."""
    n_mels = len(mean)
    shaped = vectors.reshape(len(vectors), -1, n_mels)
    return ((shaped - mean) / std).reshape(len(vectors), -1).astype(np.float32)


def vector_end_s(index: np.ndarray | int, cfg: FeatureConfig) -> np.ndarray | float:
    """Time (s from stream start) at which context vector ``index`` becomes complete."""
    return (np.asarray(index) * cfg.vector_hop_samples + cfg.samples_per_vector) / cfg.sample_rate


class StreamingFeatures:
    """Context vectors from a stream pushed in chunks of any size.

    ``push(chunk)`` returns the vectors that became complete, ``shape = (k, cfg.dim)``; the vectors
    of all pushes, concatenated, equal :func:`extract` of the concatenated chunks. ``reset()`` starts
    a new stream. With per-band ``mean`` and ``std`` (shape (n_mels,), float32) they come out
    standardized, equal to :func:`standardize` of those vectors, at 1/L of its cost (each log-mel
    frame is standardized once, not in each of the L vectors that hold it). ``cfg.level_norm ==
    "context"`` holds on both paths (:func:`context_vectors`).
    """

    def __init__(self, cfg: FeatureConfig, mean: np.ndarray | None = None, std: np.ndarray | None = None):
        self.cfg = cfg
        self._logmel = LogMel(cfg)
        self._norm = None if mean is None else (np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32))
        self.reset()

    def reset(self) -> None:
        self._samples = np.zeros(0, dtype=np.float64)  # not yet framed: fewer than n_fft or the overlap
        self._psi = np.zeros((0, self.cfg.n_mels), dtype=np.float32)  # log-mel frames from the next vector's first on
        self._means = np.zeros(0, dtype=np.float64)  # their raw means over the bands (level_norm "context")
        self.n_vectors = 0  # context vectors emitted since reset

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add mono samples (float, [-1, 1]); return the newly complete context vectors."""
        cfg = self.cfg
        buf = np.concatenate([self._samples, np.asarray(chunk, dtype=np.float64).ravel()])
        frames = frame_signal(buf, cfg.n_fft, cfg.hop_samples)
        n = frames.shape[0]
        self._samples = buf[n * cfg.hop_samples:]
        if n == 0:
            return np.zeros((0, cfg.dim), dtype=np.float32)
        fresh = self._logmel(frames)
        means = None
        if cfg.level_norm == "context":
            means = np.concatenate([self._means, frame_means(fresh)])
        if self._norm is not None:
            fresh = (fresh - self._norm[0]) / self._norm[1]
        psi = np.concatenate([self._psi, fresh])
        out = context_vectors(psi, cfg, means, None if self._norm is None else self._norm[1])
        used = len(out) * cfg.context_hop_frames  # frames before the next vector's first
        self._psi = psi[used:]
        if means is not None:
            self._means = means[used:]
        self.n_vectors += len(out)
        return out
