"""The data pipeline: mini-batches drawn and standardized in a background thread, ahead of the model.

Batch ``step`` is drawn with its own generator ``np.random.default_rng([seed, step])``, so the batches
do not depend on how far ahead the thread runs, and a resumed run draws exactly the batches the
interrupted one would have drawn.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from .batches import BatchBuilder, MiniBatch


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of update ``step``'s mini-batch."""
    return np.random.default_rng([seed, step])


class Prefetcher:
    """Iterates over the standardized mini-batches of updates ``start .. stop - 1``.

    Args:
        builder: draws the mixtures (sec. 4.2.1).
        mean, std: per-mel-band statistics (n_mels,) float32 applied to every vector.
        depth: batches prepared ahead in one background thread; 0 draws each batch when asked.
    Use as a context manager (or call :meth:`close`): leaving it stops the thread. An exception in the
    thread is raised again by :meth:`get`.
    """

    def __init__(self, builder: BatchBuilder, mean: np.ndarray, std: np.ndarray, seed: int, start: int, stop: int,
                 depth: int = 4):
        self.builder, self.mean, self.std, self.seed = builder, mean, std, seed
        self.next_step, self.stop = start, stop
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._closing = threading.Event()
        self._thread = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, args=(start,), name="edge-train-batches", daemon=True)
            self._thread.start()

    def draw(self, step: int) -> MiniBatch:
        return self.builder.draw(batch_rng(self.seed, step), self.mean, self.std)

    def _run(self, start: int) -> None:
        for step in range(start, self.stop):
            try:
                item = self.draw(step)
            except BaseException as e:  # handed to the consumer
                item = e
            while not self._closing.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._closing.is_set() or isinstance(item, BaseException):
                return

    def get(self) -> MiniBatch:
        """The next update's mini-batch."""
        if self.next_step >= self.stop:
            raise IndexError("no mini-batches left")
        step, self.next_step = self.next_step, self.next_step + 1
        if self._thread is None:
            return self.draw(step)
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
