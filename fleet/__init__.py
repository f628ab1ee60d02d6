"""The fleet's side of MQTT messaging (docs/fleet.md): the ingest that subscribes to every device's state,
heartbeats and event batches, keeps one row per device and the events de-duplicated in SQLite and
acknowledges them (``ingest``, ``db``), the staged rollout of a signed release cohort by cohort
(``rollout``), and the ``edge-fleet`` command (``cli``). It runs next to the broker,
not on the device; it imports the device runtime's topic scheme, never the other way round."""
