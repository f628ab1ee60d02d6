"""Event sinks: where edge-monitor's JSON lines go. stdout, or appended to a file (fsynced, rotated).

Every line is flushed at once; a file sink also fsyncs it, so a power cut loses no line already
reported. Several monitor threads may share a sink (writes are serialized).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

log = logging.getLogger("edge_asd")


def open_log_for_append(path: Path) -> TextIO:
    """``path`` opened to append lines (utf-8). A last line cut short (a full disk or a power cut while it
    was written: no final newline) is kept, and a newline is added first so that the next line starts on
    a line of its own instead of continuing the torn one (readers skip a torn line; they cannot skip a
    torn line glued to a whole one)."""
    stream = open(path, "a+b")
    try:
        size = stream.seek(0, os.SEEK_END)
        if size:
            stream.seek(size - 1)
            if stream.read(1) != b"\n":
                log.warning("%s: its last line was cut short (a full disk or a power cut?); it is kept, new lines "
                            "start after it", path)
                stream.write(b"\n")
                stream.flush()
                os.fsync(stream.fileno())
    finally:
        stream.close()
    return open(path, "a", encoding="utf-8")


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
