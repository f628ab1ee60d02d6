"""Feature presets: the log-mel context-frame definitions a model is trained and served with.

A preset is frozen into every checkpoint and model file by name *and* by value, so the device computes
exactly the features the model was trained on (tflite-micro's ``micro_model_settings.h`` rule: if you
change preprocessing, these values change with it).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from edge_asd.core.errors import EdgeAsdError

LEVEL_NORMS = ("none", "context")
"""Allowed :attr:`FeatureConfig.level_norm` values."""
MEL_SCALES = ("slaney", "htk-tf")
"""Allowed :attr:`FeatureConfig.mel_scale` values."""
INT_RANGES = {"sample_rate": (4000, 768000), "n_fft": (16, 65536), "hop_samples": (1, 65536), "n_mels": (1, 1024),
              "n_context_frames": (1, 1024), "context_hop_frames": (1, 1024)}
"""Integer fields and the values (inclusive) a device computes features with; a model file's metadata outside
them is damaged or foreign (``n_fft = inf`` was an OverflowError traceback, ``hop_samples = 128.0`` loaded)."""


def _finite(value) -> bool:
    """A real number (not a bool) that a float holds: not NaN, not infinite, not 10**400."""
    try:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    except OverflowError:
        return False


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel context frames.

    Frame ``f`` covers samples ``[f * hop_samples, f * hop_samples + n_fft)`` (no centring, so a
    stream and a whole file give the same frames). Its log-mel vector psi_f has ``n_mels`` values; a
    context vector stacks ``n_context_frames`` consecutive psi, oldest first, so its dimension is
    ``D = n_context_frames * n_mels``.
    """

    sample_rate: int
    """Hz."""
    n_fft: int
    """STFT frame length, samples (Hann window, periodic)."""
    hop_samples: int
    """STFT shift, samples."""
    n_mels: int
    """M, mel bands (Slaney mel scale and area normalisation, as librosa's default)."""
    n_context_frames: int
    """Frames stacked into one vector: 2C+1 in Koizumi et al. 2019, 5 in the DCASE 2020 baseline."""
    magnitude_power: float
    """1.0 for |STFT|, 2.0 for |STFT|^2, before the mel matrix."""
    log: str
    """"ln": psi = ln(mel + log_floor); "db": psi = 20/power * log10(mel + log_floor) dB (DCASE 2020 baseline)."""
    log_floor: float
    """Added before the logarithm, same unit as the mel spectrum."""
    fmin_hz: float = 0.0
    fmax_hz: float | None = None
    """None means sample_rate / 2."""
    level_norm: str = "none"
    """"none": the context vector as stacked; "context": each context vector minus the mean of its L x M
    log-mel values, before the per-band standardization, so a constant input gain cancels exactly (a gain
    of g dB adds g ln(10)/20 to every ln value, g to every dB value). Files without the key: "none"."""
    context_hop_frames: int = 1
    """K, log-mel frames between the starts of consecutive context vectors (windows): vector i stacks frames
    ``[i K, i K + L)``. 1 (the autoencoders): one anomaly score per frame hop; a classifier that scores 2-s
    windows every second has L = 2 s and K = 1 s of frames. Files without the key: 1."""
    win_samples: int | None = None
    """Hann window length, samples, at the start of each ``n_fft`` frame (the rest zero: the frame is
    zero-padded to the FFT length, as ``tf.signal.stft(frame_length=win, fft_length=n_fft)``); None = n_fft.
    Frames still step over ``n_fft`` samples, so the last ``n_fft - win_samples`` of a recording start no frame."""
    mel_scale: str = "slaney"
    """"slaney": librosa's default (Slaney scale, area-normalised triangles); "htk-tf": HTK scale
    1127 ln(1 + f/700), unnormalised triangles in mel, DC bin zero, as ``tf.signal.linear_to_mel_weight_matrix``
    (YAMNet, VGGish). Files without the key: "slaney"."""

    def __post_init__(self) -> None:
        if self.log not in ("ln", "db"):
            raise EdgeAsdError(f"feature config: log must be 'ln' or 'db', not {self.log!r}")
        if self.level_norm not in LEVEL_NORMS:
            raise EdgeAsdError(f"feature config: level_norm must be one of {', '.join(LEVEL_NORMS)}, not {self.level_norm!r}")
        for name, (lo, hi) in INT_RANGES.items():
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not lo <= value <= hi:
                raise EdgeAsdError(f"feature config: {name} = {value!r} should be an integer from {lo} to {hi}")
        if self.context_hop_frames > self.n_context_frames:
            raise EdgeAsdError("feature config: context_hop_frames must not exceed n_context_frames (frames would be skipped)")
        if self.mel_scale not in MEL_SCALES:
            raise EdgeAsdError(f"feature config: mel_scale must be one of {', '.join(MEL_SCALES)}, not {self.mel_scale!r}")
        win = self.win_samples
        if win is not None and (not isinstance(win, numbers.Integral) or isinstance(win, bool) or not 2 <= win <= self.n_fft):
            raise EdgeAsdError(f"feature config: win_samples = {win!r} should be an integer from 2 to n_fft = {self.n_fft}")
        if self.hop_samples > self.n_fft:
            raise EdgeAsdError("feature config: hop_samples must not exceed n_fft")
        for name in ("magnitude_power", "log_floor"):
            value = getattr(self, name)
            if not _finite(value) or value <= 0:
                raise EdgeAsdError(f"feature config: {name} = {value!r} should be a finite number > 0")
        nyquist = self.sample_rate / 2
        fmax = nyquist if self.fmax_hz is None else self.fmax_hz
        if not (_finite(self.fmin_hz) and _finite(fmax) and 0 <= self.fmin_hz < fmax <= nyquist):
            raise EdgeAsdError(f"feature config: fmin_hz = {self.fmin_hz!r}, fmax_hz = {self.fmax_hz!r}: need "
                               f"0 <= fmin_hz < fmax_hz <= sample_rate / 2 = {nyquist:g} Hz")

    @property
    def dim(self) -> int:
        """D, the length of one context vector."""
        return self.n_context_frames * self.n_mels

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def hop_s(self) -> float:
        return self.hop_samples / self.sample_rate

    @property
    def score_unit(self) -> str:
        """What one anomaly score covers, for messages: ``"frame"`` (a score every STFT hop, the autoencoders) or
        ``"window"`` (a score every ``context_hop_frames`` hops: serial OE, transfer-metric)."""
        return "frame" if self.context_hop_frames == 1 else "window"

    @property
    def vector_hop_samples(self) -> int:
        """The score hop, samples: between the starts (and the ends) of consecutive context vectors."""
        return self.context_hop_frames * self.hop_samples

    @property
    def vector_hop_s(self) -> float:
        """The score hop, s."""
        return self.vector_hop_samples / self.sample_rate

    @property
    def samples_per_vector(self) -> int:
        """Samples spanned by one context vector."""
        return (self.n_context_frames - 1) * self.hop_samples + self.n_fft

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> FeatureConfig:
        """Build from a stored dict; unknown or missing keys raise EdgeAsdError (keys with a default, such as
        ``level_norm`` of files written before it existed, may be missing)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise EdgeAsdError(f"feature config: unknown keys {sorted(unknown)}")
        try:
            return cls(**values)
        except TypeError as e:
            raise EdgeAsdError(f"feature config: {e}") from None


PRESETS: dict[str, FeatureConfig] = {
    # Koizumi et al. 2019, sec. 4.2.1-4.2.2 (FCN64): STFT 512/256 at 16 kHz, M = 64, C = 10,
    # psi = ln(Mel(|STFT|)), D = (2C + 1) M = 1344.
    "koizumi2019": FeatureConfig(
        sample_rate=16000, n_fft=512, hop_samples=256, n_mels=64, n_context_frames=21,
        magnitude_power=1.0, log="ln", log_floor=1e-8,
    ),
    # DCASE 2020 Task 2 baseline: n_fft 1024, hop 512, 128 mel bands of the power spectrum in dB
    # (10 log10(mel + float eps)), 5 consecutive frames -> D = 640.
    "dcase2020": FeatureConfig(
        sample_rate=16000, n_fft=1024, hop_samples=512, n_mels=128, n_context_frames=5,
        magnitude_power=2.0, log="db", log_floor=2.220446049250313e-16,
    ),
    # Serial outlier exposure (Kuroyanagi et al. 2022; docs/serial-oe.md): 224 mel bands, 50-7800 Hz, at 16 kHz;
    # one window = L = 59 frames = 31 744 samples (1.98 s, the paper's 2-s crops), one score per K = 31 frames
    # (15 872 samples, 0.99 s). n_fft 2048 so that every one of the 224 bands holds at least two FFT bins (1024
    # leaves 26 with one). ln of the magnitude mel spectrum: a deviation from the paper's linear magnitude, whose
    # dynamic range quantizes badly to int8.
    "serial-oe": FeatureConfig(
        sample_rate=16000, n_fft=2048, hop_samples=512, n_mels=224, n_context_frames=59, context_hop_frames=31,
        magnitude_power=1.0, log="ln", log_floor=1e-8, fmin_hz=50.0, fmax_hz=7800.0,
    ),
    # YAMNet's front-end (tensorflow/models research/audioset/yamnet, params.py and features.py): 25 ms periodic
    # Hann window in a 512-point FFT, hop 10 ms, |STFT|, 64 HTK mel bands 125-7500 Hz
    # (tf.signal.linear_to_mel_weight_matrix), ln(mel + 0.001); patches of 96 frames (0.96 s) every 48 (0.48 s).
    "yamnet": FeatureConfig(
        sample_rate=16000, n_fft=512, hop_samples=160, n_mels=64, n_context_frames=96,
        magnitude_power=1.0, log="ln", log_floor=0.001, fmin_hz=125.0, fmax_hz=7500.0,
        win_samples=400, mel_scale="htk-tf", context_hop_frames=48,
    ),
}


def get_preset(name: str) -> FeatureConfig:
    """The preset called ``name``; raises EdgeAsdError listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise EdgeAsdError(f"unknown feature preset {name!r}; known presets: {', '.join(PRESETS)}") from None
