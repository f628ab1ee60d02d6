"""Event sinks: where edge-monitor's JSON lines go. stdout, or appended to a file (fsynced, rotated).

Every line is flushed at once; a file sink also fsyncs it, so a power cut loses no line already
reported. Several monitor threads may share a sink (writes are serialized).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TextIO

from edge_asd.core.atomic_io import atomic_write_bytes
from edge_asd.core.errors import EdgeAsdError

log = logging.getLogger("edge_asd")


def open_log_for_append(path: Path) -> TextIO:
    """``path`` opened to append lines (utf-8). A last line cut short (a full disk or a power cut while it
    was written: no final newline) is moved aside first (:func:`move_torn_line_aside`), so the log holds
    whole lines only and the next line starts on a line of its own.

    Raises:
        EdgeAsdError: the torn line cannot be saved (the disk is still full); the log is left as it was.
    """
    with open(path, "a+b") as stream:
        move_torn_line_aside(path, stream)
    return open(path, "a", encoding="utf-8")


def move_torn_line_aside(path: Path, stream: BinaryIO) -> Path | None:
    """If ``stream`` (``path`` opened "a+b") does not end with a newline, write the bytes after its last newline
    to ``<path>.torn-<UTC time>`` (whole or not at all), then cut them off ``path`` (fsynced) and warn with
    one line naming that file. Returns that file, or None when the last line was whole (or the file empty).

    Raises:
        EdgeAsdError: the fragment cannot be written; nothing is cut off ``path``.
    """
    size = stream.seek(0, os.SEEK_END)
    if size == 0:
        return None
    stream.seek(size - 1)
    if stream.read(1) == b"\n":
        return None
    end = size  # the torn line starts after the last newline (or at 0); look back 64 KB at a time
    while end > 0:
        lo = max(0, end - 65536)
        stream.seek(lo)
        cut = stream.read(end - lo).rfind(b"\n")
        if cut >= 0:
            end = lo + cut + 1
            break
        end = lo
    stream.seek(end)
    fragment = stream.read(size - end)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.torn-{stamp}")
    k = 1
    while aside.exists():
        k += 1
        aside = path.with_name(f"{path.name}.torn-{stamp}-{k}")
    try:
        atomic_write_bytes(aside, fragment)
    except EdgeAsdError as e:
        raise EdgeAsdError(f"{path}: its last line was cut short and cannot be moved aside: {e}") from None
    stream.truncate(end)
    stream.flush()
    os.fsync(stream.fileno())
    log.warning("%s: its last line was cut short (a full disk or a power cut?): its %d bytes were moved to %s",
                path, len(fragment), aside)
    return aside


class JsonLinesSink:
    """One JSON object per line, flushed at once; fsynced too when it writes to its own file."""

    def __init__(self, stream: TextIO, fsync: bool = False, owns_stream: bool = False):
        self.stream, self.fsync, self._owns = stream, fsync, owns_stream
        self.n_written = 0
        self._lock = threading.Lock()

    @classmethod
    def append_to(cls, path: str | Path) -> JsonLinesSink:
        return cls(open_log_for_append(Path(path)), fsync=True, owns_stream=True)

    def write(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock:
            self._write_line(line)
            self.n_written += 1

    def _write_line(self, line: str) -> None:
        self.stream.write(line)
        self.stream.flush()
        if self.fsync:
            os.fsync(self.stream.fileno())

    def close(self) -> None:
        if self._owns:
            self.stream.close()


class StdoutSink(JsonLinesSink):
    """JSON lines to stdout that outlive their reader: when it goes away (``edge-monitor ... | head``, a closed
    pipe), the sink stops writing (stdout is pointed at /dev/null, so nothing fails later) and calls ``on_closed``
    once; the other sinks (the events file) keep every line."""

    def __init__(self, stream: TextIO, on_closed: Callable[[], None]):
        super().__init__(stream)
        self.on_closed, self.reader_gone = on_closed, False

    def _write_line(self, line: str) -> None:
        if self.reader_gone:
            return
        try:
            super()._write_line(line)
        except BrokenPipeError:
            self.reader_gone = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
            self.on_closed()


class RotatingJsonLinesFile(JsonLinesSink):
    """Appends to ``path``; before a line would take it past ``max_bytes``, the file is renamed to
    ``path.1`` (``path.1`` to ``path.2``, ... up to ``backups``; the oldest is deleted) and a new one
    started. ``max_bytes`` 0: never rotate. Lines are never split across files.
    """

    def __init__(self, path: str | Path, max_bytes: int = 0, backups: int = 5):
        self.path, self.max_bytes, self.backups = Path(path), int(max_bytes), max(0, int(backups))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(open_log_for_append(self.path), fsync=True, owns_stream=True)

    def _write_line(self, line: str) -> None:
        size = self.stream.tell()
        if self.max_bytes and size > 0 and size + len(line.encode("utf-8")) > self.max_bytes:
            self._rotate()
        super()._write_line(line)

    def _rotate(self) -> None:
        self.stream.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            Path(f"{self.path}.{self.backups}").unlink(missing_ok=True)
            for k in range(self.backups - 1, 0, -1):
                older = Path(f"{self.path}.{k}")
                if older.exists():
                    os.replace(older, f"{self.path}.{k + 1}")
            os.replace(self.path, f"{self.path}.1")
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the renames survive a power cut
        finally:
            os.close(dir_fd)
        self.stream = open(self.path, "a", encoding="utf-8")
