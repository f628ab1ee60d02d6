"""Input health: is the input machine sound at all? A dead microphone, clipping, a DC offset, a band-limited
(upsampled) recording, a level far from the one calibrated, lost samples: each is a health *state* with a
start and an end, reported as ``health`` lines (:class:`~edge_asd.edge.runtime.events.Health`), never as
machine anomalies. Numpy only.

The checker looks at each hop of audio (the model's hop, 256 samples = 16 ms for ``koizumi2019``) as it
arrives and keeps, per hop, its power, mean, clipped samples and high-band energy. A *condition* holds at a
hop when:

- ``silent``: the hop's level is below :data:`SILENT_DBFS` (digital zeros included);
- ``clipping``: over the last :data:`WINDOW_S`, more than :data:`CLIP_SHARE` of the samples reach
  :data:`CLIP_LEVEL` of full scale;
- ``dc_offset``: the mean over the last :data:`WINDOW_S` exceeds :data:`DC_OFFSET` of full scale;
- ``band_limited``: over the last :data:`WINDOW_S`, the energy above a quarter of the sample rate (4 kHz
  at 16 kHz) is below :data:`BAND_SHARE_FLOOR` of the total, or :data:`BAND_DROP_DB` below the share the
  calibration recordings had (an 8-kHz recording upsampled to 16 kHz has none there);
- ``level_drift`` (only with a calibration reference,
  :func:`~edge_asd.edge.runtime.input_level.level_statistics`): the level over the last
  :data:`WINDOW_S` lies more than :data:`LEVEL_DRIFT_DB` outside the 5th..95th percentile of the calibration
  recordings' per-second levels.

A state starts when its condition has held for its hold time (:data:`HOLD_S`) and ends when it has been
false for :data:`RELEASE_S`; once a condition holds, it goes on until its figure is :data:`KEEP_DB` back
on the healthy side of the limit (hysteresis in time and in value: no flapping). ``gap`` (samples lost, a ``Gap`` of the source) and
``overflow`` (the sound card's driver reported an overflow) start at once and end after
:data:`GAP_RELEASE_S` without another.

Frames: a frame (context vector) whose audio fails ``silent``, ``clipping``, ``dc_offset`` or ``band_limited``
at any of its hops is not machine sound; :meth:`HealthChecker.skip_reasons` names its reason and the stream
loop does not score it (no anomaly line, not in the running max). ``level_drift`` frames are scored (an
anomalous machine may be louder: fan id_00's anomalous clips are 4-5 dB above its normal ones), unless the
level lies more than :data:`LEVEL_FAR_DB` outside the calibrated range: such audio is not the machine as
calibrated (a gain change, a moved or knocked microphone) and its frames are not scored (reason
``level_far``; the ``level_drift`` state says it on its health line).
Measured on the kit's data (fan and slider id_00, 94 normal clips, per hop or per second): level -51 dBFS
at the quietest hop, peaks below 0.09 of full scale, |mean| below 1.3e-4; high-band share per second at
least 4.6e-4 on every clip of every machine type in ../shared/data (ToyCar's lowest); an 8-kHz fan clip
upsampled by soxr (as the kit reads it): 3e-8, but by scipy's ``resample_poly`` (default filter) 1.5e-4,
which its images keep above the floor (not flagged).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_asd.edge.runtime.events import Health
from edge_asd.edge.runtime.input_level import hop_measures

SILENT_DBFS = -90.0
"""A hop below this level is silent (a dead microphone or digital zeros), dBFS. Real machines: -51 at least."""
CLIP_LEVEL = 0.99
"""A sample at or above this magnitude is clipped, fraction of full scale."""
CLIP_SHARE = 1e-3
"""Clipping: more than this share of the samples of :data:`WINDOW_S` clipped (16 samples a second at 16 kHz)."""
DC_OFFSET = 0.01
"""DC offset: |mean| over :data:`WINDOW_S` above this, fraction of full scale (1 %)."""
BAND_SHARE_FLOOR = 1e-5
"""Band-limited: energy above rate/4 below this share of the total (-50 dB; real machines 4.6e-4 or more)."""
BAND_DROP_DB = 30.0
"""Band-limited, with a calibration reference: the high-band share this far below the calibration's, dB."""
LEVEL_DRIFT_DB = 3.0
"""Level drift: the level this far outside the calibration's per-second 5th..95th percentiles, dB."""
LEVEL_FAR_DB = 12.0
"""Frames not scored: the level over :data:`WINDOW_S` this far outside the calibration's per-second 5th..95th
percentiles, dB (+20 dB of gain was scored as a machine anomaly before; real anomalies of the kit's data lie
within 6 dB of the normal level)."""
WINDOW_S = 1.0
"""Span of the rolling clipping, DC, band and level measures, s."""
DC_MIN_S = 0.25
"""The DC check waits for this much audio after a start or a gap, s: over shorter spans a machine's low
frequencies move the mean (fan and slider id_00: |mean| up to 0.08 % over 0.26 s, 0.8 % at +20 dB gain);
the first frame (0.35 s) has it."""
HOLD_S = {"silent": 2.0, "clipping": 0.5, "dc_offset": 1.0, "band_limited": 1.0, "level_drift": 3.0}
"""Seconds a condition must hold before its state starts (a health line ``status: start``)."""
RELEASE_S = {"silent": 1.0, "clipping": 1.0, "dc_offset": 1.0, "band_limited": 1.0, "level_drift": 3.0}
"""Seconds a condition must be false before its state ends (a health line ``status: end``)."""
KEEP_DB = 1.0
"""Hysteresis on the figures, dB: a condition that holds goes on until its figure is this far back on the
healthy side of its limit (a 1 % DC offset sits on its limit: without it, its state would never start)."""
GAP_RELEASE_S = 5.0
"""``gap`` and ``overflow`` end after this many seconds without another, s."""

CONDITIONS = ("silent", "clipping", "dc_offset", "band_limited", "level_drift")
"""Conditions tracked as health states."""
SKIP_REASONS = ("silent", "clipping", "dc_offset", "band_limited", "level_far")
"""Why a frame is not scored, in the order a frame's reason is named (``level_far``: the level more than
:data:`LEVEL_FAR_DB` outside the calibrated range; its state is ``level_drift``)."""
STATES = CONDITIONS + ("gap", "overflow")
"""Every health state."""
_MEASURES = ("power", "sum", "clipped", "high", "total")  # input_level.hop_measures' figures, rolled over a window

_POWER_FLOOR = 1e-20  # power of digital silence in the log (-200 dBFS), as core.loudness and the energy gate


@dataclass
class HealthLimits:
    """The thresholds, overridable per input (defaults: the module's constants)."""

    silent_dbfs: float = SILENT_DBFS
    clip_level: float = CLIP_LEVEL
    clip_share: float = CLIP_SHARE
    dc_offset: float = DC_OFFSET
    band_share_floor: float = BAND_SHARE_FLOOR
    band_drop_db: float = BAND_DROP_DB
    level_drift_db: float = LEVEL_DRIFT_DB
    level_far_db: float = LEVEL_FAR_DB
    window_s: float = WINDOW_S
    hold_s: dict = field(default_factory=lambda: dict(HOLD_S))
    release_s: dict = field(default_factory=lambda: dict(RELEASE_S))
    gap_release_s: float = GAP_RELEASE_S


class HealthChecker:
    """Health of one input's stream, hop by hop; see the module docstring.

    Args:
        sample_rate: Hz. hop_samples: hop, samples (the model's; frames end on its grid).
        limits: thresholds (default :class:`HealthLimits`).
        reference: the phi record's ``input_level`` (:func:`level_statistics`), or None (no level drift check;
            the band check uses :data:`BAND_SHARE_FLOOR` alone).
    Use: :meth:`push` each block (returns the Health lines it causes), :meth:`gap` for lost samples,
    :meth:`overflows` with the source's overflow count, :meth:`skip_reasons` for the frames a block
    completed, :meth:`finish` at the end.
    """

    def __init__(self, sample_rate: int, hop_samples: int, limits: HealthLimits | None = None,
                 reference: dict | None = None):
        self.rate, self.hop = sample_rate, hop_samples
        self.limits = lim = limits or HealthLimits()
        self.reference = reference
        self._win = max(1, round(lim.window_s * sample_rate / hop_samples))  # hops in the rolling window
        self._dc_min = max(1, round(DC_MIN_S * sample_rate / hop_samples))
        self._band_min = lim.band_share_floor
        self._level_range = self._far_range = None
        if reference:
            if reference.get("high_band_share"):
                self._band_min = max(self._band_min, reference["high_band_share"] * 10 ** (-lim.band_drop_db / 10))
            if reference.get("p5_dbfs") is not None and reference.get("p95_dbfs") is not None:
                self._level_range = (reference["p5_dbfs"] - lim.level_drift_db, reference["p95_dbfs"] + lim.level_drift_db)
                self._far_range = (reference["p5_dbfs"] - lim.level_far_db, reference["p95_dbfs"] + lim.level_far_db)
        self.position = 0  # absolute samples, lost ones included
        self._partial = np.zeros(0, dtype=np.float64)
        self._hist = np.zeros((len(_MEASURES), 0))  # the last _win - 1 hops' measures, one row per _MEASURES
        self._ends = np.zeros(0, dtype=np.int64)  # end sample of each recent hop
        self._flags = np.zeros((0, len(SKIP_REASONS)), dtype=bool)  # skip conditions of each recent hop
        self.active: dict[str, dict] = {}  # state -> {"since": sample, "value": figure}
        self._run: dict[str, list] = {s: [None, None, 0] for s in CONDITIONS}  # [true since, false since, figure]
        self._last_gap: dict[str, int] = {}
        self._overflows = 0
        self.starts = {s: 0 for s in STATES}
        self.skipped = {r: 0 for r in SKIP_REASONS}

    # -- audio -----------------------------------------------------------------------------------
    def push(self, block: np.ndarray) -> list[Health]:
        """Check one block of samples (float, full scale 1); returns the Health lines of states that started
        or ended in it, in the order they were decided."""
        return [line for _, line in self.push_decided(block)]

    def push_decided(self, block: np.ndarray) -> list[tuple[int, Health]]:
        """As :meth:`push`, each line with the absolute sample at which it was decided (the end of the hop
        that completed a hold or release time): the stream loop places it among the frames by that sample,
        so the order of the lines does not depend on the block size."""
        buf = np.concatenate([self._partial, np.asarray(block, dtype=np.float64)])
        n = len(buf) // self.hop
        self._partial = buf[n * self.hop:]
        out = self._expire_gaps(self.position + len(block))
        if n == 0:
            self.position += len(block)
            return out
        start = self.position - (len(buf) - len(block))  # absolute sample of buf[0]
        m = hop_measures(buf[: n * self.hop].reshape(n, self.hop), self.limits.clip_level)
        # rolling sums over the last _win hops, every measure at once (one row each: few numpy calls per block)
        hist = np.concatenate([self._hist, np.stack([m[k] for k in _MEASURES])], axis=1)
        c = np.concatenate([np.zeros((len(_MEASURES), 1)), np.cumsum(hist, axis=1)], axis=1)
        w = self._win
        idx = np.arange(hist.shape[1] - n, hist.shape[1]) + 1
        first = np.maximum(idx - w, 0)
        roll = dict(zip(_MEASURES, c[:, idx] - c[:, first]))
        self._hist = hist[:, -(w - 1):] if w > 1 else hist[:, :0]
        counts = idx - first
        samples = counts * self.hop
        lim = self.limits
        power_db = 10 * np.log10(np.maximum(m["power"], _POWER_FLOOR))
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(roll["total"] > 0, roll["high"] / roll["total"], np.inf)
        figures = {
            "silent": power_db,
            "clipping": roll["clipped"] / samples,
            "dc_offset": np.abs(roll["sum"]) / samples,
            "band_limited": share,
            "level_drift": 10 * np.log10(np.maximum(roll["power"] / counts, _POWER_FLOOR)),
        }
        cond = {
            "silent": power_db < lim.silent_dbfs,
            "clipping": figures["clipping"] > lim.clip_share,
            "dc_offset": (figures["dc_offset"] > lim.dc_offset) & (counts >= self._dc_min),
            "band_limited": (share < self._band_min) & (roll["power"] / counts >= 10 ** (lim.silent_dbfs / 10)),
        }
        keep = {  # hysteresis on the figure: once a condition holds, it goes on while the figure stays past these
            "silent": power_db < lim.silent_dbfs + KEEP_DB,
            "clipping": figures["clipping"] > lim.clip_share * 10 ** (-KEEP_DB / 10),
            "dc_offset": (figures["dc_offset"] > lim.dc_offset * 10 ** (-KEEP_DB / 20)) & (counts >= self._dc_min),
            "band_limited": (share < self._band_min * 10 ** (KEEP_DB / 10)) & (roll["power"] / counts >= 10 ** (lim.silent_dbfs / 10)),
        }
        if self._level_range is not None:
            lo, hi = self._level_range
            lev = figures["level_drift"]
            cond["level_drift"] = ((lev < lo) | (lev > hi)) & ~cond["silent"]
            keep["level_drift"] = ((lev < lo + KEEP_DB) | (lev > hi - KEEP_DB)) & ~cond["silent"]
        skip = {r: cond[r] for r in SKIP_REASONS[:-1]}
        skip["level_far"] = np.zeros(n, dtype=bool)
        if self._far_range is not None:
            lev = figures["level_drift"]
            skip["level_far"] = ((lev < self._far_range[0]) | (lev > self._far_range[1])) & ~cond["silent"]
        ends = start + (np.arange(n) + 1) * self.hop
        flags = np.stack([skip[r] for r in SKIP_REASONS], axis=1)
        kept = 4 * self._win + 64
        self._ends = np.concatenate([self._ends, ends])[-kept:]
        self._flags = np.concatenate([self._flags, flags])[-kept:]
        for state, c in cond.items():
            out += self._track(state, c, keep[state], figures[state], ends)
        self.position += len(block)
        return sorted(out, key=lambda d: d[0])

    def _track(self, state: str, cond: np.ndarray, keep: np.ndarray, figure: np.ndarray,
               ends: np.ndarray) -> list[Health]:
        """Advance ``state``'s hysteresis over hops ending at ``ends`` (absolute samples): a run of the
        condition begins where ``cond`` holds and goes on while ``keep`` (the relaxed condition) holds."""
        out = []
        run = self._run[state]
        if run[0] is None and state not in self.active and not cond.any():
            return out  # the common case: healthy and nothing pending
        hold = self.limits.hold_s[state] * self.rate
        release = self.limits.release_s[state] * self.rate
        for k in range(len(cond)):
            begin = int(ends[k] - self.hop)
            if cond[k] or (keep[k] and (run[0] is not None or state in self.active)):
                if run[0] is None:
                    run[0] = begin
                run[1] = None
                run[2] = float(figure[k])
                if state not in self.active and ends[k] - run[0] >= hold:
                    self.active[state] = {"since": run[0], "value": float(figure[k])}
                    self.starts[state] += 1
                    out.append((int(ends[k]), self._line(state, "start", run[0], float(figure[k]))))
            else:
                run[0] = None
                if state in self.active:
                    if run[1] is None:
                        run[1] = begin
                    if ends[k] - run[1] >= release:
                        del self.active[state]
                        out.append((int(ends[k]), self._line(state, "end", run[1], float(figure[k]))))
                        run[1] = None
        return out

    # -- lost samples ----------------------------------------------------------------------------
    def gap(self, n_samples: int) -> list[Health]:
        """``n_samples`` were lost here: the rolling measures restart; a ``gap`` state starts (or goes on)."""
        out = self._lost("gap", n_samples, f"{n_samples} samples lost ({n_samples / self.rate:.3f} s)")
        self.position += n_samples  # the partial hop's samples were counted when pushed
        self._partial = np.zeros(0)
        self._hist = self._hist[:, :0]
        for run in self._run.values():
            run[0] = None
        return out

    def overflows(self, total: int) -> list[Health]:
        """The source's overflow count so far; an increase starts (or prolongs) the ``overflow`` state."""
        if total <= self._overflows:
            return []
        new, self._overflows = total - self._overflows, total
        return self._lost("overflow", new, f"{new} input overflow{'s' if new > 1 else ''} reported by the sound card")

    def _lost(self, state: str, value: float, reason: str) -> list[Health]:
        self._last_gap[state] = self.position
        if state in self.active:
            self.active[state]["value"] += value
            return []
        self.active[state] = {"since": self.position, "value": float(value)}
        self.starts[state] += 1
        return [Health(state, "start", reason, float(value), round(self.position / self.rate, 4))]

    def _expire_gaps(self, position: int) -> list[tuple[int, Health]]:
        """``gap`` and ``overflow`` states with none for the release time by sample ``position``, decided
        at the sample where that time ran out."""
        out = []
        release = round(self.limits.gap_release_s * self.rate)
        for state, at in list(self._last_gap.items()):
            if state in self.active and position - at >= release:
                total = self.active.pop(state)["value"]
                del self._last_gap[state]
                out.append((at + release, Health(state, "end", f"none for {self.limits.gap_release_s:g} s ({total:g} in all)",
                                                 total, round((at + release) / self.rate, 4))))
        return out

    # -- frames ----------------------------------------------------------------------------------
    def skip_reasons(self, end_samples: np.ndarray, span_samples: int) -> list[str | None]:
        """Per frame ending at ``end_samples`` (absolute, exclusive; its audio the ``span_samples`` before):
        the first of :data:`SKIP_REASONS` that fails at any of its hops, or None (score it). Counts them."""
        if len(self._ends) == 0 or not self._flags.any():  # the common case: no recent hop fails a check
            return [None] * len(end_samples)
        lo = np.searchsorted(self._ends, np.asarray(end_samples) - span_samples, side="right")
        hi = np.searchsorted(self._ends, np.asarray(end_samples), side="right")
        c = np.concatenate([np.zeros((1, self._flags.shape[1]), dtype=np.int64), np.cumsum(self._flags, axis=0)])
        bad = (c[hi] - c[lo]) > 0  # (n_frames, n_reasons)
        first = np.argmax(bad, axis=1)
        out: list[str | None] = [SKIP_REASONS[int(k)] if b else None for k, b in zip(first, bad.any(axis=1))]
        for reason in out:
            if reason is not None:
                self.skipped[reason] += 1
        return out

    def finish(self) -> list[Health]:
        """End of input: end every open state (reason ``input ended``); a condition that held from the
        stream's start to its end, shorter than its hold time, starts and ends here."""
        out = []
        for state, run in self._run.items():
            if state not in self.active and run[0] == 0 and self.position > 0:
                self.active[state] = {"since": 0, "value": float(run[2])}
                self.starts[state] += 1
                out.append(self._line(state, "start", 0, float(run[2])))
        for state in list(self.active):
            since = self.active.pop(state)
            out.append(Health(state, "end", "input ended", float(since["value"]), round(self.position / self.rate, 4)))
        return out

    def _line(self, state: str, status: str, at_sample: int, value: float) -> Health:
        return Health(state, status, self._reason(state, status, value), round(value, 6), round(at_sample / self.rate, 4))

    def _reason(self, state: str, status: str, value: float) -> str:
        lim = self.limits
        word = "" if status == "start" else "back: "
        if state == "silent":
            return f"{word}level {value:.1f} dBFS (floor {lim.silent_dbfs:g} dBFS)"
        if state == "clipping":
            return f"{word}{100 * value:.2f} % of samples at {lim.clip_level:g} of full scale (limit {100 * lim.clip_share:g} %)"
        if state == "dc_offset":
            return f"{word}|mean| {100 * value:.2f} % of full scale over {lim.window_s:g} s (limit {100 * lim.dc_offset:g} %)"
        if state == "band_limited":
            return (f"{word}energy above {self.rate // 4} Hz {value:.2g} of the total (limit {self._band_min:.2g}): "
                    "an upsampled recording?")
        lo, hi = self._level_range
        return f"{word}level {value:.1f} dBFS over {lim.window_s:g} s (calibrated {lo + lim.level_drift_db:.1f}.." \
               f"{hi - lim.level_drift_db:.1f} dBFS, tolerance {lim.level_drift_db:g} dB)"

    def summary(self) -> dict:
        """``{"skipped": {reason: frames}, "starts": {state: times}}``, non-zero entries only."""
        return {"skipped": {k: v for k, v in self.skipped.items() if v},
                "starts": {k: v for k, v in self.starts.items() if v}}


@dataclass(frozen=True)
class RecordingHealth:
    """The health of one recording as edge-monitor judges it, streamed alone from sample 0."""

    lines: list
    """The :class:`~edge_asd.edge.runtime.events.Health` lines, in the order the monitor writes them."""
    scored: np.ndarray
    """(n_frames,) bool: True for the frames the monitor scores (context vectors ``0 .. n_frames - 1``)."""
    skipped: dict
    """Frames not scored, per reason (non-zero only)."""
    states: dict
    """How many times each state started (non-zero only)."""


def recording_health(samples: np.ndarray, sample_rate: int, hop_samples: int, samples_per_vector: int,
                     reference: dict | None = None, block_samples: int = 4096,
                     vector_hop_samples: int | None = None) -> RecordingHealth:
    """Check a whole recording as edge-monitor does (what edge-score should call per clip: take the max
    score over ``scored`` frames only, and report ``states`` as the clip's health flags).

    Args:
        samples: (N,) mono float, full scale 1, at ``sample_rate`` Hz. hop_samples, samples_per_vector: the
            model's frame hop (the checks' resolution) and context-vector length, samples. reference: a phi
            record's ``input_level``, or None.
        block_samples: how much is pushed at a time (the result does not depend on it).
        vector_hop_samples: the score hop, samples (``FeatureConfig.vector_hop_samples``); None: ``hop_samples``.
    Returns:
        :class:`RecordingHealth` for the ``1 + (N - samples_per_vector) // vector_hop_samples`` windows (0 if shorter).
    """
    h = HealthChecker(sample_rate, hop_samples, reference=reference)
    step = vector_hop_samples or hop_samples
    n_frames = 1 + (len(samples) - samples_per_vector) // step if len(samples) >= samples_per_vector else 0
    ends = samples_per_vector + step * np.arange(n_frames, dtype=np.int64)
    lines, reasons = [], []
    for i in range(0, len(samples), block_samples):
        lines += h.push(samples[i:i + block_samples])
        done = ends[(ends > i) & (ends <= i + len(samples[i:i + block_samples]))]
        reasons += h.skip_reasons(done, samples_per_vector)
    lines += h.finish()
    return RecordingHealth(lines, np.array([r is None for r in reasons], dtype=bool), h.summary()["skipped"],
                           h.summary()["starts"])
