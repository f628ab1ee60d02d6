"""The device's fleet settings: ``edge-monitor --mqtt ...`` options, ``EDGE_ASD_MQTT*`` variables, or the
``[fleet]`` table of monitor.toml (keys: the fields of :class:`LinkSettings`, ``broker`` a URL,
``password_file`` instead of a password)."""

from __future__ import annotations

import dataclasses
import math
import socket
from dataclasses import dataclass
from pathlib import Path

from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.fleet.discovery import check_prefix
from edge_asd.edge.runtime.fleet.topics import BrokerUrl, check_name

LIMITS = {"keepalive_s": (1, 65535), "heartbeat_s": (0.1, 86400.0), "batch": (1, 1000), "window": (1, 100),
          "ack_timeout_s": (0.1, 3600.0), "rate_batches_s": (0.01, 1000.0)}


@dataclass
class LinkSettings:
    """Where and how the device talks to the broker. Units: seconds (``_s``)."""

    broker: BrokerUrl
    site: str
    device: str
    outbox: Path
    """The outbox file (SQLite, :mod:`.outbox`)."""
    username: str | None = None
    password: str | None = None
    ca: Path | None = None
    """CA certificates that sign the broker's (mqtts); None: the system's."""
    cert: Path | None = None
    """Client certificate for mutual TLS (with ``key``)."""
    key: Path | None = None
    keepalive_s: int = 30
    """MQTT keep-alive: the broker declares the device offline (its last will) after 1.5 times this."""
    heartbeat_s: float = 15.0
    """Seconds between heartbeats. The fleet marks a device offline after 3 heartbeats without a message, so the
    default, half the default keep-alive, marks a hung device offline within 1.5 keep-alives (45 s) even when
    the broker's will comes later (mosquitto 2.0.11 sent it up to about 3 keep-alives after the device stopped;
    docs/fleet.md). :func:`settings` makes it half of a given keep-alive when no heartbeat is given."""
    batch: int = 50
    """Event lines per ``evt`` message at most."""
    window: int = 4
    """Batches sent and not yet acknowledged at most (the in-flight window)."""
    ack_timeout_s: float = 3.0
    """Resend from the oldest unacknowledged line when its ack is this late."""
    rate_batches_s: float = 20.0
    """Batches per second at most (a backlog after a reconnect drains at this pace)."""
    ha_discovery: bool = False
    """Publish Home Assistant MQTT discovery configs on every connect (:mod:`.discovery`); off by default."""
    ha_prefix: str = "homeassistant"
    """Home Assistant's discovery prefix."""

    def __post_init__(self):
        check_name(self.site, "site")
        check_name(self.device, "device")
        for key, (lo, hi) in LIMITS.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not lo <= value <= hi:
                raise EdgeAsdError(f"fleet {key} = {value!r}: out of range ({lo:g} to {hi:g})")
        if not isinstance(self.ha_discovery, bool):
            raise EdgeAsdError(f"fleet ha_discovery = {self.ha_discovery!r}: use true or false")
        check_prefix(self.ha_prefix)
        if (self.cert is None) != (self.key is None):
            raise EdgeAsdError("fleet: mutual TLS needs both a client certificate and its key")


KEYS = {"broker": str, "site": str, "device": str, "outbox": Path, "username": str, "password_file": Path,
        "ca": Path, "cert": Path, "key": Path, "keepalive_s": int, "heartbeat_s": float, "batch": int, "window": int,
        "ack_timeout_s": float, "rate_batches_s": float, "ha_discovery": bool, "ha_prefix": str}


def check_table(table: dict, where: str, base: Path) -> dict:
    """The ``[fleet]`` table with its types checked and paths made relative to ``base``.

    Raises:
        EdgeAsdError: an unknown key or a wrong type.
    """
    out = {}
    for key, value in table.items():
        kind = KEYS.get(key)
        if kind is None:
            raise EdgeAsdError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(KEYS))})")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else \
            isinstance(value, int) and not isinstance(value, bool) if kind is int else \
            isinstance(value, bool) if kind is bool else isinstance(value, str)
        if not ok:
            what = {Path: "a path", bool: "true or false"}.get(kind, kind.__name__)
            raise EdgeAsdError(f"{where}: {key} = {value!r} should be {what}")
        out[key] = base / Path(value).expanduser() if kind is Path else kind(value)
    return out


def settings(values: dict, default_outbox: Path, password: str | None = None) -> LinkSettings:
    """:class:`LinkSettings` from ``values`` (the keys of :data:`KEYS`; None = not given): the device name
    defaults to the host name, the site to ``default``, the outbox to ``default_outbox`` with ``-<site>-<device>``
    added to its name (each device name its own outbox: waiting lines are sent under their owner's); the password comes
    from ``password`` or ``password_file``; the heartbeat, when not given, is half the keep-alive.

    Raises:
        EdgeAsdError: a bad broker URL, name or limit, or an unreadable password file.
    """
    v = {k: x for k, x in values.items() if x is not None}
    file = v.pop("password_file", None)
    if password is None and file is not None:
        try:
            password = Path(file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise EdgeAsdError(f"{file}: cannot read the MQTT password ({e.strerror})") from None
    broker = BrokerUrl.parse(v.pop("broker"))
    fields = {f.name for f in dataclasses.fields(LinkSettings)}
    site, device = check_name(v.pop("site", "default"), "site"), check_name(v.pop("device", host_device_name()), "device")
    if "keepalive_s" in v and "heartbeat_s" not in v and isinstance(v["keepalive_s"], (int, float)):
        v["heartbeat_s"] = max(LIMITS["heartbeat_s"][0], v["keepalive_s"] / 2)
    own = Path(default_outbox).with_name(f"{Path(default_outbox).stem}-{site}-{device}{Path(default_outbox).suffix}")
    return LinkSettings(broker=broker, site=site, device=device, outbox=Path(v.pop("outbox", own)), password=password,
                        **{k: x for k, x in v.items() if k in fields})


def host_device_name() -> str:
    """The host name, cut to a valid device name (:data:`~.topics.NAME`)."""
    name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname())[:64].lstrip("_.-")
    return name or "device"
