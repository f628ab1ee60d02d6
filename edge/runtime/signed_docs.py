"""The signed documents of releases, phi records and commands, their parsers and their signature checks
(no files: the device's trust directory is :mod:`edge_asd.edge.runtime.trust`).

Roles, as TUF has them (theupdateframework.github.io/specification, sections 2.1 and 5.3) with simple
Ed25519 signatures in DSSE envelopes (:mod:`edge_asd.core.signing`):

- **root** (kept offline, e.g. 2 of 3 keys): names every key and each role's keyids and threshold;
- **release** (build machine): signs a release document: monotonic ``version``, the model's ``sha256`` and
  ``size``, ``min_kit_version``, optional ``expires``, the ``cohort`` it is meant for;
- **operations** (the plant's fleet server): signs phi records and commands (``set-phi``, ``rollback``,
  ``finetune-on``, ``finetune-off``), each command with a per-device monotonic ``seq``;
- **device** (on a device, where the plant allows local calibration): signs the phi records edge-calibrate
  sets there, and the release of a model edge-finetune made there from a signed release.

A new root is accepted only when signed by the threshold of the old root's root keys and of its own, with
``version`` = old + 1 (TUF 5.3.4). The parsers (:func:`parse_root`, :func:`parse_release`,
:func:`parse_command`, :func:`parse_phi`) take an envelope's payload bytes and raise only
:class:`~edge_asd.core.errors.EdgeAsdError`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from edge_asd.core import signing
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.provenance import sha256_bytes
from edge_asd.core.signing import Envelope
from edge_asd.edge.runtime.phi_store import PhiRecord

ROOT_TYPE = "application/vnd.edge-asd.root+json"
RELEASE_TYPE = "application/vnd.edge-asd.release+json"
COMMAND_TYPE = "application/vnd.edge-asd.command+json"
PHI_TYPE = "application/vnd.edge-asd.phi+json"
ROLES = ("root", "release", "operations", "device")
ACTIONS = ("set-phi", "rollback", "finetune-on", "finetune-off")
_VERSION = re.compile(r"^\d+(\.\d+){0,3}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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


def _str(data: dict, key: str, where: str, pattern: re.Pattern = NAME_PATTERN) -> str:
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
    """``"0.1"`` -> (0, 1, 0, 0): the numeric release part of a kit version, four parts (``0.2.0.dev1`` ->
    (0, 2, 0, 0)), so that 0.1 and 0.1.0 compare equal."""
    parts = []
    for p in text.split(".")[:4]:
        digits = re.match(r"\d+", p)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts + [0] * (4 - len(parts)))


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
    "min_kit_version", "expires", "cohort", "issued_at"}`` (optional ``base_sha256`` and ``phi``); size in bytes."""

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
    phi: dict | None = field(default=None, compare=False)
    """Optional phi records calibrated for this model (edge-release sign --phi-store): machine ID -> the record
    as the phi store writes it (:meth:`PhiRecord.to_dict`, without a ``signed`` envelope); None: none."""


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
                   None if data.get("base_sha256") is None else _str(data, "base_sha256", where, _HEX64),
                   _release_phi(data.get("phi"), where))


def _release_phi(phi, where: str) -> dict | None:
    """The release's ``phi`` (machine ID -> record dict), each record validated. Raises EdgeAsdError."""
    if phi is None:
        return None
    if not isinstance(phi, dict):
        raise EdgeAsdError(f"{where}: phi is not an object")
    for machine_id, record in phi.items():
        _str({"machine_id": machine_id}, "machine_id", where)
        PhiRecord.from_dict(record, f"{where}: phi, machine ID {machine_id!r}")
    return phi


def release_document(version: int, name: str, model: bytes, min_kit_version: str, cohort: str,
                     expires: str | None = None, base_sha256: str | None = None, phi: dict | None = None) -> bytes:
    """The payload of a release; ``phi``: machine ID -> phi record dict calibrated for ``model`` (or None)."""
    doc = {"_type": "release", "version": version, "model": {"name": name, "sha256": sha256_bytes(model),
           "size": len(model)}, "min_kit_version": min_kit_version, "expires": expires, "cohort": cohort,
           "issued_at": _now().isoformat(timespec="seconds")}
    if base_sha256 is not None:
        doc["base_sha256"] = base_sha256
    if phi:
        doc["phi"] = phi
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
    if len(model) != release.size or sha256_bytes(model) != release.sha256:
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
