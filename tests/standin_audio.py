"""A stand-in for PyAudio (build machines have no sound card): same surface as the parts edge-asd uses.

``StandInPyAudio(pcm, ...)`` is passed where the ``pyaudio`` module would be. Its ``PyAudio().open(...,
stream_callback=cb)`` returns a stream that, once started, calls ``cb`` from its own thread with
``frames_per_buffer`` interleaved int16 frames of ``pcm`` at a time, as PortAudio does, and can:

- ``overflow_at``: report ``paInputOverflow`` in the status of those callbacks (0-based);
- ``stall_after``: stop calling back after that many callbacks while still claiming to be active;
- ``vanish_after``: stop calling back and turn inactive (device unplugged);
- ``rates``: the only sample rates it opens at (a USB codec doing 48 kHz only); others raise ValueError;
- ``pace_s``: sleep between callbacks (0: as fast as possible, an overrun for a slow reader).
At the end of ``pcm`` it stops calling back, like a stalled device.
"""

from __future__ import annotations

import threading
import time


class StandInStream:
    def __init__(self, module, kwargs):
        self.module, self.kwargs = module, kwargs
        self.callback = kwargs["stream_callback"]
        self.frame_bytes = 2 * kwargs["channels"]
        self.active = False
        self.stopped = self.closed = False
        self.n_callbacks = 0
        self.n_closed = 0
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._play, daemon=True)

    def start_stream(self):
        self.active = True
        self._thread.start()

    def _play(self):
        m, n = self.module, self.kwargs["frames_per_buffer"]
        step = n * self.frame_bytes
        for lo in range(0, len(m.pcm), step):
            if self.closed:
                break
            if m.vanish_after is not None and self.n_callbacks >= m.vanish_after:
                self.active = False
                break
            if m.stall_after is not None and self.n_callbacks >= m.stall_after:
                break
            chunk = m.pcm[lo:lo + step]
            status = 0x2 if self.n_callbacks in m.overflow_at else 0
            self.callback(chunk, len(chunk) // self.frame_bytes, {}, status)
            self.n_callbacks += 1
            if m.pace_s:
                time.sleep(m.pace_s)
        self.done.set()

    def is_active(self):
        return self.active

    def stop_stream(self):
        self.stopped = True
        self.active = False

    def close(self):
        self.closed = True
        self.n_closed += 1


class StandInPyAudio:
    """What ``import pyaudio`` gives, for ``pcm`` (int16 little-endian bytes, interleaved channels)."""

    paInt16 = 8

    def __init__(self, pcm: bytes = b"", devices=None, open_error: Exception | None = None, rates=None, overflow_at=(),
                 stall_after: int | None = None, vanish_after: int | None = None, pace_s: float = 0.0):
        self.pcm, self.open_error, self.rates = pcm, open_error, rates
        self.overflow_at, self.stall_after, self.vanish_after, self.pace_s = set(overflow_at), stall_after, vanish_after, pace_s
        self.devices = devices if devices is not None else [
            {"name": "HDA Intel PCH: ALC3246 Analog (hw:0,0)", "maxInputChannels": 2, "defaultSampleRate": 44100.0},
            {"name": "HDA Intel PCH: HDMI 0 (hw:0,3)", "maxInputChannels": 0, "defaultSampleRate": 44100.0},
            {"name": "USB Audio CODEC: - (hw:1,0)", "maxInputChannels": 4, "defaultSampleRate": 48000.0},
            {"name": "default", "maxInputChannels": 32, "defaultSampleRate": 44100.0},
        ]
        self.opened: list[dict] = []
        self.streams: list[StandInStream] = []
        self.terminated = 0
        module = self

        class PyAudio:
            def open(self, **kwargs):
                module.opened.append(kwargs)
                if module.open_error is not None:
                    raise module.open_error
                if module.rates is not None and kwargs["rate"] not in module.rates:
                    raise ValueError("Invalid sample rate")
                stream = StandInStream(module, kwargs)
                module.streams.append(stream)
                return stream

            def get_default_input_device_info(self):
                return {"index": 3, **module.devices[3]}

            def get_device_count(self):
                return len(module.devices)

            def get_device_info_by_index(self, i):
                return {"index": i, **module.devices[i]}

            def terminate(self):
                module.terminated += 1

        self.PyAudio = PyAudio
