"""One input's monitoring loop: source blocks -> streaming features -> scores -> the alert policy's votes
(:mod:`~edge_asd.edge.runtime.alert`: policy scores) -> operation windows and the running-max decision
(:mod:`~edge_asd.edge.runtime.decision`) -> event lines (start, anomaly, verdict, alarm, health, summary; :mod:`~edge_asd.edge.runtime.events`) and evidence clips. Every block also goes through
the input-health checker (:mod:`~edge_asd.edge.runtime.health`): its state changes become ``health``
lines, and the frames whose audio fails it are not scored as machine sound. Several inputs in one process:
:mod:`~edge_asd.edge.runtime.service`.

The loop works on blocks: each block of samples gives the context vectors it completes, all scored
in one call (``Scorer.score_inputs``), and the detector takes the block's scores as one array.
Stream time counts every sample, lost ones too: after a Gap the features restart (no context vector
spans the hole) and times stay true to the clock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import numpy as np

from edge_asd.edge.runtime.alert import VoteFilter
from edge_asd.edge.runtime.decision import RunningMaxDetector
from edge_asd.edge.runtime.events import ALARM, ANOMALY, Start, Summary, event_line
from edge_asd.edge.runtime.health import HealthChecker
from edge_asd.edge.runtime.scorer import Scorer
from edge_asd.edge.runtime.windows import OFF, WholeStream, frame_stamps
from edge_asd.firmware_io.blocks import Source

log = logging.getLogger("edge_asd")

BLOCK_HOPS = 16
"""Hops per block read from a file or stdin pipe (256 ms at 16 kHz, hop 256): the features and the model
run once per block, not once per frame; events keep their frame times. Larger blocks measured slower."""
LIVE_BLOCK_HOPS = 6
"""Hops per block from a microphone or serial port (about 0.1 s): latency matters more there."""


class Monitor:
    """Streams one source through one model.

    Args:
        source: float32 blocks and Gap markers (:class:`~edge_asd.firmware_io.blocks.Source`); a live one's
            ``stop`` and ``stats()`` are used when it has them.
        emit: called with each event line (dict, :func:`~edge_asd.edge.runtime.events.event_line`):
            ``start``, ``anomaly``, ``verdict``, ``summary``.
        name: the input's name, in every record (``input``).
        windows: WholeStream (default), FixedWindows or EnergyGate.
        evidence: an EvidenceRecorder, or None.
        health: a HealthChecker (default: one with the module's thresholds and no calibration reference).
    ``run()`` returns the Summary; ``stop()`` (any thread) ends it at the next block; ``finish()`` (any
    thread) closes the open window and writes the summary once, even if the source is stuck in a read.
    ``request(fn)`` (any thread) runs ``fn(monitor)`` in the monitor's thread between two blocks (a model
    swap: :meth:`swap`). ``rollout`` (set by the service, :class:`~edge_asd.edge.runtime.rollout.Rollout`):
    its ``observe(monitor)`` runs after each block and its ``failed(monitor, error)`` may take a scoring error
    over (True: the block is dropped and the run goes on).
    """

    def __init__(self, source: Source, scorer: Scorer, detector: RunningMaxDetector, emit, name: str = "input",
                 windows=None, evidence=None, health: HealthChecker | None = None):
        self.source, self.scorer, self.detector, self.emit, self.name = source, scorer, detector, emit, name
        self.windows = windows or WholeStream()
        self.evidence = evidence
        self.cfg = scorer.features
        self.health = health or HealthChecker(self.cfg.sample_rate, self.cfg.hop_samples)
        self._feats = scorer.stream()  # standardized context vectors: the model's input
        self._votes = VoteFilter(detector.policy)  # frame scores -> policy scores (1/1: unchanged)
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
        self._requests: queue.Queue = queue.Queue()
        self.rollout = None
        self._retired: list[RunningMaxDetector] = []  # detectors swapped out: the summary counts them too

    @property
    def frames(self) -> int:
        """Context vectors scored so far."""
        return self._frame

    def _line(self, record: dict) -> dict:
        return event_line(record, self.name)

    def stop(self) -> None:
        self._stop.set()
        stop = getattr(self.source, "stop", None)
        if stop is not None:
            stop.set()

    def run(self) -> Summary:
        reason = "end of input"
        try:
            det = self.detector
            self.emit(self._line(Start(det.machine_id, det.phi, det.model_sha256, self.windows.name,
                                       self.cfg.sample_rate, det.policy.to_dict()).to_dict()))
            for item in self.source:
                with self._lock:
                    if self.summary is not None:
                        break
                    self._run_requests()
                    try:
                        self._process(item)
                    except Exception as e:
                        if self.rollout is None or not self.rollout.failed(self, e):
                            raise
                    if self.rollout is not None:
                        self.rollout.observe(self)
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

    def request(self, fn) -> None:
        """Run ``fn(monitor)`` in the monitor's thread before its next block (any thread may call this)."""
        self._requests.put(fn)

    def _run_requests(self) -> None:
        while True:
            try:
                fn = self._requests.get_nowait()
            except queue.Empty:
                return
            fn(self)

    def swap(self, scorer: Scorer, detector: RunningMaxDetector) -> None:
        """Go on with another model and phi from the next block, in the same stream (monitor thread only): the
        open window's verdict is written, the features restart, a new ``start`` line names the model and phi.

        Raises:
            EdgeAsdError: the model reads audio at another sample rate or hop than the stream's.
        """
        from edge_asd.core.errors import EdgeAsdError

        new = scorer.features
        if (new.sample_rate, new.hop_samples) != (self.cfg.sample_rate, self.cfg.hop_samples):
            raise EdgeAsdError(f"{self.name}: the new model reads {new.sample_rate} Hz, hop {new.hop_samples}; the "
                               f"stream is {self.cfg.sample_rate} Hz, hop {self.cfg.hop_samples}")
        verdict = self.detector.close()
        if verdict is not None:
            self.emit(self._line(verdict.to_dict()))
        self._retired.append(self.detector)
        self.scorer, self.detector, self.cfg = scorer, detector, new
        self._feats = scorer.stream()
        self._votes = VoteFilter(detector.policy)
        self._segment_start = self.position
        self.emit(self._line(Start(detector.machine_id, detector.phi, detector.model_sha256, self.windows.name,
                                   new.sample_rate, detector.policy.to_dict()).to_dict()))

    def _process(self, item) -> None:
        cfg = self.cfg
        n_gap = getattr(item, "n_samples", None)
        if n_gap is not None:  # a Gap: samples were lost; restart the features after it
            self._emit_health(self.health.gap(n_gap))
            self.position += n_gap
            self._dropped += n_gap
            self._feats.reset()
            self._votes.reset()
            self._segment_start = self.position
            self.windows.skip(n_gap)
            return
        t0 = time.perf_counter()
        block = item
        self._silent = self._silent and not np.any(block)
        health = self.health.push_decided(block)  # (decided at sample, line): placed among the frames below
        stats = getattr(self.source, "stats", None)
        if stats is not None:
            self._emit_health(self.health.overflows(stats().get("overflows", 0)))
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
            scored = np.array([r is None for r in self.health.skip_reasons(ends, cfg.samples_per_vector)])
            scores, scored = self._votes.push(scores, scored & (wins != OFF))  # frames off vote -inf
            for r in self.detector.update_block(self._frame, ends / cfg.sample_rate, scores, wins, scored):
                record = self._line(r.to_dict())
                if record["event"] in (ANOMALY, ALARM):
                    end = int(ends[record["frame"] - self._frame])
                else:  # a verdict: placed at its window's last frame
                    end = round(record["end_s"] * cfg.sample_rate)
                if record["event"] == ANOMALY:
                    record["evidence"] = (None if self.evidence is None else
                                          self.evidence.request(record, end - cfg.samples_per_vector, end))
                while health and health[0][0] <= end:  # health decided up to this frame comes first
                    self._emit_health([health.pop(0)[1]])
                self.emit(record)
            self._frame += len(scores)
        self._emit_health([line for _, line in health])
        if self.evidence is not None:
            self.evidence.flush(self.position)
        self._compute_s += time.perf_counter() - t0

    def finish(self, reason: str = "stopped") -> Summary:
        """Close the open window (its verdict), write pending evidence and the summary line; once. After a
        :meth:`swap` the counts and the max score cover every model of the run; phi and model are the last's."""
        with self._lock:
            if self.summary is not None:
                return self.summary
            det = self.detector
            for h in self.health.finish():
                if h.status == "start":  # a condition that held from start to end, shorter than its hold time
                    log.warning("%s: input health: %s from %.2f s: %s", self.name, h.state, h.time_s, h.reason)
                self._emit_last(self._line(h.to_dict()))
            verdict = det.close()
            if verdict is not None:
                self._emit_last(self._line(verdict.to_dict()))
            if self.evidence is not None:
                self.evidence.flush(self.position, final=True)
            stats = getattr(self.source, "stats", lambda: {})()
            every = self._retired + [det]
            total = {k: sum(getattr(d, k) for d in every) for k in ("n_frames", "n_events", "n_nonfinite", "n_windows",
                                                                   "n_anomalous_windows", "n_off", "n_alarms")}
            top = max((d for d in every if d.max_score is not None), key=lambda d: d.max_score, default=det)
            self.summary = Summary(
                total["n_frames"], total["n_events"], self.position / self.cfg.sample_rate, self._compute_s,
                top.max_score, top.max_time_s, self._silent and self._samples > 0, total["n_nonfinite"],
                total["n_windows"], total["n_anomalous_windows"], total["n_off"], stats.get("overflows", 0),
                max(self._dropped, stats.get("dropped_samples", 0)), stats.get("dropped_bytes", 0),
                self.evidence.n_written if self.evidence is not None else 0, reason,
                **{k: stats.get(k, 0) for k in ("frames_ok", "frames_corrupt", "frames_lost", "bytes_skipped",
                                                "sender_restarts")},
                health_skipped=self.health.summary()["skipped"], health_states=self.health.summary()["starts"],
                alarms=total["n_alarms"])
            self._emit_last(self._line(self.summary.to_record(det.machine_id, det.phi, det.model_sha256)))
            return self.summary

    def _emit_health(self, lines: list) -> None:
        """Write Health lines; a state's start is also a WARNING in the log (the journal), its end INFO."""
        for h in lines:
            if h.status == "start":
                log.warning("%s: input health: %s from %.2f s: %s", self.name, h.state, h.time_s, h.reason)
            else:
                log.info("%s: input health: %s ended at %.2f s: %s", self.name, h.state, h.time_s, h.reason)
            self.emit(self._line(h.to_dict()))

    def _emit_last(self, record: dict) -> None:
        """Emit while shutting down: a sink that fails now (full disk) is logged, the shutdown goes on."""
        try:
            self.emit(record)
        except OSError as e:
            log.error("%s: %s line not written: %s", self.name, record["event"], e)


def monitor(source: Source, scorer: Scorer, detector: RunningMaxDetector, on_event, windows=None) -> Summary:
    """Run one source to its end (or Ctrl-C); ``on_event(dict)`` gets every record. Returns the Summary.

    ``compute_s`` counts feature, inference and detector time only, not time spent waiting for audio.
    """
    return Monitor(source, scorer, detector, on_event, windows=windows).run()
