"""Open audio sources from their ``--input`` spelling: which module reads which input, and microphone
inputs on one device sharing its stream.

What a source yields (float32 blocks and :class:`~edge_asd.firmware_io.blocks.Gap` markers) and the interface
it offers (``close()``; live ones ``stop`` and ``stats()``) are in :mod:`edge_asd.firmware_io.blocks`.

Spellings: ``mic`` (default input device), ``mic:3`` (device index), ``mic:USB`` (part of a device name),
``serial:/dev/ttyACM0`` (raw PCM from a microcontroller; any pyserial URL), ``-`` (raw PCM or WAV on
stdin), or an audio file.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass

from edge_asd.core.errors import EdgeAsdError


DEFAULT_BAUD = 921600
"""Serial speed, bit/s, unless an input names another."""
DEFAULT_STALL_S = 5.0
"""Seconds without data before a live input is declared dead."""
DEFAULT_BUFFER_S = 10.0
"""Seconds of microphone audio the ring buffer keeps while inference catches up."""
PCM_FRAMINGS = ("raw", "framed")
"""Raw PCM byte formats: bare s16le samples, or frames with a sync word, sequence number and CRC-32."""


@dataclass(frozen=True)
class SourceRequest:
    """One input to open. ``channel``: which channel to score (0-based; None = mean of all, files and PCM);
    ``pcm_channels``: interleaved channels of raw PCM; ``pcm_rate``: declared rate of raw PCM, Hz;
    ``baud``: serial speed; ``stall_s``: seconds without data before a live input is declared dead;
    ``buffer_s``: seconds of microphone audio kept while inference catches up; ``pcm_framing``: "raw" or
    "framed" (stdin and serial only; see firmware_io.pcm_framing)."""

    spec: str
    sample_rate: int
    block_samples: int
    channel: int | None = None
    pcm_channels: int = 1
    pcm_rate: int | None = None
    baud: int = DEFAULT_BAUD
    stall_s: float = DEFAULT_STALL_S
    buffer_s: float = DEFAULT_BUFFER_S
    pcm_framing: str = "raw"


class _FdReader:
    """stdin read with ``os.read``: a thread blocked in it holds no lock that interpreter exit needs
    (a stopped monitor may leave its reader thread waiting on an open pipe)."""

    def __init__(self, fd: int):
        self.fd = fd

    def read1(self, n: int) -> bytes:
        return os.read(self.fd, n)

    def read(self, n: int = -1) -> bytes:
        out = b""
        while n < 0 or len(out) < n:
            chunk = os.read(self.fd, 1 << 16 if n < 0 else n - len(out))
            if not chunk:
                break
            out += chunk
        return out


def _stdin():
    try:
        return _FdReader(sys.stdin.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):  # replaced stdin (tests, embedding)
        return sys.stdin.buffer


def _mic_device_spec(spec: str) -> str:
    return spec.partition(":")[2]


def is_mic(spec: str) -> bool:
    return spec == "mic" or spec.startswith("mic:")


def open_sources(requests: list[SourceRequest], pyaudio_module=None) -> list:
    """Open every input; inputs on the same microphone device share one PortAudio stream.

    Raises:
        EdgeAsdError: an input cannot be opened (the ones already opened are closed again).
    """
    opened, devices = [], {}
    try:
        mic_channels: dict[str, int] = {}
        for r in requests:
            if is_mic(r.spec):
                mic_channels[_mic_device_spec(r.spec)] = max(mic_channels.get(_mic_device_spec(r.spec), 1),
                                                             (r.channel or 0) + 1)
        for r in requests:
            if is_mic(r.spec):
                from edge_asd.firmware_io.mic import MicDevice, find_device

                key = _mic_device_spec(r.spec)
                if key not in devices:
                    index = find_device(key or None, pyaudio_module)
                    devices[key] = MicDevice(r.sample_rate, mic_channels[key], index, r.buffer_s,
                                             pyaudio_module=pyaudio_module, name=r.spec)
                elif devices[key].sample_rate != r.sample_rate:
                    raise EdgeAsdError(f"{r.spec}: two models with different sample rates cannot share one device")
                opened.append(devices[key].channel(r.channel or 0, r.block_samples, r.stall_s))
            elif r.spec.startswith("serial:"):
                from edge_asd.firmware_io.pcm import open_serial

                opened.append(open_serial(r.spec[len("serial:"):], r.sample_rate, r.block_samples, r.baud,
                                          r.pcm_channels, r.channel, r.stall_s, r.pcm_framing))
            elif r.spec == "-":
                from edge_asd.firmware_io.pcm import PcmSource

                opened.append(PcmSource(_stdin(), r.sample_rate, r.block_samples, "stdin",
                                        declared_rate=r.pcm_rate, channels=r.pcm_channels, channel=r.channel,
                                        framing=r.pcm_framing))
            else:
                from edge_asd.firmware_io.audio_file import FileSource

                opened.append(FileSource(r.spec, r.sample_rate, r.block_samples, channel=r.channel))
    except BaseException:
        for s in opened:
            s.close()
        for d in devices.values():
            d.close()
        raise
    return opened


def open_source(spec: str, sample_rate: int, block_samples: int, pcm_rate: int | None = None, **options):
    """One source (see :class:`SourceRequest` for ``options``); raises EdgeAsdError on bad input."""
    pyaudio_module = options.pop("pyaudio_module", None)
    return open_sources([SourceRequest(spec, sample_rate, block_samples, pcm_rate=pcm_rate, **options)],
                        pyaudio_module)[0]
