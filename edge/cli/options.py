"""Click options that several device commands share, declared once so that they read the same everywhere:
the model file (``--model``, or edge-inspect's MODEL argument), the phi store (``--store``), the energy
gate of ``--window gate`` and ``--accept-other-machines``."""

from __future__ import annotations

import math
from pathlib import Path

import click

from edge_asd.edge.runtime.backends import MAX_THREADS
from edge_asd.edge.runtime.config import RANGES, ZERO_OR_AT_LEAST
from edge_asd.edge.runtime.windows import DEFAULT_GATE_DB, DEFAULT_GATE_MIN_OFF_S, DEFAULT_GATE_MIN_ON_S

MODEL_FILE = click.Path(dir_okay=False, path_type=Path)
"""A model file (.tflite or .onnx), given to the command as a :class:`~pathlib.Path`."""
MODEL_HELP = "Model file (.tflite or .onnx)."


def model_option(*, required: bool = False, envvar: str | None = None, help: str = MODEL_HELP, dir_okay: bool = False):
    """``--model`` (parameter ``model_path``, a Path or None): the model file the command runs.

    ``required``: click refuses the command without it; ``envvar``: the environment variable that gives it
    (edge-monitor's ``EDGE_ASD_MODEL``); ``help``: what the command does with it; ``dir_okay``: a slot directory
    may be given instead (edge-monitor, :mod:`edge_asd.edge.runtime.slots`)."""
    kind = click.Path(path_type=Path) if dir_okay else MODEL_FILE
    return click.option("--model", "model_path", required=required, envvar=envvar, type=kind, default=None, help=help)


def model_argument(fn):
    """The MODEL argument (parameter ``model_path``) of a command whose only input is a model file; kept as
    the string given, so the command can echo it as typed."""
    return click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))(fn)


def store_option(what: str = "phi store"):
    """``--store`` (parameter ``store``, a Path or None): the phi store, default $EDGE_ASD_STORE or the user
    config dir (:func:`edge_asd.edge.runtime.phi_store.default_store_path`, which the command applies).
    ``what``: the help's first words, e.g. ``"phi store written by edge-calibrate"``."""
    return click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help=f"{what}. Default: $EDGE_ASD_STORE or the user config dir.")


def gate_options(fn):
    """Add the energy gate's options of ``--window gate``: --gate-db (dBFS), --gate-min-on-s and
    --gate-min-off-s (s), with the defaults of :mod:`edge_asd.edge.runtime.windows` (edge-monitor and edge-calibrate
    take the same gate, so calibration windows are the monitor's)."""
    options = [
        click.option("--gate-db", type=config_range("gate_db"), default=DEFAULT_GATE_DB, show_default=True,
                     help="Energy gate (--window gate): machine on at or above this level, dBFS (off 3 dB lower)."),
        click.option("--gate-min-on-s", type=config_range("gate_min_on_s"), default=DEFAULT_GATE_MIN_ON_S, show_default=True,
                     help="Energy gate: seconds at or above --gate-db before the gate opens."),
        click.option("--gate-min-off-s", type=config_range("gate_min_off_s"), default=DEFAULT_GATE_MIN_OFF_S, show_default=True,
                     help="Energy gate: seconds below the off level before the gate closes."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def accept_other_machines_option(fn):
    """``--accept-other-machines`` (parameter ``accept_other_machines``, a bool): take recordings whose DCASE /
    MIMII names say another machine ID or machine type (:mod:`edge_asd.edge.calibrate.names`), which the
    command otherwise refuses. ``anomaly_*`` clips stay refused where normal recordings are expected."""
    return click.option("--accept-other-machines", "accept_other_machines", is_flag=True,
                        help="Take recordings whose file names say another machine ID or machine type than the "
                             "model's and --machine-id (refused otherwise); anomaly_* clips stay refused as normals.")(fn)


def threads_option(help: str = "Inference threads."):
    """``--threads``: inference threads per model, 1 to :data:`~edge_asd.edge.runtime.backends.MAX_THREADS`."""
    return click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=1, show_default=True,
                        help=f"{help[:-1]} (1 to {MAX_THREADS}).")


class FiniteRange(click.FloatRange):
    """click's FloatRange that also refuses NaN and infinity (FloatRange lets NaN through every bound:
    ``--gate-db nan`` gated everything off, 0 events, exit 0). ``floor``: values between 0 and it are refused too
    (0 means off)."""

    def __init__(self, *args, floor: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.floor = floor

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.floor is not None and 0 < rv < self.floor:
            self.fail(f"{rv:g} is below {self.floor:g} (0 turns it off)", param, ctx)
        return rv


def config_range(key: str) -> FiniteRange:
    """The range of monitor.toml's ``key`` (:data:`edge_asd.edge.runtime.config.RANGES`) as an option type, so
    that an option and its config key refuse the same values (``--silent-dbfs 5`` silenced every frame,
    ``--gate-min-on-s 1e300`` never opened the gate)."""
    return FiniteRange(*RANGES[key], floor=ZERO_OR_AT_LEAST.get(key))


class PhiType(click.ParamType):
    """A threshold phi given on the command line: a finite number >= 0, in units of the anomaly score.

    NaN, infinity and negative values are refused (one line, exit 2): phi = -1 made every frame an event and
    NaN none, silently. 0 (every frame an event) is accepted with a warning, for checks and demos.
    """

    name = "phi"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            phi = value
        else:
            try:
                phi = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(phi) or phi < 0:
            self.fail(f"{value!r}: phi must be a finite anomaly score >= 0", param, ctx)
        if phi == 0:
            click.echo("edge_asd: WARNING: --phi 0: every frame is at or over phi, so every frame is an event", err=True)
        return phi


def phi_option(help: str):
    """``--phi``: a threshold given by hand instead of the store's (:class:`PhiType`)."""
    return click.option("--phi", type=PhiType(), default=None, help=help)


def trust_dir_option(fn):
    """``--trust-dir`` (parameter ``trust_dir``, a Path or None; $EDGE_ASD_TRUST_DIR): the device's trust directory
    (edge-release init, docs/releases.md)."""
    return click.option("--trust-dir", type=click.Path(file_okay=False, path_type=Path), envvar="EDGE_ASD_TRUST_DIR",
                        default=None, help="Trust directory (edge-release init): its root decides which models, phi "
                                           "records and commands are accepted.")(fn)


def trust_options(fn):
    """:func:`trust_dir_option` and ``--trusted-clock`` (parameter ``trusted_clock``; $EDGE_ASD_TRUSTED_CLOCK=1):
    expiry times are checked only on a device whose clock is trusted."""
    fn = click.option("--trusted-clock", is_flag=True, envvar="EDGE_ASD_TRUSTED_CLOCK",
                      help="The device clock is trusted (NTS, GPS or an RTC): refuse expired roots, releases and "
                           "commands.")(fn)
    return trust_dir_option(fn)


def sign_key_option(fn):
    """``--sign-key`` (parameter ``sign_key``, a Path or None): the device key (.key) that signs a phi record
    set on the device; needs ``--trust-dir``."""
    return click.option("--sign-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help="Sign the new phi record with this device key (.key; the trust directory's root must "
                             "name it); needs --trust-dir.")(fn)
