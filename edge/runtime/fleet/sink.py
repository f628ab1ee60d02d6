"""The monitor's sink for the fleet: every event line goes into the link's outbox; the sink also keeps what
the heartbeat reports (lines per kind, open health states, each input's model and phi)."""

from __future__ import annotations

import logging
import sqlite3
import threading

from edge_asd.edge.runtime.fleet.link import FleetLink

log = logging.getLogger("edge_asd")


class FleetSink:
    """A sink (``write(record)``) that stores each line in ``link``'s outbox.

    ``inputs``: input name -> the fields the heartbeat reports for it besides those of its ``start`` line
    (``model_version``, ``phi_source``) and its alert policy's ``alarm`` (``on`` / ``off`` from its ``alarm`` lines;
    ``off`` before the first). An ``alarm`` line also sends a heartbeat at once. A failing outbox (a full disk) loses the fleet copy of a line, never
    the monitor: the events file and stdout still get it; the loss is counted (``lost``) and logged once.
    """

    def __init__(self, link: FleetLink, inputs: dict[str, dict] | None = None):
        self.link = link
        self.inputs = {name: {"alarm": "off", **info} for name, info in (inputs or {}).items()}
        self.counts: dict[str, int] = {}
        self.problems: dict[tuple[str, str], str] = {}  # (input, health state) -> reason, while it lasts
        self.lost = 0
        self.kit_version: str | None = None
        self.frames = dict  # set by the monitor: () -> {input name: frames scored}
        self.releases = dict  # set by the monitor: () -> {input name: its slot directory's release state}
        self.cohort = "all"
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        kind, name = record.get("event"), record.get("input")
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if kind == "start":
                info = self.inputs.setdefault(name, {"alarm": "off"})
                info.update({k: record.get(k) for k in ("machine_id", "model_sha256", "phi")})
            elif kind == "alarm":
                self.inputs.setdefault(name, {"alarm": "off"})["alarm"] = record.get("state")
            elif kind == "health":
                key = (name, record.get("state"))
                if record.get("status") == "start":
                    self.problems[key] = record.get("reason", "")
                else:
                    self.problems.pop(key, None)
        try:
            self.link.add(record)
        except (sqlite3.Error, OSError) as e:
            self.lost += 1
            if self.lost == 1:
                log.warning("fleet: cannot store a line in the outbox (%s); lines still go to the events file", e)
        if kind == "alarm":
            self.link.beat_now()

    def status(self) -> dict:
        """The heartbeat's fields: ``health`` ("ok" or "degraded"), ``problems``, counts, ``cohort`` and ``inputs``
        (each with its ``release``: ``current``, ``trial``, ``state``, ``last_failure``; None without slots)."""
        frames, releases = self.frames(), self.releases()
        with self._lock:
            return {"kit_version": self.kit_version, "health": "degraded" if self.problems or self.lost else "ok",
                    "problems": [{"input": i, "state": s, "reason": r} for (i, s), r in sorted(self.problems.items())],
                    "events": self.counts.get("anomaly", 0), "verdicts": self.counts.get("verdict", 0),
                    "frames": sum(frames.values()), "lost": self.lost, "cohort": self.cohort,
                    "inputs": [{"input": n, **info, "frames": frames.get(n, 0), "release": releases.get(n)}
                               for n, info in sorted(self.inputs.items())]}

    def close(self) -> None:
        pass


def open_fleet(settings, inputs: dict[str, dict], cohort: str = "all") -> FleetSink:
    """A FleetSink on a new :class:`~.link.FleetLink` (outbox open, not connected yet: call
    ``sink.link.start()``). ``settings``: :class:`~.settings.LinkSettings`; ``inputs`` as for FleetSink; ``cohort``:
    the device's rollout cohort (:class:`~.link.FleetLink`).

    Raises:
        EdgeAsdError: paho-mqtt 2.x missing, bad TLS files, or an outbox that cannot be opened.
    """
    holder: list[FleetSink] = []
    link = FleetLink(settings, status=lambda: holder[0].status() if holder else {}, cohort=cohort)
    holder.append(FleetSink(link, inputs))
    holder[0].cohort = cohort
    if settings.ha_discovery:
        from edge_asd.edge.runtime.fleet.discovery import ha_configs

        link.discovery = lambda: ha_configs(settings.site, settings.device, sorted(holder[0].inputs), settings.ha_prefix,
                                            holder[0].kit_version)
    return holder[0]
