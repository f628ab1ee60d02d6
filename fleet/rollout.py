"""A staged rollout (issue 18 §2; docs/fleet.md, Rollout): one signed release published cohort by cohort
(``canary``, ``wave1``, ...), promoted when enough devices of a stage passed their health gate, aborted when
too many failed, as AWS IoT Jobs' rollout and abort criteria do.

It reads what ``edge-fleet serve`` stores in the fleet database (each device's cohort and status from its
heartbeats, the devices' ``rollout`` event lines) and keeps its own state in the table ``rollouts``, so a
rollout stopped and started again with the same release resumes at its stage. Per stage:

1. publish the release as the stage's desired release (retained, :func:`~edge_asd.edge.runtime.fleet.publish.publish_release`);
2. count, among the stage's devices, those whose ``rollout`` lines for this release (since the rollout
   started) say ``passed``, and those that say ``failed`` or ``refused``;
3. abort when failures >= ``abort_failures`` once >= ``min_reports`` devices reported: clear the desired
   release of this stage and every later one, publish nothing further;
4. promote when passed >= ``promote_after`` (default: every device of the stage that is online or passed,
   less those that failed); abort when that has not happened within ``stage_timeout_s``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.fleet.publish import Connection, publish, release_payload
from edge_asd.edge.runtime.fleet.topics import check_name, cohort_topic
from edge_asd.fleet.db import FleetDb

log = logging.getLogger("edge_asd")
ONLINE = ("operational", "degraded")


@dataclass(frozen=True)
class Criteria:
    """When a stage is promoted or the rollout aborted. Counts are devices; times in seconds."""

    promote_after: int | None = None
    """Devices of the stage that passed before the next stage starts; None: all of them that are online."""
    abort_failures: int = 1
    """Failed (or refused) devices in the current stage that abort the rollout..."""
    min_reports: int = 1
    """...once at least this many of its devices reported (passed or failed)."""
    stage_timeout_s: float = 3600.0
    """A stage not promoted within this long aborts the rollout."""
    poll_s: float = 2.0
    """How often the fleet database is read."""


@dataclass
class Tally:
    """One stage's devices (names): all known, online now, passed, failed (with each failure's reason)."""

    devices: list[str]
    online: list[str]
    passed: list[str]
    failed: dict[str, str]

    @property
    def target(self) -> int:
        """Devices expected to pass: those online or passed, less the failed ones."""
        return len((set(self.online) | set(self.passed)) - set(self.failed))


def tally(db: FleetDb, site: str, cohort: str, sha256: str, since: float) -> Tally:
    """The devices of ``cohort`` at ``site`` (their heartbeat's ``cohort``; none given: ``all``) and their
    ``rollout`` lines for the release ``sha256`` received since ``since`` (epoch s). A device whose heartbeat
    says an input runs that model as good counts as passed (it took the release before the rollout started:
    otherwise the stage never promoted)."""
    rows = [d for d in db.devices() if d["site"] == site and (d["cohort"] or "all") == cohort]
    names = {d["device"] for d in rows}
    passed, failed = set(), {}
    for device, line in db.db.execute("SELECT device, line FROM events WHERE site = ? AND kind = 'rollout' AND "
                                      "received >= ? ORDER BY received, seq", (site, since)):
        e = json.loads(line)
        if device not in names or e.get("sha256") != sha256:
            continue
        if e.get("result") == "passed":
            passed.add(device)
        elif e.get("result") in ("failed", "refused"):
            failed[device] = f"{e.get('result')}: {e.get('reason') or 'no reason given'}"
    for d in rows:  # already running it as good (a passed trial before this rollout, e.g. edge-release publish)
        if any(i.get("model_sha256") == sha256 and (i.get("release") or {}).get("state") == "good" for i in d["inputs"]):
            passed.add(d["device"])
    return Tally(sorted(names), sorted(d["device"] for d in rows if d["status"] in ONLINE),
                 sorted(passed - set(failed)), failed)


class Rollout:
    """The rollout of ``release`` (with ``model``, or a ``url`` to it) over ``stages`` at ``site``.

    Raises (from the constructor, before anything is published):
        EdgeAsdError: every refusal of :func:`~edge_asd.edge.runtime.fleet.publish.release_payload`; a release
            signed for one cohort given more stages; a bad or repeated stage name; a stage no device of the
            site reports as its cohort; a rollout of this release with other stages still running.
    """

    def __init__(self, db: FleetDb, connection: Connection, site: str, model: Path, release: Path,
                 stages: list[str], criteria: Criteria = Criteria(), url: str | None = None):
        self.db, self.connection, self.site, self.criteria = db, connection, check_name(site, "site"), criteria
        self.stages = [check_name(s, "stage") for s in stages]
        if not stages or len(set(stages)) != len(stages):
            raise EdgeAsdError(f"--stages {','.join(stages)}: give each cohort once, in rollout order")
        self.payload, self.release = release_payload(model, release, stages[0], url)
        if self.release.cohort != "all" and stages != [self.release.cohort]:
            raise EdgeAsdError(f"{release}: signed for cohort {self.release.cohort!r} only; a staged rollout needs a "
                               "release signed with --cohort all")
        self.id, self.stage, self.started, self.stage_since = self._resume_or_start()

    def _resume_or_start(self) -> tuple[int, int, float, float | None]:
        row = self.db.db.execute("SELECT id, stages, stage, started, stage_since FROM rollouts WHERE site = ? AND "
                                 "sha256 = ? AND status = 'running' ORDER BY id DESC", (self.site, self.release.sha256)).fetchone()
        if row is not None:
            if json.loads(row[1]) != self.stages:
                raise EdgeAsdError(f"rollout {row[0]} of this release is running with stages {','.join(json.loads(row[1]))}; "
                                   "resume it with those stages")
            log.info("rollout %d: resuming at stage %s", row[0], self.stages[row[2]])
            return row[0], row[2], row[3], row[4]
        for stage in self.stages:
            if not tally(self.db, self.site, stage, self.release.sha256, 0).devices:
                raise EdgeAsdError(f"stage {stage}: no device of site {self.site} reports cohort {stage!r} "
                                   "(edge-fleet ls shows each device's cohort)")
        now = time.time()
        cursor = self.db.db.execute("INSERT INTO rollouts (site, version, sha256, name, stages, stage, status, started, "
                                    "updated) VALUES (?, ?, ?, ?, ?, 0, 'running', ?, ?)",
                                    (self.site, self.release.version, self.release.sha256, self.release.name,
                                     json.dumps(self.stages), now, now))
        return cursor.lastrowid, 0, now, None

    def _save(self, status: str = "running", reason: str | None = None) -> None:
        self.db.db.execute("UPDATE rollouts SET stage = ?, stage_since = ?, status = ?, reason = ?, updated = ? WHERE id = ?",
                           (self.stage, self.stage_since, status, reason, time.time(), self.id))

    def run(self, stop: threading.Event | None = None) -> tuple[str, str]:
        """Publish and watch stage by stage until complete or aborted, or ``stop`` is set; ("complete" |
        "aborted" | "interrupted", one line saying why)."""
        stop = stop or threading.Event()
        c, v = self.criteria, self.release.version
        while self.stage < len(self.stages):
            cohort = self.stages[self.stage]
            publish(self.connection, cohort_topic(self.site, cohort), self.payload)  # again on resuming: the same
            if self.stage_since is None:
                self.stage_since = time.time()
                self._save()
            log.info("rollout %d: release %d published to stage %s", self.id, v, cohort)
            while True:
                t = tally(self.db, self.site, cohort, self.release.sha256, self.started)
                reports = len(t.passed) + len(t.failed)
                if len(t.failed) >= c.abort_failures and reports >= c.min_reports:
                    device, why = sorted(t.failed.items())[0]
                    return self._abort(f"stage {cohort}: {len(t.failed)} of {reports} devices that reported failed "
                                       f"(abort at {c.abort_failures}); {device} {why}")
                target = c.promote_after if c.promote_after is not None else t.target
                if len(t.passed) >= target > 0:
                    log.info("rollout %d: stage %s passed (%d of %d devices)", self.id, cohort, len(t.passed), len(t.devices))
                    break
                waited = time.time() - self.stage_since
                if waited > c.stage_timeout_s:
                    return self._abort(f"stage {cohort}: {len(t.passed)} of {target} devices passed within "
                                       f"{c.stage_timeout_s:g} s ({len(t.online)} online, {len(t.failed)} failed)")
                if stop.wait(c.poll_s):
                    return "interrupted", (f"rollout {self.id} stopped at stage {cohort} ({len(t.passed)} of {target} "
                                           "passed); the same command resumes it")
            self.stage, self.stage_since = self.stage + 1, None
            self._save()
        self._save("complete")
        return "complete", f"rollout {self.id}: release {v} passed every stage ({', '.join(self.stages)})"

    def _abort(self, reason: str) -> tuple[str, str]:
        """Clear the desired release of the current stage and every later one; record why."""
        for cohort in self.stages[self.stage:]:
            publish(self.connection, cohort_topic(self.site, cohort), b"")
        self._save("aborted", reason)
        return "aborted", f"rollout {self.id} of release {self.release.version} aborted: {reason}"
