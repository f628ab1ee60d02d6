"""The versioned topic scheme of the fleet and the broker address (docs/fleet.md).

Topics, one set per device::

    asd/v1/<site>/<device>/state   retained, QoS 1: birth {"status": "online", "boot": ...}; last will and
                                   clean stop {"status": "offline", "boot": ..., "reason": ...}
    asd/v1/<site>/<device>/hb      QoS 0: heartbeat (uptime, frames, events, health, outbox depth, models, phi)
    asd/v1/<site>/<device>/evt     QoS 1: a batch of event lines {"boot": ..., "events": [{"seq": ..., "line": ...}]}
    asd/v1/<site>/<device>/ack     QoS 1, from the fleet's ingest: {"boot": ..., "first": ..., "last": ...}
    asd/v1/<site>/<device>/cmd     QoS 1, to the device: {"cmd": "hb"} (heartbeat now) or {"cmd": "resend"}, or a
                                   signed command envelope (edge-release send, retained; docs/releases.md)

and one per cohort (6 levels, so :func:`parse_topic` ignores it; ``_cohort`` cannot be a device name)::

    asd/v1/<site>/_cohort/<cohort>/release   retained, QoS 1: the cohort's desired release {"release": <envelope>,
                                             "model_b64": ...} or {"release": ..., "url": ...}; empty: none

``v1`` changes only when a payload changes incompatibly; new keys may be added within v1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from edge_asd.core.errors import EdgeAsdError

PREFIX = "asd/v1"
KINDS = ("state", "hb", "evt", "ack", "cmd")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""A site or device name: letters, digits, ``_ . -``; no MQTT wildcard or separator (``+ # /``)."""
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def check_name(value: str, what: str) -> str:
    """``value`` if it is a valid site or device name (:data:`NAME`). Raises EdgeAsdError otherwise."""
    if not isinstance(value, str) or not NAME.match(value):
        raise EdgeAsdError(f"{what} {value!r}: use 1 to 64 letters, digits, '_', '.' or '-' (no '/', '+', '#')")
    return value


def topic(site: str, device: str, kind: str) -> str:
    """``asd/v1/<site>/<device>/<kind>``, kind one of :data:`KINDS`."""
    assert kind in KINDS, kind
    return f"{PREFIX}/{site}/{device}/{kind}"


def cohort_topic(site: str, cohort: str) -> str:
    """``asd/v1/<site>/_cohort/<cohort>/release``: the retained desired release of a cohort (docs/fleet.md). Names
    are not checked here, so that the ingest can subscribe to ``cohort_topic("+", "+")``; callers check theirs."""
    return f"{PREFIX}/{site}/_cohort/{cohort}/release"


def parse_topic(name: str) -> tuple[str, str, str] | None:
    """(site, device, kind) of a topic of the scheme, or None for any other topic."""
    parts = name.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != PREFIX or parts[4] not in KINDS:
        return None
    return parts[2], parts[3], parts[4]


def shared(group: str, kind: str) -> str:
    """The MQTT 5 shared subscription of every device's ``kind`` topic for an ingest group:
    ``$share/<group>/asd/v1/+/+/<kind>`` (each message goes to one member of the group)."""
    return f"$share/{check_name(group, 'group')}/{PREFIX}/+/+/{kind}"


@dataclass(frozen=True)
class BrokerUrl:
    """``mqtt://[user[:password]@]host[:port]`` (plain TCP, port 1883) or ``mqtts://...`` (TLS, port 8883)."""

    tls: bool
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """Raises EdgeAsdError for another scheme, no host, a bad port or a path."""
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            raise EdgeAsdError(f"broker {url!r}: use mqtt://host[:port] or mqtts://host[:port]")
        try:
            port = DEFAULT_PORTS[parts.scheme] if parts.port is None else parts.port
        except ValueError:
            raise EdgeAsdError(f"broker {url!r}: bad port") from None
        if port == 0:
            raise EdgeAsdError(f"broker {url!r}: bad port 0 (a broker listens on 1..65535)")
        if not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise EdgeAsdError(f"broker {url!r}: give only host and port (mqtt://host[:port])")
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        return cls(parts.scheme == "mqtts", parts.hostname, port, user, password)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"
