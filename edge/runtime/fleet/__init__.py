"""Fleet messaging over MQTT 5 (docs/fleet.md): the topic scheme (``topics``), the store-and-forward outbox
(``outbox``) and the device's link to the broker (``link``). The device path imports paho-mqtt (the ``mqtt``
extra), numpy and the standard library only, and only when ``edge-monitor --mqtt`` is given."""
