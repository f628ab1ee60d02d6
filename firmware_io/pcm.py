"""Raw PCM from a byte stream: stdin, a pipe, or a serial port.

Framing: signed 16-bit little-endian mono samples at the model's sample rate (16 kHz for the
shipped presets), no header, no delimiters: ``arecord -f S16_LE -r 16000 -c 1 -t raw | edge-monitor
--input -`` or ``sox in.flac -t raw -e signed -b 16 -c 1 -r 16000 - | edge-monitor --input -``. A WAV
stream (``RIFF`` header) is also accepted; its sample rate must be the model's.
"""

from __future__ import annotations

import logging
import wave
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from edge_asd.edge.errors import EdgeAsdError

log = logging.getLogger("edge_asd")
_INT16_SCALE = 1.0 / 32768.0


class _Prefixed:
    """A byte stream with some bytes already read put back in front."""

    def __init__(self, prefix: bytes, stream: BinaryIO):
        self._prefix, self._stream = prefix, stream

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            data, self._prefix = self._prefix + self._stream.read(), b""
            return data
        head, self._prefix = self._prefix[:n], self._prefix[n:]
        return head + self._stream.read(n - len(head)) if len(head) < n else head


class PcmSource:
    """Blocks of ``block_samples`` float32 samples from a raw s16le mono stream (or a WAV stream).

    Args:
        stream: binary stream (``sys.stdin.buffer``, a serial port object with ``read``).
        sample_rate: the model's rate, Hz. ``declared_rate``: the rate the sender uses, if the user
            states it; a mismatch raises EdgeAsdError (raw PCM carries no rate to resample from).
    """

    def __init__(self, stream: BinaryIO, sample_rate: int, block_samples: int, name: str = "stdin",
                 declared_rate: int | None = None):
        self.name, self.sample_rate, self.block_samples = name, sample_rate, block_samples
        if declared_rate is not None and declared_rate != sample_rate:
            raise EdgeAsdError(
                f"{name}: raw PCM at {declared_rate} Hz, but the model needs {sample_rate} Hz; "
                f"resample upstream (e.g. sox ... -r {sample_rate})"
            )
        head = stream.read(4)
        self._channels = 1
        if head == b"RIFF":
            try:
                w = wave.open(_Prefixed(head, stream), "rb")
            except (wave.Error, EOFError) as e:
                raise EdgeAsdError(f"{name}: malformed WAV header ({e})") from None
            if w.getframerate() != sample_rate:
                raise EdgeAsdError(f"{name}: wrong sample rate {w.getframerate()} Hz, the model needs {sample_rate} Hz")
            if w.getsampwidth() != 2:
                raise EdgeAsdError(f"{name}: WAV with {8 * w.getsampwidth()}-bit samples; send 16-bit PCM")
            self._channels = w.getnchannels()
            self._read = lambda n: w.readframes(n)
            log.info("%s: WAV stream, %d Hz, %d channel(s)", name, sample_rate, self._channels)
        else:
            self._stream = _Prefixed(head, stream)
            self._read = lambda n: self._stream.read(2 * n)
        self.dropped_bytes = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        frame_bytes = 2 * self._channels
        while True:
            raw = self._read(self.block_samples)
            if not raw:
                return
            usable = len(raw) - len(raw) % frame_bytes
            if usable != len(raw):
                self.dropped_bytes += len(raw) - usable
                log.warning("%s: stream ended inside a sample; dropped %d byte(s)", self.name, len(raw) - usable)
            block = np.frombuffer(raw[:usable], dtype="<i2").astype(np.float32) * _INT16_SCALE
            if self._channels > 1:
                block = block.reshape(-1, self._channels).mean(axis=1)
            if len(block):
                yield block
            if len(raw) < self.block_samples * frame_bytes:
                return

    def close(self) -> None:
        pass
