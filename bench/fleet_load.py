"""Fleet load test (issue 18 §4; docs/fleet.md, Load): many devices for a while, 10 % of them killed.

    python bench/fleet_load.py --devices 100 --seconds 60
    python bench/fleet_load.py --devices 50 --seconds 20 --json out/fleet_load.json

Starts mosquitto on a free loopback port, one ``edge-fleet`` ingest (in this process) and ``--devices``
device links (the real ``edge_asd.edge.runtime.fleet``: outbox, paho, batches, acks, heartbeats; each its
own MQTT connection and outbox file) spread over ``--workers`` processes, each device writing anomaly lines
at ``--rate`` lines a second for ``--seconds``. Half-way, ``--kill`` of the workers (0.1: one in ten, so 10 %
of the devices) are killed: no clean stop, no DISCONNECT, lines left in their outboxes. ``--signal KILL``:
SIGKILL, the kernel closes their sockets and the broker publishes their wills at once; ``STOP``: SIGSTOP,
the connections stay open and silent (a hung device, a cut cable) until the broker's keep-alive gives up;
``both``: alternately.

Checks, each failure printed and exit 1: the fleet view (``FleetDb.devices``, what ``edge-fleet ls`` shows)
marks every killed device offline within 1.5 x ``--keepalive`` + 2 s, by its will or by the heartbeat
staleness rule (nothing for 3 heartbeats; mosquitto 2.0.11 publishes the will of a silent client up to about
3 keep-alives late, so the default ``--heartbeat`` is half the keep-alive), and no other device offline at
the end of the run; ``edge-fleet export devices`` has one row per device; no line of a surviving device is missing.
Reports messages a second into the ingest (state, heartbeats, event batches) and lines a second, the
event-to-ingest latency (a line's ``wall_time`` to its storage, p50 / p99 / max), the seconds from each
kill to offline, and the broker's RSS. Timings are this machine's: the devices, the broker and the ingest
share its cores.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge_asd.edge.runtime.fleet.topics import BrokerUrl
from edge_asd.fleet.db import STALE_HEARTBEATS, FleetDb
from edge_asd.fleet.ingest import Ingest

OFFLINE = ("offline",)
KEEPALIVE_CLOCK_S = 2.0
"""Slack on 1.5 keep-alives: whole-second clocks (mosquitto's, the staleness rule's heartbeats) and the
fleet view's polling."""


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


def worker(url: str, folder: Path, names: list[str], rate: float, keepalive: int, heartbeat: float) -> None:
    """One worker process: its devices connect, print ``ready``, read ``T0 T1`` (epoch s) from stdin, write
    lines at ``rate`` from T0 to T1, drain their outboxes (10 s at most), stop cleanly and print the lines
    each wrote (JSON)."""
    from edge_asd.edge.runtime.fleet.settings import settings
    from edge_asd.edge.runtime.fleet.sink import open_fleet

    sinks = {}
    for name in names:
        s = settings({"broker": url, "site": "load", "device": name, "keepalive_s": keepalive, "heartbeat_s": heartbeat},
                     folder / f"{name}.sqlite")
        sinks[name] = open_fleet(s, {"mic": {"phi_source": "store"}})
        sinks[name].link.start()
    print("ready", flush=True)
    t0, t1 = map(float, sys.stdin.readline().split())
    written = dict.fromkeys(names, 0)
    k, stall = 0, 0.0
    while True:
        due = t0 + k / rate
        if due >= t1:
            break
        time.sleep(max(0.0, due - time.time()))
        stall = max(stall, time.time() - due)  # how late this process got the CPU back (an overloaded machine)
        for name, sink in sinks.items():
            now = time.time()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
            sink.write({"event": "anomaly", "frame": k, "input": "mic", "machine_id": "id_00", "phi": 1120.0,
                        "score": 1200.0 + k, "schema": 3, "window": 0, "wall_time": stamp})
            written[name] += 1
        k += 1
    time.sleep(max(0.0, t1 - time.time()))  # connected until T1: the last line was due 1 / rate before it, and the
    end = time.monotonic() + 10             # fleet view is read until T1 - 0.5 s
    while any(s.link.outbox.depth() for s in sinks.values()) and time.monotonic() < end:
        time.sleep(0.1)
    boots = {name: s.link.boot for name, s in sinks.items()}
    for s in sinks.values():
        s.link.stop(drain_s=0)
    print(json.dumps({"written": written, "boots": boots, "stall_s": round(stall, 2)}), flush=True)


def run(url: str, folder: Path, devices: int = 100, workers: int = 10, seconds: float = 60.0, rate: float = 2.0,
        kill: float = 0.1, keepalive: int = 10, heartbeat: float = 5.0, how: str = "KILL") -> dict:
    """The load test against the broker at ``url`` (working files in ``folder``): the figures, and
    ``failures`` (a list of sentences; empty when every check held)."""
    limit = 1.5 * keepalive + KEEPALIVE_CLOCK_S
    if seconds / 2 < limit + 1:
        raise ValueError(f"--seconds {seconds:g}: the kill at half-time leaves less than 1.5 keep-alives + 3 s")
    db_path = folder / "fleet.sqlite"
    ingest = Ingest(BrokerUrl.parse(url), db_path).start()
    names = [f"d{k:03d}" for k in range(devices)]
    groups = [names[k::workers] for k in range(workers)]
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", url, "--folder", str(folder), "--names", ",".join(g),
                               "--rate", str(rate), "--keepalive", str(keepalive), "--heartbeat", str(heartbeat)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for g in groups]
    killed = groups[: round(kill * workers)]
    killed_names = {n for g in killed for n in g}
    failures: list[str] = []
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", "a worker did not start"
        t0 = time.time() + 1.0
        t1 = t0 + seconds
        for p in procs:
            p.stdin.write(f"{t0} {t1}\n")
            p.stdin.flush()
        time.sleep(max(0.0, t0 - time.time()))
        at_t0 = dict(ingest.counts)
        time.sleep(max(0.0, t0 + seconds / 2 - time.time()))
        signals = {"KILL": [signal.SIGKILL], "STOP": [signal.SIGSTOP], "both": [signal.SIGKILL, signal.SIGSTOP]}[how]
        how_killed = {}  # device -> the signal's name
        for k, p in enumerate(procs[: len(killed)]):
            p.send_signal(signals[k % len(signals)])
            how_killed.update(dict.fromkeys(killed[k], signals[k % len(signals)].name))
        kill_at = time.time()
        offline_s: dict[str, float] = {}
        by_will = set()
        db = FleetDb(db_path)
        last_view: list[dict] = []
        while True:  # the fleet view, as edge-fleet ls reads it, until just before the devices stop
            now = time.time()
            view = db.devices()
            if time.time() >= t1:  # the query ended after the workers began their clean stops (each stops its
                break              # first device first): not a view of the run; the last one before it counts
            last_view = view
            for d in view:
                if d["device"] in killed_names and d["status"] in OFFLINE and d["device"] not in offline_s:
                    offline_s[d["device"]] = now - kill_at
                    if not d["online"]:  # the will (else the heartbeat staleness rule)
                        by_will.add(d["device"])
            if now >= t1 - 0.5:
                break
            time.sleep(0.2)
        at_t1 = dict(ingest.counts)
        offline_at_end = {d["device"] for d in last_view if d["status"] in OFFLINE}
        outs = [json.loads(p.communicate(timeout=120)[0].splitlines()[-1]) for p in procs[len(killed):]]
        time.sleep(1.0)
    finally:
        for p in procs:
            p.kill()
        ingest.stop()
    late = {n: s for n, s in offline_s.items() if s > limit}
    if set(offline_s) != killed_names or late:
        failures.append(f"killed devices offline within {limit:g} s: {sorted(set(offline_s) - set(late))}; late {late}; "
                        f"never {sorted(killed_names - set(offline_s))}")
    # A surviving worker that itself got no CPU for 3 heartbeats (a machine overloaded beyond this test's premise)
    # was silent, and offline is then the right view of it: named in the figures, not counted as the view's error.
    starved = {n for o in outs if o["stall_s"] > STALE_HEARTBEATS * heartbeat for n in o["written"]}
    if offline_at_end - starved != killed_names:
        failures.append(f"offline at the end {sorted(offline_at_end)}, killed {sorted(killed_names)}"
                        + (f", starved {sorted(starved)}" if starved else ""))
    exported = subprocess.run([str(Path(sys.executable).parent / "edge-fleet"), "export", "devices", "--db", str(db_path)],
                              capture_output=True, text=True)
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    if sorted(r["device"] for r in rows) != names:
        failures.append(f"export devices: {len(rows)} rows for {devices} devices ({exported.stderr.strip()})")
    stored: dict[tuple[str, str], set[int]] = {}
    delays = []
    for e in db.event_rows():
        stored.setdefault((e["device"], e["boot"]), set()).add(e["seq"])
        delays.append(e["received"] - e["time"])
    db.close()
    missing = sum(n - len(stored.get((name, out["boots"][name]), ())) for out in outs for name, n in out["written"].items())
    if missing:
        failures.append(f"{missing} lines of surviving devices missing")
    delays.sort()
    messages = sum(at_t1[k] - at_t0[k] for k in ("state", "hb", "evt"))
    window = t1 - 0.5 - t0
    return {"devices": devices, "workers": workers, "seconds": seconds, "rate_per_device": rate, "keepalive_s": keepalive,
            "heartbeat_s": heartbeat, "killed": len(killed_names), "signal": how, "messages_per_s": round(messages / window, 1),
            "lines_per_s": round((at_t1["new"] - at_t0["new"]) / window, 1),
            "lines_written_by_survivors": sum(sum(o["written"].values()) for o in outs), "missing": missing,
            "duplicates": ingest.counts["duplicates"],
            "latency_p50_s": round(delays[len(delays) // 2], 3), "latency_p99_s": round(delays[int(0.99 * (len(delays) - 1))], 3),
            "latency_max_s": round(delays[-1], 3), "offline_after_kill_s": _spread(offline_s, how_killed),
            "offline_by_will": len(by_will), "offline_limit_s": limit, "export_rows": len(rows),
            "starved_survivors": sorted(starved), "worst_stall_s": max(o["stall_s"] for o in outs), "failures": failures}


def _spread(offline_s: dict[str, float], how_killed: dict[str, str]) -> dict:
    """{signal name: [min, max] seconds from the kill to offline in the fleet view}."""
    out: dict[str, list[float]] = {}
    for name, seconds in offline_s.items():
        out.setdefault(how_killed[name], []).append(seconds)
    return {k: [round(min(v), 2), round(max(v), 2)] for k, v in sorted(out.items())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--workers", type=int, default=10, help="device processes (a killed one takes its devices along)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the devices write")
    p.add_argument("--rate", type=float, default=2.0, help="lines per second per device")
    p.add_argument("--kill", type=float, default=0.1, help="fraction of the workers SIGKILLed half-way")
    p.add_argument("--signal", choices=("KILL", "STOP", "both"), default="KILL",
                   help="SIGKILL (sockets closed), SIGSTOP (connections silent) or alternately")
    p.add_argument("--keepalive", type=int, default=10, help="the devices' MQTT keep-alive, s")
    p.add_argument("--heartbeat", type=float, default=None, help="the devices' heartbeat interval, s [default: keep-alive / 2]")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--names", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker, a.folder, a.names.split(","), a.rate, a.keepalive, a.heartbeat)
        return
    folder = Path(tempfile.mkdtemp(prefix="fleet_load_"))
    broker, port = start_broker(folder)
    try:
        figures = run(f"mqtt://127.0.0.1:{port}", folder, a.devices, a.workers, a.seconds, a.rate, a.kill, a.keepalive,
                      a.heartbeat or a.keepalive / 2, a.signal)
        figures["broker_rss_mb"] = round(rss_mb(broker.pid), 1)
    except ValueError as e:
        raise SystemExit(f"fleet_load: {e}") from None
    finally:
        broker.terminate()
        broker.wait(10)
    print(json.dumps(figures))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(figures, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    sys.exit(1 if figures["failures"] else 0)


if __name__ == "__main__":
    main()
