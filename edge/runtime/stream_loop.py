"""The monitoring loop of one input: source blocks -> streaming features -> scores -> windows and
running-max detector -> JSON lines (events, verdicts, summary) and evidence clips.

The loop works on blocks: each block of samples gives the context vectors it completes, all scored
in one call (``Scorer.score_inputs``), and the detector takes the block's scores as one array.
Stream time counts every sample, lost ones too: after a Gap the features restart (no context vector
spans the hole) and times stay true to the clock.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np

from edge_asd.edge.runtime.decision import EVENT_SCHEMA, RunningMaxDetector
from edge_asd.edge.runtime.scorer import Scorer
from edge_asd.edge.runtime.windows import WholeStream, frame_stamps

log = logging.getLogger("edge_asd")

BLOCK_HOPS = 16
"""Hops per block read from a file or stdin pipe (256 ms at 16 kHz, hop 256): the features and the model
run once per block, not once per frame; events keep their frame times. Larger blocks measured slower."""
LIVE_BLOCK_HOPS = 6
"""Hops per block from a microphone or serial port (about 0.1 s): latency matters more there."""


def utc_now() -> str:
    """Wall-clock time, ISO 8601 UTC with milliseconds (``2026-11-26T10:00:00.123Z``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Summary:
    frames: int
    events: int
    audio_s: float
    compute_s: float
    max_score: float | None
    max_time_s: float | None
    silent: bool
    """True when every sample was exactly 0 (a dead input, not a quiet machine)."""
    nonfinite: int = 0
    """Frames whose score was NaN or infinite (skipped by the detector)."""
    windows: int = 0
    """Operation windows closed (each with a verdict line)."""
    anomalous_windows: int = 0
    off_frames: int = 0
    """Frames outside every window (energy gate: machine off)."""
    overflows: int = 0
    """Input overflows the sound card's driver reported."""
    dropped_samples: int = 0
    """Samples lost: inference fell behind (ring buffer full), or framed PCM frames went missing."""
    dropped_bytes: int = 0
    """Bytes of raw PCM that did not make a whole sample frame."""
    evidence_clips: int = 0
    reason: str = "end of input"
    """Why monitoring ended: "end of input", "stopped" (signal), or "error: ..."."""
    frames_ok: int = 0
    """Framed PCM (``--pcm-framing framed``): intact frames received."""
    frames_corrupt: int = 0
    """Framed PCM: frames whose CRC-32 failed (their samples are never scored)."""
    frames_lost: int = 0
    """Framed PCM: frames missing from the sequence numbers (corrupt ones included); the features restart."""
    bytes_skipped: int = 0
    """Framed PCM: bytes in no intact frame (garbage, damaged frames, a truncated last frame)."""
    sender_restarts: int = 0
    """Framed PCM: the sender restarted (START flag or a sequence number jumping back)."""

    @property
    def real_time_factor(self) -> float:
        return self.compute_s / self.audio_s if self.audio_s > 0 else float("nan")

    def line(self, phi: float) -> str:
        peak = "none" if self.max_score is None else f"{self.max_score:.3f} at {self.max_time_s:.2f} s"
        extra = [f"{self.windows} windows, {self.anomalous_windows} anomalous"] if self.windows > 1 else []
        extra += [f"{self.off_frames} frames gated off"] if self.off_frames else []
        extra += [f"{self.nonfinite} frames with a non-finite score skipped"] if self.nonfinite else []
        extra += [f"{self.overflows} input overflows"] if self.overflows else []
        extra += [f"{self.dropped_samples} samples dropped"] if self.dropped_samples else []
        extra += [f"{self.dropped_bytes} bytes dropped"] if self.dropped_bytes else []
        if self.frames_ok or self.bytes_skipped:
            extra += [f"framed PCM: {self.frames_ok} frames ok, {self.frames_corrupt} corrupt, {self.frames_lost} lost, "
                      f"{self.bytes_skipped} bytes skipped" + (f", {self.sender_restarts} sender restarts"
                                                               if self.sender_restarts else "")]
        return (f"{self.frames} frames, {self.events} events, {self.audio_s:.1f} s of audio; max score {peak}; "
                f"phi {phi:.3f}; real-time factor {self.real_time_factor:.5f}"
                + "".join(f"; {x}" for x in extra) + ("" if self.reason == "end of input" else f"; {self.reason}"))

    def to_dict(self) -> dict:
        return {**asdict(self), "real_time_factor": round(self.real_time_factor, 6) if self.audio_s > 0 else None}


class Monitor:
    """Streams one source through one model.

    Args:
        source: iterable of float32 blocks (and Gap markers), see firmware_io.sources.
        emit: called with each JSON record (dict): ``start``, ``anomaly``, ``verdict``, ``summary``.
        name: the input's name, in every record (``input``).
        windows: WholeStream (default), FixedWindows or EnergyGate.
        evidence: an EvidenceRecorder, or None.
    ``run()`` returns the Summary; ``stop()`` (any thread) ends it at the next block; ``finish()`` (any
    thread) closes the open window and writes the summary once, even if the source is stuck in a read.
    """

    def __init__(self, source, scorer: Scorer, detector: RunningMaxDetector, emit, name: str = "input",
                 windows=None, evidence=None):
        self.source, self.scorer, self.detector, self.emit, self.name = source, scorer, detector, emit, name
        self.windows = windows or WholeStream()
        self.evidence = evidence
        self.cfg = scorer.features
        self._feats = scorer.stream()  # standardized context vectors: the model's input
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.summary: Summary | None = None
        self.position = 0  # absolute samples since stream start, lost ones included
        self._segment_start = 0  # absolute sample where the features last (re)started
        self._frame = 0
        self._compute_s = 0.0
        self._silent = True
        self._samples = 0
        self._dropped = 0

    def _record(self, record: dict) -> dict:
        return {"schema": EVENT_SCHEMA, **record, "input": self.name, "wall_time": utc_now()}

    def stop(self) -> None:
        self._stop.set()
        stop = getattr(self.source, "stop", None)
        if stop is not None:
            stop.set()

    def run(self) -> Summary:
        reason = "end of input"
        try:
            self.emit(self._record({"event": "start", "machine_id": self.detector.machine_id, "phi": self.detector.phi,
                                    "model_sha256": self.detector.model_sha256, "window_mode": self.windows.name,
                                    "sample_rate": self.cfg.sample_rate}))
            for item in self.source:
                with self._lock:
                    if self.summary is not None:
                        break
                    self._process(item)
                if self._stop.is_set():
                    reason = "stopped"
                    break
        except KeyboardInterrupt:
            reason = "stopped"
        except Exception as e:
            self.finish(f"error: {e}")
            raise
        else:
            if self._stop.is_set():
                reason = "stopped"
        return self.finish(reason)

    def _process(self, item) -> None:
        cfg = self.cfg
        n_gap = getattr(item, "n_samples", None)
        if n_gap is not None:  # a Gap: samples were lost; restart the features after it
            self.position += n_gap
            self._dropped += n_gap
            self._feats.reset()
            self._segment_start = self.position
            self.windows.skip(n_gap)
            return
        t0 = time.perf_counter()
        block = item
        self._silent = self._silent and not np.any(block)
        self.windows.push(block)
        if self.evidence is not None:
            self.evidence.push(block, self.position)
        first = self._feats.n_vectors
        vectors = self._feats.push(block)
        self.position += len(block)
        self._samples += len(block)
        scores = self.scorer.score_inputs(vectors)
        if len(scores):
            ends = frame_stamps(first, len(scores), cfg, self._segment_start)  # a score's stamp: its vector's end
            wins = self.windows.windows_at(ends)
            for r in self.detector.update_block(self._frame, ends / cfg.sample_rate, scores, wins):
                record = self._record(r.to_dict())
                if record["event"] == "anomaly":
                    end = int(ends[record["frame"] - self._frame])
                    record["evidence"] = (None if self.evidence is None else
                                          self.evidence.request(record, end - cfg.samples_per_vector, end))
                self.emit(record)
            self._frame += len(scores)
        if self.evidence is not None:
            self.evidence.flush(self.position)
        self._compute_s += time.perf_counter() - t0

    def finish(self, reason: str = "stopped") -> Summary:
        """Close the open window (its verdict), write pending evidence and the summary line; once."""
        with self._lock:
            if self.summary is not None:
                return self.summary
            det = self.detector
            verdict = det.close()
            if verdict is not None:
                self._emit_last(self._record(verdict.to_dict()))
            if self.evidence is not None:
                self.evidence.flush(self.position, final=True)
            stats = getattr(self.source, "stats", lambda: {})()
            self.summary = Summary(
                det.n_frames, det.n_events, self.position / self.cfg.sample_rate, self._compute_s, det.max_score,
                det.max_time_s, self._silent and self._samples > 0, det.n_nonfinite, det.n_windows,
                det.n_anomalous_windows, det.n_off, stats.get("overflows", 0),
                max(self._dropped, stats.get("dropped_samples", 0)), stats.get("dropped_bytes", 0),
                self.evidence.n_written if self.evidence is not None else 0, reason,
                **{k: stats.get(k, 0) for k in ("frames_ok", "frames_corrupt", "frames_lost", "bytes_skipped",
                                                "sender_restarts")})
            self._emit_last(self._record({"event": "summary", "machine_id": det.machine_id, "phi": det.phi,
                                          "model_sha256": det.model_sha256, **self.summary.to_dict()}))
            return self.summary

    def _emit_last(self, record: dict) -> None:
        """Emit while shutting down: a sink that fails now (full disk) is logged, the shutdown goes on."""
        try:
            self.emit(record)
        except OSError as e:
            log.error("%s: %s line not written: %s", self.name, record["event"], e)


def monitor(source, scorer: Scorer, detector: RunningMaxDetector, on_event, windows=None) -> Summary:
    """Run one source to its end (or Ctrl-C); ``on_event(dict)`` gets every record. Returns the Summary.

    ``compute_s`` counts feature, inference and detector time only, not time spent waiting for audio.
    """
    return Monitor(source, scorer, detector, on_event, windows=windows).run()
