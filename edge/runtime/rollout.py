"""The health gate of a release on trial in a slot directory (:mod:`.slots`), run inside the monitor (issue 18 §2,
docs/releases.md, Health gate): the mark-good pattern of RAUC and Mender.

A trial passes when it has scored at least ``trial_windows`` context windows AND ``trial_minutes`` of audio, and
its alarms (alarm-on lines) stay within ``factor`` x the good model's rate (alarms per hour of scored audio, from
``good_stats``) over the trial's audio, plus ``extra`` alarms, and its alarm is off at that moment (an alarm that
went on once and stayed on counts one alarm-on line: a phi 1000 times too low passed the gate that way). It fails at once when the model does not load, when
scoring raises, or as soon as its alarms exceed what the gate allows at ``trial_minutes``. Pass: the trial becomes
good (good becomes previous). Fail: the monitor goes back to the good model in the same process and stream, and
``last_failure`` records why. Each step is a ``rollout`` line (docs/events.md) through the monitor's emit path.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.events import ROLLOUT, event_line, event_record, utc_now
from edge_asd.edge.runtime.gate import GateSettings
from edge_asd.edge.runtime.slots import NO_STATS, Slots

log = logging.getLogger("edge_asd")
SAVE_EVERY_S = 30.0
"""Seconds of audio between two saves of the running slot's counts into slots.json."""


def rollout_line(name: str, entry: dict | None, result: str, reason: str | None = None, version=None) -> dict:
    """A ``rollout`` line: ``release_version``, ``sha256``, ``result`` (trial, passed, failed, refused), ``reason``."""
    fields = {"release_version": entry["version"] if entry else version, "sha256": entry["sha256"] if entry else None,
              "result": result, "time": utc_now()}
    if reason is not None:
        fields["reason"] = reason
    return event_line(event_record(ROLLOUT, fields), name)


class Rollout:
    """One input's slot directory under the health gate. ``start()`` prepares the model to run (the trial, else
    good); the monitor then calls ``observe`` after each block and ``failed`` on a scoring error; ``install``,
    ``roll_back`` and ``reload`` run in the monitor's thread (``Monitor.request``)."""

    def __init__(self, slots: Slots, cfg, gate: GateSettings | None = None):
        self.slots, self.cfg, self.gate = slots, cfg, gate or GateSettings()
        self.slot = "good"
        self.pending: list[dict] = []  # lines decided before the monitor runs
        self._base = dict(NO_STATS)  # the running slot's counts before the detector in service
        self._since = 0  # monitor position when the detector in service started
        self._saved_s = 0.0
        self._good = dict(NO_STATS)

    def _prepare(self, slot: str, state: dict):
        from edge_asd.edge.runtime.prepare import prepare_model

        return prepare_model(self.cfg, self.slots.model(slot, state), from_history=True)

    def _enter(self, slot: str, state: dict, position: int = 0) -> None:
        self.slot = slot
        stats = state["trial"] if slot == "trial" else state.get("good_stats") or NO_STATS
        self._base = {k: stats.get(k, 0) for k in NO_STATS}
        self._good = dict(state.get("good_stats") or NO_STATS)  # the rate a trial is held to
        self._since, self._saved_s = position, self._base["seconds"]

    def start(self):
        """The Prepared model to run first: the trial (a trial that does not load fails here), else good."""
        state = self.slots.read()
        if state.get("trial"):
            try:
                prepared = self._prepare("trial", state)
                self._enter("trial", state)
                return prepared
            except Exception as e:  # noqa: BLE001 - any failure to load fails the trial
                state = self._record_failure(state, f"the model does not load: {e}")
        prepared = self._prepare("good", state)
        self._enter("good", state)
        return prepared

    def _record_failure(self, state: dict, reason: str) -> dict:
        log.warning("%s: release %s failed its trial: %s", self.cfg.label, state["trial"]["version"], reason)
        self.pending.append(rollout_line(self.cfg.label, state["trial"], "failed", reason))
        return self.slots.fail_trial(reason)

    def stats(self, monitor) -> dict:
        """The running slot's counts: context windows scored, alarm-on lines, seconds of audio."""
        det = monitor.detector
        return {"windows": self._base["windows"] + det.n_frames, "alarms": self._base["alarms"] + det.n_alarms,
                "seconds": round(self._base["seconds"] + (monitor.position - self._since) / monitor.cfg.sample_rate, 3)}

    def _flush(self, monitor) -> None:
        while self.pending:
            monitor.emit(self.pending.pop(0))

    def observe(self, monitor) -> None:
        """After each block: write pending lines, save the counts now and then, decide the trial."""
        self._flush(monitor)
        stats = self.stats(monitor)
        if self.slot == "trial":
            minimum_s = 60.0 * self.gate.trial_minutes
            allowed = self.gate.allowed(self._good, max(stats["seconds"], minimum_s))
            if stats["alarms"] > allowed:
                self._fail(monitor, f"{stats['alarms']} alarms in {stats['seconds']:.0f} s of audio; the health gate "
                                    f"allows {allowed:.1f} over {max(stats['seconds'], minimum_s):.0f} s "
                                    f"({self.gate.factor:g} x the good model's rate + {self.gate.extra})", stats)
                return
            if stats["windows"] >= self.gate.trial_windows and stats["seconds"] >= minimum_s:
                if monitor.detector.alarm.on:  # one alarm held on all trial long counts once: never mark it good
                    self._fail(monitor, f"its alarm is still on when the trial ends ({stats['alarms']} alarm-on in "
                                        f"{stats['seconds']:.0f} s of audio); a release passes only with its alarm off",
                               stats)
                    return
                self.slots.save_stats("trial", stats)
                state = self.slots.mark_good()
                self.slot = "good"
                log.info("%s: release %s passed its trial", self.cfg.label, state["good"]["version"])
                monitor.emit(rollout_line(self.cfg.label, state["good"], "passed"))
                return
        if stats["seconds"] - self._saved_s >= SAVE_EVERY_S:
            self.slots.save_stats(self.slot, stats)
            self._saved_s = stats["seconds"]

    def failed(self, monitor, error: BaseException) -> bool:
        """A scoring error: on trial, the trial fails and the good model goes on (True); on good, False."""
        if self.slot != "trial":
            return False
        self._fail(monitor, f"scoring raised {type(error).__name__}: {error}", self.stats(monitor))
        return True

    def _fail(self, monitor, reason: str, stats: dict) -> None:
        self.slots.save_stats("trial", stats)
        state = self._record_failure(self.slots.read(), reason)
        self._swap(monitor, "good", state)
        self._flush(monitor)

    def _swap(self, monitor, slot: str, state: dict) -> None:
        prepared = self._prepare(slot, state)
        monitor.swap(prepared.scorer, prepared.detector)
        self._enter(slot, state, monitor.position)

    def _fold(self, monitor) -> None:
        """Keep the running slot's counts before its detector is replaced."""
        self.slots.save_stats(self.slot, self.stats(monitor))

    def install(self, monitor, staging: Path, envelope, where: str) -> None:
        """Install a release staged by the fleet link into the trial slot (through the trust directory) and run
        it; a refusal is a ``refused`` line, a trial that does not load fails at once. The staging file is
        removed."""
        from edge_asd.edge.runtime import phi_store
        from edge_asd.edge.runtime.signed_docs import parse_release
        from edge_asd.edge.runtime.trust import TrustDir

        cfg = self.cfg
        try:
            version = parse_release(envelope.payload, where).version
        except EdgeAsdError:
            version = None
        try:
            if cfg.trust_dir is None:
                raise EdgeAsdError(f"{cfg.label}: no trust directory, so no release from the fleet is installed")
            self._fold(monitor)
            self.slots.install(TrustDir(cfg.trust_dir), staging, envelope, where,
                               cfg.store or phi_store.default_store_path(), cfg.trusted_clock)
        except EdgeAsdError as e:
            log.warning("%s: release refused: %s", cfg.label, e)
            monitor.emit(rollout_line(cfg.label, None, "refused", str(e), version))
            return
        finally:
            Path(staging).unlink(missing_ok=True)
        state = self.slots.read()
        monitor.emit(rollout_line(cfg.label, state["trial"], "trial"))
        try:
            self._swap(monitor, "trial", state)
        except Exception as e:  # noqa: BLE001 - any failure to load fails the trial
            state = self._record_failure(state, f"the model does not load: {e}")
            self._flush(monitor)
            if self.slot != "good" or monitor.detector.model_sha256 != state["good"]["sha256"]:
                self._swap(monitor, "good", state)

    def roll_back(self, monitor, reason: str) -> None:
        """A rollback command: the trial fails with ``reason`` (else previous becomes good); the monitor swaps."""
        self._fold(monitor)
        trial = self.slots.read().get("trial")
        state = self.slots.roll_back(reason)
        if trial:
            self.pending.append(rollout_line(self.cfg.label, trial, "failed", reason))
        self._swap(monitor, "good", state)
        self._flush(monitor)

    def reload(self, monitor) -> None:
        """Load the running slot's model and phi again (a new phi from a set-phi command)."""
        self._fold(monitor)
        self._swap(monitor, self.slot, self.slots.read())

    def release_info(self) -> dict:
        """The heartbeat's ``release``: ``current`` (good's version), ``trial``, ``state``, ``last_failure``."""
        try:
            state = self.slots.read()
        except EdgeAsdError:
            return {"current": None, "trial": None, "state": self.slot, "last_failure": None}
        trial = state.get("trial")
        return {"current": state["good"]["version"], "trial": trial["version"] if trial else None,
                "state": self.slot, "last_failure": state.get("last_failure")}
