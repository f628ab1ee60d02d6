"""What the fleet link receives for the device, turned into work for the running monitors (docs/fleet.md,
Rollout and commands): the cohort's desired release is staged in the link's worker thread (base64 or a download
into a staging file next to the slot directory) and installed into the trial slot in the monitor's thread
(:meth:`~edge_asd.edge.runtime.rollout.Rollout.install`); a signed command is verified and run in the first
monitor's thread (:func:`~edge_asd.edge.runtime.commands.run_command`), then the monitors swap to the new phi or
model. Nothing here scores audio, so the link never waits on a model.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import urllib.request
from collections.abc import Callable
from pathlib import Path

from edge_asd.core import signing
from edge_asd.core.atomic_io import atomic_write_bytes
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.commands import command_line, run_command
from edge_asd.edge.runtime.rollout import rollout_line
from edge_asd.edge.runtime.signed_docs import parse_command, parse_release
from edge_asd.edge.runtime.trust import TrustDir

log = logging.getLogger("edge_asd")
WHERE = "desired release"


def staging_dir(slot_dir: Path) -> Path:
    """Where a release from the fleet waits for its installation: ``<slot dir>.staging`` next to the slot dir."""
    return slot_dir.parent / f"{slot_dir.name}.staging"


def stage(slot_dir: Path, body: dict, release) -> Path:
    """Write the model of a desired release (``model_b64``, or ``url``: file:// or https://, at most the release's
    size read) to a staging file; the trust directory verifies it when it is installed.

    Raises:
        EdgeAsdError: no model, bad base64, another URL scheme, a download error, or a size not the release's.
    """
    if isinstance(body.get("model_b64"), str):
        try:
            data = base64.b64decode(body["model_b64"], validate=True)
        except (binascii.Error, ValueError):
            raise EdgeAsdError(f"{WHERE}: model_b64 is not base64") from None
    elif isinstance(body.get("url"), str):
        url = body["url"]
        if not url.startswith(("file://", "https://")):
            raise EdgeAsdError(f"{WHERE}: url {url[:60]!r}: only file:// and https:// are fetched")
        try:
            with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - scheme checked above
                data = r.read(release.size + 1)
        except (OSError, ValueError) as e:
            raise EdgeAsdError(f"{WHERE}: cannot download {url[:60]}: {e}") from None
    else:
        raise EdgeAsdError(f"{WHERE}: neither model_b64 nor url")
    if len(data) != release.size:
        raise EdgeAsdError(f"{WHERE}: the model has {len(data)}{'+' if len(data) > release.size else ''} bytes, "
                           f"the release says {release.size}")
    path = staging_dir(slot_dir) / f"v{release.version}-{release.name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


class DeviceControl:
    """The link's ``on_release`` and ``on_command`` for ``monitors`` (each with its ``config`` and, on a slot
    directory, its ``rollout``). ``finetune_rollback(device, model, store) -> dict`` rolls back a fine-tuned
    model file (an input without slots)."""

    def __init__(self, monitors: list, finetune_rollback: Callable | None = None):
        self.monitors, self.finetune_rollback = monitors, finetune_rollback
        self._staged: set = set()  # (input, version) handed to a monitor this boot

    def release(self, payload: bytes) -> None:
        """A message on the cohort's release topic (link worker thread)."""
        if not payload:
            log.info("fleet: the cohort's desired release was cleared")
            return
        try:
            body = json.loads(payload)
            envelope = signing.envelope_from_dict(body.get("release"), WHERE)
            release = parse_release(envelope.payload, WHERE)  # verified when installed
        except (ValueError, AttributeError, EdgeAsdError) as e:
            log.warning("fleet: ignored a damaged desired release: %s", e)
            return
        for m in self.monitors:
            info = m.rollout.release_info() if m.rollout is not None else None
            if info is None or release.version <= max(info["current"] or 0, info["trial"] or 0) \
                    or (m.name, release.version) in self._staged:
                continue  # not a slot directory, or not newer (a retained message comes again on every connect)
            self._staged.add((m.name, release.version))
            try:
                path = stage(m.rollout.slots.path, body, release)
            except EdgeAsdError as e:
                m.emit(rollout_line(m.name, None, "refused", str(e), release.version))
                continue
            m.request(lambda mon, path=path: mon.rollout.install(mon, path, envelope, WHERE))

    def command(self, body: dict) -> None:
        """A signed command on the device's cmd topic (link worker thread); the same seq as the last accepted
        (a retained command delivered again) is ignored silently."""
        where = "command over MQTT"
        first = self.monitors[0]
        try:
            envelope = signing.envelope_from_dict(body, where)
            peek = parse_command(envelope.payload, where)  # verified in run_command
            if first.config.trust_dir is None:
                raise EdgeAsdError(f"{where}: no trust directory, so no command is taken")
            device = TrustDir(first.config.trust_dir)
            if peek.seq == device.state()["command_seq"]:
                return
        except EdgeAsdError as e:
            first.emit(command_line(None, None, "refused", str(e)))
            return
        first.request(lambda mon: self._run(device, envelope, peek, where))

    def _run(self, device: TrustDir, envelope, peek, where: str) -> None:
        """Run the command (first monitor's thread), write its line, and have every monitor swap."""
        from edge_asd.edge.runtime import phi_store

        cfg = self.monitors[0].config
        store = cfg.store or phi_store.default_store_path()
        try:
            if peek.seq == device.state()["command_seq"]:
                return  # the same command delivered twice before the first ran (retained and live)
            out, cmd = run_command(device, envelope, where, store, self._rollback(device, store), cfg.trusted_clock)
        except EdgeAsdError as e:
            log.warning("fleet: command %d (%s) refused: %s", peek.seq, peek.action, e)
            self.monitors[0].emit(command_line(peek.seq, peek.action, "refused", str(e)))
            return
        log.info("fleet: command %d applied: %s", cmd.seq, out)
        self.monitors[0].emit(command_line(cmd.seq, cmd.action, "applied"))
        if cmd.action in ("set-phi", "rollback"):
            for m in self.monitors:
                if cmd.action == "set-phi" or m.rollout is None:
                    m.request(reload)

    def _rollback(self, device: TrustDir, store: Path):
        def rollback() -> dict:
            slotted = [m for m in self.monitors if m.rollout is not None]
            if not slotted:
                if self.finetune_rollback is None:
                    raise EdgeAsdError("rollback: this monitor has no slot directory and no fine-tune to undo")
                return self.finetune_rollback(device, self.monitors[0].config.model, store)
            for m in slotted:
                state = m.rollout.slots.read()
                if not state.get("trial") and not state.get("previous"):
                    raise EdgeAsdError(f"{m.rollout.slots.file}: no trial and no previous model to roll back to")
            for m in slotted:
                m.request(lambda mon: mon.rollout.roll_back(mon, "rollback command"))
            return {"inputs": [m.name for m in slotted]}

        return rollback


def reload(monitor) -> None:
    """Load the input's model and phi again and swap to them (a new phi, a model rolled back in place); a
    failure is logged and the input goes on as it was."""
    from edge_asd.edge.runtime.prepare import prepare_model

    try:
        if monitor.rollout is not None:
            monitor.rollout.reload(monitor)
        else:
            p = prepare_model(monitor.config, monitor.config.model)
            monitor.swap(p.scorer, p.detector)
    except EdgeAsdError as e:
        log.error("%s: the new model or phi was not taken (%s); the input goes on with the one in service",
                  monitor.name, e)
