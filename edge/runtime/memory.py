"""The C allocator's settings for a long-running monitor: one malloc arena and a fixed mmap threshold.

glibc gives every thread that allocates its own arena and raises its mmap threshold each time a large
block (an evidence clip's FLAC bytes) is freed, up to 32 MB; blocks below it then come from the arenas,
and freed ones stay resident there between small long-lived ones. Measured with ``bench/soak.py`` (1-s
windows, events, evidence): the monitor thread's arena held 6.5 MB of which 5 MB free, and RSS rose for
hours (docs/device.md, Memory). ``M_ARENA_MAX 1`` and ``M_MMAP_THRESHOLD 128 KiB`` (glibc's default,
made fixed) keep it flat; scores and events do not change. Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("edge_asd")

M_MMAP_THRESHOLD = -3
"""glibc ``<malloc.h>``: blocks at least this large are mmapped and unmapped when freed."""
M_ARENA_MAX = -8
"""glibc ``<malloc.h>``: the most malloc arenas (the threads share them)."""
SETTINGS = {M_ARENA_MAX: ("MALLOC_ARENA_MAX", 1), M_MMAP_THRESHOLD: ("MALLOC_MMAP_THRESHOLD_", 128 * 1024)}
"""mallopt parameter -> (the environment variable that sets it instead, value)."""


def tune_malloc() -> list[str]:
    """Apply :data:`SETTINGS` with glibc's ``mallopt``, before the monitor threads start; one that its
    environment variable already sets is left to it. Returns the environment names of the settings applied
    (empty where the C library has no ``mallopt``)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return []
    applied = []
    for param, (env, value) in SETTINGS.items():
        if env not in os.environ and mallopt(param, value) == 1:
            applied.append(f"{env}={value}")
    log.debug("malloc: %s", ", ".join(applied) or "unchanged")
    return applied
