"""``edge-release``: Ed25519 keys, signed roots, releases and commands (desktop and fleet server), and their
verification and installation on the device. Roles and who holds which key: docs/releases.md."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import click

from edge_asd.core import signing
from edge_asd.core.commands import CONTEXT_SETTINGS, kit_version, setup_logging, user_errors, version_option
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.cli.options import MODEL_FILE, store_option, trust_options
from edge_asd.edge.runtime import signed_docs, trust

log = logging.getLogger("edge_asd")

FILE = click.Path(dir_okay=False, path_type=Path)
KEYS = click.Path(dir_okay=False, path_type=Path, exists=False)


def _write_envelope(envelope: signing.Envelope, out: Path) -> None:
    from edge_asd.core.atomic_io import atomic_write_text

    atomic_write_text(out, json.dumps(envelope.to_dict(), indent=2) + "\n")


def _keys(paths) -> list[signing.PrivateKey]:
    return [signing.load_private_key(p) for p in paths]


def _echo(**fields) -> None:
    click.echo(json.dumps(fields))


@click.group(context_settings=CONTEXT_SETTINGS)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@version_option()
def main(quiet):
    """Sign and verify model releases, phi records and commands (Ed25519, DSSE envelopes, TUF-shaped roles).

    Desktop and fleet server: keygen, root, cosign, sign, command, publish, send. Device: init, update-root, verify,
    install, apply. Each prints one JSON line on stdout; a refusal is one line on stderr and exit 1.
    """
    setup_logging(quiet=quiet)


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("names", nargs=-1, required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for NAME.key (mode 0600) and NAME.pub.")
@user_errors
def keygen(names, out):
    """Make one Ed25519 key pair per NAME (e.g. root-1 root-2 root-3 release ops device-01)."""
    for name in names:
        key = signing.generate(name)
        priv, pub = signing.write_keypair(key, out)
        _echo(name=name, keyid=key.keyid, key=str(priv), pub=str(pub))


@main.command(context_settings=CONTEXT_SETTINGS)
@click.option("--root-key", multiple=True, type=FILE, required=True, help="A root key's .pub (repeat).")
@click.option("--root-threshold", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--release-key", multiple=True, type=FILE, required=True, help="A release key's .pub (repeat).")
@click.option("--release-threshold", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--operations-key", multiple=True, type=FILE, required=True, help="An operations key's .pub (repeat).")
@click.option("--operations-threshold", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--device-key", multiple=True, type=FILE,
              help="A device key's .pub (repeat): devices that may sign the phi they calibrate; none: no local phi.")
@click.option("--version", "version", type=click.IntRange(min=1), default=1, show_default=True,
              help="Root version: 1, then the trusted one's + 1 for a rotation.")
@click.option("--expires", default=None, help="Expiry, ISO 8601 with offset (2028-01-01T00:00:00Z); default: none.")
@click.option("--sign", "sign_keys", multiple=True, type=FILE,
              help="Sign with this root key's .key (repeat; others add theirs with cosign).")
@click.option("-o", "--out", type=FILE, required=True, help="The root envelope to write.")
@user_errors
def root(root_key, root_threshold, release_key, release_threshold, operations_key, operations_threshold, device_key,
         version, expires, sign_keys, out):
    """Write a root document naming the root, release, operations and device keys, signed with --sign keys.
    For a rotation, sign it with the old root's threshold and the new root's (TUF)."""
    signed_docs.parse_time(expires, "--expires")
    keys = {role: [signing.load_public_key(p) for p in paths] for role, paths in
            (("root", root_key), ("release", release_key), ("operations", operations_key), ("device", device_key))}
    payload = signed_docs.root_document(version, keys, {"root": root_threshold, "release": release_threshold,
                                                  "operations": operations_threshold, "device": 1}, expires)
    _write_envelope(signing.sign(signed_docs.ROOT_TYPE, payload, _keys(sign_keys)) if sign_keys else
                    signing.Envelope(signed_docs.ROOT_TYPE, payload, ()), out)
    _echo(root=str(out), version=version, signatures=len(set(sign_keys)))


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("document", type=FILE)
@click.option("--key", "key_path", type=FILE, required=True, help="The .key to add a signature with.")
@user_errors
def cosign(document, key_path):
    """Add a signature to a signed DOCUMENT in place (each root key holder signs on their own machine)."""
    envelope = signing.read_envelope(document, allow_unsigned=True)
    key = signing.load_private_key(key_path)
    envelope = signing.cosign(envelope, key)
    _write_envelope(envelope, document)
    _echo(document=str(document), keyid=key.keyid, signatures=len(envelope.signatures))


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("model_path", metavar="MODEL", type=MODEL_FILE)
@click.option("--key", "key_paths", multiple=True, type=FILE, required=True, help="A release key's .key (repeat).")
@click.option("--version", "version", type=click.IntRange(min=1), required=True,
              help="Release version: above every release the devices have accepted.")
@click.option("--cohort", default="all", show_default=True, help="The devices it is for (all, canary, ...).")
@click.option("--min-kit-version", default=None, help="Oldest edge-asd that may run it [default: this kit's].")
@click.option("--expires", default=None, help="Expiry, ISO 8601 with offset; default: none.")
@click.option("--phi-store", "phi_store_path", type=FILE, default=None,
              help="Also carry the phi records calibrated for MODEL (every machine ID whose latest record in this "
                   "store is for it); devices store them on install and trust them as signed.")
@click.option("-o", "--out", type=FILE, default=None, help="Release envelope [default: MODEL.release.json].")
@user_errors
def sign(model_path, key_paths, version, cohort, min_kit_version, expires, phi_store_path, out):
    """Sign a release of MODEL: its sha256 and size, version, cohort, minimum kit version, expiry, and with
    --phi-store the phi calibrated for it."""
    from edge_asd.core.model_file import read_model_file
    from edge_asd.core.provenance import sha256_bytes
    from edge_asd.edge.runtime.release_phi import records_for_model

    signed_docs.parse_time(expires, "--expires")
    data, _, _ = read_model_file(model_path)  # a damaged model file is never signed
    phi = records_for_model(phi_store_path, sha256_bytes(data)) if phi_store_path else None
    payload = signed_docs.release_document(version, model_path.name, data, min_kit_version or kit_version(), cohort,
                                           expires, phi=phi)
    out = out or model_path.with_name(model_path.name + ".release.json")
    _write_envelope(signing.sign(signed_docs.RELEASE_TYPE, payload, _keys(key_paths)), out)
    _echo(release=str(out), version=version, sha256=signed_docs.parse_release(payload).sha256, size=len(data), cohort=cohort,
          phi=sorted(phi or {}))


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("model_path", metavar="MODEL", type=MODEL_FILE)
@click.argument("release", type=FILE)
@click.option("--root", "root_path", type=FILE, default=None, help="A root envelope (instead of --trust-dir's).")
@trust_options
@user_errors
def verify(model_path, release, root_path, trust_dir, trusted_clock):
    """Check MODEL against its signed RELEASE under a root (--root, or the trust directory's): signatures,
    sha256 and size, expiry (--trusted-clock), minimum kit version. Installs nothing."""
    if (root_path is None) == (trust_dir is None):
        raise EdgeAsdError("give either --root ROOT or --trust-dir DIR")
    root_doc = signed_docs.verify_root(signing.read_envelope(root_path), str(root_path), trusted_clock) if root_path \
        else trust.TrustDir(trust_dir).root(trusted_clock)
    from edge_asd.core.model_file import read_model_file

    done = signed_docs.verify_release(root_doc, signing.read_envelope(release), read_model_file(model_path)[0], str(release),
                                trusted_clock, kit_version())
    _echo(verified=str(model_path), version=done.version, sha256=done.sha256, cohort=done.cohort,
          root_version=root_doc.version)


@main.command(context_settings=CONTEXT_SETTINGS)
@click.option("--root", "root_path", type=FILE, required=True, help="The root envelope the device will trust.")
@click.option("--device", required=True, help="This device's name (commands and phi records name it).")
@click.option("--cohort", default="all", show_default=True, help="This device's rollout cohort.")
@trust_options
@user_errors
def init(root_path, device, cohort, trust_dir, trusted_clock):
    """Set up a device's trust directory with its first root (done by the installer, once)."""
    if trust_dir is None:
        raise EdgeAsdError("--trust-dir is required (or $EDGE_ASD_TRUST_DIR)")
    done = trust.TrustDir(trust_dir).init(signing.read_envelope(root_path), device, cohort, trusted_clock)
    _echo(trust_dir=str(trust_dir), device=device, cohort=cohort, root_version=done.version)


@main.command("update-root", context_settings=CONTEXT_SETTINGS)
@click.argument("root_path", metavar="ROOT", type=FILE)
@trust_options
@user_errors
def update_root(root_path, trust_dir, trusted_clock):
    """Rotate the device's root to ROOT: signed by the trusted root's threshold and its own, version + 1."""
    if trust_dir is None:
        raise EdgeAsdError("--trust-dir is required (or $EDGE_ASD_TRUST_DIR)")
    done = trust.TrustDir(trust_dir).update_root(signing.read_envelope(root_path), str(root_path))
    _echo(trust_dir=str(trust_dir), root_version=done.version)


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("model_path", metavar="MODEL", type=MODEL_FILE)
@click.argument("release", type=FILE)
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="EDGE_ASD_MODEL_DIR", help="Where edge-monitor's models live (outside the trust directory).")
@click.option("--slots", "slot_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A slot directory instead (edge-monitor --model DIR): install into its trial slot, which the "
                   "monitor's health gate then marks good or reverts (the first install becomes good at once).")
@store_option("The phi store that receives the phi records the release carries")
@trust_options
@user_errors
def install(model_path, release, model_dir, slot_dir, store, trust_dir, trusted_clock):
    """Verify MODEL against RELEASE and the trusted root, then copy it atomically into --model-dir (or the trial
    slot of --slots). Refused: unsigned, wrong key, threshold not met, version not above the last, sha256 or size
    mismatch, expired (--trusted-clock), a newer min_kit_version, another cohort."""
    from edge_asd.edge.runtime import phi_store

    if trust_dir is None:
        raise EdgeAsdError("--trust-dir is required (or $EDGE_ASD_TRUST_DIR)")
    if (model_dir is None) == (slot_dir is None):
        raise EdgeAsdError("give either --model-dir DIR or --slots DIR")
    store = store or phi_store.default_store_path()
    device, envelope = trust.TrustDir(trust_dir), signing.read_envelope(release)
    if slot_dir is not None:
        from edge_asd.edge.runtime.slots import Slots

        done, dest, state = Slots(slot_dir).install(device, model_path, envelope, str(release), store, trusted_clock)
        _echo(installed=str(dest), version=done.version, sha256=done.sha256, cohort=done.cohort, slot=state)
        return
    done, dest = device.install(model_path, envelope, model_dir, str(release), trusted_clock, kit_version(), store)
    _echo(installed=str(dest), version=done.version, sha256=done.sha256, cohort=done.cohort)


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("action", type=click.Choice(signed_docs.ACTIONS))
@click.option("--device", required=True, help="The device it is for.")
@click.option("--seq", type=click.IntRange(min=1), required=True,
              help="The device's next command sequence number (above every one it has accepted).")
@click.option("--key", "key_paths", multiple=True, type=FILE, required=True, help="An operations key's .key (repeat).")
@store_option("set-phi: the phi store holding the record to send")
@click.option("--machine-id", default=None, help="set-phi: the machine ID whose record to send.")
@click.option("--expires", default=None, help="Expiry, ISO 8601 with offset; default: none.")
@click.option("-o", "--out", type=FILE, required=True, help="The signed command to write.")
@user_errors
def command(action, device, seq, key_paths, store, machine_id, expires, out):
    """Write a signed command for one device: set-phi (a phi record, signed too), rollback (the last
    fine-tune), finetune-on, finetune-off. The device runs it with edge-release apply."""
    from edge_asd.core.machine_id import normalize_machine_id
    from edge_asd.edge.runtime import phi_store

    signed_docs.parse_time(expires, "--expires")
    keys, args = _keys(key_paths), {}
    if action == "set-phi":
        if store is None or machine_id is None:
            raise EdgeAsdError("set-phi needs --store and --machine-id (the phi record to send)")
        machine_id = normalize_machine_id(machine_id)
        record = phi_store.history(store, machine_id)[machine_id][-1]
        phi = signing.sign(signed_docs.PHI_TYPE, signed_docs.phi_document(device, machine_id, record), keys)
        args = {"machine_id": machine_id, "phi": phi.to_dict()}
    payload = signed_docs.command_document(device, seq, action, args, expires)
    _write_envelope(signing.sign(signed_docs.COMMAND_TYPE, payload, keys), out)
    _echo(command=str(out), action=action, device=device, seq=seq)


def mqtt_publish_options(fn):
    """--mqtt, --mqtt-site and the TLS files of a command that publishes one retained message (publish, send)."""
    options = [
        click.option("--mqtt", "broker", envvar="EDGE_ASD_MQTT", required=True, metavar="URL",
                     help="The MQTT 5 broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] ($EDGE_ASD_MQTT)."),
        click.option("--mqtt-site", "site", envvar="EDGE_ASD_MQTT_SITE", default="default", show_default=True,
                     help="The devices' site ($EDGE_ASD_MQTT_SITE)."),
        click.option("--mqtt-ca", "ca", type=FILE, default=None, help="CA certificates of the broker (mqtts)."),
        click.option("--mqtt-cert", "cert", type=FILE, default=None, help="Client certificate for mutual TLS (with --mqtt-key)."),
        click.option("--mqtt-key", "key", type=FILE, default=None, help="Client key for mutual TLS."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _connection(broker, ca, cert, key):
    from edge_asd.edge.runtime.fleet.publish import Connection
    from edge_asd.edge.runtime.fleet.topics import BrokerUrl

    return Connection(BrokerUrl.parse(broker), os.environ.get("EDGE_ASD_MQTT_USERNAME"),
                      os.environ.get("EDGE_ASD_MQTT_PASSWORD"), ca, cert, key)


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("model_path", metavar="[MODEL", type=MODEL_FILE, required=False)
@click.argument("release", metavar="RELEASE]", type=FILE, required=False)
@click.option("--cohort", required=True, help="The rollout cohort whose desired release this is (canary, wave1, all, ...).")
@click.option("--url", default=None,
              help="Send this file:// or https:// URL of the model instead of the model itself (base64 in the message).")
@click.option("--clear", is_flag=True, help="Remove the cohort's desired release (an empty retained message).")
@mqtt_publish_options
@user_errors
def publish(model_path, release, cohort, broker, site, url, clear, ca, cert, key):
    """Set the desired release of a --cohort: a retained QoS-1 message on asd/v1/SITE/_cohort/COHORT/release
    holding RELEASE and MODEL (base64) or --url; --clear removes it. A MODEL that is not RELEASE's (sha256,
    size) or a release for another cohort is refused before anything is published. The broker's user name
    and password: in the URL or $EDGE_ASD_MQTT_USERNAME and $EDGE_ASD_MQTT_PASSWORD."""
    from edge_asd.edge.runtime.fleet.publish import publish_release

    if clear and (model_path or release or url):
        raise EdgeAsdError("--clear takes no MODEL, RELEASE or --url")
    _echo(**publish_release(_connection(broker, ca, cert, key), site, cohort, model_path, release, url, clear))


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("command_path", metavar="COMMAND", type=FILE)
@mqtt_publish_options
@user_errors
def send(command_path, broker, site, ca, cert, key):
    """Publish a signed COMMAND (edge-release command) retained to its device's cmd topic; the running
    edge-monitor --mqtt verifies and runs it and reports a command line (a retained command comes again on each
    connect: the device ignores the seq it already accepted). Broker credentials as for publish."""
    from edge_asd.edge.runtime.fleet.publish import publish
    from edge_asd.edge.runtime.fleet.topics import check_name, topic

    envelope = signing.read_envelope(command_path)
    cmd = signed_docs.parse_command(envelope.payload, str(command_path))
    name = topic(check_name(site, "--mqtt-site"), check_name(cmd.device, "device"), "cmd")
    publish(_connection(broker, ca, cert, key), name, json.dumps(envelope.to_dict()).encode())
    _echo(sent=str(command_path), topic=name, action=cmd.action, seq=cmd.seq)


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("command_path", metavar="COMMAND", type=FILE)
@store_option("set-phi, rollback: the device's phi store")
@click.option("--model", "model_path", type=MODEL_FILE, default=None, help="rollback: the model file in service.")
@trust_options
@user_errors
def apply(command_path, store, model_path, trust_dir, trusted_clock):
    """Verify a signed COMMAND (operations key, this device, a sequence number above the last) and run it."""
    from edge_asd.edge.runtime import phi_store
    from edge_asd.edge.runtime.commands import run_command

    if trust_dir is None:
        raise EdgeAsdError("--trust-dir is required (or $EDGE_ASD_TRUST_DIR)")
    device = trust.TrustDir(trust_dir)
    store = store or phi_store.default_store_path()
    out, _ = run_command(device, signing.read_envelope(command_path), str(command_path), store,
                         lambda: _finetune_rollback(device, model_path, store), trusted_clock)
    _echo(**out)


def _finetune_rollback(device, model_path, store) -> dict:
    from edge_asd.edge.finetune.adapt import rollback_signed

    if model_path is None:
        raise EdgeAsdError("rollback needs --model (the model file in service)")
    return rollback_signed(device, model_path, store)


if __name__ == "__main__":
    main()
