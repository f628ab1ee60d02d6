"""The device's trust directory: its trusted root and what it last accepted (the documents:
:mod:`edge_asd.edge.runtime.signed_docs`; roles and keys: docs/releases.md).

Layout (outside the model directory; only the installer and edge-release write it)::

    root.json                the trusted root (its envelope)
    state.json               {"schema": 1, "device", "cohort", "root_version", "release_version",
                              "command_seq", "finetune", "phi": {machine_id: sha256 of the accepted phi payload},
                              "phi_model": {machine_id: the sha256 of the model that record is for}}
    releases/<sha256>.json   the envelope of every release installed, by the model file's sha256

Every refusal is an :class:`~edge_asd.core.errors.EdgeAsdError` naming the file and the reason. One writer
at a time: every read-modify-write of the state holds an exclusive ``flock`` on ``.lock`` in the directory
(:meth:`TrustDir.locked`), so edge-release, edge-calibrate, edge-finetune and the running monitor (commands and
releases over MQTT) never lose each other's updates.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import threading
from pathlib import Path

from edge_asd.core import signing
from edge_asd.core.atomic_io import atomic_write_bytes, atomic_write_text
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.provenance import sha256_bytes
from edge_asd.core.signing import Envelope
from edge_asd.edge.runtime import phi_store, release_phi
from edge_asd.edge.runtime.phi_store import PhiRecord
from edge_asd.edge.runtime.signed_docs import (
    COMMAND_TYPE,
    NAME_PATTERN,
    PHI_TYPE,
    RELEASE_TYPE,
    Command,
    Release,
    Root,
    SignedPhi,
    check_expiry,
    parse_command,
    parse_phi,
    parse_release,
    phi_document,
    release_document,
    signed_release,
    verify_phi_envelope,
    verify_release,
    verify_root,
    verify_rotation,
)

STATE_SCHEMA = 1


def _locked(method):
    """Run ``method`` holding the trust directory's lock (:meth:`TrustDir.locked`)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.locked():
            return method(self, *args, **kwargs)
    return run


class TrustDir:
    """The device's trust directory (layout in the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.root_path = self.path / "root.json"
        self.state_path = self.path / "state.json"
        self.releases = self.path / "releases"
        self._mutex, self._depth, self._fd = threading.RLock(), 0, None

    @contextlib.contextmanager
    def locked(self):
        """Hold the directory's exclusive lock (``flock`` on ``.lock``: other processes wait; reentrant in this
        object, whose threads wait on a mutex). Raises EdgeAsdError when there is no such directory or no lock file
        can be made in it."""
        with self._mutex:
            if self._depth == 0:
                if not self.path.is_dir():
                    raise EdgeAsdError(f"{self.path}: no trust directory; run edge-release init --trust-dir {self.path} "
                                       "--root ROOT")
                try:
                    fd = os.open(self.path / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
                except OSError as e:
                    raise EdgeAsdError(f"{self.path}: cannot lock the trust directory ({e.strerror})") from None
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._fd = fd
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
                if self._depth == 0:
                    os.close(self._fd)  # closing releases the flock
                    self._fd = None

    def init(self, root_envelope: Envelope, device: str, cohort: str = "all", trusted_clock: bool = False) -> Root:
        """Trust ``root_envelope`` (the installer's trust on first use) for device ``device``.

        Raises:
            EdgeAsdError: the directory already holds a root (rotate with :meth:`update_root`), a bad name,
                a root not signed by its own threshold, or (``trusted_clock``) an expired root.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdgeAsdError(f"{self.path}: cannot make the trust directory ({e.strerror})") from None
        with self.locked():
            return self._init(root_envelope, device, cohort, trusted_clock)

    def _init(self, root_envelope: Envelope, device: str, cohort: str, trusted_clock: bool) -> Root:
        if self.root_path.exists():
            raise EdgeAsdError(f"{self.root_path}: a trusted root exists; rotate it with edge-release update-root")
        for what, name in (("device", device), ("cohort", cohort)):
            if not NAME_PATTERN.match(name):
                raise EdgeAsdError(f"{what} name {name!r}: letters, digits, '.', '_' and '-' only")
        root = verify_root(root_envelope, "root", trusted_clock)
        atomic_write_text(self.root_path, json.dumps(root_envelope.to_dict(), indent=2) + "\n")
        self.save_state({"schema": STATE_SCHEMA, "device": device, "cohort": cohort, "root_version": root.version,
                         "release_version": 0, "command_seq": 0, "finetune": False, "phi": {}})
        return root

    def root(self, trusted_clock: bool = False) -> Root:
        """The trusted root, checked again (a damaged trust directory is refused)."""
        if not self.root_path.exists():
            raise EdgeAsdError(f"{self.path}: no trusted root; run edge-release init --trust-dir {self.path} --root ROOT")
        return verify_root(signing.read_envelope(self.root_path), str(self.root_path), trusted_clock)

    def state(self) -> dict:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as e:
            raise EdgeAsdError(f"{self.state_path}: unreadable trust state ({type(e).__name__}); run edge-release "
                               "init again on an empty trust directory") from None
        if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
            raise EdgeAsdError(f"{self.state_path}: not an edge-asd trust state (schema {STATE_SCHEMA})")
        return data

    def save_state(self, state: dict) -> None:
        atomic_write_text(self.state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")

    @_locked
    def update_root(self, envelope: Envelope, where: str) -> Root:
        """Rotate to a new root (:func:`verify_rotation`). Raises EdgeAsdError when refused."""
        new = verify_rotation(self.root(), envelope, where)
        atomic_write_text(self.root_path, json.dumps(envelope.to_dict(), indent=2) + "\n")
        state = self.state()
        state["root_version"] = new.version
        self.save_state(state)
        return new

    @_locked
    def install(self, model_path: Path, envelope: Envelope, model_dir: Path, where: str, trusted_clock: bool = False,
                kit_version: str | None = None, store: Path | None = None, dest_name: str | None = None
                ) -> tuple[Release, Path]:
        """Verify the model file against the release, then copy it into ``model_dir`` under ``dest_name`` (default:
        the release's name; write, fsync, rename) and remember the release and its version. The phi records the
        release carries go into the phi store ``store`` (:func:`.release_phi.store_records`; None: not stored).

        Raises:
            EdgeAsdError: every refusal of :func:`verify_release`, a damaged model file, a version not above the
                last accepted (rollback or replay), a release for another cohort, a model directory inside the
                trust directory or around it.
        """
        from edge_asd.core.model_file import read_model_file

        model_dir, here = Path(model_dir).resolve(), self.path.resolve()
        if model_dir == here or here in model_dir.parents or model_dir in here.parents:
            raise EdgeAsdError(f"{model_dir}: the model directory must be outside the trust directory {here} and not hold it")
        data, _, _ = read_model_file(model_path)
        release = verify_release(self.root(trusted_clock), envelope, data, where, trusted_clock, kit_version)
        state = self.state()
        if release.version <= state["release_version"]:
            raise EdgeAsdError(f"{where}: release version {release.version} is not above the last accepted "
                               f"({state['release_version']}): a rollback or a replay")
        if release.cohort not in ("all", state.get("cohort", "all")):
            raise EdgeAsdError(f"{where}: release for cohort {release.cohort!r}; this device is in {state.get('cohort')!r}")
        atomic_write_text(self.releases / f"{release.sha256}.json", json.dumps(envelope.to_dict(), indent=2) + "\n")
        dest = model_dir / (dest_name or release.name)
        atomic_write_bytes(dest, data)
        state["release_version"] = release.version
        if store is not None and release.phi:
            for machine_id in release_phi.store_records(store, release):
                state.setdefault("phi", {}).pop(machine_id, None)  # the release's phi is now the one in service
                state.setdefault("phi_model", {}).pop(machine_id, None)
        self.save_state(state)
        return release, dest

    def check_model(self, sha256: str, data_size: int, trusted_clock: bool = False) -> Release:
        """The accepted release of the model file with this sha256 and size (edge-monitor's check).

        Raises:
            EdgeAsdError: no release accepted for it (an unsigned model), or its release no longer verifies.
        """
        root = self.root(trusted_clock)
        path = self.releases / f"{sha256}.json"
        if not path.exists():
            raise EdgeAsdError(f"model sha256 {sha256[:16]}...: no signed release installed for it in {self.path} "
                               "(an unsigned model); install it with edge-release install")
        envelope = signing.read_envelope(path)
        try:
            release = signed_release(root, envelope, str(path))
        except EdgeAsdError:
            if not signing.valid_keyids(envelope, root.role_keys("device")):
                raise
            release = self._fine_tuned_release(root, envelope, str(path), trusted_clock)
        if release.sha256 != sha256 or release.size != data_size:
            raise EdgeAsdError(f"{path}: the release is for another model file (sha256 or size mismatch)")
        check_expiry(release.expires, trusted_clock, str(path))
        return release

    def _fine_tuned_release(self, root: Root, envelope: Envelope, where: str, trusted_clock: bool) -> Release:
        """A release signed by the device role for a model fine-tuned on the device from a signed release."""
        signing.require_threshold(envelope, root.role_keys("device"), root.threshold("device"), "device", where)
        release = parse_release(envelope.payload, where)
        if release.base_sha256 is None:
            raise EdgeAsdError(f"{where}: a device key signed a release that is not a fine-tune of a signed release")
        base = self.releases / f"{release.base_sha256}.json"
        if not base.exists():
            raise EdgeAsdError(f"{where}: fine-tuned from model {release.base_sha256[:16]}..., which has no signed release")
        base_release = signed_release(root, signing.read_envelope(base), str(base))
        check_expiry(base_release.expires, trusted_clock, str(base))
        return release

    def check_finetune(self, key: signing.PrivateKey, model_sha256: str, model_size: int) -> Release:
        """EdgeAsdError unless fine-tuning is switched on (command finetune-on), ``key`` is a device key of the root,
        and the model in service has a signed release (returned: the fine-tune's base)."""
        if not self.state().get("finetune"):
            raise EdgeAsdError(f"{self.path}: fine-tuning is switched off on this device (the fleet switches it on "
                               "with edge-release command finetune-on)")
        if key.keyid not in self.root().roles["device"][0]:
            raise EdgeAsdError(f"{key.name}: the trusted root does not name this key as a device key")
        return self.check_model(model_sha256, model_size)

    @_locked
    def sign_fine_tuned(self, key: signing.PrivateKey, base: Release, model: bytes, name: str) -> Release:
        """Sign (device key) and keep the release of a model fine-tuned from the signed release ``base``."""
        payload = release_document(base.version, name, model, base.min_kit_version, base.cohort,
                                   base_sha256=base.sha256)
        envelope = signing.sign(RELEASE_TYPE, payload, [key])
        release = parse_release(payload)
        atomic_write_text(self.releases / f"{release.sha256}.json", json.dumps(envelope.to_dict(), indent=2) + "\n")
        return release

    def accept_command(self, envelope: Envelope, where: str, trusted_clock: bool = False) -> Command:
        """A command for this device, signed by the operations role's threshold, with a ``seq`` above the last
        accepted (the caller runs it, then :meth:`record_command`).

        Raises:
            EdgeAsdError: wrong type, unsigned, wrong key or threshold not met, another device's, an old ``seq``
                (a replay), expired.
        """
        if envelope.payload_type != COMMAND_TYPE:
            raise EdgeAsdError(f"{where}: a {envelope.payload_type!r} document, not a command")
        root = self.root(trusted_clock)
        signing.require_threshold(envelope, root.role_keys("operations"), root.threshold("operations"), "operations",
                                  where)
        command = parse_command(envelope.payload, where)
        state = self.state()
        if command.device != state["device"]:
            raise EdgeAsdError(f"{where}: a command for device {command.device!r}; this is {state['device']!r}")
        if command.seq <= state["command_seq"]:
            raise EdgeAsdError(f"{where}: sequence number {command.seq} is not above the last accepted "
                               f"({state['command_seq']}): a replayed or old command")
        check_expiry(command.expires, trusted_clock, where)
        return command

    @_locked
    def record_command(self, command: Command) -> None:
        state = self.state()
        state["command_seq"] = command.seq
        if command.action in ("finetune-on", "finetune-off"):
            state["finetune"] = command.action == "finetune-on"
        self.save_state(state)

    @_locked
    def pin_phi(self, machine_id: str, envelope: Envelope) -> None:
        """Remember ``envelope`` (verified) as the phi record in service for ``machine_id``: an older signed
        record put back into the phi store is then refused."""
        state = self.state()
        state.setdefault("phi", {})[machine_id] = sha256_bytes(envelope.payload)
        state.setdefault("phi_model", {})[machine_id] = parse_phi(envelope.payload).record.model_sha256
        self.save_state(state)

    @_locked
    def pin_restored(self, machine_id: str, record: PhiRecord | None, where: str) -> bool:
        """Pin the signed envelope that a phi record put back by a fine-tune rollback carries (verified);
        False when it carries none (edge-monitor --trust-dir will refuse that record)."""
        raw = record.extra.get("signed") if record is not None else None
        if raw is None:
            return False
        envelope = signing.envelope_from_dict(raw, where)
        self.verify_phi(envelope, machine_id, where)
        self.pin_phi(machine_id, envelope)
        return True

    def sign_local_phi(self, key: signing.PrivateKey, machine_id: str, record: PhiRecord) -> Envelope:
        """Sign a phi record set on this device (edge-calibrate --sign-key) and check the root names the key.

        Raises:
            EdgeAsdError: the root names the key in neither the device nor the operations role (the plant
                does not allow local calibration with it).
        """
        envelope = signing.sign(PHI_TYPE, phi_document(self.state()["device"], machine_id, record), [key])
        self.verify_phi(envelope, machine_id, f"phi record signed by {key.name}")
        return envelope

    @_locked
    def sign_phi_record(self, key: signing.PrivateKey, store: Path, machine_id: str, record: PhiRecord) -> None:
        """Sign the record just stored for ``machine_id`` with this device's key (:meth:`sign_local_phi`), attach
        the envelope to it in the phi store ``store`` and pin it as the record in service (:meth:`pin_phi`)."""
        envelope = self.sign_local_phi(key, machine_id, record)
        phi_store.attach_signature(store, machine_id, envelope.to_dict())
        self.pin_phi(machine_id, envelope)

    def verify_phi(self, envelope: Envelope, machine_id: str, where: str) -> SignedPhi:
        """A phi record signed for this device and ``machine_id`` (:func:`verify_phi_envelope`)."""
        phi = verify_phi_envelope(self.root(), envelope, where)
        device = self.state()["device"]
        if phi.device != device or phi.machine_id != machine_id:
            raise EdgeAsdError(f"{where}: a phi record for device {phi.device!r}, machine ID {phi.machine_id!r}; "
                               f"expected {device!r}, {machine_id!r}")
        return phi

    def phi_in_service(self, record: PhiRecord, machine_id: str, model_sha256: str, where: str) -> PhiRecord:
        """The signed record carried by a phi store's ``record`` (its ``signed`` envelope), if it is the one this
        device last accepted for ``machine_id`` and for this model (edge-monitor's check); or ``record`` itself
        when it came with the model's signed release and equals the release's (:func:`.release_phi.check_record`).

        Raises:
            EdgeAsdError: unsigned, a key the root does not name, another device's or machine's, not the record
                last accepted (an older signed one put back), or for another model file.
        """
        raw = record.extra.get("signed")
        if raw is None and record.extra.get("release") == model_sha256:
            path = self.releases / f"{model_sha256}.json"
            release = signed_release(self.root(), signing.read_envelope(path), str(path))
            state = self.state()  # a signed record pinned since counts only when it is for this model (slots: good
            pinned = state.get("phi", {}).get(machine_id)  # and trial each keep theirs); an old state names no model
            if state.get("phi_model", {}).get(machine_id, model_sha256) != model_sha256:
                pinned = None
            return release_phi.check_record(record, release, machine_id, pinned, where)
        if raw is None:
            raise EdgeAsdError(f"{where}: unsigned phi record; a trust directory is configured (sign it with "
                               "edge-calibrate --sign-key or send it with edge-release command set-phi)")
        envelope = signing.envelope_from_dict(raw, where)
        phi = self.verify_phi(envelope, machine_id, where)
        if self.state().get("phi", {}).get(machine_id) != sha256_bytes(envelope.payload):
            raise EdgeAsdError(f"{where}: not the phi record this device last accepted for {machine_id!r} "
                               "(an older or foreign signed record)")
        if phi.record.model_sha256 != model_sha256:
            raise EdgeAsdError(f"{where}: the signed phi record is for another model file")
        return phi.record
