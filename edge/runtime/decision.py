"""The decision: eq. (11) of Koizumi et al. 2019 (with eq. 4's frame-wise scores) as a streaming running-max
detector over operation windows. It sees scores, never audio; the stream loop
(:mod:`edge_asd.edge.runtime.stream_loop`) feeds it and writes what it returns as event lines.

An operation window (see :mod:`edge_asd.edge.runtime.windows`) is anomalous when any frame's anomaly score
reaches the threshold phi, i.e. when ``max_t A(x_t) >= phi`` (eq. 11). The detector keeps that running
max over the current window and

- emits an :class:`~edge_asd.edge.runtime.events.Event` (an ``anomaly`` line) for every frame whose score
  is ``>= phi`` *and* greater than the window's running max so far, so a long anomaly gives a few events
  that each raise the max, not a flood;
- emits one :class:`~edge_asd.edge.runtime.events.Verdict` (a ``verdict`` line) when a window closes (a
  frame of another window arrives, or :meth:`RunningMaxDetector.close` at the end of the stream): max
  score, its time, anomalous or not.

With an alert policy (:mod:`~edge_asd.edge.runtime.alert`) the scores it takes are policy scores (the stream
loop filters the frame scores first; 1/1, the default, passes them unchanged), and it also keeps the
alarm: an :class:`~edge_asd.edge.runtime.events.AlarmLine` (an ``alarm`` line) when it goes on or off.

Frames with a NaN or infinite score are counted and skipped, never made the running max. Frames whose
audio failed a health check (:mod:`~edge_asd.edge.runtime.health`: a dead microphone, clipping, ...) come
with ``scored=False``: they belong to their window but never raise an event or enter its running max.
"""

from __future__ import annotations

import math

import numpy as np

from edge_asd.edge.runtime.alert import EQ11, Alarm, AlertPolicy
from edge_asd.edge.runtime.events import AlarmLine, Event, Verdict
from edge_asd.edge.runtime.windows import OFF  # window index of a frame outside every window (the machine is off)


class RunningMaxDetector:
    """Running max of the anomaly score over operation windows; events and verdicts per the rules above.

    Args:
        phi: threshold, same unit as the anomaly score.
        policy: the alert policy (default 1/1, off at phi); the detector uses its hysteresis, the stream
            loop its votes (``policy`` is read there).
    Raises:
        ValueError: phi is NaN or infinite.
    """

    def __init__(self, phi: float, machine_id: str, model_sha256: str, policy: AlertPolicy = EQ11):
        if not math.isfinite(phi):
            raise ValueError(f"phi must be finite, not {phi}")
        self.phi, self.machine_id, self.model_sha256 = phi, machine_id, model_sha256
        self.policy = policy
        self.alarm = Alarm(phi, policy.hysteresis)
        self.window: int | None = None  # the open window, None when none is open
        self.running_max: float | None = None
        self.n_frames = 0
        self.n_events = 0
        self.n_nonfinite = 0  # frames whose score was NaN or infinite: skipped, reported in the summary
        self.n_off = 0  # frames outside every window (gated off)
        self.n_windows = self.n_anomalous_windows = 0
        self.max_score: float | None = None  # over all windows
        self.max_time_s: float | None = None
        self._win: dict = {}

    def update(self, frame: int, time_s: float, score: float, window: int | None = 0) -> list:
        """One frame's score in ``window`` (None: outside every window); returns new Events/Verdicts."""
        return self.update_block(frame, np.array([time_s]), np.array([score], dtype=np.float64),
                                 np.array([OFF if window is None else window]))

    def update_block(self, first_frame: int, times_s: np.ndarray, scores: np.ndarray, windows: np.ndarray,
                     scored: np.ndarray | None = None) -> list:
        """Frames ``first_frame, first_frame + 1, ...`` with their times (s), scores and windows (OFF = none);
        ``scored`` (bool, same shape; None: all True) False for frames not to score (failed input health).

        Returns the Events and Verdicts they cause, in stream order. Same result as one
        :meth:`update` per frame; vectorized within each run of one window.
        """
        out = []
        scores = np.asarray(scores, dtype=np.float64)
        n = len(scores)
        if n == 0:
            return out
        self.n_frames += n
        windows = np.asarray(windows)
        if windows[0] == windows[-1] and (windows == windows[0]).all():
            runs = [(0, n)]
        else:
            cuts = (np.flatnonzero(np.diff(windows)) + 1).tolist()
            runs = list(zip([0] + cuts, cuts + [n]))
        for a, b in runs:
            w = int(windows[a])
            if self.window is not None and w != self.window:
                out.append(self.close())
            if w == OFF:
                self.n_off += b - a
                continue
            if self.window is None:
                self.window, self.running_max = w, None
                self._win = {"start_s": float(times_s[a]), "frames": 0, "events": 0, "max_time_s": None}
            alarms = self._alarms(first_frame + a, times_s[a:b], scores[a:b], None if scored is None else scored[a:b])
            events = []
            if scored is None or scored[a:b].all():
                events += self._run(first_frame + a, times_s[a:b], scores[a:b])
            else:
                self._win["frames"] += b - a
                self._win["end_s"] = float(times_s[b - 1])
                for c, d in _true_runs(np.asarray(scored[a:b], dtype=bool)):
                    events += self._run(first_frame + a + c, times_s[a + c:a + d], scores[a + c:a + d], counted=True)
            out += sorted(alarms + events, key=lambda r: r.frame) if alarms else events  # stable: alarm first
        return out

    @property
    def n_alarms(self) -> int:
        """Alarm-on transitions so far."""
        return self.alarm.n_on

    def _alarms(self, first_frame: int, times_s: np.ndarray, s: np.ndarray, scored) -> list[AlarmLine]:
        return [AlarmLine("on" if on else "off", round(float(times_s[i]), 4), first_frame + i, float(s[i]), self.phi,
                          self.alarm.off_level, self.machine_id, self.model_sha256, self.window)
                for i, on in self.alarm.update(s, scored)]

    def _run(self, first_frame: int, times_s: np.ndarray, s: np.ndarray, counted: bool = False) -> list[Event]:
        win = self._win
        if not counted:
            win["frames"] += len(s)
            win["end_s"] = float(times_s[-1])
        hi, lo = float(s.max()), float(s.min())
        if not (math.isfinite(hi) and math.isfinite(lo)):  # NaN or inf somewhere: skip those frames
            finite = np.isfinite(s)
            self.n_nonfinite += int(len(s) - finite.sum())
            if not finite.any():
                return []
            s = np.where(finite, s, -np.inf)
            hi = float(s.max())
        if self.running_max is not None and hi <= self.running_max:
            return []  # the common case: nothing new in this block
        events = self._events(first_frame, times_s, s) if hi >= self.phi else []
        t = float(times_s[int(np.argmax(s))])
        self.running_max, win["max_time_s"] = hi, t
        if self.max_score is None or hi > self.max_score:
            self.max_score, self.max_time_s = hi, t
        win["events"] += len(events)
        self.n_events += len(events)
        return events

    def _events(self, first_frame: int, times_s: np.ndarray, s: np.ndarray) -> list[Event]:
        """Frames >= phi and above every earlier score of the window (the running max before each)."""
        before = np.maximum.accumulate(np.r_[-np.inf if self.running_max is None else self.running_max, s])
        hits = np.flatnonzero((s >= self.phi) & (s > before[:-1]))
        return [Event(round(float(times_s[k]), 4), first_frame + int(k), float(s[k]),
                      None if before[k] == -np.inf else float(before[k]), self.phi, self.machine_id,
                      self.model_sha256, self.window) for k in hits]

    def close(self) -> Verdict | None:
        """Close the open window (end of stream, or the gate closed); its Verdict, or None if none was open."""
        if self.window is None:
            return None
        win, peak = self._win, self.running_max
        anomalous = peak is not None and peak >= self.phi
        verdict = Verdict(self.window, round(win["start_s"], 4), round(win["end_s"], 4), win["frames"], peak,
                          None if win["max_time_s"] is None else round(win["max_time_s"], 4), anomalous,
                          win["events"], self.phi, self.machine_id, self.model_sha256)
        self.n_windows += 1
        self.n_anomalous_windows += anomalous
        self.window, self.running_max = None, None
        return verdict


def _true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the runs of True in a bool array."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))
