"""What every audio source yields, and the interface a source offers: the types ``sources``, ``mic``, ``pcm``,
``pcm_framing`` and ``audio_file`` share, kept here at the bottom of firmware_io so none of them imports another
for them.

A source is an iterable of :data:`Block` items: mono float32 arrays in [-1, 1] at the model's sample rate,
and, from a live source, a :class:`Gap` where samples were lost (the consumer restarts its features there).
Every source has ``close()``; a live one (microphone, raw PCM on stdin or a serial port) also has a ``stop``
event and ``stats()``, see :class:`LiveSource`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, Union, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Gap:
    """``n_samples`` samples (per channel) were lost between two blocks: a full ring buffer dropped them, or
    framed PCM frames went missing; 0 when the loss is unknown (a sender restarted). Features restart."""

    n_samples: int


Block = Union[np.ndarray, Gap]
"""One item of a source: float32 samples, shape (n,), in [-1, 1]; or a :class:`Gap`."""


@runtime_checkable
class Source(Protocol):
    """An audio source: iterate it for :data:`Block` items until the input ends; ``close()`` releases it
    (idempotent)."""

    def __iter__(self) -> Iterator[Block]: ...

    def close(self) -> None: ...


@runtime_checkable
class LiveSource(Source, Protocol):
    """A source that can wait for audio (microphone, stdin, serial port). Setting ``stop`` (from any thread)
    ends the iteration at the next block; ``stats()`` counts what was lost so far, in the keys the
    monitor's summary line uses (``overflows``, ``dropped_samples``, ``dropped_bytes``, and for framed PCM
    ``frames_ok``, ``frames_corrupt``, ``frames_lost``, ``bytes_skipped``, ``sender_restarts``)."""

    stop: threading.Event

    def stats(self) -> dict[str, int]: ...
