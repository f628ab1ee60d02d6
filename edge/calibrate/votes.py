"""Choosing the alert policy (k of the last n frames reach phi, :mod:`edge_asd.edge.runtime.alert`) from normal
recordings: edge-calibrate ``--votes auto``.

Candidates: n in {1 frame, 0.5 s, 1 s, 2 s, 4 s} worth of hops (none longer than the shortest complete window,
so that every window holds a full vote) and k in {1, ceil(n/2), n}. For each policy p, phi_p is the configured
rule (quantile / margin or false-alarm budget, :func:`~edge_asd.edge.calibrate.rules.calibrate`) on the window
maxima of its policy score, and its **headroom** is ``phi_p / median(policy scores of all normal frames)``: how
far the anomaly score must rise, and stay risen for k of n hops, above its normal level to alarm. The
shortest vote whose headroom is within :data:`NEAR_BEST` of the smallest wins (a sustained rise almost as
small alarms, and sooner); ties go to the smaller headroom, then the smallest k. The headroom falls with
every longer all-frames vote, so the smallest alone always took the longest: on fan id_00 the 4-s vote
alarmed on 5 of 10 real anomalies, the 1-s vote (headroom 2.09 against 1.98) on 8.
"""

from __future__ import annotations

import math

import numpy as np

from edge_asd.edge.calibrate.recordings import recordings_window_maxima
from edge_asd.edge.calibrate.rules import calibrate, phi_maxima, seconds_per_window
from edge_asd.edge.runtime.alert import EQ11, AlertPolicy, policy_scores
from edge_asd.edge.runtime.windows import make_windows

NEAR_BEST = 1.1
"""A vote whose headroom is within this factor of the smallest counts as good as the best (the shortest wins)."""
VOTE_SECONDS = (0.5, 1.0, 2.0, 4.0)
"""Vote lengths tried besides a single frame, s."""


def candidates(hop_s: float, max_n: int) -> list[AlertPolicy]:
    """The grid, shortest n first: 1/1, then for each n in :data:`VOTE_SECONDS` (in hops of ``hop_s`` s, at most
    ``max_n``) k = 1, ceil(n/2), n; each policy once."""
    out = [AlertPolicy()]
    for seconds in VOTE_SECONDS:
        n = min(max_n, max(1, round(seconds / hop_s)))
        for k in (1, math.ceil(n / 2), n):
            if AlertPolicy(k, n) not in out:
                out.append(AlertPolicy(k, n))
    return out


def explain(policy: AlertPolicy, hop_s: float) -> str:
    """``16/31 (16 of 31 frames, 0.5 s, over phi)``, ``31/31 (0.5 s above phi)``, ``1/1 (one frame, eq. 11)``."""
    span = f"{policy.n * hop_s:.2g} s"
    if policy.n == 1:
        what = "one frame, eq. 11"
    elif policy.k == policy.n:
        what = f"{span} above phi"
    elif policy.k == 1:
        what = f"any frame of {span} over phi"
    else:
        what = f"{policy.k} of {policy.n} frames in {span} over phi"
    return f"{policy.k}/{policy.n} ({what})"


def headroom(phi: float, scored: list, policy: AlertPolicy) -> float:
    """``phi / median`` of the policy scores of every frame of the recordings (``scored``: (samples, scores)
    pairs) that has one; inf when that median is not positive (a score that can be 0 or negative: no ratio)."""
    frames = [v[ok] for v, ok in (policy_scores(s, policy) for _, s in scored)]
    median = float(np.median(np.concatenate(frames)))
    return float(phi / median) if median > 0 else float("inf")


def choose(scorer, files: list, scored: list, settings: dict, rule: dict, hysteresis: float = 1.0
           ) -> tuple[AlertPolicy, list[dict]]:
    """The shortest policy whose headroom is within :data:`NEAR_BEST` of the smallest, and the grid: ``[{"k", "n", "phi", "headroom"}, ...]``.

    Args:
        files, scored: the recordings phi is set on and their (samples, frame scores)
            (:func:`~edge_asd.edge.calibrate.recordings.scored_recordings`).
        settings: the windows' ``settings()``. rule: :func:`~edge_asd.edge.calibrate.rules.calibrate`'s
            rule keywords (the budget rule is fitted without bootstrap here).
    Raises:
        EdgeAsdError: the rule cannot be applied (as for one policy).
    """
    cfg = scorer.features
    hop_s = cfg.vector_hop_s
    first, durations, _ = recordings_window_maxima(scorer, files, **settings, scored=scored, quiet=True)
    max_n = min(w.frames for w in first if w.complete) if any(w.complete for w in first) else 1
    rows = []
    for policy in candidates(hop_s, max_n):
        windows = first if policy == EQ11 else recordings_window_maxima(scorer, files, **settings, scored=scored,
                                                                        policy=policy, quiet=True)[0]
        length_s = seconds_per_window(_windows(settings, cfg), durations,
                                      len(windows))
        phi = calibrate(phi_maxima(windows), length_s, **{**rule, "n_boot": 0})["phi"]
        rows.append({"k": policy.k, "n": policy.n, "phi": phi, "headroom": headroom(phi, scored, policy)})
    smallest = min(r["headroom"] for r in rows)
    best = min((r for r in rows if r["headroom"] <= NEAR_BEST * smallest),
               key=lambda r: (r["n"], round(r["headroom"], 9), r["k"]))
    return AlertPolicy(best["k"], best["n"], hysteresis), rows


def _windows(settings: dict, cfg):
    s = dict(settings)
    return make_windows(s.pop("window"), cfg.sample_rate, cfg.hop_samples, **s)


def policy_line(record, hop_s: float) -> str:
    """A phi record's policy in one line: ``votes 16/31 (16 of 31 frames in 0.5 s over phi): phi 1540, headroom
    2.1x (1/1 would need 50x)``; the headroom only when ``auto`` chose it (the record's ``alert.grid``)."""
    policy = record.alert_policy()
    line = f"votes {explain(policy, hop_s)}: phi {record.phi:.4g}"
    grid = (record.alert or {}).get("grid")
    if grid:
        mine = next(r for r in grid if (r["k"], r["n"]) == (policy.k, policy.n))
        line += f", headroom {mine['headroom']:.3g}x (1/1 would need {grid[0]['headroom']:.3g}x)"
    return line
