"""What every edge-asd command shares: logging to stderr, and user errors as one line with exit 1."""

from __future__ import annotations

import errno
import functools
import logging
import sys

import click

from .errors import EdgeAsdError


def gate_options(fn):
    """Add the energy gate's options of ``--window gate``: --gate-db (dBFS), --gate-min-on-s and
    --gate-min-off-s (s), with the defaults of :mod:`edge.windows` (edge-monitor and edge-calibrate
    take the same gate, so calibration windows are the monitor's)."""
    from .windows import DEFAULT_GATE_DB, DEFAULT_GATE_MIN_OFF_S, DEFAULT_GATE_MIN_ON_S

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


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "EDGE_ASD"}


def kit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge-asd")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        return "0+unknown"


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Our messages (logger ``edge_asd``) at INFO, or WARNING with ``quiet``; other libraries' at WARNING."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(levelname)s: %(message)s")
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.getLogger("edge_asd").setLevel(level)


def user_errors(fn):
    """Turn EdgeAsdError and OS errors (full disk, permissions) into one line and exit 1; a closed
    stdout (``| head``) ends the command quietly."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgeAsdError as e:
            raise click.ClickException(str(e)) from None
        except BrokenPipeError:
            sys.stderr.close()  # the reader went away (e.g. `| head`): stop quietly
            sys.exit(1)
        except OSError as e:  # full disk, read-only or missing folder, permissions: the user's environment
            where = e.filename or ("disk" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "I/O")
            raise click.ClickException(f"{where}: {e.strerror or e}") from None

    return wrapper
