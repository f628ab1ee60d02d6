"""A real MQTT broker for the fleet tests: mosquitto on a free loopback port, with persistence and a log file,
that a test can SIGKILL and restart on the same port; and a loopback TCP proxy that can blackhole traffic
(a network partition)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest


def missing(what: str) -> None:
    """Skip, or fail under CI (CI=true), when the broker or paho-mqtt is missing."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI: {what} is missing (.ci/run installs mosquitto and paho-mqtt)")
    pytest.skip(f"{what} is missing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class Broker:
    """mosquitto on 127.0.0.1:``port``; ``folder`` holds its config, persistence file and log (``log``)."""

    def __init__(self, folder: Path):
        self.exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if self.exe is None:
            missing("mosquitto (apt-get install mosquitto)")
        self.folder, self.port, self.proc = folder, free_port(), None
        self.log = folder / "mosquitto.log"
        self.conf = folder / "mosquitto.conf"
        # as root mosquitto drops to `nobody` and then fails to write its persistence file unless told `user root`
        self.conf.write_text(f"user root\nlistener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {folder}/\nlog_dest file {self.log}\nlog_type all\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def add_tls_listener(self, ca: Path, cert: Path, key: Path, users: dict[str, str]) -> int:
        """Before ``start()``: a second listener on a free port with TLS (server ``cert`` / ``key`` signed by
        ``ca``), client certificates required (mutual TLS) and user names with passwords (``mosquitto_passwd``),
        no anonymous access; the first listener stays plain and anonymous. Returns the TLS port."""
        passwd = self.folder / "passwd"
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        for k, (user, password) in enumerate(users.items()):
            subprocess.run([tool, "-b", *(["-c"] if k == 0 else []), str(passwd), user, password], check=True,
                           capture_output=True)
        port = free_port()
        plain = f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        text = self.conf.read_text().replace(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n", "")
        self.conf.write_text(f"per_listener_settings true\n{text}{plain}listener {port} 127.0.0.1\ncafile {ca}\n"
                             f"certfile {cert}\nkeyfile {key}\nrequire_certificate true\nallow_anonymous false\n"
                             f"password_file {passwd}\n")
        return port

    def start(self) -> Broker:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, nothing saved."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Partition:
    """A loopback TCP proxy to ``target_port`` on ``port``; ``blackhole()`` stops every byte both ways (and
    leaves new connections hanging), ``heal()`` lets them through again."""

    def __init__(self, target_port: int):
        self.target, self.port = target_port, free_port()
        self.open = threading.Event()
        self.open.set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        self.open.clear()

    def heal(self) -> None:
        self.open.set()

    def close(self) -> None:
        self._closed = True
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self.open.wait()
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            client.close()
            return
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                self.open.wait()
                data = src.recv(65536)
                if not data:
                    break
                self.open.wait()  # read while open, held when the partition starts
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Collector:
    """A plain MQTT 5 subscriber that keeps every (topic, JSON payload, retain flag) it receives on ``pattern``;
    with ``ack``, it acknowledges each event batch as the fleet's ingest does."""

    def __init__(self, url: str, pattern: str, ack: bool = False):
        import json

        import paho.mqtt.client as mqtt

        port = int(url.rsplit(":", 1)[1])
        self.messages: list[tuple[str, dict, bool]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(pattern, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.ready.set()
        def keep(c, u, m):
            body = json.loads(m.payload)
            self.messages.append((m.topic, body, bool(m.retain)))
            if ack and m.topic.endswith("/evt"):
                seqs = [e["seq"] for e in body["events"]]
                c.publish(m.topic[:-3] + "ack", json.dumps({"boot": body["boot"], "first": min(seqs), "last": max(seqs)}), qos=1)

        self.client.on_message = keep
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.ready.wait(10)

    def of(self, kind: str) -> list[dict]:
        return [body for t, body, _ in self.messages if t.endswith("/" + kind)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
