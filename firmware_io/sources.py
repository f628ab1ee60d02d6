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
class SourceSpec:
    """Where audio comes from and how to read it: an ``--input`` spelling and its options (the ``source``,
    ``channel``, ``pcm_*``, ``baud``, ``stall_s`` and ``buffer_s`` keys of edge-monitor's TOML config)."""

    spec: str = "mic"
    """``mic``, ``mic:INDEX``, ``mic:NAME``, ``serial:PORT``, ``-`` (stdin) or an audio file's path."""
    channel: int | None = None
    """Channel to score, 0-based; None = mono, or the mean of all channels (files and PCM)."""
    pcm_channels: int = 1
    """Interleaved channels of raw PCM (stdin, serial)."""
    pcm_rate: int | None = None
    """Declared sample rate of raw PCM, Hz; must be the model's."""
    pcm_framing: str = "raw"
    """Raw PCM on stdin or a serial port: "raw" (bare s16le) or "framed" (sync word, sequence, CRC-32;
    see :mod:`~edge_asd.firmware_io.pcm_framing`)."""
    baud: int = DEFAULT_BAUD
    """Serial speed, bit/s."""
    stall_s: float = DEFAULT_STALL_S
    """Seconds without data before a live input is declared dead."""
    buffer_s: float = DEFAULT_BUFFER_S
    """Seconds of microphone audio kept while inference catches up."""


@dataclass(frozen=True)
class SourceRequest:
    """One source to open: where from, and in what the model consumes (its sample rate, blocks of
    ``block_samples`` samples)."""

    source: SourceSpec
    sample_rate: int
    """Hz: the model's; every block is at this rate."""
    block_samples: int
    """Samples per block the source yields (at most; live sources yield what has arrived)."""


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
            if is_mic(r.source.spec):
                key = _mic_device_spec(r.source.spec)
                mic_channels[key] = max(mic_channels.get(key, 1), (r.source.channel or 0) + 1)
        for r in requests:
            src = r.source
            if is_mic(src.spec):
                from edge_asd.firmware_io.mic import MicDevice, find_device

                key = _mic_device_spec(src.spec)
                if key not in devices:
                    index = find_device(key or None, pyaudio_module)
                    devices[key] = MicDevice(r.sample_rate, mic_channels[key], index, src.buffer_s,
                                             pyaudio_module=pyaudio_module, name=src.spec)
                elif devices[key].sample_rate != r.sample_rate:
                    raise EdgeAsdError(f"{src.spec}: two models with different sample rates cannot share one device")
                opened.append(devices[key].channel(src.channel or 0, r.block_samples, src.stall_s))
            elif src.spec.startswith("serial:"):
                from edge_asd.firmware_io.pcm import open_serial

                opened.append(open_serial(src.spec[len("serial:"):], r.sample_rate, r.block_samples, src.baud,
                                          src.pcm_channels, src.channel, src.stall_s, src.pcm_framing))
            elif src.spec == "-":
                from edge_asd.firmware_io.pcm import PcmSource

                opened.append(PcmSource(_stdin(), r.sample_rate, r.block_samples, "stdin",
                                        declared_rate=src.pcm_rate, channels=src.pcm_channels, channel=src.channel,
                                        framing=src.pcm_framing))
            else:
                from edge_asd.firmware_io.audio_file import FileSource

                opened.append(FileSource(src.spec, r.sample_rate, r.block_samples, channel=src.channel))
    except BaseException:
        for s in opened:
            s.close()
        for d in devices.values():
            d.close()
        raise
    return opened


def open_source(spec: str, sample_rate: int, block_samples: int, pcm_rate: int | None = None, **options):
    """One source (``options``: the other fields of :class:`SourceSpec`, and ``pyaudio_module``); raises
    EdgeAsdError on bad input."""
    pyaudio_module = options.pop("pyaudio_module", None)
    return open_sources([SourceRequest(SourceSpec(spec, pcm_rate=pcm_rate, **options), sample_rate, block_samples)],
                        pyaudio_module)[0]
