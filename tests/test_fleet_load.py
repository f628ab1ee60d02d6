"""The fleet load test of issue 18 §4, short (bench/fleet_load.py; docs/fleet.md, Load), against a real broker
(mosquitto): 50 devices in 10 processes for 18 s, one process (10 % of the devices) SIGSTOPped half-way, so
its connections go silent without a DISCONNECT: the fleet view marks exactly those devices offline within
1.5 x the keep-alive + 2 s (by the will or by the heartbeat staleness rule, heartbeats every half keep-alive),
the export has one row per device, no line of the others is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_ten_percent_of_fifty_devices_silenced(broker, tmp_path):
    from fleet_load import run

    figures = run(broker.url, tmp_path, devices=50, workers=10, seconds=18, rate=2.0, kill=0.1, keepalive=4,
                  heartbeat=2.0, how="STOP")
    print("\nfleet load:", json.dumps(figures))
    assert figures["failures"] == []
    assert figures["killed"] == 5 and figures["export_rows"] == 50 and figures["missing"] == 0
    assert 3 <= figures["offline_after_kill_s"]["SIGSTOP"][0] <= figures["offline_after_kill_s"]["SIGSTOP"][1] <= 1.5 * 4 + 2
