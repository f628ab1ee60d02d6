"""What every edge-asd command shares, desktop and device: ``-h``/``--help`` and ``EDGE_ASD_*`` environment
variables (``CONTEXT_SETTINGS``), the kit's version, logging to stderr, and user errors as one line with exit 1.

Command-line options that only the device commands take live in :mod:`edge_asd.edge.cli.options`."""

from __future__ import annotations

import errno
import functools
import logging
import re
import sys

import click

from edge_asd.core.errors import EdgeAsdError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "EDGE_ASD"}


def script_help(doc: str) -> str:
    """A script's module docstring as its ``--help`` text: click rewraps paragraphs, so each indented block (an
    example command) and each list (lines starting ``* ``, ``- `` or ``1. ``) is marked with click's no-rewrap
    marker and printed as written."""
    blocks = re.split(r"\n\s*\n", doc.strip("\n"))
    keep = re.compile(r"^(    |\s*[*-] |\s*\d+\. )", re.M)
    return "\n\n".join("\b\n" + b if keep.search(b) else b for b in blocks)


def kit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge-asd")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        return "0+unknown"


def version_option():
    """``--version``: prints ``PROG, version X`` and exits. The version is looked up only when asked:
    importlib.metadata costs about 3 MB of resident memory, kept for the life of a service."""

    def show(ctx, param, value):
        if value and not ctx.resilient_parsing:
            click.echo(f"{ctx.find_root().info_name}, version {kit_version()}")
            ctx.exit()

    return click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=show,
                        help="Show the version and exit.")


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


def csv_list(kind=str):
    """A click callback: a comma-separated option value as a list of ``kind`` (None stays None)."""
    def convert(ctx, param, value):
        if value is None:
            return None
        try:
            return [kind(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"{value!r}: a comma-separated list of {kind.__name__} values") from None
    return convert
