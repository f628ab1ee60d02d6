"""Audio sources at the device boundary: files, raw s16le PCM or WAV on a byte stream, a microphone.

The microphone is exercised with a stand-in PyAudio (tests/standin_audio.py; build machines have no
sound card) that plays a real fan clip through the callback, reports input overflows, outruns a
stalled reader, stalls, vanishes, or fails to open. The serial port is pyserial's loop:// port.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.edge.errors import EdgeAsdError
from edge_asd.firmware_io.audio_file import FileSource, read_audio
from edge_asd.firmware_io.mic import find_device, input_devices
from edge_asd.firmware_io.pcm import PcmSource
from edge_asd.firmware_io.ring import RingBuffer
from edge_asd.firmware_io.sources import Gap, SourceRequest, open_source, open_sources
from standin_audio import StandInPyAudio

RATE = 16000
HOP = 256


@pytest.fixture(scope="module")
def fan_int16(fan) -> np.ndarray:
    """The real fan clip of ``fan_audio`` as the int16 samples stored in its FLAC."""
    samples, rate = sf.read(fan["train"][0], dtype="int16")
    assert rate == RATE and samples.ndim == 1
    return samples


# files -------------------------------------------------------------------------------------------

def test_file_blocks_concatenate_to_read_audio(fan, fan_audio):
    blocks = list(FileSource(fan["train"][0], RATE, 1000))
    assert all(len(b) == 1000 for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 1000
    assert all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), fan_audio)
    assert len(fan_audio) == 10 * RATE and np.abs(fan_audio).max() <= 1.0


def test_file_source_mixes_stereo_down(tmp_path):
    t = np.arange(RATE) / RATE
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 1000 * t)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path, RATE), (left + right) / 2, atol=1e-6)


def test_file_source_resamples(tmp_path, fan_audio):
    path = tmp_path / "fan_8k.wav"
    sf.write(path, fan_audio[::2], 8000, subtype="FLOAT")
    out = read_audio(path, RATE)
    assert abs(len(out) - len(fan_audio)) <= 2


@pytest.fixture
def tone() -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.float32)


def _bad(path: Path, words: str):
    with pytest.raises(EdgeAsdError, match=words) as e:
        read_audio(path, RATE)
    assert str(path) in str(e.value)
    with pytest.raises(EdgeAsdError):
        list(FileSource(path, RATE, HOP))


def test_missing_file(tmp_path):
    _bad(tmp_path / "nope.wav", "no such file")


def test_text_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 200)
    _bad(path, "not a readable audio file")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    _bad(path, "empty")


def test_header_only_wav(tmp_path):
    path = tmp_path / "none.wav"
    sf.write(path, np.zeros(0, np.float32), RATE)
    _bad(path, "no audio samples")


def test_directory(tmp_path):
    _bad(tmp_path, "directory")


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_truncated_wav(tmp_path, tone, subtype):
    """A valid WAV cut in half (a copy interrupted, a full SD card): refused, not scored short."""
    full = tmp_path / "full.wav"
    sf.write(full, tone, RATE, subtype=subtype)
    data = full.read_bytes()
    path = tmp_path / f"half_{subtype}.wav"
    path.write_bytes(data[: len(data) // 2])
    _bad(path, "truncated")


def test_truncated_flac(tmp_path, fan):
    data = Path(fan["train"][0]).read_bytes()
    path = tmp_path / "half.flac"
    path.write_bytes(data[: len(data) // 2])
    _bad(path, "corrupt|truncated")


def test_nan_samples_in_float_wav(tmp_path, tone):
    bad = tone.copy()
    bad[RATE // 2] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, bad, RATE, subtype="FLOAT")
    _bad(path, "NaN")


def test_digital_silence(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(RATE, np.float32), RATE)
    with pytest.raises(EdgeAsdError, match="silence"):
        read_audio(path, RATE)
    # the file source itself streams the zeros (the monitor reports a dead input at the end)
    assert np.concatenate(list(FileSource(path, RATE, HOP))).sum() == 0


# raw PCM / WAV on a byte stream -------------------------------------------------------------------

def test_pcm_raw_s16le_exact():
    values = np.array([0, 1, -1, 32767, -32768, 12345, -2222, 100], dtype="<i2")
    src = PcmSource(io.BytesIO(values.tobytes()), RATE, 3)
    blocks = list(src)
    assert [len(b) for b in blocks] == [3, 3, 2]
    out = np.concatenate(blocks)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, values.astype(np.float32) / 32768.0)
    assert out[3] == np.float32(32767 / 32768) and out[4] == -1.0
    assert src.dropped_bytes == 0


def test_pcm_real_clip_matches_file(fan_int16, fan_audio):
    src = PcmSource(io.BytesIO(fan_int16.astype("<i2").tobytes()), RATE, HOP)
    np.testing.assert_array_equal(np.concatenate(list(src)), fan_audio)


def test_pcm_odd_trailing_byte_dropped():
    values = np.array([1000, -1000, 5, 7, 9], dtype="<i2")
    src = PcmSource(io.BytesIO(values.tobytes() + b"\x7f"), RATE, 4)
    out = np.concatenate(list(src))
    np.testing.assert_array_equal(out, values.astype(np.float32) / 32768.0)
    assert src.dropped_bytes == 1


def test_pcm_empty_stream():
    assert list(PcmSource(io.BytesIO(b""), RATE, HOP)) == []


def _wav_bytes(samples_int16: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples_int16, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_pcm_wav_stream_at_model_rate(fan_int16, fan_audio):
    src = PcmSource(io.BytesIO(_wav_bytes(fan_int16, RATE)), RATE, HOP)
    out = np.concatenate(list(src))
    np.testing.assert_array_equal(out, fan_audio)  # the header is not read as samples


def test_pcm_wav_stream_wrong_rate(fan_int16):
    with pytest.raises(EdgeAsdError, match="wrong sample rate") as e:
        PcmSource(io.BytesIO(_wav_bytes(fan_int16[:44100], 44100)), RATE, HOP)
    assert "44100" in str(e.value) and "16000" in str(e.value)


def test_pcm_declared_rate_mismatch():
    with pytest.raises(EdgeAsdError, match="44100") as e:
        PcmSource(io.BytesIO(b"\x00\x01" * 100), RATE, HOP, declared_rate=44100)
    assert "16000" in str(e.value)
    # the same rate as the model's is fine
    assert len(np.concatenate(list(PcmSource(io.BytesIO(b"\x00\x01" * 100), RATE, HOP, declared_rate=RATE)))) == 100


def test_pcm_malformed_wav_header():
    with pytest.raises(EdgeAsdError, match="WAV"):
        PcmSource(io.BytesIO(b"RIFF\x00\x00\x00\x00JUNKJUNK"), RATE, HOP)


def test_open_source_dispatch(fan, monkeypatch):
    assert isinstance(open_source(str(fan["train"][0]), RATE, HOP), FileSource)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\x01\x00" * 10)))
    src = open_source("-", RATE, HOP)
    assert isinstance(src, PcmSource) and len(np.concatenate(list(src))) == 10


# microphone (callback -> ring buffer -> inference thread), driven by the stand-in PyAudio -----------

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
    a, b = open_sources([SourceRequest("mic:USB", RATE, 1024, channel=0, stall_s=0.3),
                         SourceRequest("mic:USB", RATE, 1024, channel=1, stall_s=0.3)], mod)
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


# serial port (pyserial loop:// stands in for a microcontroller's USB CDC port) ----------------------

def _send(src, data: bytes, chunk: int = 1000):
    """A microcontroller writing to the port in chunks (loop:// holds only 4 KiB), from its own thread."""
    port = src._stream_obj.port

    def send():
        for lo in range(0, len(data), chunk):
            port.write(data[lo:lo + chunk])

    threading.Thread(target=send, daemon=True).start()


def test_serial_loop_port_streams_raw_pcm(fan_int16, fan_audio):
    src = open_source("serial:loop://", RATE, HOP, stall_s=0.5)
    _send(src, _pcm(fan_int16[:RATE]) + b"\x01", chunk=999)  # odd chunks, and half a sample at the end
    got = []
    with pytest.raises(EdgeAsdError, match="no data for 0.5 s"):
        for block in src:
            got.append(block)
    np.testing.assert_array_equal(np.concatenate(got), fan_audio[:RATE])
    assert all(len(b) <= HOP for b in got)
    src.close()


def test_serial_two_interleaved_channels(fan_int16, fan_audio):
    pcm = np.stack([fan_int16[:4096], -fan_int16[:4096]], axis=1)
    src = open_source("serial:loop://", RATE, HOP, pcm_channels=2, channel=1, stall_s=0.3)
    _send(src, _pcm(pcm))
    got = []
    with pytest.raises(EdgeAsdError):
        for block in src:
            got.append(block)
    np.testing.assert_array_equal(np.concatenate(got), -fan_int16[:4096].astype(np.float32) / 32768.0)


def test_serial_port_that_does_not_exist(tmp_path):
    with pytest.raises(EdgeAsdError, match="cannot open the port") as e:
        open_source(f"serial:{tmp_path}/ttyACM9", RATE, HOP)
    assert "ttyACM9" in str(e.value)


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
