"""Framed raw PCM (``--pcm-framing framed``) on a real fan clip: the exact round trip, damage injected
into the byte stream (dropped, inserted and flipped bytes, lost frames, a garbage prefix, a truncated
last frame, a sender restart) against a ledger of what was done, the serial port (pyserial loop://),
the C reference sender, the example player, and the monitor's events against the file path's."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO, assert_one_line_error, cli
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.config import load_config
from edge_asd.edge.runtime.decision import RunningMaxDetector
from edge_asd.edge.runtime.stream_loop import Monitor
from edge_asd.firmware_io.blocks import Gap
from edge_asd.firmware_io.pcm import PcmSource
from edge_asd.firmware_io.pcm_framing import FLAG_START, HEADER, FrameDecoder, encode_frame, encode_frames
from edge_asd.firmware_io.sources import open_source

RATE = 16000
HOP = 256
N = 256  # samples per frame in these tests
FRAME_BYTES = 13 + 2 * N


@pytest.fixture(scope="module")
def fan_int16(fan) -> np.ndarray:
    samples, rate = sf.read(fan["train"][0], dtype="int16")
    assert rate == RATE and samples.ndim == 1 and len(samples) == 10 * RATE
    return samples


@pytest.fixture(scope="module")
def two_s(fan_int16) -> np.ndarray:
    """2 s of the real clip: 125 frames of 256 samples."""
    return fan_int16[:2 * RATE]


def decode(data: bytes, chunk: int = 1000, channels: int = 1) -> tuple[list, FrameDecoder]:
    dec = FrameDecoder(channels)
    items = []
    for lo in range(0, len(data), chunk):
        items += dec.feed(data[lo:lo + chunk])
    return items + dec.finish(), dec


def kinds(items: list) -> list:
    """Decoded items comparable with ==: Gaps as they are, the samples between two Gaps as one tuple."""
    out = []
    for item in items:
        if isinstance(item, Gap) or not out or isinstance(out[-1], Gap):
            out.append(item if isinstance(item, Gap) else tuple(np.asarray(item).tolist()))
        else:
            out[-1] += tuple(np.asarray(item).tolist())
    return out


# round trip -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 7, 1000, 1 << 20])
def test_round_trip_is_exact_in_any_pieces(two_s, chunk):
    data = encode_frames(two_s, N)
    assert len(data) == 125 * FRAME_BYTES and data[:4] == b"EASD" and data[4] == 0x10 | FLAG_START
    items, dec = decode(data, chunk)
    assert all(isinstance(i, np.ndarray) and i.dtype == np.dtype("<i2") for i in items)
    np.testing.assert_array_equal(np.concatenate(items), two_s)
    assert dec.stats() == {"frames_ok": 125, "frames_corrupt": 0, "frames_lost": 0, "bytes_skipped": 0,
                           "sender_restarts": 0}


def test_frame_layout_by_hand():
    """The bytes of a 2-sample frame, written out as the README documents them."""
    frame = encode_frame(np.array([1, -2], np.int16), sequence=0x1234)
    body = b"EASD" + b"\x10" + b"\x34\x12" + b"\x02\x00" + b"\x01\x00" + b"\xfe\xff"
    assert frame == body + zlib.crc32(body).to_bytes(4, "little") and HEADER.size == 9


def test_pcm_source_framed_matches_the_file(fan_int16, fan_audio):
    """The whole real clip through PcmSource: the same float32 samples as the FLAC file gives."""
    src = PcmSource(io.BytesIO(encode_frames(fan_int16, N)), RATE, HOP * 6, framing="framed")
    blocks = list(src)
    np.testing.assert_array_equal(np.concatenate(blocks), fan_audio)
    assert all(b.dtype == np.float32 for b in blocks)
    assert src.stats()["frames_ok"] == 625 and src.stats()["bytes_skipped"] == 0


def test_two_channels_pick_one(fan_int16, fan):
    other, _ = sf.read(fan["train"][1], dtype="int16")
    stereo = np.stack([fan_int16[:RATE], other[:RATE]], axis=1)
    src = PcmSource(io.BytesIO(encode_frames(stereo, 128)), RATE, HOP, channels=2, channel=1, framing="framed")
    np.testing.assert_array_equal(np.concatenate(list(src)), other[:RATE].astype(np.float32) / 32768)


def test_sequence_wraps_without_a_gap(two_s):
    items, dec = decode(encode_frames(two_s, N, start_sequence=65500))
    assert not any(isinstance(i, Gap) for i in items) and dec.frames_lost == 0
    np.testing.assert_array_equal(np.concatenate(items), two_s)


# damage, against a ledger of what was done -------------------------------------------------------------

def damage(samples: np.ndarray, faults: dict[int, tuple], start_sequence: int = 0) -> tuple[bytes, list, dict]:
    """Frame ``samples`` and damage some frames. ``faults``: frame index -> (kind, offset, value) with kind
    "drop" (a byte removed), "insert" (a byte added), "flip" (a bit flipped) or "lose" (the whole frame).

    Returns (bytes, the items a correct reader yields, the counters it must report)."""
    frames = [encode_frame(samples[lo:lo + N], start_sequence + k, FLAG_START if k == 0 else 0)
              for k, lo in enumerate(range(0, len(samples), N))]
    out, expected, lost_run = [], [], 0
    counts = {"frames_ok": 0, "frames_lost": 0, "bytes_skipped": 0}
    for k, frame in enumerate(frames):
        kind, offset, value = faults.get(k, (None, 0, 0))
        f = bytearray(frame)
        at = 1 + offset % (len(f) - 1)  # strictly inside the frame
        if kind == "drop":
            del f[at]
        elif kind == "insert":
            f.insert(at, value)
        elif kind == "flip":
            f[offset % len(f)] ^= 1 << (value % 8)
        elif kind == "lose":
            f = bytearray()
        out.append(bytes(f))
        if kind is None:
            if lost_run:
                expected.append(Gap(lost_run * N))
                counts["frames_lost"] += lost_run
            expected.append(tuple(samples[k * N:(k + 1) * N].tolist()))
            counts["frames_ok"] += 1
            lost_run = 0
        else:
            counts["bytes_skipped"] += len(f)
            lost_run += 1
    return b"".join(out), expected, counts


FAULT = st.tuples(st.sampled_from(["drop", "insert", "flip", "lose"]), st.integers(0, 10_000), st.integers(0, 255))


@settings(max_examples=80, deadline=None, derandomize=True)
@given(faults=st.dictionaries(st.integers(1, 123), FAULT, max_size=12), chunk=st.sampled_from([1, 61, 512, 4096]),
       start=st.integers(0, 65535))
def test_damaged_stream_recovers_and_counts_what_happened(two_s, faults, chunk, start):
    """Frames 1..123 of 125 damaged at random (the first and last stay intact so every loss is seen in the
    sequence): every intact frame comes out exactly, a Gap of the lost samples stands where frames are missing,
    nothing damaged is ever yielded, and the counters match the ledger."""
    data, expected, counts = damage(two_s, faults, start)
    items, dec = decode(data, chunk)
    assert kinds(items) == kinds(expected)
    stats = dec.stats()
    assert {k: stats[k] for k in counts} == counts
    damaged = sum(kind != "lose" for kind, _, _ in faults.values())
    assert stats["frames_corrupt"] <= damaged and stats["sender_restarts"] == 0  # a hit magic or length: no CRC check


@pytest.mark.parametrize("seed", range(3))
def test_bit_flips_in_the_payload_are_each_one_corrupt_frame(two_s, seed):
    rng = np.random.default_rng(seed)
    hit = sorted(rng.choice(np.arange(1, 124), 10, replace=False).tolist())
    faults = {k: ("flip", int(rng.integers(9, FRAME_BYTES)), int(rng.integers(8))) for k in hit}
    data, expected, counts = damage(two_s, faults)
    items, dec = decode(data)
    assert kinds(items) == kinds(expected)
    assert dec.frames_corrupt == 10 and dec.frames_lost == 10 and dec.bytes_skipped == 10 * FRAME_BYTES


def test_garbage_prefix_is_skipped(two_s):
    garbage = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes() + b"EAS"
    items, dec = decode(garbage + encode_frames(two_s, N), chunk=100)
    np.testing.assert_array_equal(np.concatenate(items), two_s)
    assert dec.bytes_skipped == 3003 and dec.frames_ok == 125 and dec.frames_lost == 0


def test_truncated_last_frame(two_s, caplog):
    data = encode_frames(two_s, N)[:-200]
    src = PcmSource(io.BytesIO(data), RATE, HOP, framing="framed")
    out = np.concatenate([b for b in src])
    np.testing.assert_array_equal(out, two_s[:-N].astype(np.float32) / 32768)
    assert src.stats()["frames_ok"] == 124 and src.stats()["bytes_skipped"] == FRAME_BYTES - 200
    assert "ended inside a frame" in caplog.text


def test_lost_frames_across_the_wrap(two_s):
    data, expected, counts = damage(two_s, {k: ("lose", 0, 0) for k in (40, 41, 42)}, start_sequence=65496)
    items, dec = decode(data)
    assert kinds(items) == kinds(expected) and Gap(3 * N) in kinds(items) and dec.frames_lost == 3


def test_a_sender_restart_restarts_the_features_without_counting_a_loss(two_s):
    first, second = encode_frames(two_s[:RATE], N), encode_frames(two_s[RATE:], N)  # both start at 0, START flag
    items, dec = decode(first + second)
    gaps = [i for i in items if isinstance(i, Gap)]
    assert gaps == [Gap(0)] and dec.restarts == 1 and dec.frames_lost == 0
    np.testing.assert_array_equal(np.concatenate([i for i in items if not isinstance(i, Gap)]), two_s)
    assert dec.frames_ok == 126  # 1 s = 62.5 frames: 63 + 63


def test_misconfigured_sender_is_one_clear_error(two_s):
    stereo_mismatch = encode_frame(two_s[:255], 0)  # 255 values cannot be 2-channel samples
    with pytest.raises(EdgeAsdError, match="--pcm-channels"):
        decode(stereo_mismatch, channels=2)
    body = bytearray(encode_frame(two_s[:N], 0)[:-4])
    body[4] = 0x20  # version 2, CRC valid
    with pytest.raises(EdgeAsdError, match="version 2"):
        decode(bytes(body) + zlib.crc32(body).to_bytes(4, "little"))


def test_unframed_pcm_read_as_framed_is_one_error(fan_int16):
    """The sender forgot the framing: an error after stall_s of audio's worth of bytes, not 10 s of noise."""
    src = PcmSource(io.BytesIO(fan_int16.tobytes()), RATE, HOP, framing="framed", stall_s=2.0)
    with pytest.raises(EdgeAsdError, match="no intact PCM frame") as e:
        list(src)
    assert "--pcm-framing raw" in str(e.value)
    with pytest.raises(EdgeAsdError, match="no intact PCM frame"):  # shorter than the limit: at the end
        list(PcmSource(io.BytesIO(fan_int16[:1000].tobytes()), RATE, HOP, framing="framed"))


def test_unknown_framing_refused():
    with pytest.raises(EdgeAsdError, match="raw or framed"):
        PcmSource(io.BytesIO(b""), RATE, HOP, framing="cobs")


# serial port (pyserial loop://) ---------------------------------------------------------------------

def _send(src, data: bytes, chunk: int = 1000):
    port = src._stream_obj.port

    def send():
        try:
            for lo in range(0, len(data), chunk):
                port.write(data[lo:lo + chunk])
        except Exception:  # the reader closed the port: the sender stops
            pass

    threading.Thread(target=send, daemon=True).start()


def test_serial_loop_port_framed_with_damage(two_s):
    data, expected, counts = damage(two_s, {10: ("drop", 300, 0), 50: ("flip", 100, 3), 51: ("lose", 0, 0),
                                            90: ("insert", 2, 0x45)})
    src = open_source("serial:loop://", RATE, HOP, stall_s=0.5, pcm_framing="framed")
    _send(src, data, chunk=997)
    got = []
    with pytest.raises(EdgeAsdError, match="no data for 0.5 s"):
        for item in src:
            got.append(item)
    src.close()
    want = [i if isinstance(i, Gap) else np.array(i, np.float32) / 32768 for i in expected]
    merged = [g for g in got if isinstance(g, Gap)]
    assert merged == [Gap(N), Gap(2 * N), Gap(N)]
    np.testing.assert_array_equal(np.concatenate([g for g in got if not isinstance(g, Gap)]),
                                  np.concatenate([w for w in want if not isinstance(w, Gap)]))
    stats = src.stats()
    assert {k: stats[k] for k in counts} == counts and stats["frames_lost"] == 4


def test_serial_all_garbage_is_one_error():
    src = open_source("serial:loop://", RATE, HOP, stall_s=0.5, pcm_framing="framed")
    noise = np.random.default_rng(2).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    _send(src, noise, chunk=500)
    with pytest.raises(EdgeAsdError, match="no intact PCM frame"):
        list(src)
    src.close()


# the C reference sender and the example player ----------------------------------------------------------

@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_reference_sender_decodes(two_s, tmp_path):
    exe = tmp_path / "easd_demo"
    subprocess.run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-DEASD_DEMO",
                    str(REPO / "examples" / "firmware" / "easd_framing.c"), "-o", str(exe)], check=True, timeout=60)
    pcm = two_s[:5000].astype("<i2").tobytes()  # 19 frames of 256 and one of 136
    framed = subprocess.run([str(exe)], input=pcm, capture_output=True, check=True, timeout=30).stdout
    assert framed == encode_frames(two_s[:5000], N)
    items, dec = decode(framed)
    np.testing.assert_array_equal(np.concatenate(items), two_s[:5000])


def test_example_player_output_decodes(fan, fan_int16):
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "play_framed.py"), str(fan["train"][0]),
                           "--damage", "2"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    hit = [int(k) for k in proc.stderr.decode().split("[")[1].split("]")[0].split(",")]
    items, dec = decode(proc.stdout)
    assert dec.frames_ok == 623 and len(hit) == 2
    kept = [fan_int16[k * N:(k + 1) * N] for k in range(625) if k not in hit]
    np.testing.assert_array_equal(np.concatenate([i for i in items if not isinstance(i, Gap)]), np.concatenate(kept))


# configuration -----------------------------------------------------------------------------------------

def test_config_key(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[monitor]\npcm_framing = "framed"\n[[input]]\nmodel = "a.tflite"\nsource = "-"\n'
                    '[[input]]\nname = "b"\nmodel = "b.tflite"\npcm_framing = "raw"\n')
    a, b = load_config(path)
    assert a.source.pcm_framing == "framed" and b.source.pcm_framing == "raw"
    path.write_text('[[input]]\nmodel = "a.tflite"\npcm_framing = "slip"\n')
    with pytest.raises(EdgeAsdError, match="pcm_framing = 'slip' should be one of raw, framed"):
        load_config(path)


# the monitor -------------------------------------------------------------------------------------------

def _monitor(source, scorer, phi):
    records = []
    summary = Monitor(source, scorer, RunningMaxDetector(phi, "id_00", scorer.sha256), records.append, "t").run()
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in records if r["event"] != "summary"], summary


def test_lost_frames_in_the_monitor_are_the_microphone_path_gap(scorer, fan_int16, fan_audio):
    """Frames 100..103 lost: the same events as the float samples with a Gap of 4 frames, and the summary
    counts them; no context vector spans the hole."""
    data, _, _ = damage(fan_int16, {k: ("lose", 0, 0) for k in range(100, 104)} | {300: ("flip", 40, 1)})
    phi = float(np.quantile(scorer.score_audio(fan_audio), 0.5))
    framed, summary = _monitor(PcmSource(io.BytesIO(data), RATE, HOP * 6, framing="framed"), scorer, phi)
    a, b, c, d = 100 * N, 104 * N, 300 * N, 301 * N
    ref, _ = _monitor(iter([fan_audio[:a], Gap(4 * N), fan_audio[b:c], Gap(N), fan_audio[d:]]), scorer, phi)
    assert framed == ref and any(r["event"] == "anomaly" for r in ref)
    assert (summary.frames_ok, summary.frames_lost, summary.frames_corrupt) == (620, 5, 1)
    assert summary.dropped_samples == 5 * N and summary.bytes_skipped == FRAME_BYTES
    assert "framed PCM: 620 frames ok, 1 corrupt, 5 lost" in summary.line(phi)


@pytest.fixture(scope="module")
def anomaly_int16(fan):
    samples, _ = sf.read(fan["test_anomaly"][0], dtype="int16")
    return fan["test_anomaly"][0], samples


def _events(proc):
    import json

    assert proc.returncode == 0, proc.stderr
    return [{k: v for k, v in json.loads(line).items() if k not in ("wall_time", "input")}
            for line in proc.stdout.splitlines() if '"anomaly"' in line or '"verdict"' in line]


def test_edge_monitor_framed_stdin_gives_the_file_events(model, scorer, anomaly_int16, env):
    clip, samples = anomaly_int16
    phi = str(float(np.quantile(scorer.score_audio(samples.astype(np.float32) / 32768), 0.5)))
    from_file = _events(cli("edge-monitor", "--model", model, "--input", clip, "--phi", phi, env=env))
    framed = encode_frames(samples, N)
    proc = cli("edge-monitor", "--model", model, "--input", "-", "--pcm-framing", "framed", "--phi", phi, env=env,
               input=framed)
    assert _events(proc) == from_file and len(from_file) >= 2
    assert f"framed PCM: {len(framed) // FRAME_BYTES} frames ok, 0 corrupt, 0 lost, 0 bytes skipped" in proc.stderr
    by_env = cli("edge-monitor", "--model", model, "--input", "-", "--phi", phi, input=framed,
                 env={**env, "EDGE_ASD_PCM_FRAMING": "framed"})
    assert _events(by_env) == from_file


def test_edge_monitor_unframed_bytes_are_a_one_line_error(model, anomaly_int16, env):
    _, samples = anomaly_int16
    proc = cli("edge-monitor", "--model", model, "--input", "-", "--pcm-framing", "framed", "--phi", "1", env=env,
               input=samples.astype("<i2").tobytes())
    assert_one_line_error(proc)
    assert "no intact PCM frame" in proc.stderr and "--pcm-framing raw" in proc.stderr
