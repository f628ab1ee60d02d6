"""Click options that several device commands share, declared once so that they read the same everywhere."""

from __future__ import annotations

import click

from edge_asd.edge.runtime.windows import DEFAULT_GATE_DB, DEFAULT_GATE_MIN_OFF_S, DEFAULT_GATE_MIN_ON_S


def gate_options(fn):
    """Add the energy gate's options of ``--window gate``: --gate-db (dBFS), --gate-min-on-s and
    --gate-min-off-s (s), with the defaults of :mod:`edge_asd.edge.runtime.windows` (edge-monitor and edge-calibrate
    take the same gate, so calibration windows are the monitor's)."""
    options = [
        click.option("--gate-db", type=float, default=DEFAULT_GATE_DB, show_default=True,
                     help="Energy gate (--window gate): machine on at or above this level, dBFS (off 3 dB lower)."),
        click.option("--gate-min-on-s", type=click.FloatRange(min=0), default=DEFAULT_GATE_MIN_ON_S, show_default=True,
                     help="Energy gate: seconds at or above --gate-db before the gate opens."),
        click.option("--gate-min-off-s", type=click.FloatRange(min=0), default=DEFAULT_GATE_MIN_OFF_S, show_default=True,
                     help="Energy gate: seconds below the off level before the gate closes."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
