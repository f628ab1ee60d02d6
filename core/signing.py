"""Ed25519 signatures in a DSSE envelope: the exact payload bytes are signed, so no JSON canonicalization.

An envelope (DSSE, github.com/secure-systems-lab/dsse, ``envelope.md``)::

    {"payloadType": "application/vnd.edge-asd.release+json", "payload": "<base64 of the bytes>",
     "signatures": [{"keyid": "<sha256 hex of the raw public key>", "sig": "<base64 of 64 bytes>"}]}

Each signature is Ed25519 (RFC 8032, through the ``cryptography`` package) over DSSE's pre-authentication
encoding ``PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` (LEN: the byte count
in ASCII decimal), so a signature over one payload type never verifies as another.

Key files are small JSON objects: ``NAME.pub`` ``{"keytype": "ed25519", "name", "keyid", "public": hex}``
and ``NAME.key`` (mode 0600) with ``"private"``: the 32-byte seed, hex. Who holds which key:
docs/releases.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.provenance import sha256_bytes

KEYTYPE = "ed25519"
MAX_ENVELOPE_BYTES = 1 << 20
"""Largest envelope read, bytes (the kit's documents are a few kB; a phi record with its history ~100 kB)."""
MAX_SIGNATURES = 32


def _ed25519():
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - depends on the install
        raise EdgeAsdError("signatures need the cryptography package: pip install 'edge-asd[edge]'") from None
    return ed25519


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of (type, payload): the bytes every signature covers."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def keyid_of(public: bytes) -> str:
    """sha256 hex of the raw 32-byte Ed25519 public key."""
    return sha256_bytes(public)


@dataclass(frozen=True)
class PrivateKey:
    name: str
    seed: bytes
    """The raw 32-byte Ed25519 private key (RFC 8032 seed)."""

    @property
    def public(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        key = _ed25519().Ed25519PrivateKey.from_private_bytes(self.seed).public_key()
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def keyid(self) -> str:
        return keyid_of(self.public)

    def sign(self, payload_type: str, payload: bytes) -> dict:
        """One envelope signature ``{"keyid", "sig"}`` over PAE(payload_type, payload)."""
        sig = _ed25519().Ed25519PrivateKey.from_private_bytes(self.seed).sign(pae(payload_type, payload))
        return {"keyid": self.keyid, "sig": base64.b64encode(sig).decode()}


def generate(name: str) -> PrivateKey:
    """A new Ed25519 key (the operating system's random source)."""
    return PrivateKey(name, os.urandom(32))


def public_entry(name: str, public: bytes) -> dict:
    """The ``.pub`` file's content, also a root document's key entry."""
    return {"keytype": KEYTYPE, "name": name, "keyid": keyid_of(public), "public": public.hex()}


def write_keypair(key: PrivateKey, folder: Path) -> tuple[Path, Path]:
    """Write ``folder/NAME.key`` (0600, refused if it exists) and ``folder/NAME.pub``.

    Raises:
        EdgeAsdError: the private key file exists already (a key is never overwritten), or a bad name.
    """
    if not key.name or "/" in key.name or key.name.startswith("."):
        raise EdgeAsdError(f"{key.name!r}: a key name is a plain file name (e.g. root-1, release, ops, device-01)")
    folder.mkdir(parents=True, exist_ok=True)
    priv, pub = folder / f"{key.name}.key", folder / f"{key.name}.pub"
    try:
        fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise EdgeAsdError(f"{priv}: exists; a key is never overwritten (remove it or pick another name)") from None
    with os.fdopen(fd, "w") as f:
        json.dump({**public_entry(key.name, key.public), "private": key.seed.hex()}, f, indent=2)
        f.write("\n")
    pub.write_text(json.dumps(public_entry(key.name, key.public), indent=2) + "\n")
    return priv, pub


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EdgeAsdError(f"{path}: no such {what}") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise EdgeAsdError(f"{path}: unreadable {what} ({type(e).__name__})") from None
    if not isinstance(data, dict) or data.get("keytype") != KEYTYPE:
        raise EdgeAsdError(f"{path}: not an edge-asd {what} (keytype {KEYTYPE})")
    return data


def _hex_bytes(value, n: int, where: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != n:
        raise EdgeAsdError(f"{where}: not {n} bytes of hex")
    return raw


def load_private_key(path: str | Path) -> PrivateKey:
    """A ``.key`` file. Raises EdgeAsdError: missing, unreadable, or not an Ed25519 key file of the kit."""
    data = _read_json(Path(path), "private key file (.key)")
    return PrivateKey(str(data.get("name") or Path(path).stem), _hex_bytes(data.get("private"), 32, f"{path}: private"))


def load_public_key(path: str | Path) -> dict:
    """A ``.pub`` file as a key entry ``{"keytype", "name", "keyid", "public"}``; a ``.key`` file gives its public half.

    Raises:
        EdgeAsdError: missing, unreadable, not an Ed25519 key file, or a keyid that is not the key's sha256.
    """
    data = _read_json(Path(path), "public key file (.pub)")
    if "private" in data:
        key = load_private_key(path)
        return public_entry(key.name, key.public)
    public = _hex_bytes(data.get("public"), 32, f"{path}: public")
    return public_entry(str(data.get("name") or Path(path).stem), public)


@dataclass(frozen=True)
class Envelope:
    """A parsed DSSE envelope: the payload's type and exact bytes, and (keyid, 64-byte signature) pairs."""

    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]

    def to_dict(self) -> dict:
        return {"payloadType": self.payload_type, "payload": base64.b64encode(self.payload).decode(),
                "signatures": [{"keyid": k, "sig": base64.b64encode(s).decode()} for k, s in self.signatures]}


def _b64(value) -> bytes | None:
    """Standard base64 in its one canonical spelling (other spellings of the same bytes are refused, so an
    envelope has no second form), else None."""
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True) if isinstance(value, str) else None
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    return raw if raw is not None and base64.b64encode(raw).decode() == value else None


def envelope_from_dict(data, where: str = "envelope", allow_unsigned: bool = False) -> Envelope:
    """Validate a JSON-decoded envelope.

    Raises:
        EdgeAsdError: not an object, a missing or mistyped field, payload or signature not base64, a keyid
            not 64 hex digits, a signature not 64 bytes, more than MAX_SIGNATURES signatures.
    """
    if not isinstance(data, dict) or not isinstance(data.get("payloadType"), str):
        raise EdgeAsdError(f"{where}: unsigned or not a signed edge-asd document (no DSSE envelope with payloadType)")
    payload = _b64(data.get("payload"))
    if payload is None:
        raise EdgeAsdError(f"{where}: the envelope's payload is not base64")
    sigs = data.get("signatures")
    if not isinstance(sigs, list) or not (sigs or allow_unsigned):
        raise EdgeAsdError(f"{where}: unsigned (the envelope has no signatures)")
    if len(sigs) > MAX_SIGNATURES:
        raise EdgeAsdError(f"{where}: {len(sigs)} signatures, more than {MAX_SIGNATURES}")
    out = []
    for s in sigs:
        keyid = s.get("keyid") if isinstance(s, dict) else None
        sig = _b64(s.get("sig")) if isinstance(s, dict) else None
        if not isinstance(keyid, str) or len(keyid) != 64 or any(c not in "0123456789abcdef" for c in keyid):
            raise EdgeAsdError(f"{where}: a signature's keyid is not a sha256 hex digest")
        if sig is None or len(sig) != 64:
            raise EdgeAsdError(f"{where}: a signature is not 64 bytes of base64 (Ed25519)")
        out.append((keyid, sig))
    return Envelope(data["payloadType"], payload, tuple(out))


def parse_envelope(data: bytes, where: str = "envelope", allow_unsigned: bool = False) -> Envelope:
    """An envelope from a file's bytes (JSON). The fuzzing target for the envelope layer. ``allow_unsigned``:
    accept an empty signature list (a document still to be signed: ``edge-release cosign``).

    Raises:
        EdgeAsdError: larger than MAX_ENVELOPE_BYTES, not UTF-8 JSON, or an invalid envelope.
    """
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EdgeAsdError(f"{where}: {len(data)} bytes, larger than any signed document ({MAX_ENVELOPE_BYTES})")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EdgeAsdError(f"{where}: not a signed document (not JSON)") from None
    return envelope_from_dict(obj, where, allow_unsigned)


def read_envelope(path: str | Path, allow_unsigned: bool = False) -> Envelope:
    """:func:`parse_envelope` of a file. Raises EdgeAsdError: missing, unreadable or invalid."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ENVELOPE_BYTES + 1)
    except FileNotFoundError:
        raise EdgeAsdError(f"{path}: no such signed document") from None
    except OSError as e:
        raise EdgeAsdError(f"{path}: cannot read ({e.strerror})") from None
    return parse_envelope(data, str(path), allow_unsigned)


def sign(payload_type: str, payload: bytes, keys: list[PrivateKey]) -> Envelope:
    """An envelope of ``payload`` signed by every key of ``keys`` (one signature per distinct key)."""
    unique = {k.keyid: k for k in keys}
    return Envelope(payload_type, payload, tuple((kid, base64.b64decode(k.sign(payload_type, payload)["sig"]))
                                                 for kid, k in unique.items()))


def cosign(envelope: Envelope, key: PrivateKey) -> Envelope:
    """The envelope with ``key``'s signature added (replacing an earlier one of the same key)."""
    sig = base64.b64decode(key.sign(envelope.payload_type, envelope.payload)["sig"])
    return Envelope(envelope.payload_type, envelope.payload,
                    tuple(s for s in envelope.signatures if s[0] != key.keyid) + ((key.keyid, sig),))


def valid_keyids(envelope: Envelope, keys: dict[str, bytes]) -> set[str]:
    """The keyids of ``keys`` (keyid -> raw public key) whose signature on the envelope verifies."""
    from cryptography.exceptions import InvalidSignature

    ed = _ed25519()
    message = pae(envelope.payload_type, envelope.payload)
    good = set()
    for keyid, sig in envelope.signatures:
        if keyid not in keys or keyid in good:
            continue
        try:
            ed.Ed25519PublicKey.from_public_bytes(keys[keyid]).verify(sig, message)
        except (InvalidSignature, ValueError):
            continue
        good.add(keyid)
    return good


def require_threshold(envelope: Envelope, keys: dict[str, bytes], threshold: int, role: str, where: str) -> None:
    """EdgeAsdError unless at least ``threshold`` distinct keys of ``keys`` signed the envelope.

    The message says whether no signature came from a key the role names (wrong or unknown key) or too
    few did (threshold not met)."""
    good = valid_keyids(envelope, keys)
    if len(good) >= threshold:
        return
    if not good:
        raise EdgeAsdError(f"{where}: not signed by any {role} key the trusted root names (wrong or unknown key, "
                           f"or a changed byte)")
    raise EdgeAsdError(f"{where}: {len(good)} valid {role} signature(s), the root requires {threshold} (threshold not met)")
