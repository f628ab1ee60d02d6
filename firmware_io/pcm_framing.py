"""Framed raw PCM: s16le samples in checksummed, numbered frames, so a byte lost or inserted on a UART
costs one frame instead of misaligning every later sample.

One frame (all integers little-endian; 13 bytes of overhead)::

    offset  size  field
    0       4     magic b"EASD" (0x45 0x41 0x53 0x44)
    4       1     version (high nibble, 1) | flags (low nibble): 0x01 START = first frame since the
                  sender (re)started; 0x02..0x08 reserved, sent as 0, ignored by readers
    5       2     sequence number, uint16, +1 per frame, wraps 65535 -> 0
    7       2     N, uint16: int16 values in the payload, 1 <= N <= 4096, a multiple of the channels
    9       2N    payload: N int16 samples, channels interleaved (``ch0 ch1 ... ch0 ch1 ...``)
    9+2N    4     CRC-32 of bytes [0, 9+2N): zlib.crc32 (IEEE 802.3, reflected 0xEDB88320,
                  init and final xor 0xFFFFFFFF), uint32

Why these choices: the magic is where a reader resynchronizes (it scans for it after damage; audio may
contain it by chance, the CRC rejects such false starts); the CRC covers the header too, so a damaged
sequence number or length is never believed; N <= 4096 keeps a frame at most 8205 bytes (65 640 bits),
where CRC-32 still detects every error of up to 3 flipped bits (Hamming distance 4 up to 91 607 bits,
Koopman 2002) and any burst up to 32 bits, and bounds how far a damaged length can make a reader
wait; the sequence number turns lost frames into a count of lost samples (lost frames x the next good
frame's samples per channel: senders should keep N fixed), up to 32 767 frames in a row; a jump
backwards by more, or the START flag, is a sender restart (continuity unknown). Nothing needs alignment
or floating point: a microcontroller writes it in about 30 lines of C (examples/firmware/easd_framing.c).

:class:`FrameDecoder` takes bytes in any pieces and returns the samples of every intact frame, and a
:class:`~edge_asd.firmware_io.blocks.Gap` where frames are missing so the features restart there.
Nothing it is fed raises, except a frame that passes the CRC but is not version 1 or splits a
multichannel sample (a misconfigured sender, EdgeAsdError).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.firmware_io.blocks import Gap

MAGIC = b"EASD"
VERSION = 1
FLAG_START = 0x01
"""Flag: the first frame since the sender (re)started; its sequence number may be anything."""
MAX_VALUES = 4096
"""Most int16 values in one frame's payload (256 ms of one 16-kHz channel)."""
HEADER = struct.Struct("<4sBHH")  # magic, version|flags, sequence, N: 9 bytes
CRC = struct.Struct("<I")
OVERHEAD = HEADER.size + CRC.size  # 13 bytes per frame


def encode_frame(samples: np.ndarray, sequence: int, flags: int = 0) -> bytes:
    """One frame holding ``samples`` (int16, shape (N,) or (n, channels) interleaved row by row).

    Raises:
        ValueError: no samples, more than MAX_VALUES, or not int16.
    """
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        raise ValueError(f"samples must be int16, not {samples.dtype}")
    if not 1 <= samples.size <= MAX_VALUES:
        raise ValueError(f"a frame holds 1..{MAX_VALUES} samples, not {samples.size}")
    body = HEADER.pack(MAGIC, (VERSION << 4) | (flags & 0x0F), sequence & 0xFFFF, samples.size)
    body += samples.astype("<i2").tobytes()
    return body + CRC.pack(zlib.crc32(body))


def encode_frames(samples: np.ndarray, frame_samples: int = 256, start_sequence: int = 0,
                  start: bool = True) -> bytes:
    """A whole recording as frames of ``frame_samples`` samples per channel (the last one shorter).

    Args:
        samples: int16, shape (n,) mono or (n, channels).
        frame_samples: samples per channel per frame; ``frame_samples * channels <= MAX_VALUES``.
        start_sequence: sequence number of the first frame (wraps at 65536).
        start: set the START flag on the first frame (a sender that just booted).
    Raises:
        ValueError: see :func:`encode_frame`.
    """
    samples = np.asarray(samples)
    return b"".join(encode_frame(samples[lo:lo + frame_samples], start_sequence + k,
                                 FLAG_START if start and k == 0 else 0)
                    for k, lo in enumerate(range(0, len(samples), frame_samples)))


class FrameDecoder:
    """Framed PCM bytes in, int16 sample arrays (and Gap markers) out.

    ``channels``: interleaved channels the sender uses. Counters since creation: ``frames_ok``,
    ``frames_corrupt`` (a header whose CRC failed), ``frames_lost`` (sequence numbers that never arrived
    intact, corrupt ones included), ``bytes_skipped`` (bytes in no intact frame: garbage, damaged
    frames, a truncated last frame), ``restarts`` (the sender restarted: START flag or a jump back).
    """

    def __init__(self, channels: int = 1):
        self.channels = channels
        self._buf = bytearray()
        self._next: int | None = None  # the sequence number expected next
        self.frames_ok = self.frames_corrupt = self.frames_lost = self.bytes_skipped = self.restarts = 0

    def stats(self) -> dict:
        return {"frames_ok": self.frames_ok, "frames_corrupt": self.frames_corrupt, "frames_lost": self.frames_lost,
                "bytes_skipped": self.bytes_skipped, "sender_restarts": self.restarts}

    def feed(self, data: bytes) -> list:
        """Decode what ``data`` completes. Returns, in stream order, int16 arrays of shape (k,) (the payloads
        of consecutive intact frames joined, channels interleaved) and Gaps (``n_samples`` per channel).
        Raises EdgeAsdError: see the module doc."""
        self._buf += data
        return self._decode(final=False)

    def finish(self) -> list:
        """End of stream: decode what is left; a truncated last frame counts as skipped bytes."""
        return self._decode(final=True)

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def _decode(self, final: bool) -> list:
        buf, out, payloads, pos, size = self._buf, [], [], 0, len(self._buf)
        with memoryview(buf) as view:
            while True:
                if not buf.startswith(MAGIC, pos):  # after an intact frame the next one starts right there
                    i = buf.find(MAGIC, pos)
                    if i < 0:  # keep a tail that may be the start of the next magic
                        keep = size if final else max(pos, size - len(MAGIC) + 1)
                        self.bytes_skipped += keep - pos
                        pos = keep
                        break
                    self.bytes_skipped += i - pos
                    pos = i
                if size - pos < HEADER.size and not final:
                    break  # wait for the rest of the header
                _, version_flags, seq, n = HEADER.unpack_from(buf, pos) if size - pos >= HEADER.size else (0, 0, 0, 0)
                end = pos + HEADER.size + 2 * n + CRC.size
                whole = 1 <= n <= MAX_VALUES and end <= size  # a plausible header and all of its frame
                if 1 <= n <= MAX_VALUES and not whole and not final:
                    break  # wait for the rest of the frame
                if whole and zlib.crc32(view[pos:end - CRC.size]) == CRC.unpack_from(buf, end - CRC.size)[0]:
                    gap = self._check(version_flags, seq, n)
                    if gap is not None:
                        out += [np.frombuffer(b"".join(payloads), "<i2")] if payloads else []
                        out.append(gap)
                        payloads = []
                    payloads.append(bytes(view[pos + HEADER.size:end - CRC.size]))
                    pos = end
                    continue
                self.frames_corrupt += whole  # a whole frame, damaged (else no header, or cut short)
                self.bytes_skipped += 1  # no frame here: look for the next magic from the next byte
                pos += 1
        del buf[:pos]
        return out + ([np.frombuffer(b"".join(payloads), "<i2")] if payloads else [])

    def _check(self, version_flags: int, seq: int, n: int) -> Gap | None:
        """Account for an intact frame; the Gap before it, if frames are missing or the sender restarted."""
        if version_flags >> 4 != VERSION:
            raise EdgeAsdError(f"framed PCM version {version_flags >> 4}; this reader knows version {VERSION}")
        if n % self.channels:
            raise EdgeAsdError(f"a frame of {n} samples does not hold whole {self.channels}-channel samples "
                               "(check --pcm-channels)")
        self.frames_ok += 1
        expected, self._next = self._next, (seq + 1) & 0xFFFF
        if expected is None or (seq == expected and not version_flags & FLAG_START):
            return None
        missing = (seq - expected) & 0xFFFF
        if version_flags & FLAG_START or missing >= 0x8000:
            self.restarts += 1
            return Gap(0)  # how much the restart lost is unknown; the features restart all the same
        self.frames_lost += missing
        return Gap(missing * (n // self.channels))
