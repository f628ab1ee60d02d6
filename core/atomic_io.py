"""Crash-safe file replacement: write a temporary file, fsync, rename over the target, fsync the folder.

A crash or a full disk at any point leaves either the old file or the new one, never half of either.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_asd.core.errors import EdgeAsdError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old or the new file, never half."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory; on failure the previous file is unchanged."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _new_temporary(path)
    except OSError as e:
        raise EdgeAsdError(f"{path.parent}: cannot write there ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _mode_for(path))  # mkstemp makes 0600; keep the usual permissions
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise EdgeAsdError(f"{path}: cannot write ({e.strerror}); the previous file is unchanged") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _new_temporary(path: Path) -> tuple[int, str]:
    """(fd, name) of a new file ``.<name>.<random>.tmp`` beside ``path``, opened for writing, mode 0600
    (as tempfile.mkstemp; tempfile imports shutil, random, bz2 and lzma: memory a service keeps)."""
    while True:
        tmp = str(path.parent / f".{path.name}.{os.urandom(4).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), tmp
        except FileExistsError:
            continue


def _mode_for(path: Path) -> int:
    """The existing file's permissions, or those a plain open() would give a new file (0666 & ~umask)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
