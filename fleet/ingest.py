"""The fleet's ingest: subscribes to every device's state, heartbeats and event batches, stores them
(:mod:`.db`) and acknowledges each batch once it is committed.

Subscriptions (MQTT 5): ``asd/v1/+/+/state`` as an ordinary subscription (retained messages are not sent to
shared subscriptions, and every member should know every device's state), ``$share/<group>/asd/v1/+/+/hb``
and ``.../evt`` as shared subscriptions, so several ingest processes of one group split the load and take
over from each other; and ``asd/v1/+/_cohort/+/release``, the cohorts' retained desired releases
(``edge-release publish``, ``edge-fleet rollout``), so ``edge-fleet ls`` shows desired vs current release.
paho's callbacks only enqueue; one worker thread writes the database (what queued up
meanwhile in one transaction) and then publishes the acks. With a clean start, it re-subscribes on every connect.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import ssl
import threading
import time

from edge_asd.core import signing
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.fleet.topics import PREFIX, BrokerUrl, cohort_topic, parse_topic, shared, topic
from edge_asd.edge.runtime.signed_docs import parse_release
from edge_asd.fleet.db import FleetDb

log = logging.getLogger("edge_asd")
MAX_BATCH = 200
"""Queued messages stored in one transaction at most (one fsync for a burst, acks sent after it)."""


class Ingest:
    """One member of the ingest group ``group`` on ``broker``, writing to ``db`` (a path; opened in the worker).

    ``start()`` connects in the background; ``stop()`` ends it. ``counts``: messages handled per kind, events
    new and duplicated, acks sent, damaged messages (ignored).
    """

    def __init__(self, broker: BrokerUrl, db_path, group: str = "ingest", username: str | None = None,
                 password: str | None = None, ca=None, cert=None, key=None, keepalive_s: int = 30,
                 expect: list[tuple[str, str]] = ()):
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise EdgeAsdError("edge-fleet needs paho-mqtt 2.x: pip install 'edge-asd[mqtt]'") from None
        self.broker, self.db_path, self.group, self.expect = broker, db_path, group, list(expect)
        self.subscriptions = [(f"{PREFIX}/+/+/state", 1), (shared(group, "hb"), 0), (shared(group, "evt"), 1),
                              (cohort_topic("+", "+"), 1)]
        self.counts = {"state": 0, "hb": 0, "evt": 0, "release": 0, "new": 0, "duplicates": 0, "acks": 0, "damaged": 0, "stale": 0}
        self.connected = threading.Event()
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                   client_id=f"asd-ingest-{group}-{secrets.token_hex(4)}")
        if username or broker.username:
            self._client.username_pw_set(username or broker.username, password or broker.password)
        if broker.tls:
            try:
                self._client.tls_set(ca_certs=ca and str(ca), certfile=cert and str(cert), keyfile=key and str(key))
            except (OSError, ssl.SSLError, ValueError) as e:
                raise EdgeAsdError(f"{broker}: TLS files: {e}") from None
        self._client.reconnect_delay_set(1, 10)
        self._client.on_connect = lambda c, u, flags, rc, props: self._events.put(("connect", rc))
        self._client.on_disconnect = lambda c, u, flags, rc, props: self._events.put(("disconnect", rc))
        self._client.on_message = lambda c, u, msg: self._events.put(("message", msg.topic, msg.payload))
        self._keepalive = keepalive_s
        self._thread = threading.Thread(target=self._work, name="fleet-ingest", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> Ingest:
        """Open the database (in the worker thread) and connect; raises EdgeAsdError when the database fails."""
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=self._keepalive, clean_start=True)
        self._client.loop_start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.disconnect()
        self._client.loop_stop()

    def _work(self) -> None:
        try:
            db = FleetDb(self.db_path)
            for site, device in self.expect:
                db.expect(site, device)
        except EdgeAsdError as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    items = [self._events.get(timeout=0.1)]
                except queue.Empty:
                    continue
                while len(items) < MAX_BATCH and not self._events.empty():
                    items.append(self._events.get_nowait())
                acks = []
                with db.transaction():  # one commit for what arrived meanwhile
                    for item in items:
                        try:
                            acks.extend(self._handle(db, item))
                        except Exception:  # noqa: BLE001 - one bad message must not stop the ingest
                            log.exception("fleet ingest: unexpected error")
                for name, body in acks:  # only once their lines are committed
                    self._client.publish(name, body, qos=1)
                    self.counts["acks"] += 1
        finally:
            db.close()

    def _handle(self, db: FleetDb, item: tuple) -> list[tuple[str, bytes]]:
        """Store one queued item; the acks (topic, payload) to send once the transaction is committed."""
        if item[0] == "connect":
            if item[1].is_failure:
                log.warning("fleet ingest: %s refused the connection: %s", self.broker, item[1])
                return []
            self._client.subscribe(self.subscriptions)
            self.connected.set()
            log.info("fleet ingest: connected to %s (group %s)", self.broker, self.group)
            return []
        if item[0] == "disconnect":
            self.connected.clear()
            log.warning("fleet ingest: lost %s (%s)", self.broker, item[1])
            return []
        name, payload = item[1], item[2]
        where = parse_topic(name)
        try:
            parts = name.split("/")
            if where is None and len(parts) == 6 and name == cohort_topic(parts[2], parts[4]):
                release = None
                if payload:  # an empty retained message: the cohort's desired release was cleared
                    envelope = signing.envelope_from_dict(json.loads(payload)["release"], name)
                    release = parse_release(envelope.payload, name)
                db.desired(parts[2], parts[4], release, time.time())
                self.counts["release"] += 1
                return []
            body = json.loads(payload)
            if where is None or not isinstance(body, dict):
                raise ValueError("not a JSON object on a fleet topic")
            site, device, kind = where
            now = time.time()
            if kind == "state":
                if not db.state(site, device, body, now):
                    self.counts["stale"] += 1
            elif kind == "hb":
                db.heartbeat(site, device, body, now)
            elif kind == "evt":
                boot, events = str(body["boot"]), body["events"]
                if not isinstance(events, list) or not events:
                    raise ValueError("no events")
                new, dup, _ = db.events(site, device, boot, events, now)
                self.counts["new"] += new
                self.counts["duplicates"] += dup
                ack = {"boot": boot, "first": min(int(e["seq"]) for e in events), "last": max(int(e["seq"]) for e in events)}
                self.counts[kind] += 1
                return [(topic(site, device, "ack"), json.dumps(ack).encode())]
            else:
                return []
            self.counts[kind] += 1
        except (ValueError, KeyError, TypeError, AttributeError, EdgeAsdError) as e:
            self.counts["damaged"] += 1
            log.warning("fleet ingest: ignored a damaged message on %s: %s", name, e)
        return []
