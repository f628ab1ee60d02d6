"""The fleet's ingest and edge-fleet (docs/fleet.md) against a real broker (mosquitto): device rows and their
status, de-duplication by (device, boot, seq), acks, stale last wills; then serve / ls / show / export on
the lines of a real edge-monitor --mqtt run on a fan clip."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import time

from conftest import BIN, assert_one_line_error, cli
from edge_asd.edge.runtime.fleet.topics import BrokerUrl
from edge_asd.fleet.db import FleetDb
from edge_asd.fleet.ingest import Ingest
from mqtt_broker import Collector


def _until(condition, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _row(db_path, device: str) -> dict:
    db = FleetDb(db_path)
    try:
        return next(d for d in db.devices() if d["device"] == device)
    finally:
        db.close()


def test_ingest_rows_dedup_acks_and_stale_wills(broker, tmp_path):
    db_path = tmp_path / "fleet.sqlite"
    ingest = Ingest(BrokerUrl.parse(broker.url), db_path, expect=[("plant", "ghost")]).start()
    device = Collector(broker.url, "asd/v1/plant/pi-1/ack")
    base = "asd/v1/plant/pi-1/"

    def send(kind, body, **kw):
        device.client.publish(base + kind, json.dumps(body), qos=1, **kw).wait_for_publish(5)

    try:
        _until(ingest.connected.is_set)
        send("state", {"status": "online", "boot": "A", "heartbeat_s": 30, "health": "ok"}, retain=True)
        batch = {"boot": "A", "events": [{"seq": s, "line": {"event": "anomaly" if s < 3 else "verdict", "input": "mic",
                                                             "wall_time": "2026-12-01T10:00:00.000Z"}} for s in (1, 2, 3)]}
        send("evt", batch)
        send("evt", batch)  # resent after a lost ack: stored once, acknowledged again
        _until(lambda: len(device.of("ack")) == 2)
        assert device.of("ack") == [{"boot": "A", "first": 1, "last": 3}] * 2
        row = _row(db_path, "pi-1")
        assert (row["status"], row["received"], row["duplicates"], row["boot"]) == ("operational", 6, 3, "A")
        send("hb", {"boot": "A", "health": "degraded", "problems": [{"input": "mic", "state": "silent"}], "outbox": 7,
                    "heartbeat_s": 30})
        _until(lambda: _row(db_path, "pi-1")["status"] == "degraded")
        assert _row(db_path, "pi-1")["outbox"] == 7
        # a reboot: the new boot's birth, then the old boot's last will arrives late: stale, ignored
        send("state", {"status": "online", "boot": "B", "health": "ok"}, retain=True)
        send("state", {"status": "offline", "boot": "A", "reason": "connection lost"}, retain=True)
        _until(lambda: ingest.counts["stale"] == 1)
        assert _row(db_path, "pi-1")["status"] == "operational"
        send("state", {"status": "offline", "boot": "B", "reason": "connection lost"}, retain=True)
        _until(lambda: _row(db_path, "pi-1")["status"] == "offline")
        send("evt", {"boot": "B", "events": "nonsense"})
        _until(lambda: ingest.counts["damaged"] == 1)
    finally:
        device.close()
        ingest.stop()
    db = FleetDb(db_path)
    assert [(e["boot"], e["seq"], e["kind"]) for e in db.event_rows()] == [("A", 1, "anomaly"), ("A", 2, "anomaly"),
                                                                         ("A", 3, "verdict")]
    ghost = next(d for d in db.devices() if d["device"] == "ghost")
    assert ghost["status"] == "never seen"


def test_edge_fleet_on_a_monitor_run(broker, model, fan, tmp_path):
    """edge-fleet serve ingests a real edge-monitor --mqtt run; ls, show and export give back its lines."""
    db_path = tmp_path / "fleet.sqlite"
    serve = subprocess.Popen([str(BIN / "edge-fleet"), "serve", "--broker", broker.url, "--db", str(db_path)],
                             stderr=subprocess.PIPE, text=True)
    try:
        while "connected" not in serve.stderr.readline():
            assert serve.poll() is None
        events = tmp_path / "events.jsonl"
        proc = cli("edge-monitor", "--model", model, "--phi", "0", "--input", fan["test_anomaly"][1], "--events", events,
                   "--mqtt", broker.url, "--mqtt-site", "plant", "--mqtt-device", "pi-1", "--mqtt-outbox",
                   tmp_path / "outbox.sqlite", timeout=120)
        assert proc.returncode == 0, proc.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        tail = serve.communicate(timeout=20)[1]
    counts = json.loads(tail.strip().splitlines()[-1].split("edge-fleet: ", 1)[1])
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert counts["new"] == len(lines) and counts["duplicates"] == 0
    exported = cli("edge-fleet", "export", "events", "--db", db_path, "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr
    assert [json.loads(x)["line"] for x in exported.stdout.splitlines()] == lines
    import pyarrow.parquet as pq  # the dev extra's (the parquet extra for users)

    assert cli("edge-fleet", "export", "events", "--db", db_path, "--format", "parquet",
               "--out", tmp_path / "events.parquet").returncode == 0
    table = pq.read_table(tmp_path / "events.parquet").to_pylist()
    assert [json.loads(r["line"]) for r in table] == lines and [r["seq"] for r in table] == list(range(1, len(lines) + 1))
    assert cli("edge-fleet", "export", "devices", "--db", db_path, "--format", "parquet",
               "--out", tmp_path / "devices.parquet").returncode == 0
    assert pq.read_table(tmp_path / "devices.parquet").to_pylist()[0]["device"] == "pi-1"
    assert_one_line_error(cli("edge-fleet", "export", "events", "--db", db_path, "--format", "parquet"))
    listed = cli("edge-fleet", "ls", "--db", db_path, "--json")
    row = json.loads(listed.stdout)
    anomalies = sum(line["event"] == "anomaly" for line in lines)
    assert (row["device"], row["status"], row["phi_source"], row["outbox"]) == ("pi-1", "offline", "option", 0)
    assert row["events_24h"] == len(lines) and row["anomalies_24h"] == anomalies > 0
    assert row["models"].startswith(lines[0]["model_sha256"][:12]) and row["kit_version"]
    shown = json.loads(cli("edge-fleet", "show", "plant/pi-1", "--db", db_path, "--last", "2").stdout)
    assert shown["reason"] == "stopped" and shown["latest_events"][-1]["event"] == "summary"
    table = list(csv.DictReader(io.StringIO(cli("edge-fleet", "export", "devices", "--db", db_path).stdout)))
    assert table[0]["status"] == "offline" and int(table[0]["events_24h"]) == len(lines)
    missing = cli("edge-fleet", "ls", "--db", tmp_path / "none.sqlite")
    assert missing.returncode == 1 and "no fleet database" in missing.stderr


def test_rollout_fields_desired_vs_current_and_export_formats(broker, tmp_path):
    """The ingest keeps a heartbeat's cohort and per-input release, a rollout event's failure and the cohort's
    desired release retained on the broker; ls, show and export give them, times in ISO 8601 UTC."""
    from edge_asd.core import signing
    from edge_asd.edge.runtime import signed_docs

    db_path = tmp_path / "fleet.sqlite"
    ingest = Ingest(BrokerUrl.parse(broker.url), db_path).start()
    device = Collector(broker.url, "asd/v1/plant/pi-1/ack")
    payload = signed_docs.release_document(7, "fan.tflite", b"model bytes", "0.1.0", "all")
    envelope = signing.sign(signed_docs.RELEASE_TYPE, payload, [signing.generate("release")]).to_dict()
    sha = "ab" * 32
    release = {"current": 6, "trial": 7, "state": "trial", "last_failure": None}
    failed = {"event": "rollout", "input": "mic", "release_version": 7, "sha256": sha, "result": "failed",
              "reason": "alarm rate 14.0/h over 3 x 2.0/h + 1 alarm in the trial", "time": "2026-12-02T03:00:00Z"}

    def send(name, body, **kw):
        device.client.publish(name, body if isinstance(body, bytes) else json.dumps(body), qos=1, **kw).wait_for_publish(5)

    try:
        _until(ingest.connected.is_set)
        send("asd/v1/plant/_cohort/canary/release", {"release": envelope, "model_b64": "bW9kZWwgYnl0ZXM="}, retain=True)
        send("asd/v1/plant/pi-1/hb", {"boot": "A", "cohort": "canary", "heartbeat_s": 30, "health": "ok", "inputs": [
            {"input": "mic", "phi": 1120.123456, "phi_source": "signed", "model_sha256": sha, "release": release}]})
        send("asd/v1/plant/pi-1/evt", {"boot": "A", "events": [{"seq": 1, "line": failed}]})
        _until(lambda: ingest.counts["evt"] == 1 and ingest.counts["release"] == 1)
        row = json.loads(cli("edge-fleet", "ls", "--db", db_path, "--json").stdout)
        assert (row["cohort"], row["desired"], row["current"], row["trial"]) == ("canary", 7, "6", "7")
        assert row["last_rollback"] == "7: " + failed["reason"] and row["models"] == sha[:12]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["last_seen"])
        table = cli("edge-fleet", "ls", "--db", db_path).stdout.splitlines()
        assert "1120 " in table[1] and "1120.1" not in table[1] and ("7: " + failed["reason"])[:37] + "..." in table[1]
        exported = next(csv.DictReader(io.StringIO(cli("edge-fleet", "export", "devices", "--db", db_path).stdout)))
        assert exported["last_seen"] == row["last_seen"] and exported["desired"] == "7"
        shown = json.loads(cli("edge-fleet", "show", "plant/pi-1", "--db", db_path).stdout)
        assert shown["last_rollback"]["reason"] == failed["reason"] and shown["latest_events"] == [failed]
        send("asd/v1/plant/_cohort/canary/release", b"", retain=True)  # cleared
        _until(lambda: ingest.counts["release"] == 2)
        assert json.loads(cli("edge-fleet", "ls", "--db", db_path, "--json").stdout)["desired"] is None
    finally:
        device.close()
        ingest.stop()
