"""One retained QoS-1 message to the broker and back (edge-release send: a signed command to a device's cmd topic)."""

from __future__ import annotations

import threading

from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.fleet.topics import BrokerUrl


def publish_retained(url: str, name: str, payload: bytes, timeout_s: float = 10.0) -> None:
    """Connect to the broker ``url`` (mqtt:// or mqtts://, user and password in the URL), publish ``payload`` on
    topic ``name`` retained with QoS 1, wait for the broker's PUBACK, disconnect.

    Raises:
        EdgeAsdError: paho-mqtt 2.x missing, a bad URL, the broker unreachable or silent for ``timeout_s``.
    """
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise EdgeAsdError("--mqtt needs paho-mqtt 2.x: pip install 'edge-asd[mqtt]'") from None
    broker = BrokerUrl.parse(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set()
    connected = threading.Event()
    client.on_connect = lambda c, u, flags, rc, props: connected.set()
    try:
        client.connect(broker.host, broker.port, keepalive=30)
    except OSError as e:
        raise EdgeAsdError(f"--mqtt {broker}: {e}") from None
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise EdgeAsdError(f"--mqtt {broker}: no answer within {timeout_s:g} s")
        info = client.publish(name, payload, qos=1, retain=True)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise EdgeAsdError(f"--mqtt {broker}: the broker did not take the message within {timeout_s:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
