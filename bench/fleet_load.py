"""Fleet load test: many devices, one broker, one ingest (docs/fleet.md, Load).

    python bench/fleet_load.py --devices 50 --lines 200 --rate 20
    python bench/fleet_load.py --devices 100 --lines 100 --json out/fleet_load.json

Starts mosquitto on a free loopback port, one ``edge-fleet`` ingest (in this process) and ``--devices``
device links (the real ``edge_asd.edge.runtime.fleet``: outbox, paho, batches, acks; each its own MQTT
connection and outbox file, all in this process), each writing ``--lines`` anomaly lines at ``--rate``
lines a second. Reports the lines stored, missing and duplicated, the seconds until every outbox was
empty, the delay from a line's ``wall_time`` to its storage (median, 95th percentile, max), and the
broker's RSS. Timings are this machine's (the devices and the broker share its cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from edge_asd.edge.runtime.fleet.settings import settings
from edge_asd.edge.runtime.fleet.sink import open_fleet
from edge_asd.edge.runtime.fleet.topics import BrokerUrl
from edge_asd.fleet.db import FleetDb
from edge_asd.fleet.ingest import Ingest


def start_broker(folder: Path) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = folder / "mosquitto.conf"
    conf.write_text(f"user root\nlistener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n"
                    f"log_dest file {folder}/mosquitto.log\n")
    proc = subprocess.Popen([exe, "-c", str(conf)])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_lines(sink, n: int, rate: float) -> None:
    start = time.monotonic()
    for k in range(n):
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        sink.write({"event": "anomaly", "frame": k, "input": "mic", "machine_id": "id_00", "phi": 1120.0,
                    "score": 1200.0 + k, "schema": 3, "time_s": k * 0.032, "window": 0, "wall_time": stamp})
        time.sleep(max(0.0, start + (k + 1) / rate - time.monotonic()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--lines", type=int, default=200, help="lines per device")
    p.add_argument("--rate", type=float, default=20.0, help="lines per second per device")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every outbox to empty")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="fleet_load_"))
    broker, port = start_broker(folder)
    url = f"mqtt://127.0.0.1:{port}"
    ingest = Ingest(BrokerUrl.parse(url), folder / "fleet.sqlite").start()
    sinks = []
    try:
        for k in range(a.devices):
            s = settings({"broker": url, "site": "load", "device": f"d{k:03d}", "heartbeat_s": 5.0},
                         folder / f"d{k:03d}.sqlite")
            sinks.append(open_fleet(s, {"mic": {"phi_source": "store"}}))
            sinks[-1].link.start()
        start = time.monotonic()
        writers = [threading.Thread(target=write_lines, args=(s, a.lines, a.rate)) for s in sinks]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        written_s = time.monotonic() - start
        while any(s.link.outbox.depth() for s in sinks) and time.monotonic() - start < a.timeout:
            time.sleep(0.1)
        empty_s = time.monotonic() - start
        broker_rss = rss_mb(broker.pid)
    finally:
        for s in sinks:
            s.link.stop(drain_s=0)
        ingest.stop()
        broker.terminate()
        broker.wait(10)
    db = FleetDb(folder / "fleet.sqlite")
    rows = list(db.event_rows())
    delays = sorted(r["received"] - r["time"] for r in rows)
    per_device = {}
    for r in rows:
        per_device.setdefault(r["device"], set()).add(r["seq"])
    missing = sum(a.lines - len(per_device.get(f"d{k:03d}", ())) for k in range(a.devices))
    figures = {"devices": a.devices, "lines_per_device": a.lines, "rate_per_device": a.rate,
               "sent": a.devices * a.lines, "stored": len(rows), "missing": missing,
               "duplicates": ingest.counts["duplicates"], "writing_s": round(written_s, 1),
               "outboxes_empty_s": round(empty_s, 1), "delay_median_s": round(statistics.median(delays), 3),
               "delay_p95_s": round(delays[int(0.95 * (len(delays) - 1))], 3), "delay_max_s": round(delays[-1], 3),
               "broker_rss_mb": round(broker_rss, 1)}
    print(json.dumps(figures))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(figures, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
