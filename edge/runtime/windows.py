"""Operation windows: which stretch of the stream one eq. (11) decision covers.

Koizumi et al. 2019 decide per recording X: anomalous when ``max_t A(x_t) >= phi`` (eq. 11). On a
stream the "recording" is an operation window, and each new window restarts the running max:

- ``whole``: the whole stream is one window (index 0);
- ``fixed`` (``--window SECONDS``): window ``k`` holds the frames stamped in ``[k*W, (k+1)*W)`` s;
- ``gate`` (``--window gate``): one window per machine-on segment (one machine cycle = one operation),
  found by an energy gate on the audio; frames while the machine is off belong to no window.

**Time stamp of a frame score** (the one convention of edge-monitor, edge-calibrate and edge-report):
the score of context vector ``i`` is stamped at the *end* of its vector, the absolute sample
``start + i * vector_hop_samples + samples_per_vector`` (exclusive end; ``start`` is where the features last
(re)started), i.e. the moment the score becomes available. For ``koizumi2019`` the first score of a
stream is stamped 5632 samples = 0.352 s after its start, so window 0 of ``--window W`` holds the
scores stamped in ``[0.352, W)`` s and every later window the scores whose vectors *end* inside it
(their audio starts up to 0.352 s earlier). :func:`frame_stamps` computes the stamps and
:func:`recording_windows` assigns a recording's frames to windows; both the monitor and the
calibration call them.

All three window kinds answer ``window_at(end_sample)``: the window of the score stamped at that
absolute sample index (samples since stream start, lost samples included), or None (gated off);
``windows_at(end_samples)`` answers for an array at once (int64, OFF = -1 for None). Queries must
come in increasing order.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from edge_asd.core.errors import EdgeAsdError

OFF = -1
"""Window index of a frame outside every window (the energy gate found the machine off)."""

# The energy gate's defaults, the one place they live (edge-monitor's options and TOML keys, edge-calibrate's
# options, and phi records from before the hold times were stored all take them from here).
DEFAULT_GATE_DB = -45.0
"""Machine on at or above this hop level, dBFS (off 3 dB lower)."""
DEFAULT_GATE_MIN_ON_S = 0.5
"""Hold time before the gate opens: consecutive seconds at or above the on level."""
DEFAULT_GATE_MIN_OFF_S = 1.0
"""Hold time before the gate closes: consecutive seconds below the off level."""


class _Windows:
    def settings(self) -> dict:
        """What defines these windows, as a phi record stores it: ``window`` (the --window value); the
        energy gate adds ``gate_db`` (dBFS), ``gate_min_on_s`` and ``gate_min_off_s`` (s). The keys are
        the keyword arguments of :func:`make_windows` after its first (and of ``recordings_window_maxima``)."""
        return {"window": self.spec}

    def windows_at(self, end_samples: np.ndarray) -> np.ndarray:
        return np.array([OFF if (w := self.window_at(int(e))) is None else w for e in end_samples], dtype=np.int64)

    def cut_short(self, window: int, stream_samples: int) -> bool:
        """True when a stream of ``stream_samples`` samples ended before ``window``'s span did (only a
        fixed-length window can be: a whole stream or a machine-on segment ends where the stream ends)."""
        return False


class WholeStream(_Windows):
    name = spec = "whole"

    def windows_at(self, end_samples: np.ndarray) -> np.ndarray:
        return np.zeros(len(end_samples), dtype=np.int64)

    def push(self, block: np.ndarray) -> None:
        pass

    def skip(self, n_samples: int) -> None:
        pass

    def window_at(self, end_sample: int) -> int | None:
        return 0


class FixedWindows(_Windows):
    """Window ``int(t // window_s)`` for a score stamped at ``t = end_sample / sample_rate`` seconds.

    Args:
        window_s: window length, s. sample_rate: Hz.
    Raises:
        ValueError: window_s is not positive.
    """

    name = "fixed"

    def __init__(self, window_s: float, sample_rate: int):
        if not window_s > 0:
            raise ValueError("window_s must be positive")
        self.window_s, self.sample_rate = window_s, sample_rate
        self.spec = f"{window_s:g}"  # the --window value, as edge-calibrate stores it

    def push(self, block: np.ndarray) -> None:
        pass

    def skip(self, n_samples: int) -> None:
        pass

    def window_at(self, end_sample: int) -> int | None:
        return int((end_sample / self.sample_rate) // self.window_s)

    def windows_at(self, end_samples: np.ndarray) -> np.ndarray:
        return np.floor_divide(np.asarray(end_samples) / self.sample_rate, self.window_s).astype(np.int64)

    def cut_short(self, window: int, stream_samples: int) -> bool:
        """Window ``k`` spans ``[k*W, (k+1)*W)`` s; it is cut short when the stream ends before ``(k+1)*W``."""
        return window >= self.window_at(stream_samples)


class EnergyGate(_Windows):
    """Machine-on segments from the level of each hop of audio, with hysteresis.

    The level of a hop is ``10 log10(mean(x^2))`` in dBFS (a full-scale sine is -3 dBFS). The gate
    opens when ``min_on_s`` seconds of consecutive hops reach ``on_db`` and closes after ``min_off_s``
    seconds of consecutive hops below ``off_db`` (default ``on_db - 3``); each opening starts a new
    window (0, 1, 2, ...). The decision is causal: a vector belongs to the state the gate was in when
    its last hop arrived, so a segment's first ``min_on_s`` and the trailing ``min_off_s`` are judged
    as the gate then stood. Lost samples (a Gap) keep the gate's state and reset its counters.

    Args:
        sample_rate: Hz. hop_samples: gate resolution, samples (the model's hop). on_db, off_db: dBFS.
        min_on_s, min_off_s: hold times, s (rounded up to whole hops, at least one).
    Raises:
        ValueError: off_db above on_db, or a negative or non-finite hold time.
    """

    name = spec = "gate"

    def __init__(self, sample_rate: int, hop_samples: int, on_db: float = DEFAULT_GATE_DB, off_db: float | None = None,
                 min_on_s: float = DEFAULT_GATE_MIN_ON_S, min_off_s: float = DEFAULT_GATE_MIN_OFF_S):
        self.sample_rate, self.hop = sample_rate, hop_samples
        self.on_db = on_db
        self.off_db = on_db - 3.0 if off_db is None else off_db
        if self.off_db > self.on_db:
            raise ValueError("off_db must not exceed on_db")
        if not (0 <= min_on_s < math.inf and 0 <= min_off_s < math.inf):
            raise ValueError("the hold times min_on_s and min_off_s must be finite and not negative")
        self.min_on_s, self.min_off_s = float(min_on_s), float(min_off_s)
        self.min_on_hops = max(1, math.ceil(min_on_s * sample_rate / hop_samples))
        self.min_off_hops = max(1, math.ceil(min_off_s * sample_rate / hop_samples))
        self.is_on = False
        self.window = -1  # index of the current (or last) segment
        self._run = 0  # consecutive hops arguing for a change of state
        self._pos = 0  # absolute samples seen (lost ones included)
        self._partial = np.zeros(0, dtype=np.float32)
        self._states: deque[tuple[int, int | None]] = deque()  # (end sample of a hop, window or None)
        self._current: int | None = None  # state answered for queries before the first queued hop

    def push(self, block: np.ndarray) -> None:
        buf = np.concatenate([self._partial, np.asarray(block, dtype=np.float32)])
        n = len(buf) // self.hop
        self._partial = buf[n * self.hop:]
        if n == 0:
            return
        hops = buf[: n * self.hop].reshape(n, self.hop).astype(np.float64)
        levels = 10.0 * np.log10(np.mean(hops * hops, axis=1) + 1e-20)
        start = self._pos
        for k, level in enumerate(levels):
            if self.is_on:
                self._run = self._run + 1 if level < self.off_db else 0
                if self._run >= self.min_off_hops:
                    self.is_on, self._run = False, 0
            else:
                self._run = self._run + 1 if level >= self.on_db else 0
                if self._run >= self.min_on_hops:
                    self.is_on, self._run = True, 0
                    self.window += 1
            self._states.append((start + (k + 1) * self.hop, self.window if self.is_on else None))
        self._pos = start + n * self.hop

    def settings(self) -> dict:
        return {"window": self.spec, "gate_db": float(self.on_db), "gate_min_on_s": self.min_on_s,
                "gate_min_off_s": self.min_off_s}

    def skip(self, n_samples: int) -> None:
        self._pos += len(self._partial) + n_samples
        self._partial = np.zeros(0, dtype=np.float32)
        self._run = 0
        self._states.append((self._pos, self.window if self.is_on else None))

    def window_at(self, end_sample: int) -> int | None:
        while self._states and self._states[0][0] <= end_sample:
            self._current = self._states.popleft()[1]
        return self._current


def frame_stamps(first_frame: int, n_frames: int, cfg, start_sample: int = 0) -> np.ndarray:
    """Time stamps of frame scores ``first_frame .. first_frame + n_frames - 1``, absolute samples, (n_frames,) int64.

    The score of context vector ``i`` (counted from ``start_sample``, where the features last (re)started)
    is stamped at the end of its vector: ``start_sample + i * vector_hop_samples + samples_per_vector``
    (divide by ``cfg.sample_rate`` for seconds; the score hop is the frame hop for the autoencoders, a
    window hop for models with ``context_hop_frames`` > 1). ``cfg``: the model's FeatureConfig.
    """
    index = first_frame + np.arange(n_frames, dtype=np.int64)
    return start_sample + index * cfg.vector_hop_samples + cfg.samples_per_vector


def recording_windows(windows, samples: np.ndarray, n_frames: int, cfg) -> tuple[np.ndarray, np.ndarray]:
    """The windows of a recording's frame scores as edge-monitor assigns them, the recording streamed
    alone from sample 0 (in blocks of any size: the result does not depend on them).

    Args:
        windows: a fresh WholeStream, FixedWindows or EnergyGate (nothing pushed yet).
        samples: the recording, mono, shape (N,), at ``cfg.sample_rate`` (the energy gate hears it).
        n_frames: its number of frame scores (context vectors), ``1 + (N - samples_per_vector) // vector_hop_samples``.
    Returns:
        (stamps, window): :func:`frame_stamps` of the frames (absolute samples, int64) and their window
        index (int64; OFF = -1 outside every window), shapes (n_frames,).
    """
    windows.push(samples)
    stamps = frame_stamps(0, n_frames, cfg)
    return stamps, windows.windows_at(stamps)


def make_windows(spec: str | float | None, sample_rate: int, hop_samples: int, gate_db: float = DEFAULT_GATE_DB,
                 gate_min_on_s: float = DEFAULT_GATE_MIN_ON_S, gate_min_off_s: float = DEFAULT_GATE_MIN_OFF_S):
    """Windows from a ``--window`` value: ``whole`` (or None), ``gate``, or a number of seconds.

    Args:
        sample_rate: Hz. hop_samples: the model's hop, samples. gate_db: the gate's on level, dBFS.
        gate_min_on_s, gate_min_off_s: the gate's hold times, s (used by ``gate`` only).
    Raises:
        EdgeAsdError: anything else, a non-positive number of seconds, or (``gate``) a negative hold time.
    """
    if spec is None or str(spec).strip().lower() in ("", "whole", "stream"):
        return WholeStream()
    text = str(spec).strip().lower()
    if text == "gate":
        for name, value in (("--gate-min-on-s", gate_min_on_s), ("--gate-min-off-s", gate_min_off_s)):
            if not 0 <= value < math.inf:
                raise EdgeAsdError(f"{name} {value}: the gate's hold time must be a number of seconds >= 0")
        return EnergyGate(sample_rate, hop_samples, gate_db, min_on_s=gate_min_on_s, min_off_s=gate_min_off_s)
    try:
        seconds = float(text.removesuffix("s"))
    except ValueError:
        raise EdgeAsdError(f"--window {spec!r}: use whole, gate, or a number of seconds (e.g. 10)") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise EdgeAsdError(f"--window {spec!r}: the window must be a positive number of seconds")
    return FixedWindows(seconds, sample_rate)


def record_settings(record: dict) -> dict:
    """The window settings a phi record was calibrated with (the ``settings()`` edge-calibrate stored).

    Records from before ``window`` was stored have only ``window_s`` (None: whole); records from before
    the gate's level and hold times were stored were calibrated with the defaults.

    Raises:
        EdgeAsdError: a gate level or hold time that is not a number (a damaged record).
    """
    window = record.get("window") or ("whole" if record.get("window_s") is None else f"{record['window_s']:g}")
    if window != "gate":
        return {"window": str(window)}
    out = {"window": "gate"}
    for key, default in (("gate_db", DEFAULT_GATE_DB), ("gate_min_on_s", DEFAULT_GATE_MIN_ON_S),
                         ("gate_min_off_s", DEFAULT_GATE_MIN_OFF_S)):
        value = record.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EdgeAsdError(f"the phi record's {key} is {value!r}, not a number; set phi again with edge-calibrate")
        out[key] = float(value)
    return out


def describe(settings: dict) -> str:
    """Window settings as the options that give them: ``--window 1``, or ``--window gate --gate-db -45
    --gate-min-on-s 0.5 --gate-min-off-s 1``."""
    text = f"--window {settings['window']}"
    for key in ("gate_db", "gate_min_on_s", "gate_min_off_s"):
        if key in settings:
            text += f" --{key.replace('_', '-')} {settings[key]:g}"
    return text
