"""A single-producer, single-consumer ring buffer of audio samples that never blocks the producer.

The producer is a sound-card callback (PortAudio's thread): it must return at once, so when the
consumer (the inference thread) falls behind by more than the capacity, the *oldest* unread samples
are overwritten and counted as dropped. The consumer learns how many samples were lost right before
the block it reads, so it can restart its features at the gap instead of gluing two moments together.
"""

from __future__ import annotations

import threading

import numpy as np


class RingBuffer:
    """Mono float32 samples, ``capacity`` samples long.

    Counters (samples, since creation): ``written``, ``read``, ``dropped``.
    """

    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self._buf = np.zeros(capacity, dtype=np.float32)
        self.capacity = capacity
        self.written = self.read_total = self.dropped = 0
        self._lost = 0  # dropped since the consumer's last read
        self._closed = False
        self._cond = threading.Condition()

    def write(self, samples: np.ndarray) -> int:
        """Append samples (never blocks); return how many unread samples were overwritten."""
        samples = np.asarray(samples, dtype=np.float32).ravel()
        n = len(samples)
        if n == 0:
            return 0
        with self._cond:
            if n > self.capacity:  # more than fits: only the newest capacity samples survive
                self.written += n - self.capacity
                samples = samples[-self.capacity:]
                n = self.capacity
            start = self.written % self.capacity
            first = min(n, self.capacity - start)
            self._buf[start:start + first] = samples[:first]
            self._buf[:n - first] = samples[first:]
            self.written += n
            over = self.written - self.read_total - self.capacity
            if over > 0:
                self.read_total += over
                self.dropped += over
                self._lost += over
            self._cond.notify_all()
            return max(over, 0)

    def available(self) -> int:
        with self._cond:
            return self.written - self.read_total

    def close(self) -> None:
        """The producer is gone: wake the consumer; reads return what is left, then nothing."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def read(self, min_samples: int, max_samples: int, timeout_s: float) -> tuple[np.ndarray, int]:
        """Wait up to ``timeout_s`` for ``min_samples``, then take up to ``max_samples``.

        Returns:
            (samples, lost): float32 samples, shape (k,) with k <= max_samples (k < min_samples only
            on timeout or after close), and the number of samples dropped just before them.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self.written - self.read_total >= min_samples, timeout_s)
            k = min(max_samples, self.written - self.read_total)
            start = self.read_total % self.capacity
            first = min(k, self.capacity - start)
            out = np.concatenate([self._buf[start:start + first], self._buf[:k - first]])
            self.read_total += k
            lost, self._lost = self._lost, 0
            return out, lost

    @property
    def closed(self) -> bool:
        return self._closed
