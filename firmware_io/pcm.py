"""Raw PCM from a byte stream: stdin, a pipe, or a serial port (a microcontroller streaming its ADC).

Framing (no header, no delimiters, no checksum): signed 16-bit little-endian samples at the model's
sample rate (16 kHz for the shipped presets), ``channels`` interleaved channels (default 1), frame after
frame: ``L0 R0 L1 R1 ...`` for two channels. ``arecord -f S16_LE -r 16000 -c 1 -t raw | edge-monitor
--input -``, or a microcontroller writing ``int16_t`` samples to its USB CDC / UART:
``edge-monitor --input serial:/dev/ttyACM0``. A WAV stream (``RIFF`` header) is also accepted on a
byte stream; its sample rate must be the model's. Raw PCM carries no rate, so a declared rate that is
not the model's is refused rather than guessed.

A serial port is live: a read that returns nothing is a pause, not the end; ``stall_s`` seconds
without a byte raise EdgeAsdError (the sender stopped or the cable is out).

``framing="framed"``: the bytes are frames of :mod:`~edge_asd.firmware_io.pcm_framing` (magic, version,
sequence number, length, samples, CRC-32) instead of bare samples. Damaged bytes are skipped until the
next intact frame, lost frames become a :class:`~edge_asd.firmware_io.blocks.Gap` (the features restart
there), and ``stall_s`` seconds of bytes without one intact frame (or as many bytes as ``stall_s`` of
audio would take) raise EdgeAsdError: the sender does not frame its samples, or sends at another format.
"""

from __future__ import annotations

import logging
import threading
import time
import wave
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.firmware_io.blocks import Gap
from edge_asd.firmware_io.pcm_framing import MAGIC, OVERHEAD, FrameDecoder

log = logging.getLogger("edge_asd")
_INT16_SCALE = 1.0 / 32768.0
SNIFF_BYTES = 64
"""Bytes read ahead from a (non-live) raw stream to recognise what is not raw PCM."""
_CONTAINERS = {b"fLaC": "FLAC", b"OggS": "Ogg", b"ID3": "MP3", b"FORM": "AIFF", b"caff": "CAF"}
_TEXT_BYTES = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}


def sniff_not_pcm(head: bytes) -> str | None:
    """What the first bytes of a stream are when they are not raw PCM: an audio container (``FLAC``, ...)
    or ``text``; None when they may be PCM. Text: :data:`SNIFF_BYTES` bytes all printable ASCII (raw s16le
    audio of a machine hardly ever is: its high bytes are near 0x00 or 0xFF)."""
    for magic, kind in _CONTAINERS.items():
        if head.startswith(magic):
            return kind
    if len(head) >= 16 and all(b in _TEXT_BYTES for b in head):
        return "text"
    return None


class _Prefixed:
    """A byte stream with some bytes already read put back in front."""

    def __init__(self, prefix: bytes, stream: BinaryIO):
        self._prefix, self._stream = prefix, stream

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            data, self._prefix = self._prefix + self._stream.read(), b""
            return data
        head, self._prefix = self._prefix[:n], self._prefix[n:]
        return head + self._stream.read(n - len(head)) if len(head) < n else head


class PcmSource:
    """Blocks of at most ``block_samples`` float32 samples from raw s16le PCM (or a WAV stream).

    Args:
        stream: binary stream (``sys.stdin.buffer``, a pyserial port). With ``read1`` (pipes, files) a
            block is whatever has arrived, so a live pipe is scored without waiting for a full block.
        sample_rate: the model's rate, Hz. ``declared_rate``: the rate the sender uses, if the user
            states it; a mismatch raises EdgeAsdError (raw PCM carries no rate to resample from).
        channels: interleaved channels in raw PCM; ``channel``: the one to score (0-based), or None
            for the mean of all channels.
        live: an empty read means "nothing yet" (serial port) instead of end of stream.
        stall_s: seconds a live stream may send nothing (and a framed one nothing intact) before EdgeAsdError.
        framing: "raw" (bare s16le, or a WAV stream) or "framed" (see the module doc).
    Yields float32 blocks, shape (k,) with k <= ``block_samples`` for raw PCM (framed: the samples of the
    intact frames one read completed), and Gap markers (framed only).
    Raises:
        EdgeAsdError: rate mismatch, malformed WAV header, bad channel, unknown framing; while iterating: a
        stalled live stream, a framed stream without intact frames.
    """

    poll_s = 0.25

    def __init__(self, stream: BinaryIO, sample_rate: int, block_samples: int, name: str = "stdin",
                 declared_rate: int | None = None, channels: int = 1, channel: int | None = None,
                 live: bool = False, stall_s: float = 5.0, framing: str = "raw"):
        if framing not in ("raw", "framed"):
            raise EdgeAsdError(f"{name}: unknown PCM framing {framing!r} (raw or framed)")
        self.name, self.sample_rate, self.block_samples = name, sample_rate, block_samples
        self.live, self.stall_s = live, stall_s
        self.stop = threading.Event()
        self._stream_obj = stream
        if declared_rate is not None and declared_rate != sample_rate:
            raise EdgeAsdError(
                f"{name}: raw PCM at {declared_rate} Hz, but the model needs {sample_rate} Hz; "
                f"resample upstream (e.g. sox ... -r {sample_rate})"
            )
        head = b"" if live or framing == "framed" else stream.read(SNIFF_BYTES)
        self._channels = channels
        self._decoder = FrameDecoder(channels) if framing == "framed" else None
        if head.startswith(b"RIFF"):
            try:
                w = wave.open(_Prefixed(head, stream), "rb")
            except wave.Error as e:
                if "unknown format: 3" in str(e):
                    raise EdgeAsdError(f"{name}: a WAV of float samples; send 16-bit PCM (e.g. sox in.wav -b 16 -t wav -)") from None
                raise EdgeAsdError(f"{name}: malformed WAV header ({e})") from None
            except EOFError as e:
                raise EdgeAsdError(f"{name}: malformed WAV header ({e})") from None
            if w.getframerate() != sample_rate:
                raise EdgeAsdError(f"{name}: wrong sample rate {w.getframerate()} Hz, the model needs {sample_rate} Hz")
            if w.getsampwidth() != 2:
                raise EdgeAsdError(f"{name}: WAV with {8 * w.getsampwidth()}-bit samples; send 16-bit PCM")
            self._channels = w.getnchannels()
            self._read = lambda n: w.readframes(n // (2 * self._channels)) or self._after_wav(stream)
            log.info("%s: WAV stream, %d Hz, %d channel(s)", name, sample_rate, self._channels)
        else:
            kind = sniff_not_pcm(head)
            if kind is not None:
                raise EdgeAsdError(f"{name}: the stream is {kind}, not raw PCM: send 16-bit PCM or a 16-bit WAV stream "
                                   "(e.g. ffmpeg -i FILE -f s16le -ar 16000 -ac 1 -), or pass the file as --input FILE")
            if head.startswith(MAGIC):
                log.warning("%s: the stream starts like framed PCM (%r); use --pcm-framing framed", name, MAGIC)
            self._pending = head
            read = getattr(stream, "read1", None) if not live else None
            if read is None:
                read = stream.read
            self._read = (lambda n: read(n) or (b"" if live else None))
        if channel is not None and not 0 <= channel < self._channels:
            raise EdgeAsdError(f"{name}: channel {channel} does not exist ({self._channels} channel(s))")
        self.channel = channel
        self.dropped_bytes = 0

    def _after_wav(self, stream: BinaryIO) -> None:
        """End of a WAV stream's data: bytes after it (a second WAV, a trailing chunk) are counted and said."""
        extra = len(stream.read())
        if extra:
            self.dropped_bytes += extra
            log.warning("%s: %d bytes after the WAV stream's data were not scored (a second WAV? send one per run)",
                        self.name, extra)
        return None

    def stats(self) -> dict:
        """``dropped_bytes``; framed: also the FrameDecoder's counters (frames_ok, frames_corrupt, ...)."""
        return {"dropped_bytes": self.dropped_bytes, **(self._decoder.stats() if self._decoder else {})}

    def _to_samples(self, raw: bytes | np.ndarray) -> np.ndarray:
        block = (np.frombuffer(raw, dtype="<i2") if isinstance(raw, bytes) else raw).astype(np.float32) * _INT16_SCALE
        if self._channels > 1:
            block = block.reshape(-1, self._channels)
            block = block.mean(axis=1) if self.channel is None else np.ascontiguousarray(block[:, self.channel])
        return block

    def __iter__(self) -> Iterator[np.ndarray | Gap]:
        return self._iter_framed() if self._decoder is not None else self._iter_raw()

    def _iter_raw(self) -> Iterator[np.ndarray]:
        frame_bytes = 2 * self._channels
        want = self.block_samples * frame_bytes
        pending = getattr(self, "_pending", b"")
        last_data = time.monotonic()
        while not self.stop.is_set():
            raw = self._read(max(1, want - len(pending)))
            if raw is None:  # end of stream
                break
            if not raw:  # a live port with nothing yet
                if time.monotonic() - last_data > self.stall_s:
                    raise EdgeAsdError(f"{self.name}: no data for {self.stall_s:g} s (sender stopped or disconnected?)")
                continue
            last_data = time.monotonic()
            pending += raw
            usable = len(pending) - len(pending) % frame_bytes
            if usable:
                block, pending = self._to_samples(pending[:usable]), pending[usable:]
                yield block
        usable = len(pending) - len(pending) % frame_bytes  # read ahead (SNIFF_BYTES) and never topped up
        if usable:
            yield from (self._to_samples(pending[i:min(i + want, usable)]) for i in range(0, usable, want))
            pending = pending[usable:]
        if pending:
            self.dropped_bytes += len(pending)
            log.warning("%s: stream ended inside a sample; dropped %d byte(s)", self.name, len(pending))

    def _iter_framed(self) -> Iterator[np.ndarray | Gap]:
        dec = self._decoder
        want = self.block_samples * 2 * self._channels + OVERHEAD
        garbage_limit = int(self.stall_s * self.sample_rate * 2 * self._channels)  # bytes of stall_s of audio
        last_data = time.monotonic()
        garbage_since, good = None, dec.stats()  # counters at the last intact frame
        while not self.stop.is_set():
            raw = self._read(want)
            if raw is None:  # end of stream
                break
            now = time.monotonic()
            if not raw:  # a live port with nothing yet
                if now - last_data > self.stall_s:
                    raise EdgeAsdError(f"{self.name}: no data for {self.stall_s:g} s (sender stopped or disconnected?)")
                continue
            last_data = now
            yield from self._blocks(dec.feed(raw))
            if dec.frames_ok > good["frames_ok"]:
                self._log_damage(good)
                garbage_since, good = None, dec.stats()
            elif dec.bytes_skipped > good["bytes_skipped"]:
                garbage_since = garbage_since or now
                skipped = dec.bytes_skipped - good["bytes_skipped"]
                if now - garbage_since > self.stall_s or skipped > garbage_limit:
                    raise EdgeAsdError(f"{self.name}: no intact PCM frame in {skipped} bytes ({now - garbage_since:.1f} s); "
                                       "is the sender framing its samples (else --pcm-framing raw)?")
        cut_short = dec.pending
        yield from self._blocks(dec.finish())
        self._log_damage(good, "; the stream ended inside a frame" if cut_short else "")
        if dec.frames_ok == 0 and dec.bytes_skipped and not self.stop.is_set():
            raise EdgeAsdError(f"{self.name}: no intact PCM frame in {dec.bytes_skipped} bytes; "
                               "is the sender framing its samples (else --pcm-framing raw)?")

    def _blocks(self, items: list) -> Iterator[np.ndarray | Gap]:
        """Decoded frames as float32 blocks: consecutive frames merged, Gaps kept in place."""
        run = []
        for item in items + [None]:
            if (item is None or isinstance(item, Gap)) and run:
                yield self._to_samples(np.concatenate(run))
                run = []
            if isinstance(item, Gap):
                yield item
            elif item is not None:
                run.append(item)

    def _log_damage(self, before: dict, note: str = "") -> None:
        """One warning line for what happened since the counters ``before`` (the last intact frame)."""
        stats = self._decoder.stats()
        delta = {k: v - before[k] for k, v in stats.items()}
        what = [f"{delta[k]} {words}" for k, words in (("frames_lost", "frame(s) lost"), ("frames_corrupt", "corrupt (CRC)"),
                                                       ("bytes_skipped", "byte(s) skipped"),
                                                       ("sender_restarts", "sender restart(s)")) if delta[k]]
        if what:
            restart = "; features restart" if delta["frames_lost"] or delta["sender_restarts"] else ""
            log.warning("%s: framed PCM: %s%s%s (so far: %s)", self.name, ", ".join(what), restart, note,
                        ", ".join(f"{k} {v}" for k, v in stats.items()))

    def close(self) -> None:
        close = getattr(self._stream_obj, "close", None)
        if self.live and close is not None:
            close()


class _SerialReader:
    """A pyserial port read as a live stream: each read returns what has arrived, b"" after ``poll_s``."""

    def __init__(self, port):
        self.port = port

    def read(self, n: int) -> bytes:
        waiting = self.port.in_waiting
        return self.port.read(min(n, waiting) if waiting else 1)

    def close(self) -> None:
        self.port.close()


def open_serial(url: str, sample_rate: int, block_samples: int, baud: int = 921600, channels: int = 1,
                channel: int | None = None, stall_s: float = 5.0, framing: str = "raw") -> PcmSource:
    """Raw PCM from a serial port (``/dev/ttyACM0``, ``COM3``, or a pyserial URL such as ``loop://``).

    Needs pyserial (``pip install 'edge-asd[serial]'``). Raises EdgeAsdError when the port cannot be opened.
    """
    try:
        import serial
    except ImportError:
        raise EdgeAsdError("serial input needs pyserial: pip install 'edge-asd[serial]'") from None
    try:
        port = serial.serial_for_url(url, baudrate=baud, timeout=PcmSource.poll_s)
    except (serial.SerialException, ValueError, OSError) as e:
        raise EdgeAsdError(f"serial:{url}: cannot open the port ({e})") from None
    log.info("serial:%s: %d baud, s16le (%s), %d channel(s) at %d Hz", url, baud, framing, channels, sample_rate)
    return PcmSource(_SerialReader(port), sample_rate, block_samples, f"serial:{url}", channels=channels,
                     channel=channel, live=True, stall_s=stall_s, framing=framing)
