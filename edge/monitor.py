"""The monitoring loop: source blocks -> streaming features -> scores -> running-max detector -> sink."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .detector import RunningMaxDetector
from .features import vector_end_s
from .scorer import Scorer

BLOCK_HOPS = 32
"""Hops per block handed to the features and the model in one call (512 ms at 16 kHz, hop 256): numpy
and the interpreter run once per block, not once per frame. Events keep their frame times."""


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

    @property
    def real_time_factor(self) -> float:
        return self.compute_s / self.audio_s if self.audio_s > 0 else float("nan")

    def line(self, phi: float) -> str:
        peak = "none" if self.max_score is None else f"{self.max_score:.3f} at {self.max_time_s:.2f} s"
        return (f"{self.frames} frames, {self.events} events, {self.audio_s:.1f} s of audio; max score {peak}; "
                f"phi {phi:.3f}; real-time factor {self.real_time_factor:.5f}"
                + (f"; {self.nonfinite} frames with a non-finite score skipped" if self.nonfinite else ""))


def monitor(source, scorer: Scorer, detector: RunningMaxDetector, on_event) -> Summary:
    """Run until the source ends; ``on_event(dict)`` gets each event. Interrupts keep the summary.

    ``compute_s`` counts feature and inference time only, not time spent waiting for audio.
    """
    feats = scorer.stream()  # standardized context vectors: the model's input
    cfg = scorer.features
    n_samples, compute_s, silent = 0, 0.0, True
    try:
        for block in source:
            t0 = time.perf_counter()
            n_samples += len(block)
            silent = silent and not np.any(block)
            first = feats.n_vectors
            vectors = feats.push(block)
            scores = scorer.score_inputs(vectors)
            compute_s += time.perf_counter() - t0
            times = vector_end_s(np.arange(first, first + len(scores)), cfg).tolist()
            for k, (time_s, score) in enumerate(zip(times, scores.tolist())):
                event = detector.update(first + k, time_s, score)
                if event is not None:
                    on_event(event.to_dict())
    except KeyboardInterrupt:
        pass
    return Summary(detector.n_frames, detector.n_events, n_samples / cfg.sample_rate, compute_s,
                   detector.max_score, detector.max_time_s, silent and n_samples > 0, detector.n_nonfinite)
