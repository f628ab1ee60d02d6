"""edge-calibrate leaves out of phi the recordings whose out-of-fold scores sound, throughout, like a mode the
fold models never heard (edge/calibrate/recordings.py: unheard_modes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_asd.edge.calibrate.recordings import UNHEARD_MODE_RATIO, unheard_modes

RNG = np.random.default_rng(0)


def scores(median: float, n: int = 600) -> np.ndarray:
    """Frame scores around ``median`` with a short burst far above it, as real normal clips have."""
    s = median * RNG.uniform(0.8, 1.2, n)
    s[100:110] *= 30
    return s


def test_a_recording_scored_high_throughout_is_named_a_short_burst_is_not():
    files = [Path(f"normal_id_00_{i:08d}.flac") for i in range(10)]
    known = {f: scores(800 + 50 * i) for i, f in enumerate(files)}
    assert unheard_modes(known, files) == []  # bursts alone never decide it: the median does
    known[files[2]] = scores(10_000)
    known[files[8]] = scores(19_000)
    assert unheard_modes(known, files) == [files[2], files[8]]
    assert unheard_modes(known, files[:5]) == [files[2]]  # only among the recordings given


def test_the_ratio_is_against_the_median_recording_and_never_half_of_them():
    files = [Path(f"{i}.flac") for i in range(6)]
    typical = 1000.0
    known = {f: np.full(100, typical) for f in files}
    known[files[0]] = np.full(100, UNHEARD_MODE_RATIO * typical * 0.99)
    assert unheard_modes(known, files) == []
    known[files[0]] = np.full(100, UNHEARD_MODE_RATIO * typical * 1.01)
    assert unheard_modes(known, files) == [files[0]]
    for f in files[:3]:  # half of them high: no majority to call them odd
        known[f] = np.full(100, 10 * typical)
    assert unheard_modes(known, files) == []
    assert unheard_modes({f: known[f] for f in files[:2]}, files) == []  # fewer than 3 with scores
