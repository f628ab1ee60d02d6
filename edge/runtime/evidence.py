"""Evidence for each anomaly event: the audio around it as FLAC, and optionally its log-mel as PNG.

The clip of an event whose context vector covers samples ``[a, b)`` is ``[a - before_s, b + after_s)``.
Its path is known when the event happens and goes into the event line at once; the file is written
when the ``after_s`` seconds have arrived (or at the end of the stream, shorter). Events whose clips
overlap share one clip, extended to cover the later event (at most ``max_clip_s`` seconds), so a
long anomaly gives one file, not one per event. Samples lost in a Gap are simply absent from a clip.
A clip that cannot be written (full disk) is logged as an error; monitoring goes on. A clip is encoded in
memory and written to a temporary name, then renamed: no path an event names ever holds a partial clip.

Memory: the audio is kept as int16 (the clip's own samples), only as far back as a new clip may start
(``before_s`` + one context vector) or the oldest pending clip starts; a clip is encoded block by block.

PNG needs matplotlib (imported only when ``png=True``).
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections import deque
from pathlib import Path

import numpy as np

from edge_asd.core.atomic_io import atomic_write_bytes
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.presets import FeatureConfig

log = logging.getLogger("edge_asd")


def to_pcm16(block: np.ndarray) -> np.ndarray:
    """Float samples (full scale 1.0) -> int16 as the clip's 16-bit FLAC stores them: ``round(x * 32768)``,
    clipped to [-32768, 32767] (libsndfile 1.2's float -> PCM_16 conversion, byte for byte; the inverse
    of :func:`~edge_asd.firmware_io.audio_file.read_audio`'s ``/ 32768``). Half the memory of float32."""
    scaled = np.rint(np.clip(block, -1.0, 1.0).astype(np.float32) * np.float32(32768))
    return np.clip(scaled, -32768, 32767).astype(np.int16)


class EvidenceRecorder:
    """Keeps the last ``before_s`` (+ one context vector) of audio, as int16, and writes the clips of events.

    Args:
        folder: where clips go (created). prefix: start of each file name (input name, machine ID).
        cfg: the model's feature config (sample rate, hop; the PNG's log-mel).
        before_s, after_s: seconds of audio before the event's vector and after it.
    Raises:
        EdgeAsdError: ``png`` without matplotlib installed, or the folder cannot be created.
    """

    def __init__(self, folder: str | Path, prefix: str, cfg: FeatureConfig, before_s: float = 5.0,
                 after_s: float = 5.0, png: bool = False, max_clip_s: float = 60.0):
        self.folder, self.cfg, self.png = Path(folder), cfg, png
        self.prefix = re.sub(r"[^A-Za-z0-9_-]+", "_", prefix).strip("_")[-60:] or "input"
        self.rate = cfg.sample_rate
        self.before, self.after = int(before_s * self.rate), int(after_s * self.rate)
        self.max_clip = int(max_clip_s * self.rate)
        if png:
            import importlib.util

            if importlib.util.find_spec("matplotlib") is None:
                raise EdgeAsdError("--evidence-png needs matplotlib: pip install matplotlib")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdgeAsdError(f"{self.folder}: cannot create the evidence folder ({e.strerror})") from None
        self._blocks: deque[tuple[int, np.ndarray]] = deque()  # (absolute start sample, int16 samples)
        self._pending: list[dict] = []  # clips waiting for their after_s: start, end, paths, event frames
        self.n_written = 0
        self.n_failed = 0

    def push(self, block: np.ndarray, start_sample: int) -> None:
        """Samples ``[start_sample, start_sample + len(block))`` of the stream (absolute indices)."""
        self._blocks.append((start_sample, to_pcm16(block)))
        keep_from = start_sample - self.before - self.cfg.samples_per_vector  # the earliest start of a new clip
        if self._pending:
            keep_from = min(keep_from, min(c["start"] for c in self._pending))
        while self._blocks and self._blocks[0][0] + len(self._blocks[0][1]) < keep_from:
            self._blocks.popleft()

    def request(self, event: dict, vector_start: int, vector_end: int) -> dict:
        """Paths (``audio``, and ``image`` with png) of the clip that will hold ``event``'s audio."""
        start, end = max(0, vector_start - self.before), vector_end + self.after
        last = self._pending[-1] if self._pending else None
        if last is not None and start <= last["end"] and end - last["start"] <= self.max_clip:
            last["end"] = max(last["end"], end)
            last["frames"].append((event["frame"], vector_start, vector_end))
            return last["paths"]
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        stem = str(self.folder / f"{self.prefix}_{stamp}_w{event['window']}_f{event['frame']}")
        paths = {"audio": stem + ".flac"}
        if self.png:
            paths["image"] = stem + ".png"
        self._pending.append({"start": start, "end": end, "paths": paths,
                              "frames": [(event["frame"], vector_start, vector_end)]})
        return paths

    def flush(self, position: int, final: bool = False) -> None:
        """Write the clips whose end has arrived (``position``: samples seen so far), all of them if ``final``."""
        while self._pending and (final or self._pending[0]["end"] <= position):
            self._write(self._pending.pop(0))

    def _parts(self, start: int, end: int) -> list[np.ndarray]:
        """Views of the kept blocks covering samples ``[start, end)`` (lost samples absent), in order."""
        return [b[max(0, start - s):max(0, end - s)] for s, b in self._blocks if s < end and s + len(b) > start]

    def _write(self, clip: dict) -> None:
        import soundfile as sf

        parts = self._parts(clip["start"], clip["end"])
        if not parts:
            return
        try:  # whole or not at all: a full disk never leaves a cut clip at the path the event names
            buf = io.BytesIO()  # encoded block by block: no copy of the whole clip
            with sf.SoundFile(buf, "w", self.rate, 1, "PCM_16", format="FLAC") as f:
                for part in parts:
                    f.write(part)
            atomic_write_bytes(Path(clip["paths"]["audio"]), buf.getbuffer())
            if self.png:
                self._write_png(clip, np.concatenate(parts).astype(np.float32) / 32768)
            self.n_written += 1
        except (OSError, RuntimeError, EdgeAsdError) as e:  # full disk, folder gone: the events still stand
            self.n_failed += 1
            log.error("evidence %s not written: %s", clip["paths"]["audio"], e)

    def _write_png(self, clip: dict, audio: np.ndarray) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from edge_asd.core.features import logmel

        psi = logmel(audio, self.cfg)
        hop_s = self.cfg.hop_samples / self.rate
        fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
        ax.imshow(psi.T, origin="lower", aspect="auto", cmap="magma", extent=(0, len(psi) * hop_s, 0, psi.shape[1]))
        for _frame, a, b in clip["frames"]:
            ax.axvspan((a - clip["start"]) / self.rate, (b - clip["start"]) / self.rate, color="cyan", alpha=0.25)
        ax.set_xlabel("time in clip (s)")
        ax.set_ylabel("mel band")
        ax.set_title(Path(clip["paths"]["audio"]).stem, fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        atomic_write_bytes(Path(clip["paths"]["image"]), buf.getvalue())
