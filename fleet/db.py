"""The fleet database (SQLite): one row per device, the events de-duplicated by (site, device, boot, seq).

A device's status, derived when read (:meth:`FleetDb.devices`):

- ``never seen``: listed by ``edge-fleet serve --expect`` and never heard from;
- ``offline``: its retained state says offline for its current boot (a last will or a clean stop), or
  nothing came from it for 3 heartbeat intervals; an ``offline`` of an older boot is stale and ignored;
- ``degraded``: online, and its last heartbeat reports an input-health problem or lost lines;
- ``operational``: online and healthy.

Besides the devices and events: ``cohorts``, each cohort's desired release as the broker holds it (the ingest
reads the retained ``asd/v1/<site>/_cohort/<cohort>/release``), and ``rollouts``, the staged rollouts of
``edge-fleet rollout`` (:mod:`.rollout`), so a restarted rollout resumes where it was.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import sqlite3
import time
from pathlib import Path

from edge_asd.core.errors import EdgeAsdError

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    site TEXT NOT NULL, device TEXT NOT NULL,
    expected INTEGER NOT NULL DEFAULT 0,
    boot TEXT, online INTEGER, reason TEXT, status_since REAL,
    first_seen REAL, last_seen REAL,
    kit_version TEXT, inputs TEXT, health TEXT, problems TEXT,
    outbox INTEGER, uptime_s REAL, heartbeat_s REAL,
    received INTEGER NOT NULL DEFAULT 0, duplicates INTEGER NOT NULL DEFAULT 0, stale_states INTEGER NOT NULL DEFAULT 0,
    cohort TEXT, last_rollback TEXT,
    PRIMARY KEY (site, device)
);
CREATE TABLE IF NOT EXISTS cohorts (
    site TEXT NOT NULL, cohort TEXT NOT NULL, version INTEGER, sha256 TEXT, name TEXT, seen REAL,
    PRIMARY KEY (site, cohort)
);
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY, site TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL, name TEXT,
    stages TEXT NOT NULL, stage INTEGER NOT NULL DEFAULT 0, stage_since REAL, status TEXT NOT NULL,
    reason TEXT, started REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    site TEXT NOT NULL, device TEXT NOT NULL, boot TEXT NOT NULL, seq INTEGER NOT NULL,
    kind TEXT, input TEXT, time REAL, received REAL NOT NULL, line TEXT NOT NULL,
    PRIMARY KEY (site, device, boot, seq)
);
CREATE INDEX IF NOT EXISTS events_time ON events (site, device, time);
"""
STALE_HEARTBEATS = 3
"""A device is offline when nothing came from it for this many of its heartbeat intervals."""
ADDED = {"cohort": "TEXT", "last_rollback": "TEXT"}
"""Columns added to ``devices`` after its first version (a database made before gets them on opening)."""
COLUMNS = ("site", "device", "status", "last_seen", "boot", "cohort", "desired", "current", "trial", "rollout",
           "last_rollback", "kit_version", "models", "phi", "phi_source", "health", "events_1h", "events_24h",
           "anomalies_1h", "anomalies_24h", "outbox", "received", "duplicates")
"""The columns of ``edge-fleet ls --json`` and ``export devices`` (:func:`columns`)."""


def wall_time(line: dict, default: float) -> float:
    """A line's ``wall_time`` (``2026-11-26T10:00:06.950Z``) as epoch seconds; ``default`` when absent or bad."""
    text = line.get("wall_time")
    try:
        whole, _, frac = str(text).rstrip("Z").partition(".")
        return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))
    except (ValueError, TypeError):
        return default


class FleetDb:
    """The database file at ``path`` (created when missing; WAL, so ``edge-fleet ls`` reads while ``serve`` writes).

    Raises:
        EdgeAsdError: the file cannot be opened or is not a fleet database.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            have = {row[1] for row in self.db.execute("PRAGMA table_info(devices)")}
            for name, kind in ADDED.items():
                if name not in have:
                    self.db.execute(f"ALTER TABLE devices ADD COLUMN {name} {kind}")
        except sqlite3.Error as e:
            raise EdgeAsdError(f"{self.path}: not a fleet database ({e})") from None

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _transaction(self):
        """One transaction, one fsync (the connection is in autocommit mode, where ``with db`` is none); inside
        :meth:`transaction`, part of that one."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _touch(self, site: str, device: str, now: float) -> None:
        self.db.execute("INSERT OR IGNORE INTO devices (site, device, first_seen) VALUES (?, ?, ?)", (site, device, now))
        self.db.execute("UPDATE devices SET last_seen = ?, first_seen = COALESCE(first_seen, ?) WHERE site = ? AND device = ?",
                        (now, now, site, device))

    def transaction(self):
        """Several messages in one transaction (one fsync): ``with db.transaction(): ...``; committed on leaving."""
        return self._transaction()

    def expect(self, site: str, device: str) -> None:
        """List a device that should report (``never seen`` until it does)."""
        self.db.execute("INSERT OR IGNORE INTO devices (site, device) VALUES (?, ?)", (site, device))
        self.db.execute("UPDATE devices SET expected = 1 WHERE site = ? AND device = ?", (site, device))

    def state(self, site: str, device: str, body: dict, now: float) -> bool:
        """A retained state message; False when it was a stale ``offline`` of an older boot (ignored)."""
        boot, online = str(body.get("boot")), body.get("status") == "online"
        row = self.db.execute("SELECT boot FROM devices WHERE site = ? AND device = ?", (site, device)).fetchone()
        current = row[0] if row else None
        if not online and current is not None and boot != current:
            self.db.execute("UPDATE devices SET stale_states = stale_states + 1 WHERE site = ? AND device = ?", (site, device))
            return False
        with self._transaction():
            if online:
                self._touch(site, device, now)
            else:
                self.db.execute("INSERT OR IGNORE INTO devices (site, device, first_seen) VALUES (?, ?, ?)",
                                (site, device, now))
            self.db.execute("UPDATE devices SET boot = ?, online = ?, reason = ?, status_since = ? "
                            "WHERE site = ? AND device = ?", (boot, int(online), body.get("reason"), now, site, device))
            if online or "outbox" in body:  # a clean stop reports the outbox it leaves
                self._status_fields(site, device, body)
        return True

    def _status_fields(self, site: str, device: str, body: dict) -> None:
        self.db.execute("UPDATE devices SET kit_version = COALESCE(?, kit_version), inputs = COALESCE(?, inputs), "
                        "health = COALESCE(?, health), problems = COALESCE(?, problems), outbox = COALESCE(?, outbox), "
                        "uptime_s = COALESCE(?, uptime_s), heartbeat_s = COALESCE(?, heartbeat_s), cohort = COALESCE(?, cohort) "
                        "WHERE site = ? AND device = ?",
                        (body.get("kit_version"), _json(body.get("inputs")), body.get("health"),
                         _json(body.get("problems")), body.get("outbox"), body.get("uptime_s"), body.get("heartbeat_s"),
                         _text(body.get("cohort")), site, device))

    def heartbeat(self, site: str, device: str, body: dict, now: float) -> None:
        """A heartbeat: its figures replace the stored ones. A heartbeat of a new boot means the device is online
        (its birth may come later); one of the current boot leaves online / offline to the state messages (a
        clean stop sends its last heartbeat just before its ``offline``)."""
        with self._transaction():
            self._touch(site, device, now)
            row = self.db.execute("SELECT boot FROM devices WHERE site = ? AND device = ?", (site, device)).fetchone()
            boot = str(body.get("boot"))
            if row[0] != boot:
                self.db.execute("UPDATE devices SET boot = ?, online = 1, reason = NULL, status_since = ? "
                                "WHERE site = ? AND device = ?", (boot, now, site, device))
            self._status_fields(site, device, body)

    def events(self, site: str, device: str, boot: str, events: list[dict], now: float) -> tuple[int, int, int]:
        """Store a batch ``[{"seq": n, "line": {...}}]`` of one boot; (new, duplicates, last seq). Committed when
        this returns, so the ack sent after it never acknowledges a line not stored."""
        rows = []
        for e in events:
            line = e["line"]
            rows.append((site, device, boot, int(e["seq"]), line.get("event"), line.get("input"), wall_time(line, now),
                         now, json.dumps(line, sort_keys=True)))
        with self._transaction():
            self._touch(site, device, now)
            before = self.db.total_changes
            self.db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            new = self.db.total_changes - before
            self.db.execute("UPDATE devices SET received = received + ?, duplicates = duplicates + ? "
                            "WHERE site = ? AND device = ?", (len(rows), len(rows) - new, site, device))
            failed = [e["line"] for e in events if e["line"].get("event") == "rollout"
                      and e["line"].get("result") in ("failed", "refused")]
            if failed:  # the device's health gate reverted a trial, or it refused a release
                last = failed[-1]
                self.db.execute("UPDATE devices SET last_rollback = ? WHERE site = ? AND device = ?",
                                (_json({"version": last.get("release_version"), "reason": last.get("reason"),
                                        "time": last.get("time")}), site, device))
        return new, len(rows) - new, max(r[3] for r in rows)

    def desired(self, site: str, cohort: str, release, now: float) -> None:
        """A cohort's desired release as retained on the broker (a :class:`~edge_asd.edge.runtime.signed_docs.Release`),
        or None: cleared."""
        if release is None:
            self.db.execute("DELETE FROM cohorts WHERE site = ? AND cohort = ?", (site, cohort))
        else:
            self.db.execute("INSERT OR REPLACE INTO cohorts VALUES (?, ?, ?, ?, ?, ?)",
                            (site, cohort, release.version, release.sha256, release.name, now))

    def devices(self, now: float | None = None) -> list[dict]:
        """Every device's row with its status and event rates (:data:`COLUMNS` and more), sorted by site, device."""
        now = time.time() if now is None else now
        out = []
        cursor = self.db.execute("SELECT * FROM devices ORDER BY site, device")
        names = [c[0] for c in cursor.description]
        for row in cursor.fetchall():
            d = dict(zip(names, row))
            d["status"] = _status(d, now)
            inputs = json.loads(d["inputs"]) if d["inputs"] else []
            d["inputs"] = inputs
            d["problems"] = json.loads(d["problems"]) if d["problems"] else []
            d["models"] = ";".join(str(i.get("model_sha256") or "-")[:12] + (f"@{i['model_version']}" if i.get("model_version")
                                   is not None else "") for i in inputs)
            releases = [i["release"] for i in inputs if isinstance(i.get("release"), dict)]
            d["current"] = ";".join(str(r.get("current")) for r in releases) or None
            d["trial"] = ";".join(str(r.get("trial") or "-") for r in releases) or None
            failures = [r["last_failure"] for r in releases if isinstance(r.get("last_failure"), dict)]
            d["last_rollback"] = json.loads(d["last_rollback"]) if d["last_rollback"] else (failures or [None])[-1]
            desired = self.db.execute("SELECT version FROM cohorts WHERE site = ? AND cohort = ?",
                                      (d["site"], d["cohort"] or "all")).fetchone()
            d["desired"] = desired and desired[0]
            d["rollout"] = self._rollout_of(d["site"], d["cohort"] or "all")
            d["phi"] = ";".join(f"{i.get('phi')}" for i in inputs)
            d["phi_source"] = ";".join(f"{i.get('phi_source')}" for i in inputs)
            for span, name in ((3600, "1h"), (86400, "24h")):
                n, a = self.db.execute("SELECT COUNT(*), COALESCE(SUM(kind = 'anomaly'), 0) FROM events "
                                       "WHERE site = ? AND device = ? AND time >= ?", (d["site"], d["device"], now - span)).fetchone()
                d[f"events_{name}"], d[f"anomalies_{name}"] = n, a
            out.append(d)
        return out

    def _rollout_of(self, site: str, cohort: str) -> dict | None:
        """The latest rollout at ``site`` with a stage ``cohort``: id, version, status, stage, this cohort's
        state in it (done, current, waiting, cancelled) and the reason it stopped."""
        for row in self.db.execute("SELECT id, version, stages, stage, status, reason FROM rollouts WHERE site = ? "
                                   "ORDER BY id DESC", (site,)):
            stages = json.loads(row[2])
            if cohort in stages:
                k = stages.index(cohort)
                state = "done" if k < row[3] or row[4] == "complete" else "current" if k == row[3] else \
                    "cancelled" if row[4] == "aborted" else "waiting"
                return {"id": row[0], "version": row[1], "status": row[4], "stage": stages[min(row[3], len(stages) - 1)],
                        "cohort_state": state, "reason": row[5]}
        return None

    def event_rows(self, site: str | None = None, device: str | None = None, since: float | None = None):
        """Stored events (dicts: site, device, boot, seq, kind, input, time, received, line), oldest first."""
        query, args = "SELECT site, device, boot, seq, kind, input, time, received, line FROM events WHERE 1", []
        for column, value in (("site", site), ("device", device)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        if since is not None:
            query += " AND time >= ?"
            args.append(since)
        names = ("site", "device", "boot", "seq", "kind", "input", "time", "received", "line")
        for row in self.db.execute(query + " ORDER BY time, site, device, boot, seq", args):
            yield dict(zip(names, row))


def _status(d: dict, now: float) -> str:
    if d["last_seen"] is None and d["online"] is None:
        return "never seen"
    stale = STALE_HEARTBEATS * (d["heartbeat_s"] or 30.0)
    if not d["online"] or d["last_seen"] is None or now - d["last_seen"] > stale:
        return "offline"
    return "degraded" if d["health"] == "degraded" else "operational"


def iso_utc(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (``2026-12-02T03:40:00Z``); None stays None."""
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def columns(d: dict) -> dict:
    """A row of :meth:`FleetDb.devices` as ``ls --json`` and ``export devices`` write it: :data:`COLUMNS`, times
    in ISO 8601 UTC, the rollout and last rollback as one short text each."""
    out = {c: d[c] for c in COLUMNS}
    out["last_seen"] = iso_utc(d["last_seen"])
    r, fail = d["rollout"], d["last_rollback"]
    out["rollout"] = r and f"{r['id']}:{r['status']}:{r['stage']}"
    out["last_rollback"] = fail and f"{fail.get('version')}: {fail.get('reason')}"
    return out


def _text(value) -> str | None:
    return None if value is None else str(value)


def _json(value) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)
