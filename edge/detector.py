"""The frame-wise decision of Koizumi et al. 2019, eqs. (4) and (11), as a streaming detector.

A recording (operation window) is anomalous when any frame's anomaly score reaches the threshold phi,
i.e. when ``max_t A(x_t) >= phi`` (eq. 11). The detector keeps that running max over the current
window and emits an event for every frame whose score is ``>= phi`` *and* greater than the window's
running max so far, so a long anomaly gives a few events that each raise the max, not a flood.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

EVENT_SCHEMA = 1


@dataclass(frozen=True)
class Event:
    """One JSON line of ``edge-monitor`` (schema version ``EVENT_SCHEMA``)."""

    time_s: float
    """Seconds from stream start at which the frame's context vector became complete."""
    frame: int
    """Index of the context vector in the stream (0-based)."""
    score: float
    """Anomaly score A(x_t), eq. 5."""
    running_max: float | None
    """The window's max score before this frame (None at the window's first frame)."""
    phi: float
    machine_id: str
    model_sha256: str
    window: int
    """Operation window index (0 for the whole stream)."""

    def to_dict(self) -> dict:
        return {"schema": EVENT_SCHEMA, "event": "anomaly", **asdict(self)}


class RunningMaxDetector:
    """Running max of the anomaly score over operation windows; events per the rule above.

    Args:
        phi: threshold, same unit as the anomaly score.
        window_s: reset the running max every ``window_s`` seconds of stream time; None = whole stream.
    """

    def __init__(self, phi: float, machine_id: str, model_sha256: str, window_s: float | None = None):
        if not math.isfinite(phi):
            raise ValueError(f"phi must be finite, not {phi}")
        if window_s is not None and window_s <= 0:
            raise ValueError("window_s must be positive")
        self.phi, self.machine_id, self.model_sha256, self.window_s = phi, machine_id, model_sha256, window_s
        self.window = 0
        self.running_max: float | None = None
        self.n_frames = 0
        self.n_events = 0
        self.n_nonfinite = 0  # frames whose score was NaN or infinite: skipped, reported in the summary
        self.max_score: float | None = None
        self.max_time_s: float | None = None

    def update(self, frame: int, time_s: float, score: float) -> Event | None:
        """Take one frame's score; return an Event when it pushes the window's max over phi."""
        if self.window_s is not None:
            window = int(time_s // self.window_s)
            if window != self.window:
                self.window, self.running_max = window, None
        self.n_frames += 1
        if not math.isfinite(score):  # never let NaN become the running max and silence the window
            self.n_nonfinite += 1
            return None
        if self.max_score is None or score > self.max_score:
            self.max_score, self.max_time_s = score, time_s
        previous = self.running_max
        if previous is None or score > previous:
            self.running_max = score
        if score >= self.phi and (previous is None or score > previous):
            self.n_events += 1
            return Event(round(time_s, 4), frame, score, previous, self.phi, self.machine_id, self.model_sha256, self.window)
        return None
