"""A device's model slots (docs/releases.md, Slots): the model directory that ``edge-release install --slots DIR``
fills and ``edge-monitor --model DIR`` runs, the mark-good pattern of RAUC and Mender.

``DIR/slots.json`` (written atomically, :mod:`edge_asd.core.atomic_io`)::

    {"schema": 1, "name": <release name>,
     "good":     {"file", "version", "sha256"},
     "trial":    {"file", "version", "sha256", "since", "windows", "alarms", "seconds"} | null,
     "previous": {"file", "version", "sha256"} | null,
     "good_stats": {"windows", "alarms", "seconds"},
     "last_failure": {"version", "reason", "time"} | null}

``windows`` counts the context windows (frames) scored, ``alarms`` the alarm-on lines, ``seconds`` the audio
scored, s. The monitor runs the trial when there is one, else good; its health gate (:mod:`.rollout`) marks the
trial good (good becomes previous) or reverts to good and records ``last_failure``. Model files are kept as
``v<version>-<name>`` so that two versions never share a file. One writer at a time (the monitor's input).
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_asd.core.atomic_io import atomic_write_text
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.events import utc_now

SLOTS_FILE = "slots.json"
SCHEMA = 1
NO_STATS = {"windows": 0, "alarms": 0, "seconds": 0.0}


def is_slot_dir(path) -> bool:
    """Whether ``path`` is a slot directory (a folder holding ``slots.json``)."""
    return path is not None and Path(path).is_dir() and (Path(path) / SLOTS_FILE).is_file()


def _entry(release, file: str) -> dict:
    return {"file": file, "version": release.version, "sha256": release.sha256}


class Slots:
    """The slot directory ``path`` (layout in the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = self.path / SLOTS_FILE

    def read(self) -> dict:
        """The slots, checked. Raises EdgeAsdError: missing, not JSON, another schema, no good slot."""
        try:
            state = json.loads(self.file.read_text())
        except FileNotFoundError:
            raise EdgeAsdError(f"{self.path}: not a slot directory (no {SLOTS_FILE}); install a release into it "
                               "with edge-release install --slots") from None
        except (OSError, ValueError) as e:
            raise EdgeAsdError(f"{self.file}: unreadable ({type(e).__name__}); install the release again") from None
        good = state.get("good") if isinstance(state, dict) else None
        if state.get("schema") != SCHEMA or not isinstance(good, dict) or not isinstance(good.get("file"), str):
            raise EdgeAsdError(f"{self.file}: not an edge-asd slots file (schema {SCHEMA} with a good slot)")
        return state

    def write(self, state: dict) -> None:
        atomic_write_text(self.file, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def model(self, slot: str, state: dict | None = None) -> Path:
        """The model file of ``slot`` (``good``, ``trial`` or ``previous``)."""
        return self.path / (state or self.read())[slot]["file"]

    def current(self) -> tuple[Path, str]:
        """(model file, ``"trial"`` or ``"good"``): the trial when there is one, else good."""
        state = self.read()
        slot = "trial" if state.get("trial") else "good"
        return self.model(slot, state), slot

    def install(self, device, model_path: Path, envelope, where: str, store: Path | None,
                trusted_clock: bool = False) -> tuple:
        """Verify and install a release into the trial slot through ``device``
        (:meth:`~edge_asd.edge.runtime.trust.TrustDir.install`, every refusal of it); into good when the
        directory holds no slots yet (a device's first install). Returns (release, model file, slot).

        Raises:
            EdgeAsdError: the trust directory's refusals, a damaged slots file.
        """
        from edge_asd.core.commands import kit_version
        from edge_asd.edge.runtime.signed_docs import parse_release

        unverified = parse_release(envelope.payload, where)  # for the file name only; install verifies
        name = f"v{unverified.version}-{unverified.name}"
        state = self.read() if self.file.exists() else None
        release, dest = device.install(model_path, envelope, self.path, where, trusted_clock, kit_version(), store,
                                       dest_name=name)
        if state is None:
            self.write({"schema": SCHEMA, "name": release.name, "good": _entry(release, name), "trial": None,
                        "previous": None, "good_stats": dict(NO_STATS), "last_failure": None})
            return release, dest, "good"
        if state.get("trial") and state["trial"]["file"] not in (name, state["good"]["file"]):
            (self.path / state["trial"]["file"]).unlink(missing_ok=True)  # a newer release replaces the trial
        state["trial"] = {**_entry(release, name), "since": utc_now(), **NO_STATS}
        state["name"] = release.name
        self.write(state)
        return release, dest, "trial"

    def save_stats(self, slot: str, stats: dict) -> None:
        """Store the health gate's counts of the model running in ``slot`` (``trial`` or ``good``)."""
        state = self.read()
        if slot == "trial" and state.get("trial"):
            state["trial"].update(stats)
        elif slot == "good":
            state["good_stats"] = stats
        self.write(state)

    def mark_good(self) -> dict:
        """The trial passed: it becomes good (with its counts as good_stats), good becomes previous (the file of
        the previous previous is removed). Returns the new state."""
        state = self.read()
        trial = state["trial"]
        old = state.get("previous")
        if old and old["file"] not in (trial["file"], state["good"]["file"]):
            (self.path / old["file"]).unlink(missing_ok=True)
        state["previous"] = state["good"]
        state["good"] = {k: trial[k] for k in ("file", "version", "sha256")}
        state["good_stats"] = {k: trial[k] for k in NO_STATS}
        state["trial"] = None
        self.write(state)
        return state

    def fail_trial(self, reason: str) -> dict:
        """The trial failed: back to good, ``last_failure`` records why; the trial's file is removed."""
        state = self.read()
        trial = state["trial"]
        state["last_failure"] = {"version": trial["version"], "reason": reason, "time": utc_now()}
        state["trial"] = None
        if trial["file"] != state["good"]["file"]:
            (self.path / trial["file"]).unlink(missing_ok=True)
        self.write(state)
        return state

    def roll_back(self, reason: str) -> dict:
        """A rollback command: a trial fails with ``reason``; without one, previous becomes good again.

        Raises:
            EdgeAsdError: no trial and no previous slot to go back to.
        """
        state = self.read()
        if state.get("trial"):
            return self.fail_trial(reason)
        if not state.get("previous"):
            raise EdgeAsdError(f"{self.file}: no trial and no previous model to roll back to")
        if state["good"]["file"] != state["previous"]["file"]:
            (self.path / state["good"]["file"]).unlink(missing_ok=True)
        state["good"], state["previous"] = state["previous"], None
        state["good_stats"] = dict(NO_STATS)
        state["last_failure"] = {"version": None, "reason": reason, "time": utc_now()}
        self.write(state)
        return state
