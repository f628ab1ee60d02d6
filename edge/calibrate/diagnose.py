"""Warnings about the sample phi is set on: one recording that decides phi alone, and an energy gate set
so close to the machine's level that it leaves recordings without a window.

Measured on MIMII fan id_00 (the kit's data, a small int8 model): recording 04's maximum is 2.65 x the
second-highest of the 10 training normals (the other nine span 834-1485, top two 1.29 x apart), and phi
(1.1 x the worst) came from it alone; the fan runs near -44 dBFS, and the default gate (-45 dBFS) left
6 of its 10 recordings without a window.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_asd.edge.calibrate.rules import WindowMax

log = logging.getLogger("edge_asd")

DOMINANCE_RATIO = 2.0
"""A recording decides phi when its window maximum is at least this many times the second-highest
recording's and phi lies above every other recording's maximum (scores are squared errors, eq. 5: a
ratio of 2 is 3 dB). The nine other fan id_00 training normals lie within 1.3 x of each other."""
MIN_RECORDINGS = 3
"""Fewer recordings with a window: no dominance warning (there is no "the others" to compare with)."""
GATE_CLOSE_DB = 3.0
"""The recordings' median level within this many dB above the gate level (or below it): a warning."""
GATE_SUGGEST_BELOW_DB = 6.0
"""The suggested ``--gate-db``: this many dB below the recordings' median level (rounded down to 1 dB),
twice the gate's 3-dB hysteresis below the level the machine runs at."""


@dataclass(frozen=True)
class Dominant:
    """The recording that decides phi, and the numbers that say so."""

    recording: str
    max_score: float
    """Its window maximum (max over its complete windows)."""
    second: str
    second_max: float
    """The second-highest recording's window maximum."""
    n_recordings: int
    """Recordings with at least one complete window."""

    @property
    def ratio(self) -> float:
        return self.max_score / self.second_max if self.second_max > 0 else math.inf


def recording_maxima(windows: Sequence[WindowMax]) -> dict[str, float]:
    """Each recording's window maximum: the max over its complete windows (those phi is set on)."""
    out: dict[str, float] = {}
    for w in windows:
        if w.complete:
            out[w.recording] = max(out.get(w.recording, -math.inf), w.max_score)
    return out


def dominant_recording(windows: Sequence[WindowMax], phi: float) -> Dominant | None:
    """The recording that decides phi, or None: at least :data:`MIN_RECORDINGS` recordings with a complete
    window, the highest recording maximum >= :data:`DOMINANCE_RATIO` x the second-highest, and ``phi``
    above the second-highest (so no other recording holds phi up)."""
    maxima = sorted(recording_maxima(windows).items(), key=lambda kv: kv[1], reverse=True)
    if len(maxima) < MIN_RECORDINGS:
        return None
    (top, top_max), (second, second_max) = maxima[0], maxima[1]
    if not (top_max >= DOMINANCE_RATIO * second_max and phi > second_max):
        return None
    return Dominant(top, top_max, second, second_max, len(maxima))


def warn_dominant(windows: Sequence[WindowMax], phi: float) -> Dominant | None:
    """Log a WARNING when one recording decides phi (:func:`dominant_recording`); returns it."""
    d = dominant_recording(windows, phi)
    if d is not None:
        log.warning("%s decides phi alone: its window maximum %.4g is %.2f x the second-highest recording's (%.4g, %s), "
                    "and phi %.4g lies above the maxima of the other %d recordings; listen to it (a fault, a knock, "
                    "handling noise?), leave it out or add recordings", Path(d.recording).name, d.max_score, d.ratio,
                    d.second_max, Path(d.second).name, phi, d.n_recordings - 1)
    return d


@dataclass(frozen=True)
class GateCheck:
    """How the energy gate met the recordings."""

    n_recordings: int
    without_window: int
    """Recordings the gate gave no machine-on window."""
    median_level_dbfs: float
    """Median of the recordings' RMS levels (:func:`edge_asd.core.loudness.clip_level_dbfs`), dBFS."""
    gate_db: float
    suggested_gate_db: float
    """:data:`GATE_SUGGEST_BELOW_DB` below the median level, rounded down to 1 dB."""

    @property
    def close(self) -> bool:
        """The median level is less than :data:`GATE_CLOSE_DB` above the gate level."""
        return self.median_level_dbfs - self.gate_db < GATE_CLOSE_DB


def gate_check(recordings: Sequence[str], levels_dbfs: Sequence[float], windows: Sequence[WindowMax],
               gate_db: float) -> GateCheck:
    """The gate's effect on ``recordings`` (names as in the WindowMax records), their levels (dBFS, same
    order), their windows and the gate level ``gate_db`` (dBFS)."""
    with_window = {w.recording for w in windows}
    median = float(np.median(levels_dbfs))
    return GateCheck(len(recordings), sum(r not in with_window for r in recordings), median, gate_db,
                     float(math.floor(median - GATE_SUGGEST_BELOW_DB)))


def warn_gate(check: GateCheck) -> bool:
    """Log a WARNING when the gate left recordings without a window or sits within :data:`GATE_CLOSE_DB` of
    their level, with a suggested ``--gate-db``; True when it warned."""
    if not (check.without_window or check.close):
        return False
    what = []
    if check.without_window:
        what.append(f"{check.without_window} of the {check.n_recordings} recordings gave no machine-on window")
    above = check.median_level_dbfs - check.gate_db
    what.append(f"their median level {check.median_level_dbfs:.1f} dBFS is {abs(above):.1f} dB "
                f"{'above' if above >= 0 else 'below'} the gate's {check.gate_db:g} dBFS")
    log.warning("--window gate: %s: in service the gate will miss this machine or switch it off and on; try --gate-db "
                "%g (%g dB below the recordings' median level)", ", and ".join(what), check.suggested_gate_db,
                GATE_SUGGEST_BELOW_DB)
    return True
