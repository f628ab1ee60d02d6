"""A cohort's desired release on the broker (docs/fleet.md, Rollout): one retained QoS-1 message on
``asd/v1/<site>/_cohort/<cohort>/release`` (:func:`~.topics.cohort_topic`) holding the signed release
envelope and the model (base64) or a URL to fetch it from; an empty retained message clears it.

Used by ``edge-release publish`` and by the fleet's ``edge-fleet rollout``. It sits in the runtime's fleet
package, not in ``edge_asd.fleet``, because edge.cli (edge-release) may not import the fleet layer above it
(tests/test_layers.py). Nothing here is verified against a root: the devices do that; this only refuses a
model that is not the one its release names, before anything is published.
"""

from __future__ import annotations

import base64
import json
import queue
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

from edge_asd.core import signing
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.provenance import sha256_bytes
from edge_asd.edge.runtime.fleet.topics import BrokerUrl, check_name, cohort_topic
from edge_asd.edge.runtime.signed_docs import RELEASE_TYPE, Release, parse_release

URL_SCHEMES = ("file://", "https://")


@dataclass(frozen=True)
class Connection:
    """Where to publish: the broker, its credentials (or the URL's) and TLS files (mqtts; ``cert`` with ``key``
    for mutual TLS)."""

    broker: BrokerUrl
    username: str | None = None
    password: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    timeout_s: float = 10.0
    """Seconds to wait for the broker's CONNACK and for its PUBACK."""


def release_payload(model: Path, release: Path, cohort: str, url: str | None = None) -> tuple[bytes, Release]:
    """The retained message for ``cohort``: ``{"release": <envelope dict>, "model_b64": <base64 of the model
    file>}``, or ``"url"`` instead of ``model_b64``; and the parsed release.

    Raises:
        EdgeAsdError: a release file that is not a signed release envelope; a damaged model file; a model whose
            sha256 or size is not the release's; a release for another cohort (neither ``all`` nor ``cohort``);
            a URL that is not file:// or https://.
    """
    envelope = signing.read_envelope(release)
    if envelope.payload_type != RELEASE_TYPE:
        raise EdgeAsdError(f"{release}: a {envelope.payload_type} document, not a release")
    done = parse_release(envelope.payload, str(release))
    from edge_asd.core.model_file import read_model_file

    data = read_model_file(model)[0]
    if (sha256_bytes(data), len(data)) != (done.sha256, done.size):
        raise EdgeAsdError(f"{model}: sha256 {sha256_bytes(data)[:12]}.. ({len(data)} bytes) is not the model of "
                           f"{release} ({done.sha256[:12]}.., {done.size} bytes); nothing published")
    if done.cohort not in ("all", cohort):
        raise EdgeAsdError(f"{release}: signed for cohort {done.cohort!r}; devices of cohort {cohort!r} would refuse it "
                           f"(sign it with --cohort all or --cohort {cohort})")
    body = {"release": envelope.to_dict()}
    if url is None:
        body["model_b64"] = base64.b64encode(data).decode()
    elif url.startswith(URL_SCHEMES):
        body["url"] = url
    else:
        raise EdgeAsdError(f"--url {url!r}: give a file:///... or https://... URL")
    return json.dumps(body, sort_keys=True).encode(), done


def publish_release(connection: Connection, site: str, cohort: str, model: Path | None = None,
                    release: Path | None = None, url: str | None = None, clear: bool = False) -> dict:
    """Publish (retained, QoS 1) ``release`` with ``model`` as the desired release of ``cohort`` at ``site``,
    or with ``clear`` an empty retained message that removes it. Returns what was done (JSON-able: topic,
    cohort, version, sha256, bytes, cleared).

    Raises:
        EdgeAsdError: every refusal of :func:`release_payload`; a bad site or cohort name; paho-mqtt 2.x
            missing; the broker unreachable, refusing the connection, or not acknowledging within ``timeout_s``.
    """
    name = cohort_topic(check_name(site, "site"), check_name(cohort, "cohort"))
    if clear:
        payload, done = b"", None
    elif model is None or release is None:
        raise EdgeAsdError("give MODEL and RELEASE, or --clear")
    else:
        payload, done = release_payload(Path(model), Path(release), cohort, url)
    publish(connection, name, payload)
    return {"topic": name, "cohort": cohort, "cleared": clear, "bytes": len(payload),
            "version": done and done.version, "sha256": done and done.sha256}


def publish(connection: Connection, name: str, payload: bytes) -> None:
    """One retained QoS-1 message on topic ``name``: connect, publish, wait for the PUBACK, disconnect."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise EdgeAsdError("publishing needs paho-mqtt 2.x: pip install 'edge-asd[mqtt]'") from None
    c, broker = connection, connection.broker
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         client_id=f"asd-publish-{secrets.token_hex(4)}")
    if c.username or broker.username:
        client.username_pw_set(c.username or broker.username, c.password or broker.password)
    if broker.tls:
        try:
            client.tls_set(ca_certs=c.ca and str(c.ca), certfile=c.cert and str(c.cert), keyfile=c.key and str(c.key))
        except (OSError, ssl.SSLError, ValueError) as e:
            raise EdgeAsdError(f"{broker}: TLS files: {e}") from None
    connected: queue.Queue = queue.Queue()
    client.on_connect = lambda cl, u, flags, rc, props: connected.put(rc)
    try:
        client.connect(broker.host, broker.port, keepalive=max(5, int(c.timeout_s)))
    except (OSError, ValueError) as e:
        raise EdgeAsdError(f"{broker}: cannot reach the broker ({e})") from None
    client.loop_start()
    try:
        try:
            rc = connected.get(timeout=c.timeout_s)
        except queue.Empty:
            raise EdgeAsdError(f"{broker}: no answer to CONNECT within {c.timeout_s:g} s") from None
        if rc.is_failure:
            raise EdgeAsdError(f"{broker}: the broker refused the connection ({rc})")
        info = client.publish(name, payload, qos=1, retain=True)
        try:
            info.wait_for_publish(c.timeout_s)
        except (RuntimeError, ValueError) as e:
            raise EdgeAsdError(f"{broker}: {name} not published ({e})") from None
        if not info.is_published():
            raise EdgeAsdError(f"{broker}: no PUBACK for {name} within {c.timeout_s:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
