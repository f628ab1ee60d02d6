"""The microphone path at the device boundary: PortAudio callback -> ring buffer -> inference thread.

Exercised with a stand-in PyAudio (tests/standin_audio.py; build machines have no sound card) that plays
a real fan clip through the callback, reports input overflows, outruns a stalled reader, stalls,
vanishes, fails to open, or only offers 48 kHz.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import soundfile as sf

from edge_asd.core.errors import EdgeAsdError
from edge_asd.firmware_io.blocks import Gap
from edge_asd.firmware_io.mic import find_device, input_devices
from edge_asd.firmware_io.ring import RingBuffer
from edge_asd.firmware_io.sources import SourceRequest, SourceSpec, open_source, open_sources
from standin_audio import StandInPyAudio

RATE = 16000
HOP = 256


def _pcm(samples: np.ndarray) -> bytes:
    return samples.astype("<i2").tobytes()


def _mic(mod, channel=0, block=HOP, stall_s=5.0, buffer_s=12.0, spec="mic"):
    return open_source(spec, RATE, block, channel=channel, stall_s=stall_s, buffer_s=buffer_s, pyaudio_module=mod)


def test_mic_plays_real_clip_through_the_callback(fan_int16, fan_audio):
    mod = StandInPyAudio(_pcm(fan_int16))
    mic = _mic(mod, spec="mic:2", block=4096)
    (kwargs,) = mod.opened
    assert kwargs["format"] == mod.paInt16 and kwargs["channels"] == 1 and kwargs["rate"] == RATE
    assert kwargs["input"] is True and kwargs["input_device_index"] == 2 and callable(kwargs["stream_callback"])
    got, total = [], 0
    for block in mic:
        assert isinstance(block, np.ndarray) and block.dtype == np.float32 and 1 <= len(block) <= 4096
        got.append(block)
        total += len(block)
        if total == len(fan_int16):
            break
    np.testing.assert_array_equal(np.concatenate(got), fan_audio)  # nothing lost, invented or reordered
    assert mic.stats() == {"overflows": 0, "dropped_samples": 0}
    (stream,) = mod.streams
    assert stream.stopped and stream.closed and mod.terminated >= 1  # the generator's close releases the device


def test_mic_input_overflows_are_counted_not_fatal(fan_int16, fan_audio, caplog):
    mod = StandInPyAudio(_pcm(fan_int16[: 20 * 1024]), overflow_at={3, 7, 8})
    mic = _mic(mod, stall_s=0.5)
    got = []
    with pytest.raises(EdgeAsdError, match="stopped delivering"):  # the clip ends: the stand-in stalls
        for block in mic:
            got.append(block)
    np.testing.assert_array_equal(np.concatenate(got), fan_audio[: 20 * 1024])  # the samples still all arrive
    assert mic.overflows == 3
    assert "input overflow" in caplog.text


def test_mic_overrun_drops_oldest_samples_and_marks_the_gap(fan_int16, fan_audio):
    """Inference stalls while the device keeps delivering: the ring keeps the newest 0.5 s, counts the rest
    as dropped, and the source yields a Gap before the surviving samples."""
    mod = StandInPyAudio(_pcm(fan_int16))
    mic = _mic(mod, buffer_s=0.5, block=RATE)
    it = iter(mic)
    mic.device.start()
    assert mod.streams[0].done.wait(10)  # the whole clip was delivered before we read anything
    gap = next(it)
    assert isinstance(gap, Gap) and gap.n_samples == len(fan_int16) - RATE // 2
    block = next(it)
    np.testing.assert_array_equal(block, fan_audio[-RATE // 2:])  # the newest half second, intact
    assert mic.stats()["dropped_samples"] == len(fan_int16) - RATE // 2
    it.close()


def test_mic_stall_raises_and_releases_the_device(fan_int16, fan_audio):
    mod = StandInPyAudio(_pcm(fan_int16), stall_after=5)
    mic = _mic(mod, stall_s=0.5)
    got = []
    t0 = time.monotonic()
    with pytest.raises(EdgeAsdError, match="stopped delivering audio") as e:
        for block in mic:
            got.append(block)
    assert "stalled" in str(e.value) and 0.5 <= time.monotonic() - t0 < 5
    np.testing.assert_array_equal(np.concatenate(got), fan_audio[: 5 * 1024])  # what came before is kept
    (stream,) = mod.streams
    assert stream.closed and mod.terminated >= 1


def test_mic_unplugged_raises_at_once(fan_int16):
    mod = StandInPyAudio(_pcm(fan_int16), vanish_after=3)
    mic = _mic(mod, stall_s=60.0)
    t0 = time.monotonic()
    with pytest.raises(EdgeAsdError, match="microphone|mic"):
        for _ in mic:
            pass
    assert time.monotonic() - t0 < 5  # not the 60-s stall timeout: the stream said it is gone
    assert mod.streams[0].closed


@pytest.mark.parametrize("error", [OSError(-9996, "Invalid input device (no default output device)"),
                                   ValueError("Invalid sample rate")])
def test_mic_open_fails(error):
    mod = StandInPyAudio(open_error=error)
    with pytest.raises(EdgeAsdError, match="cannot open the mic") as e:
        _mic(mod)
    assert "16000" in str(e.value)
    assert mod.terminated >= 1  # PortAudio is shut down again


def test_mic_device_by_name_or_index():
    mod = StandInPyAudio()
    assert [d["index"] for d in input_devices(mod)] == [0, 2, 3]  # HDMI has no input channels
    assert find_device("USB", mod) == 2 and find_device("usb audio codec", mod) == 2
    assert find_device("default", mod) == 3 and find_device("0", mod) == 0 and find_device(None, mod) is None
    with pytest.raises(EdgeAsdError, match="several input devices") as e:
        find_device("hw:", mod)
    assert "USB Audio CODEC" in str(e.value)  # the message lists the choices
    with pytest.raises(EdgeAsdError, match="no input device"):
        find_device("Blue Yeti", mod)
    with pytest.raises(EdgeAsdError, match="index 1"):
        find_device("1", mod)  # HDMI: an output only


def test_two_channels_of_one_device_share_one_stream(fan_int16, fan_audio, fan):
    """Two machines on a 2-channel interface: one PortAudio stream, each input reads its own channel."""
    other, _ = sf.read(fan["train"][1], dtype="int16")
    n = 8 * 1024
    pcm = np.stack([fan_int16[:n], other[:n]], axis=1)
    mod = StandInPyAudio(_pcm(pcm))
    a, b = open_sources([SourceRequest(SourceSpec("mic:USB", channel=0, stall_s=0.3), RATE, 1024),
                         SourceRequest(SourceSpec("mic:USB", channel=1, stall_s=0.3), RATE, 1024)], mod)
    (kwargs,) = mod.opened
    assert kwargs["channels"] == 2 and kwargs["input_device_index"] == 2
    results = {}

    def drain(name, src):
        got = []
        try:
            for block in src:
                got.append(block)
        except EdgeAsdError:
            pass  # the stand-in stalls at the end of its clip
        results[name] = np.concatenate(got)

    threads = [threading.Thread(target=drain, args=(k, s)) for k, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    np.testing.assert_array_equal(results["a"], fan_audio[:n])
    np.testing.assert_array_equal(results["b"], other[:n].astype(np.float32) / 32768.0)
    assert mod.streams[0].n_closed == 1  # closed once, by the last reader


def test_ring_buffer_counts_what_it_overwrites():
    ring = RingBuffer(8)
    assert ring.write(np.arange(5)) == 0 and ring.write(np.arange(5, 12)) == 4
    out, lost = ring.read(1, 100, 0)
    assert lost == 4 and out.tolist() == list(range(4, 12))
    assert ring.write(np.arange(20)) == 12 and ring.dropped == 16  # longer than the ring: newest 8 kept
    out, lost = ring.read(1, 3, 0)
    assert lost == 12 and out.tolist() == [12, 13, 14]
    out, lost = ring.read(1, 100, 0)
    assert lost == 0 and out.tolist() == list(range(15, 20))
    out, lost = ring.read(1, 100, 0.01)  # empty: times out with nothing
    assert len(out) == 0 and lost == 0


def test_mic_that_only_does_48k_is_resampled(fan_audio):
    """A USB codec that refuses 16 kHz: opened at its own default rate, resampled to the model's (soxr)."""
    import soxr

    at_48k = soxr.resample(fan_audio[:3 * RATE], RATE, 48000)
    mod = StandInPyAudio(_pcm(np.round(at_48k * 32767)), rates={48000})
    mic = _mic(mod, spec="mic:USB", block=1024, stall_s=0.5)
    assert [o["rate"] for o in mod.opened] == [16000, 48000]
    got = []
    with pytest.raises(EdgeAsdError, match="stopped delivering"):
        for block in mic:
            got.append(block)
    out = np.concatenate(got)
    assert 0 <= 3 * RATE - len(out) < 1000  # the resampler holds back its filter delay (about 33 ms) at the end
    ref = fan_audio[:len(out)]
    assert np.sqrt(np.mean((out[100:-100] - ref[100:-100]) ** 2)) < 0.02 * np.sqrt(np.mean(ref ** 2))
