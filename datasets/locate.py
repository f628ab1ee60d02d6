"""Where the local machine-sound data lives."""

from __future__ import annotations

import os
from pathlib import Path

from edge_asd.core.errors import EdgeAsdError

ENV_VAR = "EDGE_ASD_DATA"
HINT = (
    f"set {ENV_VAR}=/path/to/data, or download a dataset with "
    "`edge-data fetch dcase2020-dev --machine-type fan` (or `edge-data fetch mimii --machine-type fan`)"
)


def local_data_root() -> Path | None:
    """The local data folder (symlinks resolved), or None when there is none.

    Looks, in order, at: the environment variable ``EDGE_ASD_DATA``; ``../shared/data`` from the
    current directory; ``shared/data`` next to the source checkout (``/work/shared/data`` for a
    checkout in ``/work/main``).

    Raises:
        EdgeAsdError: ``EDGE_ASD_DATA`` is set but is not an existing folder.
    """
    value = os.environ.get(ENV_VAR)
    if value:
        path = Path(value).expanduser()
        if not path.is_dir():
            raise EdgeAsdError(f"{ENV_VAR}={value}: no such directory; fix the path or unset {ENV_VAR}")
        return path.resolve()
    for candidate in (Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[2] / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def require_data_root() -> Path:
    """Like :func:`local_data_root`, but there must be one.

    Raises:
        EdgeAsdError: no local data found (the message says how to get some), or as
            :func:`local_data_root`.
    """
    root = local_data_root()
    if root is None:
        raise EdgeAsdError(f"no local machine-sound data found: {HINT}")
    return root
