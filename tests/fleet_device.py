"""A stand-in device for the fleet outage tests: the real link (edge_asd.edge.runtime.fleet: outbox, paho,
batches, acks) fed with anomaly lines of the monitor's schema at a steady rate, in its own process so a test
can SIGKILL it. Prints ``boot <id>`` when connected to its outbox, then one JSON line at the end.

    python tests/fleet_device.py URL SITE DEVICE OUTBOX [--events N] [--rate PER_S] [--keepalive S] ...
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from edge_asd.edge.runtime.fleet.settings import settings
from edge_asd.edge.runtime.fleet.sink import open_fleet


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("site")
    p.add_argument("device")
    p.add_argument("outbox", type=Path)
    p.add_argument("--events", type=int, default=100)
    p.add_argument("--rate", type=float, default=500.0, help="lines per second")
    p.add_argument("--keepalive", type=int, default=30)
    p.add_argument("--ack-timeout", type=float, default=3.0)
    p.add_argument("--rate-batches", type=float, default=20.0)
    p.add_argument("--batch", type=int, default=50, help="lines per evt message at most")
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--wait-empty", type=float, default=30.0, help="seconds to wait for the outbox to empty at the end")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(relativeCreated)d ms: %(message)s")
    s = settings({"broker": a.url, "site": a.site, "device": a.device, "keepalive_s": a.keepalive,
                  "ack_timeout_s": a.ack_timeout, "rate_batches_s": a.rate_batches, "heartbeat_s": a.heartbeat, "batch": a.batch,
                  "outbox": a.outbox}, a.outbox)
    sink = open_fleet(s, {"mic": {"phi_source": "store", "model_version": 3}})
    sink.link.start()
    print("boot", sink.link.boot, flush=True)
    start = time.monotonic()
    for k in range(a.events):
        sink.write({"event": "anomaly", "frame": k, "input": "mic", "machine_id": "id_00", "phi": 1120.0,
                    "running_max": 1100.0 + k, "schema": 3, "score": 1200.0 + k, "time_s": k * 0.032, "window": 0,
                    "wall_time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())})
        time.sleep(max(0.0, start + (k + 1) / a.rate - time.monotonic()))
    end = time.monotonic() + a.wait_empty
    while sink.link.outbox.depth() and time.monotonic() < end:
        time.sleep(0.05)
    depth = sink.link.outbox.depth()
    sink.link.stop(drain_s=0)
    print(json.dumps({"boot": sink.link.boot, "depth": depth, "lines": a.events}), flush=True)


if __name__ == "__main__":
    main()
