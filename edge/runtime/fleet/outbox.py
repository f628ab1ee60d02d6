"""The device's store-and-forward outbox: every event line enters this SQLite file before it is published
and leaves it only when the fleet's ingest acknowledges its sequence number (docs/fleet.md).

One row per line: (boot id, per-boot sequence number, the JSON line). The file is opened in WAL mode with
``synchronous=FULL``: a line that :meth:`Outbox.add` returned for survives a power cut. Rows of earlier
boots keep their boot id and sequence number, so a consumer de-duplicates by (device, boot id, seq)
whatever was resent. Several threads may use one Outbox (one connection, one lock).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from edge_asd.core.errors import EdgeAsdError

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- the order lines are sent in
    boot TEXT NOT NULL,
    seq INTEGER NOT NULL,
    line TEXT NOT NULL,
    UNIQUE (boot, seq)
);
CREATE TABLE IF NOT EXISTS owner (device TEXT NOT NULL)"""


class Outbox:
    """The outbox file at ``path`` for the boot ``boot`` (sequence numbers start at 1 for each boot).

    ``owner`` (``site/device``): the device whose lines the file holds, recorded by its first user; lines left
    by an earlier boot are sent under this name, so another device name is refused.

    Raises:
        EdgeAsdError: the file cannot be opened, is not an outbox, or belongs to another device.
    """

    def __init__(self, path: str | Path, boot: str, owner: str | None = None):
        self.path, self.boot, self.seq = Path(path), boot, 0
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            if owner is not None:
                self._claim(owner)
        except (sqlite3.Error, OSError) as e:
            raise EdgeAsdError(f"{self.path}: cannot open the outbox ({e})") from None

    def _claim(self, owner: str) -> None:
        row = self._db.execute("SELECT device FROM owner").fetchone()
        if row is None:
            self._db.execute("INSERT INTO owner (device) VALUES (?)", (owner,))
        elif row[0] != owner:
            self._db.close()
            raise EdgeAsdError(f"{self.path}: the outbox of {row[0]}, whose waiting lines would be sent as {owner}'s; "
                               "give this device its own --mqtt-outbox")

    def add(self, record: dict) -> int:
        """Store one event line (committed and synced when this returns); its sequence number."""
        line = json.dumps(record, sort_keys=True)
        with self._lock:
            self.seq += 1
            self._db.execute("INSERT INTO outbox (boot, seq, line) VALUES (?, ?, ?)", (self.boot, self.seq, line))
            return self.seq

    def batch(self, after_id: int, limit: int) -> tuple[str, list[tuple[int, int, str]]]:
        """The next lines after row ``after_id``, at most ``limit``, all of one boot: (boot, [(row id, seq,
        line)]); ("", []) when none is left."""
        with self._lock:
            rows = self._db.execute("SELECT id, boot, seq, line FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                    (after_id, limit)).fetchall()
        if not rows:
            return "", []
        boot = rows[0][1]
        out = []
        for row_id, b, seq, line in rows:
            if b != boot:
                break
            out.append((row_id, seq, line))
        return boot, out

    def lines(self, boot: str, first: int, last: int) -> list[tuple[int, int, str]]:
        """The lines of ``boot`` with first <= seq <= last still waiting: [(row id, seq, line)]."""
        with self._lock:
            return self._db.execute("SELECT id, seq, line FROM outbox WHERE boot = ? AND seq BETWEEN ? AND ? ORDER BY id",
                                    (boot, first, last)).fetchall()

    def ack(self, boot: str, first: int, last: int) -> int:
        """Remove the lines of ``boot`` with first <= seq <= last (the ingest stored them); how many went."""
        with self._lock:
            return self._db.execute("DELETE FROM outbox WHERE boot = ? AND seq BETWEEN ? AND ?",
                                    (boot, first, last)).rowcount

    def depth(self) -> int:
        """Lines waiting for an acknowledgement."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
