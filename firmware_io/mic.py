"""Microphone input through PyAudio (``pip install 'edge-asd[mic]'``; needs PortAudio).

The stream is opened at the model's sample rate, mono, 16-bit; input overflows are counted (never a
crash). PyAudio is imported lazily; tests pass a stand-in module with the same ``PyAudio().open()``
surface, since build machines have no sound card.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from edge_asd.edge.errors import EdgeAsdError

log = logging.getLogger("edge_asd")


def _pyaudio():
    try:
        import pyaudio
    except ImportError:
        raise EdgeAsdError("microphone input needs PyAudio: pip install 'edge-asd[mic]' (and apt install portaudio19-dev)") from None
    return pyaudio


class MicSource:
    """Blocks of ``block_samples`` float32 samples from an input device (index or None = default)."""

    def __init__(self, sample_rate: int, block_samples: int, device: int | None = None, pyaudio_module=None):
        pa_mod = pyaudio_module or _pyaudio()
        self.sample_rate, self.block_samples = sample_rate, block_samples
        self.overflows = 0
        self._pa = pa_mod.PyAudio()
        try:
            self._stream = self._pa.open(format=pa_mod.paInt16, channels=1, rate=sample_rate, input=True,
                                         frames_per_buffer=block_samples, input_device_index=device)
        except Exception as e:  # PortAudio reports missing devices and bad rates as OSError/ValueError
            self._pa.terminate()
            raise EdgeAsdError(f"cannot open the microphone at {sample_rate} Hz ({e}); list devices with arecord -l") from None

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            while True:
                try:
                    raw = self._stream.read(self.block_samples, exception_on_overflow=False)
                except OSError as e:
                    raise EdgeAsdError(f"microphone stopped delivering audio ({e})") from None
                if len(raw) < 2 * self.block_samples:
                    self.overflows += 1
                    log.warning("microphone: short read (%d bytes)", len(raw))
                if not raw:
                    return
                yield np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
        finally:
            self.close()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.stop_stream()
            self._stream.close()
            self._stream = None
            self._pa.terminate()
