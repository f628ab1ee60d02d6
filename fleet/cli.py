"""``edge-fleet``: the fleet's side of MQTT messaging (docs/fleet.md): ``serve`` ingests every device's state,
heartbeats and events into a SQLite database and acknowledges them; ``ls``, ``show`` and ``export`` read it."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import click

from edge_asd.core.commands import CONTEXT_SETTINGS, setup_logging, user_errors, version_option
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.fleet.topics import BrokerUrl, check_name
from edge_asd.fleet.db import COLUMNS, FleetDb, columns, iso_utc

log = logging.getLogger("edge_asd")
FILE = click.Path(dir_okay=False, path_type=Path)


def db_option(fn):
    return click.option("--db", type=FILE, envvar="EDGE_ASD_FLEET_DB", default=Path("fleet.sqlite"), show_default=True,
                        help="The fleet database (SQLite; $EDGE_ASD_FLEET_DB).")(fn)


def _open(db: Path) -> FleetDb:
    if not db.exists():
        raise EdgeAsdError(f"{db}: no fleet database (edge-fleet serve --db {db} makes it)")
    return FleetDb(db)


def _device(name: str) -> tuple[str, str]:
    site, _, device = name.partition("/")
    if not device:
        raise EdgeAsdError(f"{name!r}: give SITE/DEVICE")
    return check_name(site, "site"), check_name(device, "device")


@click.group(context_settings=CONTEXT_SETTINGS)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@version_option()
def main(quiet):
    """The fleet: ingest the devices' MQTT messages (serve), list, show or export what they reported, and
    roll a signed release out cohort by cohort (rollout)."""
    setup_logging(quiet=quiet)


CONNECT_WARN_S = 5.0
"""edge-fleet serve warns when it has not reached the broker this long after starting."""


def credential_options(fn):
    """--username, --password-file and the TLS files (--ca, --cert, --key) of a command that talks to the broker."""
    options = [
        click.option("--username", envvar="EDGE_ASD_MQTT_USERNAME", default=None,
                     help="Broker user name (the password: $EDGE_ASD_MQTT_PASSWORD or --password-file)."),
        click.option("--password-file", type=FILE, default=None, help="File holding the broker password."),
        click.option("--ca", type=FILE, default=None, help="CA certificates of the broker (mqtts)."),
        click.option("--cert", type=FILE, default=None, help="Client certificate for mutual TLS (with --key)."),
        click.option("--key", type=FILE, default=None, help="Client key for mutual TLS."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command(context_settings=CONTEXT_SETTINGS)
@click.option("--broker", envvar="EDGE_ASD_FLEET_BROKER", required=True, metavar="URL",
              help="The MQTT 5 broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] ($EDGE_ASD_FLEET_BROKER).")
@db_option
@click.option("--group", default="ingest", show_default=True,
              help="Shared-subscription group: ingest processes of one group split the devices' messages.")
@credential_options
@click.option("--keepalive", type=click.IntRange(1, 65535), default=30, show_default=True, help="MQTT keep-alive, s.")
@click.option("--expect", type=FILE, default=None,
              help="File listing the devices that should report, one SITE/DEVICE a line ('never seen' until they do).")
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=None,
              help="Stop after this many seconds [default: until SIGTERM or Ctrl-C].")
@user_errors
def serve(broker, db, group, username, password_file, ca, cert, key, keepalive, expect, duration):
    """Subscribe to every device's state, heartbeats and event batches; keep one row per device and the
    events de-duplicated by (device, boot, seq) in --db; acknowledge each batch once it is stored."""
    from edge_asd.fleet.ingest import Ingest

    password = _password(password_file)
    devices = []
    if expect is not None:
        devices = [_device(line.strip()) for line in expect.read_text(encoding="utf-8").splitlines()
                   if line.strip() and not line.startswith("#")]
    check_name(group, "group")
    ingest = Ingest(BrokerUrl.parse(broker), db, group, username, password, ca, cert, key, keepalive, devices).start()
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    log.info("edge-fleet: ingesting from %s into %s (group %s)", BrokerUrl.parse(broker), db, group)
    try:
        first = CONNECT_WARN_S if duration is None else min(CONNECT_WARN_S, duration)
        if not stop.wait(first) and not ingest.connected.is_set():  # paho retries on its own; say it is waiting
            log.warning("edge-fleet: no connection to %s after %g s; still trying (is the broker running?)",
                        BrokerUrl.parse(broker), first)
        if not stop.is_set():
            stop.wait(None if duration is None else max(0.0, duration - first))
    finally:
        ingest.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    click.echo(f"edge-fleet: {json.dumps(ingest.counts, sort_keys=True)}", err=True)


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("model_path", metavar="MODEL", type=FILE)
@click.argument("release", type=FILE)
@click.option("--stages", required=True, metavar="C1,C2,...",
              help="The cohorts in rollout order, e.g. canary,wave1,wave2,wave3 (each device reports its cohort).")
@db_option
@click.option("--mqtt", "broker", envvar="EDGE_ASD_FLEET_BROKER", required=True, metavar="URL",
              help="The MQTT 5 broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] ($EDGE_ASD_FLEET_BROKER).")
@click.option("--mqtt-site", "site", envvar="EDGE_ASD_MQTT_SITE", default="default", show_default=True,
              help="The devices' site ($EDGE_ASD_MQTT_SITE).")
@click.option("--url", default=None, help="Publish this file:// or https:// URL of MODEL instead of the model itself.")
@click.option("--promote-after", type=click.IntRange(1), default=None,
              help="Devices of a stage that must pass before the next stage [default: all of them that are online].")
@click.option("--abort-failures", type=click.IntRange(1), default=1, show_default=True,
              help="Failed devices in the current stage that abort the rollout...")
@click.option("--min-reports", type=click.IntRange(1), default=1, show_default=True,
              help="...once at least this many of its devices reported.")
@click.option("--stage-timeout", type=click.FloatRange(0, min_open=True), default=3600.0, show_default=True,
              help="Abort when a stage has not passed within this many seconds.")
@click.option("--poll", type=click.FloatRange(0.05), default=2.0, show_default=True, help="Read --db every this many seconds.")
@credential_options
@user_errors
def rollout(model_path, release, stages, db, broker, site, url, promote_after, abort_failures, min_reports,
            stage_timeout, poll, username, password_file, ca, cert, key):
    """Roll RELEASE (signed with --cohort all) out stage by stage: publish it as each --stages cohort's
    desired release, promote when enough of the stage's devices passed their health gate, abort when too many
    failed (clearing the desired release of the stages not complete). Reads what `edge-fleet serve` stores
    in --db; its state is kept there, so the same command resumes an interrupted rollout. Exit 0: complete;
    1: aborted (one line saying why); 130: interrupted."""
    from edge_asd.edge.runtime.fleet.publish import Connection
    from edge_asd.fleet.rollout import Criteria, Rollout

    connection = Connection(BrokerUrl.parse(broker), username, _password(password_file), ca, cert, key)
    criteria = Criteria(promote_after, abort_failures, min_reports, stage_timeout, poll)
    job = Rollout(_open(db), connection, site, model_path, release, [s.strip() for s in stages.split(",")], criteria, url)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        status, why = job.run(stop)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    click.echo(f"edge-fleet rollout: {why}", err=status != "complete")
    if status != "complete":
        sys.exit(1 if status == "aborted" else 130)


def _password(password_file: Path | None) -> str | None:
    password = os.environ.get("EDGE_ASD_MQTT_PASSWORD")
    if password is None and password_file is not None:
        password = password_file.read_text(encoding="utf-8").strip()
    return password


@main.command(context_settings=CONTEXT_SETTINGS)
@db_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object a device instead of a table.")
@user_errors
def ls(db, as_json):
    """One line per device: status (operational, degraded, offline, never seen), last seen, boot, rollout
    cohort, desired release (the cohort's, on the broker) vs current and trial release (per input), the
    latest rollout of its cohort (id:status:stage), the last rollback, phi and its source, events and
    anomalies in the last hour and day, outbox depth."""
    rows = [columns(d) for d in _open(db).devices()]
    if as_json:
        for d in rows:
            click.echo(json.dumps(d, sort_keys=True))
        return
    shown = ("site", "device", "status", "last_seen", "boot", "cohort", "desired", "current", "trial", "rollout",
             "last_rollback", "phi", "phi_source", "events_1h", "events_24h", "anomalies_1h", "anomalies_24h", "outbox")
    table = [[_cell(c, d[c]) for c in shown] for d in rows]
    widths = [max([len(c)] + [len(r[k]) for r in table]) for k, c in enumerate(shown)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(shown, widths)))
    for r in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)))


LS_REASON_CHARS = 40
"""ls cuts a last rollback's reason to this many characters (show and export give all of it)."""


def _cell(column: str, value) -> str:
    if value is None or value == "":
        return "-"
    if column == "phi":  # 4 significant digits, per input
        return ";".join(_sig4(v) for v in str(value).split(";"))
    if column == "last_rollback" and len(value) > LS_REASON_CHARS:
        return value[:LS_REASON_CHARS - 3] + "..."
    return str(value)


def _sig4(text: str) -> str:
    try:
        return f"{float(text):.4g}"
    except ValueError:
        return text


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("name", metavar="SITE/DEVICE")
@db_option
@click.option("--last", type=click.IntRange(0), default=10, show_default=True, help="Also show this many latest events.")
@user_errors
def show(name, db, last):
    """Everything stored about one device (JSON, times in ISO 8601 UTC), with its latest events, its cohort's
    latest rollout (and why it stopped) and its last rollback."""
    site, device = _device(name)
    fleet = _open(db)
    found = [d for d in fleet.devices() if d["site"] == site and d["device"] == device]
    if not found:
        raise EdgeAsdError(f"{name}: no such device in {db}")
    events = list(fleet.event_rows(site, device))[-last:] if last else []
    row = {**found[0], **{k: iso_utc(found[0][k]) for k in ("first_seen", "last_seen", "status_since")}}
    click.echo(json.dumps({**row, "latest_events": [json.loads(e["line"]) for e in events]}, indent=2, sort_keys=True))


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("what", type=click.Choice(["devices", "events"]))
@db_option
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet"]), default="csv", show_default=True,
              help="parquet needs --out and pyarrow (pip install 'edge-asd[parquet]').")
@click.option("--since-hours", type=click.FloatRange(0, min_open=True), default=None, help="Events of the last hours only.")
@click.option("--out", type=FILE, default=None, help="Write here instead of stdout.")
@user_errors
def export(what, db, fmt, since_hours, out):
    """The devices (the columns of ls) or the stored events (one row per event, de-duplicated), as CSV, JSON
    lines or Parquet (the events' ``line`` stays the JSON text there, as in CSV)."""
    fleet = _open(db)
    if what == "devices":
        rows = [columns(d) for d in fleet.devices()]
        names = list(COLUMNS)
    else:
        since = time.time() - since_hours * 3600 if since_hours else None
        rows = list(fleet.event_rows(since=since))
        names = ["site", "device", "boot", "seq", "kind", "input", "time", "received", "line"]
    if fmt == "parquet":
        _parquet(rows, names, out)
        return
    stream = open(out, "w", newline="", encoding="utf-8") if out else sys.stdout
    try:
        if fmt == "jsonl":
            for r in rows:
                if "line" in r:
                    r = {**r, "line": json.loads(r["line"])}
                stream.write(json.dumps(r, sort_keys=True) + "\n")
        else:
            writer = csv.DictWriter(stream, fieldnames=names)
            writer.writeheader()
            writer.writerows(rows)
    finally:
        if out:
            stream.close()


def _parquet(rows: list[dict], names: list[str], out: Path | None) -> None:
    """``rows`` as a Parquet file at ``out`` (one column per name, types inferred; written to a temporary file
    first, so a failed export leaves no half file).

    Raises:
        EdgeAsdError: no ``out``, pyarrow missing, or the file cannot be written.
    """
    if out is None:
        raise EdgeAsdError("--format parquet writes a file: give --out FILE.parquet")
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        raise EdgeAsdError("--format parquet needs pyarrow: pip install 'edge-asd[parquet]'") from None
    part = Path(out).with_name(Path(out).name + ".part")
    try:
        pq.write_table(pyarrow.table({n: [r.get(n) for r in rows] for n in names}), part)
        part.replace(out)
    except (OSError, pyarrow.ArrowException) as e:
        part.unlink(missing_ok=True)
        raise EdgeAsdError(f"{out}: cannot write the Parquet file ({e})") from None


if __name__ == "__main__":
    main()
