"""Operation windows: which stretch of the stream one eq. (11) decision covers.

Koizumi et al. 2019 decide per recording X: anomalous when ``max_t A(x_t) >= phi`` (eq. 11). On a
stream the "recording" is an operation window, and each new window restarts the running max:

- ``whole``: the whole stream is one window (index 0);
- ``fixed`` (``--window SECONDS``): window ``k`` holds the frames completed in ``[k*W, (k+1)*W)`` s;
- ``gate`` (``--window gate``): one window per machine-on segment (one machine cycle = one operation),
  found by an energy gate on the audio; frames while the machine is off belong to no window.

All three answer ``window_at(end_sample)``: the window of the context vector that became complete at
that absolute sample index (samples since stream start, lost samples included), or None (gated off);
``windows_at(end_samples)`` answers for an array at once (int64, OFF = -1 for None). Queries must
come in increasing order.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from .errors import EdgeAsdError

OFF = -1
"""Window index of a frame outside every window (the energy gate found the machine off)."""


class _Windows:
    def windows_at(self, end_samples: np.ndarray) -> np.ndarray:
        return np.array([OFF if (w := self.window_at(int(e))) is None else w for e in end_samples], dtype=np.int64)


class WholeStream(_Windows):
    name = "whole"

    def windows_at(self, end_samples: np.ndarray) -> np.ndarray:
        return np.zeros(len(end_samples), dtype=np.int64)

    def push(self, block: np.ndarray) -> None:
        pass

    def skip(self, n_samples: int) -> None:
        pass

    def window_at(self, end_sample: int) -> int | None:
        return 0


class FixedWindows(_Windows):
    """Window ``int(t // window_s)`` for a vector complete at ``t = end_sample / sample_rate`` seconds."""

    name = "fixed"

    def __init__(self, window_s: float, sample_rate: int):
        if not window_s > 0:
            raise ValueError("window_s must be positive")
        self.window_s, self.sample_rate = window_s, sample_rate

    def push(self, block: np.ndarray) -> None:
        pass

    def skip(self, n_samples: int) -> None:
        pass

    def window_at(self, end_sample: int) -> int | None:
        return int((end_sample / self.sample_rate) // self.window_s)

    def windows_at(self, end_samples: np.ndarray) -> np.ndarray:
        return np.floor_divide(np.asarray(end_samples) / self.sample_rate, self.window_s).astype(np.int64)


class EnergyGate(_Windows):
    """Machine-on segments from the level of each hop of audio, with hysteresis.

    The level of a hop is ``10 log10(mean(x^2))`` in dBFS (a full-scale sine is -3 dBFS). The gate
    opens when ``min_on_s`` seconds of consecutive hops reach ``on_db`` and closes after ``min_off_s``
    seconds of consecutive hops below ``off_db`` (default ``on_db - 3``); each opening starts a new
    window (0, 1, 2, ...). The decision is causal: a vector belongs to the state the gate was in when
    its last hop arrived, so a segment's first ``min_on_s`` and the trailing ``min_off_s`` are judged
    as the gate then stood. Lost samples (a Gap) keep the gate's state and reset its counters.

    Args:
        sample_rate: Hz. hop_samples: gate resolution, samples (the model's hop).
    """

    name = "gate"

    def __init__(self, sample_rate: int, hop_samples: int, on_db: float = -45.0, off_db: float | None = None,
                 min_on_s: float = 0.5, min_off_s: float = 1.0):
        self.sample_rate, self.hop = sample_rate, hop_samples
        self.on_db = on_db
        self.off_db = on_db - 3.0 if off_db is None else off_db
        if self.off_db > self.on_db:
            raise ValueError("off_db must not exceed on_db")
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

    def skip(self, n_samples: int) -> None:
        self._pos += len(self._partial) + n_samples
        self._partial = np.zeros(0, dtype=np.float32)
        self._run = 0
        self._states.append((self._pos, self.window if self.is_on else None))

    def window_at(self, end_sample: int) -> int | None:
        while self._states and self._states[0][0] <= end_sample:
            self._current = self._states.popleft()[1]
        return self._current


def make_windows(spec: str | float | None, sample_rate: int, hop_samples: int, gate_db: float = -45.0,
                 gate_min_on_s: float = 0.5, gate_min_off_s: float = 1.0):
    """Windows from a ``--window`` value: ``whole`` (or None), ``gate``, or a number of seconds.

    Raises:
        EdgeAsdError: anything else, or a non-positive number of seconds.
    """
    if spec is None or str(spec).strip().lower() in ("", "whole", "stream"):
        return WholeStream()
    text = str(spec).strip().lower()
    if text == "gate":
        return EnergyGate(sample_rate, hop_samples, gate_db, min_on_s=gate_min_on_s, min_off_s=gate_min_off_s)
    try:
        seconds = float(text.removesuffix("s"))
    except ValueError:
        raise EdgeAsdError(f"--window {spec!r}: use whole, gate, or a number of seconds (e.g. 10)") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise EdgeAsdError(f"--window {spec!r}: the window must be a positive number of seconds")
    return FixedWindows(seconds, sample_rate)
