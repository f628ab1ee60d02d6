"""Signed releases, phi records and commands on the device: the documents, their parsers, and the trust
directory that keeps the device's trusted root and what it last accepted.

Roles, as TUF has them (theupdateframework.github.io/specification, sections 2.1 and 5.3) with simple
Ed25519 signatures in DSSE envelopes (:mod:`edge_asd.core.signing`):

- **root** (kept offline, e.g. 2 of 3 keys): names every key and each role's keyids and threshold;
- **release** (build machine): signs a release document: monotonic ``version``, the model's ``sha256`` and
  ``size``, ``min_kit_version``, optional ``expires``, the ``cohort`` it is meant for;
- **operations** (the plant's fleet server): signs phi records and commands (``set-phi``, ``rollback``,
  ``finetune-on``, ``finetune-off``), each command with a per-device monotonic ``seq``;
- **device** (on a device, where the plant allows local calibration): signs the phi records edge-calibrate
  sets there.

A new root is accepted only when signed by the threshold of the old root's root keys and of its own, with
``version`` = old + 1 (TUF 5.3.4). Trust directory (outside the model directory; only the installer and
edge-release write it)::

    root.json                the trusted root (its envelope)
    state.json               {"schema": 1, "device", "cohort", "root_version", "release_version",
                              "command_seq", "finetune", "phi": {machine_id: sha256 of the accepted phi payload}}
    releases/<sha256>.json   the envelope of every release installed, by the model file's sha256

Every refusal is an :class:`~edge_asd.core.errors.EdgeAsdError` naming the file and the reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edge_asd.core import signing
from edge_asd.core.atomic_io import atomic_write_bytes, atomic_write_text
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.signing import Envelope
from edge_asd.edge.runtime.phi_store import PhiRecord

ROOT_TYPE = "application/vnd.edge-asd.root+json"
RELEASE_TYPE = "application/vnd.edge-asd.release+json"
COMMAND_TYPE = "application/vnd.edge-asd.command+json"
PHI_TYPE = "application/vnd.edge-asd.phi+json"
ROLES = ("root", "release", "operations", "device")
ACTIONS = ("set-phi", "rollback", "finetune-on", "finetune-off")
STATE_SCHEMA = 1
_VERSION = re.compile(r"^\d+(\.\d+){0,3}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _json_object(payload: bytes, kind: str, where: str) -> dict:
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EdgeAsdError(f"{where}: the {kind} document is not JSON") from None
    if not isinstance(data, dict) or data.get("_type") != kind:
        raise EdgeAsdError(f"{where}: not an edge-asd {kind} document (_type {kind!r})")
    return data


def _int(data: dict, key: str, where: str, lo: int = 1) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value < 2**63:
        raise EdgeAsdError(f"{where}: {key} {value!r} is not an integer >= {lo}")
    return value


def _str(data: dict, key: str, where: str, pattern: re.Pattern = _NAME) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not pattern.match(value):
        raise EdgeAsdError(f"{where}: {key} {value!r} is missing or malformed")
    return value


def parse_time(value, where: str) -> datetime | None:
    """An ISO 8601 time with a UTC offset (``2027-06-01T00:00:00Z``) or None. Raises EdgeAsdError otherwise."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else None
    except ValueError:
        t = None
    if t is None or t.tzinfo is None:
        raise EdgeAsdError(f"{where}: time {value!r} is not ISO 8601 with a UTC offset (e.g. 2027-06-01T00:00:00Z)")
    return t


def version_tuple(text: str) -> tuple[int, ...]:
    """``"0.1.0"`` -> (0, 1, 0); the numeric release part of a kit version (``0.2.0.dev1`` -> (0, 2, 0))."""
    parts = []
    for p in text.split("."):
        digits = re.match(r"\d+", p)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


@dataclass(frozen=True)
class Root:
    """A root document: ``{"_type": "root", "version", "expires", "keys": {keyid: {"keytype", "name",
    "public"}}, "roles": {"root" | "release" | "operations" | "device": {"keyids": [...], "threshold"}}}``."""

    version: int
    expires: datetime | None
    keys: dict
    """keyid -> raw 32-byte Ed25519 public key."""
    names: dict
    """keyid -> the key's name (from its .pub file)."""
    roles: dict
    """role -> (keyids, threshold)."""

    def role_keys(self, role: str) -> dict:
        return {k: self.keys[k] for k in self.roles[role][0]}

    def threshold(self, role: str) -> int:
        return self.roles[role][1]


def parse_root(payload: bytes, where: str = "root") -> Root:
    """The root document of an envelope's payload (fuzzing target). Raises EdgeAsdError when malformed: a key
    whose keyid is not the sha256 of its public key, a role naming an unknown key, a threshold out of
    1..len(keyids) (the device role may be empty: no device signs)."""
    data = _json_object(payload, "root", where)
    version = _int(data, "version", where)
    expires = parse_time(data.get("expires"), f"{where}: expires")
    keys, names = {}, {}
    if not isinstance(data.get("keys"), dict):
        raise EdgeAsdError(f"{where}: keys is not an object")
    for keyid, entry in data["keys"].items():
        public = entry.get("public") if isinstance(entry, dict) else None
        try:
            raw = bytes.fromhex(public) if isinstance(public, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 32 or entry.get("keytype") != signing.KEYTYPE or signing.keyid_of(raw) != keyid:
            raise EdgeAsdError(f"{where}: key {keyid[:16]!r} is not an Ed25519 key whose keyid is its sha256")
        keys[keyid], names[keyid] = raw, str(entry.get("name", ""))
    roles = {}
    for role in ROLES:
        spec = data.get("roles", {}).get(role, {"keyids": [], "threshold": 1} if role == "device" else None) \
            if isinstance(data.get("roles"), dict) else None
        ids = spec.get("keyids") if isinstance(spec, dict) else None
        if not isinstance(ids, list) or not all(isinstance(k, str) and k in keys for k in ids) or len(set(ids)) != len(ids):
            raise EdgeAsdError(f"{where}: role {role!r} missing or naming a key not in keys")
        threshold = _int(spec, "threshold", f"{where}: role {role!r}")
        if ids and threshold > len(ids) or (not ids and role != "device"):
            raise EdgeAsdError(f"{where}: role {role!r} has threshold {threshold} of {len(ids)} keys")
        roles[role] = (frozenset(ids), threshold)
    return Root(version, expires, keys, names, roles)


def root_document(version: int, keys: dict[str, list[dict]], thresholds: dict[str, int], expires: str | None = None) -> bytes:
    """The payload of a root: ``keys`` role -> key entries (:func:`edge_asd.core.signing.load_public_key`)."""
    entries = {k["keyid"]: {"keytype": k["keytype"], "name": k["name"], "public": k["public"]}
               for ks in keys.values() for k in ks}
    roles = {role: {"keyids": [k["keyid"] for k in keys.get(role, [])], "threshold": thresholds.get(role, 1)}
             for role in ROLES}
    doc = {"_type": "root", "version": version, "expires": expires, "keys": entries, "roles": roles}
    payload = json.dumps(doc, indent=2, sort_keys=True).encode()
    parse_root(payload, "new root")  # refuse a root this kit would refuse to read
    return payload


@dataclass(frozen=True)
class Release:
    """A release document: ``{"_type": "release", "version", "model": {"name", "sha256", "size"},
    "min_kit_version", "expires", "cohort", "issued_at"}``; size in bytes."""

    version: int
    name: str
    sha256: str
    size: int
    min_kit_version: str
    expires: datetime | None
    cohort: str
    base_sha256: str | None = None
    """A model fine-tuned on the device (edge-finetune --sign-key): the sha256 of the signed release it was
    fine-tuned from; such a release is signed by the device role, not the release role."""


def parse_release(payload: bytes, where: str = "release") -> Release:
    """The release document of an envelope's payload (fuzzing target). Raises EdgeAsdError when malformed."""
    data = _json_object(payload, "release", where)
    model = data.get("model")
    if not isinstance(model, dict):
        raise EdgeAsdError(f"{where}: model is not an object")
    name = _str(model, "name", where)
    return Release(_int(data, "version", where), name, _str(model, "sha256", where, _HEX64), _int(model, "size", where),
                   _str(data, "min_kit_version", where, _VERSION), parse_time(data.get("expires"), f"{where}: expires"),
                   _str(data, "cohort", where),
                   None if data.get("base_sha256") is None else _str(data, "base_sha256", where, _HEX64))


def release_document(version: int, name: str, model: bytes, min_kit_version: str, cohort: str,
                     expires: str | None = None, base_sha256: str | None = None) -> bytes:
    doc = {"_type": "release", "version": version, "model": {"name": name, "sha256": hashlib.sha256(model).hexdigest(),
           "size": len(model)}, "min_kit_version": min_kit_version, "expires": expires, "cohort": cohort,
           "issued_at": _now().isoformat(timespec="seconds")}
    if base_sha256 is not None:
        doc["base_sha256"] = base_sha256
    payload = json.dumps(doc, indent=2, sort_keys=True).encode()
    parse_release(payload, "new release")
    return payload


@dataclass(frozen=True)
class Command:
    """A command: ``{"_type": "command", "device", "seq", "action", "args", "expires", "issued_at"}``. ``seq``
    is the device's command sequence number (each accepted one must be above the last)."""

    device: str
    seq: int
    action: str
    args: dict
    expires: datetime | None


def parse_command(payload: bytes, where: str = "command") -> Command:
    """The command of an envelope's payload (fuzzing target). Raises EdgeAsdError when malformed."""
    data = _json_object(payload, "command", where)
    action = data.get("action")
    if action not in ACTIONS:
        raise EdgeAsdError(f"{where}: action {action!r} is not one of {', '.join(ACTIONS)}")
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise EdgeAsdError(f"{where}: args is not an object")
    return Command(_str(data, "device", where), _int(data, "seq", where), action, args,
                   parse_time(data.get("expires"), f"{where}: expires"))


def command_document(device: str, seq: int, action: str, args: dict, expires: str | None = None) -> bytes:
    doc = {"_type": "command", "device": device, "seq": seq, "action": action, "args": args, "expires": expires,
           "issued_at": _now().isoformat(timespec="seconds")}
    payload = json.dumps(doc, indent=2, sort_keys=True).encode()
    parse_command(payload, "new command")
    return payload


@dataclass(frozen=True)
class SignedPhi:
    """A phi document: ``{"_type": "phi", "device", "machine_id", "record": {...}, "signed_at"}``."""

    device: str
    machine_id: str
    record: PhiRecord


def parse_phi(payload: bytes, where: str = "phi") -> SignedPhi:
    """The phi document of an envelope's payload (fuzzing target). Raises EdgeAsdError when malformed."""
    data = _json_object(payload, "phi", where)
    machine_id = _str(data, "machine_id", where)
    return SignedPhi(_str(data, "device", where), machine_id,
                     PhiRecord.from_dict(data.get("record"), f"{where}, machine ID {machine_id!r}"))


def phi_document(device: str, machine_id: str, record: PhiRecord) -> bytes:
    """The payload of a signed phi record (the record without its own ``signed`` envelope)."""
    body = {k: v for k, v in record.to_dict().items() if k != "signed"}
    doc = {"_type": "phi", "device": device, "machine_id": machine_id, "record": body,
           "signed_at": _now().isoformat(timespec="seconds")}
    payload = json.dumps(doc, indent=2, sort_keys=True).encode()
    parse_phi(payload, "new phi record")
    return payload


def _now() -> datetime:
    return datetime.now(timezone.utc)


def check_expiry(expires: datetime | None, trusted_clock: bool, where: str) -> None:
    """EdgeAsdError when the clock is trusted and ``expires`` has passed (an untrusted clock checks nothing:
    a device without a real-time clock boots in 1970 or in the past)."""
    if trusted_clock and expires is not None and _now() >= expires:
        raise EdgeAsdError(f"{where}: expired at {expires.isoformat()} (the device clock is trusted)")


def verify_root(envelope: Envelope, where: str, trusted_clock: bool = False) -> Root:
    """A root signed by its own root-role threshold. Raises EdgeAsdError otherwise."""
    if envelope.payload_type != ROOT_TYPE:
        raise EdgeAsdError(f"{where}: a {envelope.payload_type!r} document, not a root")
    root = parse_root(envelope.payload, where)
    signing.require_threshold(envelope, root.role_keys("root"), root.threshold("root"), "root", where)
    check_expiry(root.expires, trusted_clock, where)
    return root


def verify_rotation(old: Root, envelope: Envelope, where: str) -> Root:
    """A new root: signed by the old root's root-role threshold AND its own, version = old + 1 (TUF 5.3.4)."""
    new = verify_root(envelope, where)
    try:
        signing.require_threshold(envelope, old.role_keys("root"), old.threshold("root"), "root", where)
    except EdgeAsdError as e:
        raise EdgeAsdError(f"{e} (of the root it replaces, version {old.version})") from None
    if new.version != old.version + 1:
        raise EdgeAsdError(f"{where}: root version {new.version}; the trusted root is version {old.version}, "
                           f"the next must be {old.version + 1}")
    return new


def signed_release(root: Root, envelope: Envelope, where: str) -> Release:
    """The release of an envelope signed by the release role's threshold. Raises EdgeAsdError otherwise."""
    if envelope.payload_type != RELEASE_TYPE:
        raise EdgeAsdError(f"{where}: a {envelope.payload_type!r} document, not a release")
    signing.require_threshold(envelope, root.role_keys("release"), root.threshold("release"), "release", where)
    return parse_release(envelope.payload, where)


def verify_release(root: Root, envelope: Envelope, model: bytes, where: str, trusted_clock: bool = False,
                   kit_version: str | None = None) -> Release:
    """The release, once its signatures meet the release role's threshold, the model bytes match its sha256
    and size, it has not expired (trusted clock), and this kit is at least its ``min_kit_version``.

    Raises:
        EdgeAsdError: any of those not met (the version rule is the trust directory's: :meth:`TrustDir.install`).
    """
    release = signed_release(root, envelope, where)
    if len(model) != release.size or hashlib.sha256(model).hexdigest() != release.sha256:
        raise EdgeAsdError(f"{where}: the model file does not match the release (sha256 or size mismatch: "
                           f"{len(model)} bytes, release says {release.size})")
    check_expiry(release.expires, trusted_clock, where)
    if kit_version is not None and version_tuple(kit_version) < version_tuple(release.min_kit_version):
        raise EdgeAsdError(f"{where}: needs edge-asd {release.min_kit_version} or newer (this kit: {kit_version})")
    return release


def verify_phi_envelope(root: Root, envelope: Envelope, where: str) -> SignedPhi:
    """A phi document signed by the operations role's threshold or the device role's. Raises EdgeAsdError."""
    if envelope.payload_type != PHI_TYPE:
        raise EdgeAsdError(f"{where}: a {envelope.payload_type!r} document, not a phi record")
    try:
        signing.require_threshold(envelope, root.role_keys("operations"), root.threshold("operations"), "operations",
                                  where)
    except EdgeAsdError:
        if not root.roles["device"][0]:
            raise
        signing.require_threshold(envelope, root.role_keys("device"), root.threshold("device"), "operations or device",
                                  where)
    return parse_phi(envelope.payload, where)


class TrustDir:
    """The device's trust directory (layout in the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.root_path = self.path / "root.json"
        self.state_path = self.path / "state.json"
        self.releases = self.path / "releases"

    def init(self, root_envelope: Envelope, device: str, cohort: str = "all") -> Root:
        """Trust ``root_envelope`` (the installer's trust on first use) for device ``device``.

        Raises:
            EdgeAsdError: the directory already holds a root (rotate with :meth:`update_root`), a bad name,
                or a root not signed by its own threshold.
        """
        if self.root_path.exists():
            raise EdgeAsdError(f"{self.root_path}: a trusted root exists; rotate it with edge-release update-root")
        for what, name in (("device", device), ("cohort", cohort)):
            if not _NAME.match(name):
                raise EdgeAsdError(f"{what} name {name!r}: letters, digits, '.', '_' and '-' only")
        root = verify_root(root_envelope, "root")
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

    def update_root(self, envelope: Envelope, where: str) -> Root:
        """Rotate to a new root (:func:`verify_rotation`). Raises EdgeAsdError when refused."""
        new = verify_rotation(self.root(), envelope, where)
        atomic_write_text(self.root_path, json.dumps(envelope.to_dict(), indent=2) + "\n")
        state = self.state()
        state["root_version"] = new.version
        self.save_state(state)
        return new

    def install(self, model_path: Path, envelope: Envelope, model_dir: Path, where: str, trusted_clock: bool = False,
                kit_version: str | None = None) -> tuple[Release, Path]:
        """Verify the model file against the release, then copy it into ``model_dir`` under the release's name
        (write, fsync, rename) and remember the release and its version.

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
        dest = model_dir / release.name
        atomic_write_bytes(dest, data)
        state["release_version"] = release.version
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

    def record_command(self, command: Command) -> None:
        state = self.state()
        state["command_seq"] = command.seq
        if command.action in ("finetune-on", "finetune-off"):
            state["finetune"] = command.action == "finetune-on"
        self.save_state(state)

    def pin_phi(self, machine_id: str, envelope: Envelope) -> None:
        """Remember ``envelope`` (verified) as the phi record in service for ``machine_id``: an older signed
        record put back into the phi store is then refused."""
        state = self.state()
        state.setdefault("phi", {})[machine_id] = hashlib.sha256(envelope.payload).hexdigest()
        self.save_state(state)

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
        device last accepted for ``machine_id`` and for this model (edge-monitor's check).

        Raises:
            EdgeAsdError: unsigned, a key the root does not name, another device's or machine's, not the record
                last accepted (an older signed one put back), or for another model file.
        """
        raw = record.extra.get("signed")
        if raw is None:
            raise EdgeAsdError(f"{where}: unsigned phi record; a trust directory is configured (sign it with "
                               "edge-calibrate --sign-key or send it with edge-release command set-phi)")
        envelope = signing.envelope_from_dict(raw, where)
        phi = self.verify_phi(envelope, machine_id, where)
        if self.state().get("phi", {}).get(machine_id) != hashlib.sha256(envelope.payload).hexdigest():
            raise EdgeAsdError(f"{where}: not the phi record this device last accepted for {machine_id!r} "
                               "(an older or foreign signed record)")
        if phi.record.model_sha256 != model_sha256:
            raise EdgeAsdError(f"{where}: the signed phi record is for another model file")
        return phi.record
