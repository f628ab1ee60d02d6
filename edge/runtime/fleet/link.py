"""The device's link to the fleet: one MQTT 5 connection (paho-mqtt 2.x) per device process.

paho's network thread runs the connection and reconnects with a back-off; its callbacks only put what
happened on a queue. One worker thread of ours does everything else: it publishes the retained birth on
every connect, sends the outbox's lines in batches of at most ``batch`` with at most ``window`` batches
unacknowledged and at most ``rate_batches_s`` batches a second (so a backlog after a reconnect does not
flood the broker), sends a heartbeat every ``heartbeat_s`` and removes what the ingest acknowledges.

A batch whose acknowledgement is late is sent again (only that batch); after a reconnect, paho resends the
batches the broker had not taken, and the link those the broker took but whose ack was lost. So about one
in-flight window is duplicated per outage, and a consumer de-duplicates by (device, boot, seq). The broker
being down never blocks the monitor: lines wait in the outbox (:mod:`.outbox`).
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.fleet.outbox import Outbox
from edge_asd.edge.runtime.fleet.settings import LinkSettings
from edge_asd.edge.runtime.fleet.topics import cohort_topic, topic

log = logging.getLogger("edge_asd")


def new_boot_id() -> str:
    """A random boot id (16 hex digits): every process start gets a new one."""
    return secrets.token_hex(8)


def _client(settings: LinkSettings, boot: str, will: bytes):
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise EdgeAsdError("--mqtt needs paho-mqtt 2.x: pip install 'edge-asd[mqtt]'") from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise EdgeAsdError("--mqtt needs paho-mqtt 2.x (found 1.x): pip install 'paho-mqtt>=2.1'")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"asd-{settings.site}-{settings.device}",
                         protocol=mqtt.MQTTv5)
    client.will_set(topic(settings.site, settings.device, "state"), will, qos=1, retain=True)
    user = settings.username or settings.broker.username
    if user:
        client.username_pw_set(user, settings.password or settings.broker.password)
    if settings.broker.tls:
        try:
            client.tls_set(ca_certs=_path(settings.ca), certfile=_path(settings.cert), keyfile=_path(settings.key),
                           cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError, ValueError) as e:
            raise EdgeAsdError(f"--mqtt {settings.broker}: TLS files: {e}") from None
    elif settings.ca or settings.cert:
        raise EdgeAsdError(f"--mqtt {settings.broker}: TLS certificates need an mqtts:// broker")
    client.reconnect_delay_set(1, 30)
    return client


def _path(p: Path | None) -> str | None:
    return None if p is None else str(p)


class FleetLink:
    """Publishes a device's state, heartbeats and outbox to the broker (module docstring).

    Args:
        settings: the broker and the limits.
        status: called by the worker thread for the heartbeat's device fields (a dict, JSON-able).
    ``cohort``: the device's rollout cohort (its trust directory's); the link follows the desired release of
    ``_cohort/<cohort>/release`` and ``_cohort/all/release``. ``on_release(payload bytes)`` and
    ``on_command(envelope dict)``, set before ``start()``, get those messages in the worker thread (they must
    not block on scoring: :mod:`.control` hands the work to the monitors).
    The constructor opens the outbox under a new boot id; ``start()`` connects in the background;
    ``add(line)`` stores a line and wakes the worker; ``stop()`` sends what it can within ``drain_s``,
    publishes a last heartbeat and the retained ``offline`` state, and closes.

    Raises:
        EdgeAsdError: paho-mqtt 2.x missing, TLS files unreadable, or the outbox cannot be opened.
    """

    def __init__(self, settings: LinkSettings, status: Callable[[], dict] = dict, cohort: str = "all"):
        self.settings, self.status, self.cohort = settings, status, cohort
        self.on_release: Callable[[bytes], None] | None = None
        self.on_command: Callable[[dict], None] | None = None
        self.discovery: Callable[[], list[tuple[str, dict]]] = list
        """Home Assistant discovery configs published (retained) on every connect; none by default."""
        self.boot = new_boot_id()
        self.started = time.time()
        self.connected = False
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._cursor = 0  # last outbox row sent
        self._inflight: list[list] = []  # [boot, first seq, last seq, last row, sent at, paho's MessageInfo]
        self._tokens, self._refill = 1.0, time.monotonic()
        self._ack_delay_s = 0.0
        self._next_hb = 0.0
        self._client = _client(settings, self.boot, self._state("offline", "connection lost"))
        self.outbox = Outbox(settings.outbox, self.boot, f"{settings.site}/{settings.device}")
        self._client.on_connect = lambda c, u, flags, rc, props: self._events.put(("connect", rc))
        self._client.on_disconnect = lambda c, u, flags, rc, props: self._events.put(("disconnect", rc))
        self._client.on_message = lambda c, u, msg: self._events.put(("message", msg.topic, msg.payload))
        self._thread = threading.Thread(target=self._work, name="fleet-link", daemon=True)

    def _topic(self, kind: str) -> str:
        return topic(self.settings.site, self.settings.device, kind)

    def _state(self, status: str, reason: str | None = None, **extra) -> bytes:
        state = {"status": status, "boot": self.boot, "site": self.settings.site, "device": self.settings.device,
                 "time": time.time(), **extra}
        if reason:
            state["reason"] = reason
        if status == "online":
            state.update(self.heartbeat())
        return json.dumps(state, sort_keys=True).encode()

    def start(self) -> FleetLink:
        s = self.settings
        try:
            self._client.connect_async(s.broker.host, s.broker.port, keepalive=s.keepalive_s, clean_start=True)
        except (OSError, ValueError) as e:
            raise EdgeAsdError(f"--mqtt {s.broker}: {e}") from None
        self._client.loop_start()
        self._thread.start()
        log.info("fleet: %s as %s/%s, boot %s, outbox %s (%d waiting)", s.broker, s.site, s.device, self.boot,
                 s.outbox, self.outbox.depth())
        return self

    def add(self, record: dict) -> int:
        """Store one event line in the outbox (durable when this returns) and wake the sender; its seq."""
        seq = self.outbox.add(record)
        self._events.put(("wake",))
        return seq

    def beat_now(self) -> None:
        """Send a heartbeat at the next turn of the worker (an alarm went on or off), not at the interval."""
        self._events.put(("hb",))

    def heartbeat(self) -> dict:
        """The heartbeat's payload: boot, uptime (s), lines this boot, outbox depth, and ``status()``'s fields."""
        return {"boot": self.boot, "uptime_s": round(time.time() - self.started, 1), "lines": self.outbox.seq,
                "outbox": self.outbox.depth(), "heartbeat_s": self.settings.heartbeat_s, "time": time.time(),
                **self.status()}

    def stop(self, drain_s: float = 2.0) -> None:
        """Send what the outbox holds for up to ``drain_s`` seconds, then publish a last heartbeat and the
        retained ``offline`` state, and close."""
        end = time.monotonic() + drain_s
        while self.connected and self.outbox.depth() and time.monotonic() < end:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(5)
        if self.connected:  # a last heartbeat (the final counts), then the retained offline
            self._client.publish(self._topic("hb"), json.dumps(self.heartbeat(), sort_keys=True).encode(), qos=1)
            info = self._client.publish(self._topic("state"), self._state("offline", "stopped", outbox=self.outbox.depth()),
                                        qos=1, retain=True)
            try:
                info.wait_for_publish(2)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        left = self.outbox.depth()
        self.outbox.close()
        if left:
            log.info("fleet: %d lines left in the outbox for the next start", left)

    # --- the worker thread: the only one that calls paho besides start() and stop() ---

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._events.get(timeout=0.1)
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self._handle(item)
                if self.connected:
                    self._pump()
            except Exception:  # noqa: BLE001 - the link must never stop the monitor
                log.exception("fleet: unexpected error in the link")
                time.sleep(1)

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "connect":
            if item[1].is_failure:
                log.warning("fleet: %s refused the connection: %s", self.settings.broker, item[1])
                return
            self.connected = True
            cohorts = {cohort_topic(self.settings.site, c) for c in (self.cohort, "all")}
            self._client.subscribe([(self._topic(k), 1) for k in ("ack", "cmd", "state")] + [(t, 1) for t in sorted(cohorts)])
            self._client.publish(self._topic("state"), self._state("online"), qos=1, retain=True)
            for name, config in self.discovery():
                self._client.publish(name, json.dumps(config, sort_keys=True).encode(), qos=1, retain=True)
            self._resend_delivered()
            self._next_hb = 0.0
            log.info("fleet: connected to %s (%d lines waiting)", self.settings.broker, self.outbox.depth())
        elif kind == "disconnect":
            if self.connected:
                log.warning("fleet: lost %s (%s); lines wait in the outbox", self.settings.broker, item[1])
            self.connected = False
        elif kind == "message":
            self._message(item[1], item[2])
        elif kind == "hb":
            self._next_hb = 0.0

    def _message(self, name: str, payload: bytes) -> None:
        if name.split("/")[3:4] == ["_cohort"]:
            if self.on_release is not None:
                self.on_release(payload)
            return
        try:
            body = json.loads(payload)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            log.warning("fleet: ignored a message on %s that is not a JSON object", name)
            return
        if name.endswith("/ack"):
            try:
                boot, first, last = str(body["boot"]), int(body["first"]), int(body["last"])
            except (KeyError, TypeError, ValueError):
                log.warning("fleet: ignored a damaged ack %r", body)
                return
            self.outbox.ack(boot, first, last)
            done = [f for f in self._inflight if f[0] == boot and first <= f[1] and f[2] <= last]
            for f in done:  # smoothed ack delay (RFC 6298's SRTT, alpha 1/8)
                self._ack_delay_s += (time.monotonic() - f[4] - self._ack_delay_s) / 8
            self._inflight = [f for f in self._inflight if f not in done]
        elif name.endswith("/state"):  # our own retained state: a stale will of this boot is replaced at once
            if self.connected and body.get("boot") == self.boot and body.get("status") == "offline":
                self._client.publish(self._topic("state"), self._state("online"), qos=1, retain=True)
        elif "payloadType" in body:  # a signed command (edge-release send)
            if self.on_command is not None:
                self.on_command(body)
            else:
                log.warning("fleet: a signed command arrived but this monitor takes none")
        elif body.get("cmd") == "hb":
            self._next_hb = 0.0
        elif body.get("cmd") == "resend":
            self._go_back()
        else:
            log.warning("fleet: unknown command %r", body.get("cmd"))

    def _resend_delivered(self) -> None:
        """After a reconnect: paho resends the batches the broker had not acknowledged (PUBACK) itself; the
        ones it had, whose ingest ack was lost with the connection, are sent again here (each once)."""
        now = time.monotonic()
        for f in self._inflight:
            if f[5].is_published():
                rows = self.outbox.lines(f[0], f[1], f[2])
                if rows:
                    f[5] = self._client.publish(self._topic("evt"), _payload(f[0], rows), qos=1)
            f[4] = now

    def _resend_late(self, now: float) -> None:
        """Send again each batch whose ack is later than the ack timeout (or 4 times the smoothed ack delay,
        when that is longer: a slow ingest is not a lost batch); only that batch, not the ones after it."""
        timeout = max(self.settings.ack_timeout_s, 4 * self._ack_delay_s)
        late = [f for f in self._inflight if now - f[4] > timeout]
        for f in late:
            rows = self.outbox.lines(f[0], f[1], f[2])
            if rows:
                f[5] = self._client.publish(self._topic("evt"), _payload(f[0], rows), qos=1)
            f[4] = now
        if late:
            log.info("fleet: no ack for %.1f s; sent %d batch%s again (from seq %d)", timeout, len(late),
                     "" if len(late) == 1 else "es", late[0][1])

    def _go_back(self) -> None:
        """Resend from the oldest line not acknowledged."""
        self._cursor, self._inflight = 0, []

    def _pump(self) -> None:
        s, now = self.settings, time.monotonic()
        if now >= self._next_hb:
            self._next_hb = now + s.heartbeat_s
            self._client.publish(self._topic("hb"), json.dumps(self.heartbeat(), sort_keys=True).encode(), qos=0)
        self._resend_late(now)
        self._tokens = min(float(s.window), self._tokens + (now - self._refill) * s.rate_batches_s)
        self._refill = now
        while len(self._inflight) < s.window and self._tokens >= 1.0:
            boot, rows = self.outbox.batch(self._cursor, s.batch)
            if not rows:
                return
            info = self._client.publish(self._topic("evt"), _payload(boot, rows), qos=1)
            self._cursor = rows[-1][0]
            self._inflight.append([boot, rows[0][1], rows[-1][1], rows[-1][0], now, info])
            self._tokens -= 1.0


def _payload(boot: str, rows: list[tuple[int, int, str]]) -> bytes:
    """An ``evt`` message: ``{"boot": ..., "events": [{"line": {...}, "seq": n}, ...]}`` (lines as stored)."""
    lines = ",".join(f'{{"line":{line},"seq":{seq}}}' for _, seq, line in rows)
    return f'{{"boot":"{boot}","events":[{lines}]}}'.encode()
