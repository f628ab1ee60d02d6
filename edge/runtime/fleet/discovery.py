"""Home Assistant MQTT discovery: optional, off by default (``--mqtt-ha-discovery``, ``[fleet] ha_discovery = true``,
``EDGE_ASD_MQTT_HA_DISCOVERY=1``; docs/fleet.md).

On every connect the link publishes one retained config per entity under
``<prefix>/<component>/asd_<site>_<device>/<object>/config`` (Home Assistant's discovery topic; prefix
``homeassistant`` unless ``ha_prefix`` says otherwise). Every entity reads the kit's own topics, so discovery adds
no message to the fleet's traffic:

========================  =============  ==========================================================
entity                    topic          value
========================  =============  ==========================================================
online (connectivity)     ``state``      ``status`` (the retained birth / last will)
health (problem)          ``hb``         ``health`` is not ``ok`` (an input-health state, a lost line)
anomaly events            ``hb``         ``events``: anomaly lines this boot (total_increasing)
outbox depth, uptime      ``hb``         ``outbox`` (lines), ``uptime_s`` (s); diagnostic
<input> alarm (problem)   ``hb``         the input's ``alarm``: ``on`` while its alert policy's alarm is on
<input> phi               ``hb``         the input's threshold phi; diagnostic
========================  =============  ==========================================================

Entities other than ``online`` are unavailable while the retained state says ``offline``. An ``alarm`` line sends
a heartbeat at once (:class:`~.sink.FleetSink`), so an alarm reaches Home Assistant without waiting for the
heartbeat interval.
"""

from __future__ import annotations

import json
import re

from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.fleet.topics import topic

PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}(/[A-Za-z0-9_.-]{1,64}){0,3}$")
"""A discovery prefix: one to four topic levels without MQTT wildcards."""


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is a valid discovery prefix (:data:`PREFIX`). Raises EdgeAsdError otherwise."""
    if not isinstance(prefix, str) or not PREFIX.match(prefix):
        raise EdgeAsdError(f"ha_prefix {prefix!r}: use topic levels of letters, digits, '_', '.' or '-' "
                           "(no '+' or '#'), e.g. homeassistant")
    return prefix


def _object_id(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "x"


def _input_value(name: str, field: str, expression: str) -> str:
    """A Jinja template picking ``field`` of the heartbeat's input ``name`` (``value`` in ``expression``)."""
    pick = f"value_json.inputs | selectattr('input', 'eq', {json.dumps(name)}) | map(attribute={json.dumps(field)}) | first"
    return "{% set value = " + pick + " %}{{ " + expression + " }}"


def ha_configs(site: str, device: str, inputs: list[str], prefix: str = "homeassistant",
               kit_version: str | None = None) -> list[tuple[str, dict]]:
    """The discovery messages of one device: (topic, config) pairs, each to be published retained at QoS 1.

    Args:
        site, device: the device's names in the topic scheme (:mod:`.topics`).
        inputs: the monitor's input names (one alarm and one phi entity each).
        prefix: Home Assistant's discovery prefix.
        kit_version: shown as the device's software version.
    """
    node = _object_id(f"asd_{site}_{device}")
    state, hb = topic(site, device, "state"), topic(site, device, "hb")
    dev = {"identifiers": [f"edge-asd/{site}/{device}"], "name": f"{device} ({site})", "manufacturer": "edge-asd",
           "model": "anomalous sound monitor", **({"sw_version": kit_version} if kit_version else {})}
    availability = {"availability_topic": state, "availability_template": "{{ value_json.status }}",
                    "payload_available": "online", "payload_not_available": "offline"}

    def entity(component: str, obj: str, name: str, source: str, template: str, **extra) -> tuple[str, dict]:
        config = {"name": name, "unique_id": f"{node}_{obj}", "object_id": f"{node}_{obj}", "state_topic": source,
                  "value_template": template, "device": dev, "origin": {"name": "edge-asd"}, **extra}
        return f"{prefix}/{component}/{node}/{obj}/config", config

    out = [
        entity("binary_sensor", "online", "online", state, "{{ 'ON' if value_json.status == 'online' else 'OFF' }}",
               device_class="connectivity"),
        entity("binary_sensor", "health", "input health", hb, "{{ 'OFF' if value_json.health == 'ok' else 'ON' }}",
               device_class="problem", **availability),
        entity("sensor", "anomaly_events", "anomaly events", hb, "{{ value_json.events }}",
               state_class="total_increasing", unit_of_measurement="events", **availability),
        entity("sensor", "outbox", "outbox depth", hb, "{{ value_json.outbox }}", state_class="measurement",
               unit_of_measurement="lines", entity_category="diagnostic", **availability),
        entity("sensor", "uptime", "uptime", hb, "{{ value_json.uptime_s }}", device_class="duration",
               unit_of_measurement="s", entity_category="diagnostic", **availability),
    ]
    taken: set[str] = set()
    for name in inputs:
        obj = _object_id(name)
        obj = obj if obj not in taken else f"{obj}_{len(taken)}"  # "fan-1" and "fan_1" stay two entities
        taken.add(obj)
        out.append(entity("binary_sensor", f"alarm_{obj}", f"{name} alarm", hb,
                          _input_value(name, "alarm", "'ON' if value == 'on' else 'OFF'"), device_class="problem",
                          **availability))
        out.append(entity("sensor", f"phi_{obj}", f"{name} threshold phi", hb, _input_value(name, "phi", "value"),
                          entity_category="diagnostic", **availability))
    return out
