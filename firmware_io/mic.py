"""Microphone input through PyAudio (``pip install 'edge-asd[mic]'``; needs PortAudio).

PortAudio calls our callback from its own thread with each buffer of int16 samples; the callback only
copies them into one ring buffer per channel in use and returns. The monitor (the inference thread)
reads the ring. So a slow inference never makes the driver overflow, and nothing is silent:

- input overflows the driver reports (``paInputOverflow`` in the callback's status) are counted;
- samples the ring had to overwrite because inference fell behind are counted as dropped, and the
  source yields a :class:`~edge_asd.firmware_io.blocks.Gap` so the features restart there;
- a device that stops calling back for ``stall_s`` seconds (stalled, unplugged) raises EdgeAsdError.

PyAudio is imported lazily; tests pass a stand-in module with the same surface (``PyAudio()``,
``open(..., stream_callback=)``, ``get_device_count``, ``get_device_info_by_index``), since build
machines have no sound card.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.firmware_io.blocks import Gap
from edge_asd.firmware_io.ring import RingBuffer

log = logging.getLogger("edge_asd")

PA_INPUT_OVERFLOW = 0x2  # pyaudio.paInputOverflow (PortAudio's paInputOverflow status flag)
PA_CONTINUE = 0  # pyaudio.paContinue


def _pyaudio():
    try:
        import pyaudio
    except ImportError:
        raise EdgeAsdError("microphone input needs PyAudio: pip install 'edge-asd[mic]' (and apt install portaudio19-dev)") from None
    return pyaudio


def input_devices(pyaudio_module=None) -> list[dict]:
    """Input devices as PortAudio lists them: dicts with ``index``, ``name``, ``channels``, ``rate`` (Hz)."""
    pa_mod = pyaudio_module or _pyaudio()
    pa = pa_mod.PyAudio()
    try:
        out = []
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            if int(info.get("maxInputChannels", 0)) > 0:
                out.append({"index": i, "name": str(info["name"]), "channels": int(info["maxInputChannels"]),
                            "rate": int(float(info.get("defaultSampleRate", 0)))})
        return out
    finally:
        pa.terminate()


def find_device(spec: str | int | None, pyaudio_module=None) -> int | None:
    """Device index for ``spec``: None (the default device), an index, or part of a device name.

    Raises:
        EdgeAsdError: no input device has that index or name, or the name matches several devices.
    """
    if spec is None or spec == "":
        return None
    devices = input_devices(pyaudio_module)
    names = "; ".join(f"{d['index']}: {d['name']}" for d in devices) or "none"
    if isinstance(spec, int) or str(spec).isdigit():
        if int(spec) not in {d["index"] for d in devices}:
            raise EdgeAsdError(f"no input device with index {spec} (input devices: {names})")
        return int(spec)
    hits = [d for d in devices if str(spec).lower() in d["name"].lower()]
    exact = [d for d in hits if d["name"].lower() == str(spec).lower()]
    if len(exact) == 1 or len(hits) == 1:
        return (exact or hits)[0]["index"]
    what = "no input device" if not hits else "several input devices"
    raise EdgeAsdError(f"{what} named like {spec!r} (input devices: {names}); see edge-monitor --list-devices")


class MicDevice:
    """One PortAudio input stream, callback-driven, shared by the channels read from it.

    Args:
        sample_rate: Hz, the model's; the stream is opened at this rate, 16-bit, or, if the device refuses
            it, at the device's default rate and resampled with soxr in the inference thread.
        channels: how many channels to open (1 + the highest channel any consumer reads).
        device: PortAudio device index, or None for the default input device.
        buffer_s: ring capacity per channel, seconds of audio the inference may fall behind.
        frames_per_buffer: samples per callback.
    Raises:
        EdgeAsdError: PyAudio missing, or the device cannot be opened at this rate and channel count.
    """

    def __init__(self, sample_rate: int, channels: int = 1, device: int | None = None, buffer_s: float = 10.0,
                 frames_per_buffer: int = 1024, pyaudio_module=None, name: str = "microphone"):
        self._mod = pyaudio_module or _pyaudio()
        self.sample_rate, self.channels, self.name = sample_rate, channels, name
        self.overflows = 0  # callbacks whose status reported an input overflow (driver lost samples)
        self.callbacks = 0
        self.last_callback = time.monotonic()
        self._users = 0
        self._lock = threading.Lock()
        self._pa = self._mod.PyAudio()
        self._stream = None
        errors = []
        for rate in self._rates_to_try(device):
            try:
                self._stream = self._pa.open(format=self._mod.paInt16, channels=channels, rate=rate, input=True,
                                             frames_per_buffer=frames_per_buffer, input_device_index=device,
                                             stream_callback=self._callback, start=False)
            except Exception as e:  # PortAudio reports missing devices and bad rates as OSError/ValueError
                errors.append(f"{rate} Hz: {e}")
                continue
            self.device_rate = rate
            break
        if self._stream is None:
            self._pa.terminate()
            raise EdgeAsdError(f"cannot open the {name} at {sample_rate} Hz, {channels} channel(s) "
                               f"({'; '.join(errors)}); see edge-monitor --list-devices") from None
        if self.device_rate != sample_rate:
            log.info("%s: opened at %d Hz, resampling to %d Hz (soxr)", name, self.device_rate, sample_rate)
        self._rings = {ch: RingBuffer(max(1, int(buffer_s * self.device_rate))) for ch in range(channels)}
        self._started = False

    def _rates_to_try(self, device: int | None) -> list[int]:
        """The model's rate first; then the device's own default rate (many USB codecs do only 44.1/48 kHz)."""
        try:
            info = (self._pa.get_device_info_by_index(device) if device is not None
                    else self._pa.get_default_input_device_info())
            default = int(float(info.get("defaultSampleRate", 0)))
        except Exception:  # no default device, or a PyAudio without the call: just the model's rate
            default = 0
        return [self.sample_rate] + ([default] if default > 0 and default != self.sample_rate else [])

    def _callback(self, in_data, frame_count, time_info, status):
        self.callbacks += 1
        self.last_callback = time.monotonic()
        if status & PA_INPUT_OVERFLOW:
            self.overflows += 1
        samples = np.frombuffer(in_data, dtype="<i2").astype(np.float32) * (1.0 / 32768.0)
        samples = samples[: len(samples) - len(samples) % self.channels].reshape(-1, self.channels)
        for ch, ring in self._rings.items():
            ring.write(samples[:, ch])
        return None, PA_CONTINUE

    def channel(self, channel: int, block_samples: int, stall_s: float = 5.0) -> MicSource:
        """A source reading one channel (0-based) of this device."""
        if not 0 <= channel < self.channels:
            raise EdgeAsdError(f"{self.name}: channel {channel} not opened (channels 0..{self.channels - 1})")
        self._users += 1
        return MicSource(self, channel, block_samples, stall_s)

    def start(self) -> None:
        with self._lock:
            if not self._started and self._stream is not None:
                self.last_callback = time.monotonic()
                self._stream.start_stream()
                self._started = True

    def is_active(self) -> bool:
        return self._stream is not None and bool(self._stream.is_active())

    def release(self) -> None:
        """One consumer is done; the last one closes the stream."""
        self._users -= 1
        if self._users <= 0:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._stream is None:
                return
            try:
                self._stream.stop_stream()
                self._stream.close()
            except Exception as e:  # an unplugged device may fail to stop; we are leaving anyway
                log.debug("%s: closing the stream: %s", self.name, e)
            self._stream = None
            self._pa.terminate()
            for ring in self._rings.values():
                ring.close()


class MicSource:
    """Blocks from one channel of a :class:`MicDevice`: float32 arrays, and a Gap where samples were lost.

    Each block holds what the ring has, at least one hop and at most ``block_samples``; ``stall_s``:
    seconds without a callback before the device is declared gone (EdgeAsdError).
    """

    poll_s = 0.25  # how often a waiting read wakes to look for a stop request or a dead device

    def __init__(self, device: MicDevice, channel: int, block_samples: int, stall_s: float = 5.0):
        self.device, self.channel, self.block_samples, self.stall_s = device, channel, block_samples, stall_s
        self.sample_rate = device.sample_rate
        self.min_samples = 1
        self.stop = threading.Event()
        self._ring = device._rings[channel]
        self._closed = False
        self._resampler = None
        if device.device_rate != device.sample_rate:
            import soxr

            self._resampler = soxr.ResampleStream(device.device_rate, device.sample_rate, 1, dtype="float32")

    @property
    def _device_block(self) -> int:
        return max(1, round(self.block_samples * self.device.device_rate / self.sample_rate))

    @property
    def overflows(self) -> int:
        return self.device.overflows

    @property
    def dropped_samples(self) -> int:
        return self._ring.dropped

    def stats(self) -> dict:
        return {"overflows": self.overflows, "dropped_samples": self.dropped_samples}

    def __iter__(self) -> Iterator[np.ndarray | Gap]:
        self.device.start()
        reported_overflows = 0
        try:
            while not self.stop.is_set():
                block, lost = self._ring.read(self.min_samples, self._device_block, self.poll_s)
                if self.overflows > reported_overflows:
                    log.warning("%s: input overflow (%d so far): the driver lost samples", self.device.name,
                                self.overflows)
                    reported_overflows = self.overflows
                if lost:
                    rate = self.device.device_rate
                    log.warning("%s: inference fell behind; %d samples (%.2f s) dropped", self.device.name, lost,
                                lost / rate)
                    if self._resampler is not None:
                        self._resampler.clear()
                    yield Gap(round(lost * self.sample_rate / rate))
                if len(block):
                    if self._resampler is not None:
                        block = self._resampler.resample_chunk(block)
                    if len(block):
                        yield block
                    continue
                if self._ring.closed:
                    return
                silent_s = time.monotonic() - self.device.last_callback
                if silent_s > self.stall_s or not self.device.is_active():
                    raise EdgeAsdError(f"{self.device.name} stopped delivering audio ({silent_s:.1f} s without "
                                       "samples; unplugged or stalled?)")
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.device.release()
