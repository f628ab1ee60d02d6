"""The event-line schema has one home (edge/runtime/events.py): every line is built there the same way."""

from __future__ import annotations

import json
import re

import pytest

from edge_asd.edge.runtime.events import (
    EVENT_SCHEMA,
    LINE_TYPES,
    AlarmLine,
    Event,
    Health,
    Start,
    Summary,
    Verdict,
    event_line,
    event_record,
)


def test_a_line_is_schema_event_fields_input_wall_time_in_that_order():
    line = event_line(Start("id_00", 1.5, "ab" * 32, "whole", 16000).to_dict(), "fan-1")
    assert list(line) == ["schema", "event", "machine_id", "phi", "model_sha256", "window_mode", "sample_rate",
                          "alert", "input", "wall_time"]
    assert line["alert"] == {"k": 1, "n": 1, "hysteresis": 1.0}  # the default policy: eq. 11
    assert line["schema"] == EVENT_SCHEMA and line["event"] == "start" and line["input"] == "fan-1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["wall_time"])
    assert json.loads(json.dumps(line)) == line


def test_every_line_type_names_itself():
    event = Event(1.0, 3, 9.0, None, 2.0, "id_00", "ab" * 32, 0)
    verdict = Verdict(0, 0.0, 1.0, 4, 9.0, 1.0, True, 1, 2.0, "id_00", "ab" * 32)
    summary = Summary(4, 1, 1.0, 0.01, 9.0, 1.0, False).to_record("id_00", 2.0, "ab" * 32)
    assert [event.to_dict()["event"], verdict.to_dict()["event"], summary["event"]] == ["anomaly", "verdict", "summary"]
    assert list(summary)[:5] == ["schema", "event", "machine_id", "phi", "model_sha256"]
    assert summary["real_time_factor"] == 0.01
    assert set(LINE_TYPES) == {"start", "anomaly", "verdict", "health", "alarm", "summary", "rollout",
                               "command"}
    alarm = AlarmLine("on", 1.0, 3, 9.0, 2.0, 1.6, "id_00", "ab" * 32, 0).to_dict()
    assert list(alarm)[:4] == ["schema", "event", "state", "time_s"] and alarm["event"] == "alarm"
    assert summary["alarms"] == 0


def test_an_unknown_line_type_is_refused():
    with pytest.raises(ValueError, match="unknown event line type 'helth'"):
        event_record("helth", {})


def test_a_health_line_is_state_status_reason_value_time_then_input():
    line = event_line(Health("silent", "start", "level -200.0 dBFS (floor -90 dBFS)", -200.0, 5.008).to_dict(), "fan-1")
    assert list(line) == ["schema", "event", "state", "status", "reason", "value", "time_s", "input", "wall_time"]
    assert line["event"] == "health" and line["schema"] == EVENT_SCHEMA and json.loads(json.dumps(line)) == line


def test_the_summary_shows_health_beside_the_events():
    summary = Summary(604, 0, 10.0, 0.01, 3.0, 1.0, False, health_skipped={"silent": 312},
                      health_states={"silent": 1, "gap": 2})
    text = summary.line(2.0)
    assert "health: 312 frames not scored (silent 312), silent x1, gap x2" in text
    record = summary.to_record("id_00", 2.0, "ab" * 32)
    assert record["health_skipped"] == {"silent": 312} and record["health_states"] == {"silent": 1, "gap": 2}
    assert "health" not in Summary(4, 1, 1.0, 0.01, 9.0, 1.0, False).line(2.0)
