"""Signed releases, roots, phi records and commands (edge_asd.core.signing, edge_asd.edge.runtime.trust): every
refusal of docs/releases.md, on real keys and, for the model, the session's real model file."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_asd.core import signing
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime import phi_store, signed_docs, trust
from edge_asd.edge.runtime.phi_store import PhiRecord

NAMES = ("root-1", "root-2", "root-3", "release", "ops", "device-01", "stranger", "root-4", "root-5")
KEYS = {name: signing.generate(name) for name in NAMES}
PUB = {name: signing.public_entry(name, k.public) for name, k in KEYS.items()}


def make_root(version=1, roots=("root-1", "root-2", "root-3"), sign=("root-1", "root-2"), release_threshold=1,
              release=("release",), expires=None) -> signing.Envelope:
    keys = {"root": [PUB[n] for n in roots], "release": [PUB[n] for n in release], "operations": [PUB["ops"]],
            "device": [PUB["device-01"]]}
    payload = signed_docs.root_document(version, keys, {"root": 2, "release": release_threshold, "operations": 1}, expires)
    return signing.sign(signed_docs.ROOT_TYPE, payload, [KEYS[n] for n in sign])


def make_release(model: bytes, version=1, keys=("release",), expires=None, min_kit="0.1", cohort="all"):
    payload = signed_docs.release_document(version, "fan.tflite", model, min_kit, cohort, expires)
    return signing.sign(signed_docs.RELEASE_TYPE, payload, [KEYS[n] for n in keys])


def iso(days: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=days)).isoformat(timespec="seconds")


@pytest.fixture
def device(tmp_path):
    d = trust.TrustDir(tmp_path / "trust")
    d.init(make_root(), "device-01")
    return d


def test_pae_is_dsse_v1():
    """The bytes signed are DSSE's pre-authentication encoding (the example of the DSSE protocol document)."""
    assert signing.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_keyid_is_the_sha256_of_the_raw_public_key_and_key_files_round_trip(tmp_path):
    import hashlib

    key = KEYS["ops"]
    assert key.keyid == hashlib.sha256(key.public).hexdigest() and len(key.public) == 32
    priv, pub = signing.write_keypair(signing.PrivateKey("ops", key.seed), tmp_path)
    assert oct(priv.stat().st_mode & 0o777) == "0o600"
    assert signing.load_private_key(priv).keyid == key.keyid == signing.load_public_key(pub)["keyid"]
    with pytest.raises(EdgeAsdError, match="never overwritten"):
        signing.write_keypair(signing.generate("ops"), tmp_path)


def test_a_signature_covers_the_payload_type():
    """The same payload bytes signed as a release do not verify as a command."""
    env = make_release(b"model bytes")
    moved = signing.Envelope(signed_docs.COMMAND_TYPE, env.payload, env.signatures)
    assert signing.valid_keyids(env, {KEYS["release"].keyid: KEYS["release"].public}) == {KEYS["release"].keyid}
    assert signing.valid_keyids(moved, {KEYS["release"].keyid: KEYS["release"].public}) == set()


MODEL = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4  # bytes standing in for a model where no file is read
ROOT = signed_docs.parse_root(make_root().payload)
ENVELOPE_BYTES = json.dumps(make_release(MODEL).to_dict()).encode()


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(ENVELOPE_BYTES) - 1), st.integers(1, 255))
def test_a_flipped_byte_anywhere_in_the_envelope_is_refused(pos, mask):
    """Every flipped byte of the envelope file is refused, or leaves the parsed envelope exactly as signed (a
    JSON space turned into another space: the signed content did not change)."""
    data = bytearray(ENVELOPE_BYTES)
    data[pos] ^= mask
    original = signing.parse_envelope(ENVELOPE_BYTES)
    try:
        env = signing.parse_envelope(bytes(data))
        signed_docs.verify_release(ROOT, env, MODEL, "release")
    except EdgeAsdError:
        return
    assert env == original


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_flipped_byte_in_the_payload_is_refused(data):
    env = make_release(MODEL)
    pos = data.draw(st.integers(0, len(env.payload) - 1))
    payload = bytearray(env.payload)
    payload[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(EdgeAsdError, match="not signed by any release key"):
        signed_docs.verify_release(ROOT, signing.Envelope(env.payload_type, bytes(payload), env.signatures), MODEL, "r")


@pytest.fixture(scope="module")
def model_bytes(model):
    return model.read_bytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_flipped_byte_in_the_real_model_file_is_refused(model_bytes, data):
    env = make_release(model_bytes)
    pos = data.draw(st.integers(0, len(model_bytes) - 1))
    damaged = bytearray(model_bytes)
    damaged[pos] ^= data.draw(st.integers(1, 255))
    signed_docs.verify_release(ROOT, env, model_bytes, "release")
    with pytest.raises(EdgeAsdError, match="sha256 or size mismatch"):
        signed_docs.verify_release(ROOT, env, bytes(damaged), "release")
    with pytest.raises(EdgeAsdError, match="sha256 or size mismatch"):
        signed_docs.verify_release(ROOT, env, model_bytes + b"\0", "release")


def test_unsigned_wrong_key_and_threshold_not_met_are_refused():
    with pytest.raises(EdgeAsdError, match="unsigned"):
        signing.parse_envelope(json.dumps({**make_release(MODEL).to_dict(), "signatures": []}).encode())
    with pytest.raises(EdgeAsdError, match="unsigned"):
        signing.parse_envelope(json.dumps({"_type": "release", "version": 1}).encode())
    with pytest.raises(EdgeAsdError, match="not signed by any release key"):
        signed_docs.verify_release(ROOT, make_release(MODEL, keys=("stranger",)), MODEL, "r")
    with pytest.raises(EdgeAsdError, match="not signed by any release key"):  # an operations key is not a release key
        signed_docs.verify_release(ROOT, make_release(MODEL, keys=("ops",)), MODEL, "r")
    two = signed_docs.parse_root(make_root(release=("release", "stranger"), release_threshold=2).payload)
    with pytest.raises(EdgeAsdError, match=r"1 valid release signature\(s\), the root requires 2 \(threshold not met\)"):
        signed_docs.verify_release(two, make_release(MODEL), MODEL, "r")
    assert signed_docs.verify_release(two, make_release(MODEL, keys=("release", "stranger")), MODEL, "r").version == 1
    # a signature repeated does not count twice
    env = make_release(MODEL)
    doubled = signing.Envelope(env.payload_type, env.payload, env.signatures * 2)
    with pytest.raises(EdgeAsdError, match="threshold not met"):
        signed_docs.verify_release(two, doubled, MODEL, "r")
    with pytest.raises(EdgeAsdError, match="threshold not met"):  # a root with one of its two root signatures
        signed_docs.verify_root(make_root(sign=("root-1",)), "root")


def test_expiry_is_checked_when_the_clock_is_trusted():
    env = make_release(MODEL, expires=iso(-1))
    assert signed_docs.verify_release(ROOT, env, MODEL, "r").version == 1
    with pytest.raises(EdgeAsdError, match="expired at"):
        signed_docs.verify_release(ROOT, env, MODEL, "r", trusted_clock=True)
    assert signed_docs.verify_release(ROOT, make_release(MODEL, expires=iso(1)), MODEL, "r", trusted_clock=True)
    with pytest.raises(EdgeAsdError, match="expired at"):
        signed_docs.verify_root(make_root(expires=iso(-1)), "root", trusted_clock=True)


def test_a_newer_min_kit_version_is_refused():
    with pytest.raises(EdgeAsdError, match="needs edge-asd 99.0 or newer"):
        signed_docs.verify_release(ROOT, make_release(MODEL, min_kit="99.0"), MODEL, "r", kit_version="0.1.0")
    assert signed_docs.verify_release(ROOT, make_release(MODEL, min_kit="0.1.0"), MODEL, "r", kit_version="0.1.0")


def test_install_refuses_an_old_version_replayed_and_another_cohort(device, model, tmp_path):
    data = model.read_bytes()
    models = tmp_path / "models"
    release, dest = device.install(model, make_release(data, version=2), models, "v2")
    assert dest.read_bytes() == data and device.state()["release_version"] == 2
    assert device.check_model(release.sha256, len(data)).version == 2
    for version in (1, 2):  # an older release and the same one again
        with pytest.raises(EdgeAsdError, match="not above the last accepted \\(2\\): a rollback or a replay"):
            device.install(model, make_release(data, version=version), models, f"v{version}")
    with pytest.raises(EdgeAsdError, match="cohort 'canary'"):
        trust.TrustDir(device.path).install(model, make_release(data, version=3, cohort="canary"), models, "v3")
    with pytest.raises(EdgeAsdError, match="outside the trust directory"):
        device.install(model, make_release(data, version=4), device.path / "models", "v4")
    assert device.state()["release_version"] == 2


def test_check_model_refuses_an_unsigned_model_and_a_swapped_release(device, model, tmp_path):
    data = model.read_bytes()
    with pytest.raises(EdgeAsdError, match="no signed release installed"):
        device.check_model("0" * 64, len(data))
    release, _ = device.install(model, make_release(data), tmp_path / "models", "v1")
    with pytest.raises(EdgeAsdError, match="another model file"):
        device.check_model(release.sha256, len(data) + 1)


def test_root_rotation_needs_both_the_old_and_the_new_threshold(device):
    new_keys = ("root-3", "root-4", "root-5")  # root-1 and root-2 retire
    only_new = make_root(version=2, roots=new_keys, sign=("root-4", "root-5"))
    with pytest.raises(EdgeAsdError, match="of the root it replaces, version 1"):
        device.update_root(only_new, "root-2")
    only_old = make_root(version=2, roots=new_keys, sign=("root-1", "root-2"))
    with pytest.raises(EdgeAsdError, match="not signed by any root key"):
        device.update_root(only_old, "root-2")
    one_new = make_root(version=2, roots=new_keys, sign=("root-1", "root-2", "root-4"))
    with pytest.raises(EdgeAsdError, match="threshold not met"):
        device.update_root(one_new, "root-2")
    skipped = make_root(version=3, roots=new_keys, sign=("root-1", "root-2", "root-4", "root-5"))
    with pytest.raises(EdgeAsdError, match="the next must be 2"):
        device.update_root(skipped, "root-3")
    assert device.root().version == 1
    both = make_root(version=2, roots=new_keys, sign=("root-1", "root-2", "root-4", "root-5"))
    assert device.update_root(both, "root-2").version == 2 and device.root().version == 2
    with pytest.raises(EdgeAsdError, match="the next must be 3"):  # the same root again
        device.update_root(both, "root-2")


def command(seq, action="finetune-on", device="device-01", key="ops", args=None):
    return signing.sign(signed_docs.COMMAND_TYPE, signed_docs.command_document(device, seq, action, args or {}), [KEYS[key]])


def test_a_command_with_an_old_sequence_number_is_refused(device):
    for seq in (1, 5):
        device.record_command(device.accept_command(command(seq), "cmd"))
    assert device.state()["command_seq"] == 5 and device.state()["finetune"] is True
    for seq in (5, 4, 1):
        with pytest.raises(EdgeAsdError, match="not above the last accepted \\(5\\): a replayed or old command"):
            device.accept_command(command(seq), "cmd")
    with pytest.raises(EdgeAsdError, match="for device 'device-02'"):
        device.accept_command(command(6, device="device-02"), "cmd")
    with pytest.raises(EdgeAsdError, match="not signed by any operations key"):
        device.accept_command(command(6, key="release"), "cmd")
    device.record_command(device.accept_command(command(6, "finetune-off"), "cmd"))
    assert device.state()["finetune"] is False


def test_init_with_a_trusted_clock_refuses_an_expired_root(tmp_path):
    with pytest.raises(EdgeAsdError, match="expired at"):
        trust.TrustDir(tmp_path / "a").init(make_root(expires=iso(-1)), "device-01", trusted_clock=True)
    assert not (tmp_path / "a" / "root.json").exists()
    trust.TrustDir(tmp_path / "b").init(make_root(expires=iso(-1)), "device-01")  # an untrusted clock: accepted


def test_concurrent_writers_lose_no_update(device):
    """The running monitor pins phi records while edge-release or edge-calibrate write the same state.json: each
    read-modify-write holds the directory's flock, so every pin survives (separate TrustDir objects, as separate
    processes have; with the lock taken out, 32 of the 100 survived)."""
    import threading

    from edge_asd.edge.runtime.signed_docs import PHI_TYPE, phi_document

    def writer(k: int) -> None:
        d = trust.TrustDir(device.path)
        for i in range(25):
            record = PhiRecord(phi=float(i + 1), model_sha256="ab" * 32)
            envelope = signing.sign(PHI_TYPE, phi_document("device-01", f"id_{k}{i:02d}", record), [KEYS["ops"]])
            d.pin_phi(f"id_{k}{i:02d}", envelope)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(device.state()["phi"]) == 100
    with pytest.raises(EdgeAsdError, match="no trust directory"):
        with trust.TrustDir(device.path / "typo").locked():
            pass


def test_phi_in_service_is_the_signed_record_last_accepted(device, tmp_path):
    store = tmp_path / "phi.json"
    record = PhiRecord(phi=812.5, model_sha256="ab" * 32)
    phi_store.save_phi(store, "id_00", record)
    stored = lambda: phi_store.history(store, "id_00")["id_00"][-1]  # noqa: E731
    with pytest.raises(EdgeAsdError, match="unsigned phi record"):
        device.phi_in_service(stored(), "id_00", "ab" * 32, "phi")
    old = device.sign_local_phi(KEYS["device-01"], "id_00", record)
    device.pin_phi("id_00", old)
    new_record = PhiRecord(phi=900.0, model_sha256="ab" * 32)
    new = device.sign_local_phi(KEYS["device-01"], "id_00", new_record)
    device.pin_phi("id_00", new)
    phi_store.attach_signature(store, "id_00", new.to_dict())
    assert device.phi_in_service(stored(), "id_00", "ab" * 32, "phi").phi == 900.0
    with pytest.raises(EdgeAsdError, match="another model file"):
        device.phi_in_service(stored(), "id_00", "cd" * 32, "phi")
    # phi = 1e300 written into the store beside a valid signature: the signed record is used, not the store's
    data = json.loads(store.read_text())
    data["machines"]["id_00"]["phi"] = 1e300
    store.write_text(json.dumps(data))
    assert device.phi_in_service(stored(), "id_00", "ab" * 32, "phi").phi == 900.0
    phi_store.attach_signature(store, "id_00", old.to_dict())  # an older signed record put back
    with pytest.raises(EdgeAsdError, match="not the phi record this device last accepted"):
        device.phi_in_service(stored(), "id_00", "ab" * 32, "phi")
    stranger = signing.sign(signed_docs.PHI_TYPE, signed_docs.phi_document("device-01", "id_00", new_record), [KEYS["stranger"]])
    phi_store.attach_signature(store, "id_00", stranger.to_dict())
    with pytest.raises(EdgeAsdError, match="not signed by any operations or device key"):
        device.phi_in_service(stored(), "id_00", "ab" * 32, "phi")
    with pytest.raises(EdgeAsdError, match="device 'device-02'"):
        device.verify_phi(signing.sign(signed_docs.PHI_TYPE, signed_docs.phi_document("device-02", "id_00", new_record),
                                       [KEYS["ops"]]), "id_00", "phi")


@pytest.mark.parametrize("parse", [signed_docs.parse_root, signed_docs.parse_release, signed_docs.parse_command, signed_docs.parse_phi])
@settings(max_examples=150, deadline=None)
@given(blob=st.one_of(st.binary(max_size=300), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4), max_leaves=20).map(
    lambda v: json.dumps(v).encode())))
def test_the_parsers_raise_only_edge_asd_errors(parse, blob):
    """The fuzzing targets: any bytes give a document or an EdgeAsdError, never another exception."""
    for data in (blob, json.dumps({"_type": parse.__name__.removeprefix("parse_"), **_as_obj(blob)}).encode()):
        try:
            parse(data)
        except EdgeAsdError:
            pass


def _as_obj(blob: bytes) -> dict:
    try:
        v = json.loads(blob)
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {"version": v, "model": v, "roles": v, "keys": v, "record": v}


def test_a_non_canonical_base64_spelling_is_refused():
    env = make_release(MODEL).to_dict()
    sig = env["signatures"][0]["sig"]  # 64 bytes: base64 ends in "==", the char before carries 4 unused bits
    raw = base64.b64decode(sig)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    alias = sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 1] + "=="
    assert base64.b64decode(alias) == raw and alias != sig
    with pytest.raises(EdgeAsdError, match="not 64 bytes of base64"):
        signing.envelope_from_dict({**env, "signatures": [{"keyid": env["signatures"][0]["keyid"], "sig": alias}]})


def test_a_device_signed_release_is_a_fine_tune_of_a_signed_release(device, model, tmp_path):
    data = model.read_bytes()
    base, _ = device.install(model, make_release(data), tmp_path / "models", "v1")
    with pytest.raises(EdgeAsdError, match="fine-tuning is switched off"):
        device.check_finetune(KEYS["device-01"], base.sha256, len(data))
    device.record_command(device.accept_command(command(1, "finetune-on"), "cmd"))
    with pytest.raises(EdgeAsdError, match="does not name this key as a device key"):
        device.check_finetune(KEYS["ops"], base.sha256, len(data))
    assert device.check_finetune(KEYS["device-01"], base.sha256, len(data)) == base
    tuned = data + b"fine-tuned"  # bytes standing in for the fine-tuned file (check_model reads no file)
    release = device.sign_fine_tuned(KEYS["device-01"], base, tuned, "fan.tflite")
    assert device.check_model(release.sha256, len(tuned)).base_sha256 == base.sha256
    for payload, refusal in ((signed_docs.release_document(9, "own.tflite", b"own", "0.1", "all"), "not a fine-tune"),
                             (signed_docs.release_document(9, "own.tflite", b"own", "0.1", "all", base_sha256="0" * 64),
                              "which has no signed release")):
        own = signing.sign(signed_docs.RELEASE_TYPE, payload, [KEYS["device-01"]])
        (device.releases / f"{signed_docs.parse_release(payload).sha256}.json").write_text(json.dumps(own.to_dict()))
        with pytest.raises(EdgeAsdError, match=refusal):
            device.check_model(signed_docs.parse_release(payload).sha256, 3)
