"""The JSON lines edge-monitor writes (docs/events.md): the schema version, the line types and their fields,
and the one place a record becomes a line.

A line is ``{"schema": EVENT_SCHEMA, "event": TYPE, <the type's fields>, "input": NAME, "wall_time": ISO}``
(``anomaly`` lines then get ``evidence``); the sinks write it with sorted keys. Two steps build it:
:func:`event_record` puts ``schema`` and ``event`` before a line type's fields (what the decision and
edge-report hand around), :func:`event_line` adds the input's name and the wall time when it is written.

Line types: ``start`` (:class:`Start`), ``anomaly`` (:class:`Event`), ``verdict`` (:class:`Verdict`),
``health`` (:class:`Health`: an input-health state starts or ends, :mod:`~edge_asd.edge.runtime.health`),
``alarm`` (:class:`AlarmLine`: the alarm of the alert policy goes on or off, :mod:`~edge_asd.edge.runtime.alert`),
``summary`` (:class:`Summary`, with the input's machine ID, phi and model), ``rollout`` (a release's trial in a slot
directory: :mod:`~edge_asd.edge.runtime.rollout`) and ``command`` (a signed command from the fleet:
:mod:`~edge_asd.edge.runtime.commands`). To add one:
name it in :data:`LINE_TYPES`, give it a frozen dataclass of its fields deriving from :class:`LineType`,
emit ``event_line(Health(...).to_dict(), name)`` where it happens, and document it in docs/events.md
(a new field or line type is a minor change; raise :data:`EVENT_SCHEMA` only when a reader must change).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import ClassVar

EVENT_SCHEMA = 3
"""Version of the JSON lines edge-monitor writes (docs/events.md). 3: ``alarm`` lines, the ``start`` line's
``alert`` policy, the summary's ``alarms``; ``anomaly`` and ``verdict`` lines judge the policy score."""
READABLE_SCHEMAS = (2, 3)
"""Event-log schemas the readers of this kit accept (edge-report): 2 has no ``alarm`` lines."""

START = "start"
ANOMALY = "anomaly"
VERDICT = "verdict"
SUMMARY = "summary"
HEALTH = "health"
ALARM = "alarm"
ROLLOUT = "rollout"
COMMAND = "command"
LINE_TYPES = (START, ANOMALY, VERDICT, HEALTH, ALARM, SUMMARY, ROLLOUT, COMMAND)
"""Every ``event`` value a line may have."""


def utc_now() -> str:
    """Wall-clock time, ISO 8601 UTC with milliseconds (``2026-11-26T10:00:00.123Z``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_record(event: str, fields: dict) -> dict:
    """``{"schema": EVENT_SCHEMA, "event": event, **fields}``: a line without its input and wall time.

    Raises:
        ValueError: ``event`` is not one of :data:`LINE_TYPES`.
    """
    if event not in LINE_TYPES:
        raise ValueError(f"unknown event line type {event!r} (known: {', '.join(LINE_TYPES)})")
    return {"schema": EVENT_SCHEMA, "event": event, **fields}


def event_line(record: dict, input_name: str) -> dict:
    """The line written for ``record`` (from :func:`event_record`): its fields, then ``input`` (the input's
    name) and ``wall_time`` (:func:`utc_now`, now)."""
    return {**record, "input": input_name, "wall_time": utc_now()}


class LineType:
    """A line type's fields as a frozen dataclass; ``EVENT`` names it (one of :data:`LINE_TYPES`)."""

    EVENT: ClassVar[str]

    def to_dict(self) -> dict:
        """The record of this line (:func:`event_record`): ``schema``, ``event``, then the fields in order."""
        return event_record(self.EVENT, asdict(self))


@dataclass(frozen=True)
class Start(LineType):
    """One ``"event": "start"`` line: an input began monitoring."""

    EVENT: ClassVar[str] = START
    machine_id: str
    phi: float
    model_sha256: str
    window_mode: str
    """``whole``, ``fixed`` or ``gate``."""
    sample_rate: int
    """The model's sample rate, Hz."""
    alert: dict = field(default_factory=lambda: {"k": 1, "n": 1, "hysteresis": 1.0})
    """The alert policy (:class:`~edge_asd.edge.runtime.alert.AlertPolicy`): k of the last n frames reach phi,
    the alarm ends below ``hysteresis * phi``; ``anomaly`` and ``verdict`` lines judge its policy score."""


@dataclass(frozen=True)
class Event(LineType):
    """One ``"event": "anomaly"`` line: a frame that raised the window's running max to or over phi."""

    EVENT: ClassVar[str] = ANOMALY
    time_s: float
    """Seconds from stream start at which the frame's context vector became complete."""
    frame: int
    """Index of the context vector in the stream (0-based)."""
    score: float
    """Policy score of the frame (:mod:`~edge_asd.edge.runtime.alert`): with the default 1/1 policy its anomaly
    score A(x_t), eq. 5; with k/n votes the k-th largest anomaly score of the last n frames."""
    running_max: float | None
    """The window's max score before this frame (None at the window's first frame)."""
    phi: float
    machine_id: str
    model_sha256: str
    window: int
    """Operation window index (0 for the whole stream)."""


@dataclass(frozen=True)
class Verdict(LineType):
    """One ``"event": "verdict"`` line: the eq. (11) decision of a closed operation window."""

    EVENT: ClassVar[str] = VERDICT
    window: int
    start_s: float
    """Stream time of the window's first frame, s."""
    end_s: float
    """Stream time of the window's last frame, s."""
    frames: int
    max_score: float | None
    """max over the window's frames of the policy score (1/1: max_t A(x_t)), finite ones; None if there was none."""
    max_time_s: float | None
    anomalous: bool
    """``max_score >= phi`` (eq. 11)."""
    events: int
    phi: float
    machine_id: str
    model_sha256: str


@dataclass(frozen=True)
class Health(LineType):
    """One ``"event": "health"`` line: an input-health state started or ended (not a machine anomaly)."""

    EVENT: ClassVar[str] = HEALTH
    state: str
    """``silent``, ``clipping``, ``dc_offset``, ``band_limited``, ``level_drift``, ``gap`` or ``overflow``."""
    status: str
    """``start`` or ``end``."""
    reason: str
    """What was measured, in words with the figure and its limit (e.g. ``level -200.0 dBFS (floor -90 dBFS)``)."""
    value: float
    """The measured figure: level (dBFS) for ``silent`` and ``level_drift``, share of clipped samples,
    |mean| (fraction of full scale), high-band energy share, samples lost (``gap``), overflows."""
    time_s: float
    """Stream time at which the condition began (``start``) or stopped (``end``), s; the line is written
    once the state's hold (or release) time has passed."""


@dataclass(frozen=True)
class AlarmLine(LineType):
    """One ``"event": "alarm"`` line: the alarm went on (policy score >= phi) or off (below ``off_level``)."""

    EVENT: ClassVar[str] = ALARM
    state: str
    """``on`` or ``off``."""
    time_s: float
    """Stream time of the frame that switched it, s (its context vector's end, as ``anomaly`` lines)."""
    frame: int
    score: float
    """The frame's policy score."""
    phi: float
    off_level: float
    """``hysteresis * phi``: the alarm stays on until the policy score falls below it."""
    machine_id: str
    model_sha256: str
    window: int
    """Operation window of the frame."""


@dataclass
class Summary:
    """What one input's monitoring came to: the ``"event": "summary"`` line (:meth:`to_record`) and the
    one-line summary on stderr (:meth:`line`)."""

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
    health_skipped: dict = field(default_factory=dict)
    """Frames not scored because their audio failed a health check, per reason (``silent``, ``clipping``,
    ``dc_offset``, ``band_limited``, ``level_far``); only reasons that occurred."""
    health_states: dict = field(default_factory=dict)
    """How many times each health state started (``health`` lines with ``status: start``)."""
    alarms: int = 0
    """Alarm-on transitions (``alarm`` lines with ``state: on``)."""

    @property
    def real_time_factor(self) -> float:
        """``compute_s / audio_s`` (NaN for no audio)."""
        return self.compute_s / self.audio_s if self.audio_s > 0 else float("nan")

    def line(self, phi: float) -> str:
        """The human summary edge-monitor prints on stderr (``phi``: the threshold in use)."""
        peak = "none" if self.max_score is None else f"{self.max_score:.3f} at {self.max_time_s:.2f} s"
        extra = [f"{self.alarms} alarms"] if self.alarms else []
        extra += [f"{self.windows} windows, {self.anomalous_windows} anomalous"] if self.windows > 1 else []
        extra += [f"{self.off_frames} frames gated off"] if self.off_frames else []
        extra += [f"{self.nonfinite} frames with a non-finite score skipped"] if self.nonfinite else []
        if self.health_skipped or self.health_states:
            skipped = sum(self.health_skipped.values())
            extra += ["health: " + ", ".join(
                [f"{skipped} frames not scored (" + ", ".join(f"{k} {v}" for k, v in self.health_skipped.items()) + ")"]
                * bool(skipped) + [f"{k} x{v}" for k, v in self.health_states.items()])]
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
        """The fields, then ``real_time_factor`` (6 decimals; None for no audio)."""
        return {**asdict(self), "real_time_factor": round(self.real_time_factor, 6) if self.audio_s > 0 else None}

    def to_record(self, machine_id: str, phi: float, model_sha256: str) -> dict:
        """The summary line's record (:func:`event_record`): the input's machine ID, phi and model sha256,
        then :meth:`to_dict`."""
        return event_record(SUMMARY, {"machine_id": machine_id, "phi": phi, "model_sha256": model_sha256,
                                      **self.to_dict()})
