"""Audio sources at the device boundary: files, raw s16le PCM or WAV on a byte stream, a serial port
(pyserial's loop:// port). The microphone path has its own file, test_mic_source.py."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.core.errors import EdgeAsdError
from edge_asd.firmware_io.audio_file import FileSource, read_audio
from edge_asd.firmware_io.pcm import PcmSource
from edge_asd.firmware_io.sources import open_source

RATE = 16000
HOP = 256


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


@pytest.mark.parametrize("rate", [2, 3999, 1_000_000])
def test_a_header_declaring_an_absurd_rate_is_refused_before_resampling(tmp_path, tone, rate):
    """A header claiming 2 Hz would be resampled into hours of audio (a probe: 13 h from 96 KB)."""
    path = tmp_path / "odd.wav"
    sf.write(path, tone, RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[24:28] = rate.to_bytes(4, "little")  # the fmt chunk's sample rate
    path.write_bytes(bytes(data))
    _bad(path, f"declares a sample rate of {rate} Hz")


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


def test_a_flac_file_or_text_on_a_raw_pcm_stream_is_refused(fan):
    """Piped FLAC bytes or text were read as raw PCM (17 and 7 anomaly events in a probe, exit 0)."""
    with pytest.raises(EdgeAsdError, match="the stream is FLAC, not raw PCM"):
        PcmSource(io.BytesIO(Path(fan["train"][0]).read_bytes()), RATE, HOP)
    with pytest.raises(EdgeAsdError, match="the stream is text, not raw PCM"):
        PcmSource(io.BytesIO(b"time,level\n0.0,-44.1\n0.1,-44.0\n0.2,-43.9\n" * 4), RATE, HOP)


def test_a_float_wav_on_a_stream_gets_a_clear_error(fan_audio):
    buf = io.BytesIO()
    sf.write(buf, fan_audio, RATE, format="WAV", subtype="FLOAT")
    with pytest.raises(EdgeAsdError, match="WAV of float samples; send 16-bit PCM"):
        PcmSource(io.BytesIO(buf.getvalue()), RATE, HOP)


def test_a_second_wav_after_the_first_is_counted_and_said(fan_int16, fan_audio, caplog):
    second = _wav_bytes(fan_int16[:RATE], RATE)
    src = PcmSource(io.BytesIO(_wav_bytes(fan_int16, RATE) + second), RATE, HOP)
    np.testing.assert_array_equal(np.concatenate(list(src)), fan_audio)
    assert src.dropped_bytes == len(second) and "a second WAV?" in caplog.text


def test_open_source_dispatch(fan, monkeypatch):
    assert isinstance(open_source(str(fan["train"][0]), RATE, HOP), FileSource)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\x01\x00" * 10)))
    src = open_source("-", RATE, HOP)
    assert isinstance(src, PcmSource) and len(np.concatenate(list(src))) == 10


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
    _send(src, fan_int16[:RATE].astype("<i2").tobytes() + b"\x01", chunk=999)  # odd chunks, and half a sample at the end
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
    _send(src, pcm.astype("<i2").tobytes())
    got = []
    with pytest.raises(EdgeAsdError):
        for block in src:
            got.append(block)
    np.testing.assert_array_equal(np.concatenate(got), -fan_int16[:4096].astype(np.float32) / 32768.0)


def test_serial_port_that_does_not_exist(tmp_path):
    with pytest.raises(EdgeAsdError, match="cannot open the port") as e:
        open_source(f"serial:{tmp_path}/ttyACM9", RATE, HOP)
    assert "ttyACM9" in str(e.value)
