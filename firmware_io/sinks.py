"""Event sinks: where anomaly events go. JSON lines on stdout, or appended to a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TextIO


class JsonLinesSink:
    """One JSON object per line, flushed at once; fsynced too when it writes to its own file."""

    def __init__(self, stream: TextIO, fsync: bool = False, owns_stream: bool = False):
        self.stream, self.fsync, self._owns = stream, fsync, owns_stream
        self.n_written = 0

    @classmethod
    def append_to(cls, path: str | Path) -> JsonLinesSink:
        return cls(open(path, "a", encoding="utf-8"), fsync=True, owns_stream=True)

    def write(self, record: dict) -> None:
        self.stream.write(json.dumps(record, sort_keys=True) + "\n")
        self.stream.flush()
        if self.fsync:
            os.fsync(self.stream.fileno())
        self.n_written += 1

    def close(self) -> None:
        if self._owns:
            self.stream.close()
