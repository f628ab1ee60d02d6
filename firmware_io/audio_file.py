"""WAV/FLAC (anything libsndfile reads) as mono float32 at the model's sample rate.

Multichannel input is mixed down (mean of channels) and other sample rates are resampled with soxr;
both are logged. Missing, empty, non-audio, truncated or NaN-carrying files raise EdgeAsdError.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_asd.core.errors import EdgeAsdError

log = logging.getLogger("edge_asd")


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")
FILE_RATE_HZ = (4000, 768000)
"""Sample rates a file may declare, Hz (inclusive). A damaged header claiming 1-4 Hz would be resampled into
hours of audio (a 96-KB file: 13 h, minutes of CPU); 768 kHz is the highest rate audio interfaces record."""


def audio_files(directory: str | Path) -> list[Path]:
    """Audio files (by suffix, any case) below ``directory``, sorted.

    Follows links to folders once (no loops), skips hidden folders and ``__MACOSX``.
    """
    found, seen = [], set()
    for folder, dirnames, filenames in os.walk(directory, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__MACOSX"]
        found += [Path(folder, name) for name in filenames if name.lower().endswith(AUDIO_SUFFIXES)]
    return sorted(found)



def find_recordings(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders expanded to the audio files below them (recursively, sorted by path).

    Raises:
        EdgeAsdError: a path does not exist, a folder holds no audio file, or no path was given.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = audio_files(p)
            if not found:
                raise EdgeAsdError(f"{p}: no audio files in this folder (.wav, .flac, .ogg, .aiff)")
            out += found
        elif not p.exists():
            raise EdgeAsdError(f"{p}: no such file or folder")
        else:
            out.append(p)
    if not out:
        raise EdgeAsdError("no recordings given: name audio files or folders")
    return out

def _open(path: Path) -> sf.SoundFile:
    if not path.exists():
        raise EdgeAsdError(f"{path}: no such file")
    if path.is_dir():
        raise EdgeAsdError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise EdgeAsdError(f"{path}: empty file")
    if path.suffix.lower() == ".raw":  # libsndfile reads a .raw name as headerless PCM and wants its format
        raise EdgeAsdError(f"{path}: a .raw file has no header to give its sample rate and format: stream it as raw "
                           "PCM (--input - with --pcm-rate), or give the file its real extension (.wav, .flac)")
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise EdgeAsdError(f"{path}: not a readable audio file ({str(e).split(':')[-1].strip() or 'unknown format'})") from None
    if f.frames == 0:
        f.close()
        raise EdgeAsdError(f"{path}: no audio samples")
    if not FILE_RATE_HZ[0] <= f.samplerate <= FILE_RATE_HZ[1]:
        f.close()
        raise EdgeAsdError(f"{path}: the header declares a sample rate of {f.samplerate} Hz, outside "
                           f"{FILE_RATE_HZ[0]}..{FILE_RATE_HZ[1]} Hz: a damaged or foreign file")
    return f


def _declared_frames(path: Path, f: sf.SoundFile) -> int | None:
    """Frames the WAV header's data chunk announces (libsndfile clamps to the bytes present).

    None when the file is not a RIFF WAV or the size is unknown (a streamed WAV writes 0 or 0xFFFFFFFF).
    """
    if f.format != "WAV":
        return None
    with open(path, "rb") as fh:
        if fh.read(12)[:4] != b"RIFF":
            return None
        block_align = None
        while len(header := fh.read(8)) == 8:
            chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk_id == b"fmt ":
                fmt = fh.read(size + size % 2)
                block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
            elif chunk_id == b"data":
                if not block_align or size in (0, 0xFFFFFFFF):
                    return None
                return size // block_align
            else:
                fh.seek(size + size % 2, 1)
    return None


def _mono(block: np.ndarray) -> np.ndarray:
    return block.mean(axis=1) if block.ndim == 2 else block


class FileSource:
    """Blocks of ``block_samples`` (last one may be shorter) from an audio file, at ``sample_rate`` Hz.

    ``channel``: the channel to read (0-based), or None for the mean of all channels.
    """

    def __init__(self, path: str | Path, sample_rate: int, block_samples: int, channel: int | None = None):
        self.path, self.sample_rate, self.block_samples = Path(path), sample_rate, block_samples
        self._f = _open(self.path)
        if channel is not None and not 0 <= channel < self._f.channels:
            self._f.close()
            raise EdgeAsdError(f"{self.path}: no channel {channel} ({self._f.channels} channel(s))")
        self.channel = channel
        declared = _declared_frames(self.path, self._f)
        if declared is not None and declared > self._f.frames:
            self._f.close()
            raise EdgeAsdError(
                f"{self.path}: truncated WAV (header announces {declared} frames, file holds {self._f.frames})"
            )
        self.file_rate, self.channels = self._f.samplerate, self._f.channels
        if self.channels > 1 and channel is None:
            log.info("%s: mixing %d channels down to mono", self.path, self.channels)
        self._resampler = None
        if self.file_rate != sample_rate:
            import soxr

            log.info("%s: resampling %d Hz -> %d Hz (soxr)", self.path, self.file_rate, sample_rate)
            self._resampler = soxr.ResampleStream(self.file_rate, sample_rate, 1, dtype="float32")

    def __iter__(self) -> Iterator[np.ndarray]:
        pending = np.zeros(0, dtype=np.float32)
        read = max(1, round(self.block_samples * self.file_rate / self.sample_rate))
        try:
            while True:
                raw = self._f.read(read, dtype="float32", always_2d=False)
                last = len(raw) < read
                block = _mono(raw) if self.channel is None or raw.ndim == 1 else np.ascontiguousarray(raw[:, self.channel])
                if not np.all(np.isfinite(block)):
                    raise EdgeAsdError(f"{self.path}: contains NaN or infinite samples")
                if self._resampler is not None:
                    block = self._resampler.resample_chunk(block, last=last)
                pending = np.concatenate([pending, block])
                while len(pending) >= self.block_samples:
                    yield pending[: self.block_samples]
                    pending = pending[self.block_samples:]
                if last:
                    break
        except sf.LibsndfileError as e:
            raise EdgeAsdError(f"{self.path}: corrupt audio data ({e})") from None
        finally:
            self._f.close()
        if len(pending):
            yield pending

    def close(self) -> None:
        self._f.close()


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Whole file as mono float32 in [-1, 1] at ``sample_rate`` Hz, shape (N,).

    Raises:
        EdgeAsdError: missing, empty, non-audio, truncated, NaN-carrying or digitally silent file.
    """
    src = FileSource(path, sample_rate, 1 << 16)
    samples = np.concatenate(list(src))
    if not np.any(samples):
        raise EdgeAsdError(f"{path}: digital silence (all samples are 0)")
    return samples
