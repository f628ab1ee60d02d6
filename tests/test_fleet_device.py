"""The device side of fleet messaging (docs/fleet.md): the topic scheme, the SQLite outbox, and edge-monitor
--mqtt on a real fan clip against a real broker (mosquitto), up and down."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from conftest import assert_one_line_error, cli
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.fleet.outbox import Outbox
from edge_asd.edge.runtime.fleet.settings import settings
from edge_asd.edge.runtime.fleet.topics import BrokerUrl, parse_topic, shared, topic
from mqtt_broker import Collector, free_port


def test_broker_urls_and_topics():
    assert BrokerUrl.parse("mqtt://broker.plant") == BrokerUrl(False, "broker.plant", 1883)
    assert BrokerUrl.parse("mqtts://u:p%40ss@10.0.0.2:8884") == BrokerUrl(True, "10.0.0.2", 8884, "u", "p@ss")
    for bad in ("http://x", "mqtt://", "mqtt://h:99999", "mqtt://h:0", "mqtt://h/path", "h:1883"):
        with pytest.raises(EdgeAsdError):
            BrokerUrl.parse(bad)
    assert topic("plant-1", "pi-07", "evt") == "asd/v1/plant-1/pi-07/evt"
    assert parse_topic("asd/v1/plant-1/pi-07/state") == ("plant-1", "pi-07", "state")
    assert parse_topic("asd/v2/plant-1/pi-07/state") is None and parse_topic("asd/v1/a/b/c/evt") is None
    assert shared("ingest", "evt") == "$share/ingest/asd/v1/+/+/evt"
    with pytest.raises(EdgeAsdError, match="site"):
        settings({"broker": "mqtt://h", "site": "a/b"}, "o.sqlite")
    with pytest.raises(EdgeAsdError, match="window"):
        settings({"broker": "mqtt://h", "window": 0}, "o.sqlite")


def test_the_heartbeat_is_half_the_keepalive_unless_given(tmp_path):
    """The fleet marks a device offline after 3 silent heartbeats; a 30-s heartbeat under a 30-s keep-alive let a
    hung device look online for 90 s (the broker's will came up to ~3 keep-alives late): half the keep-alive
    keeps it within 1.5 keep-alives."""
    def beat(**values):
        return settings({"broker": "mqtt://127.0.0.1", "device": "pi-1", **values}, tmp_path / "o.sqlite").heartbeat_s

    assert (beat(), beat(keepalive_s=8), beat(keepalive_s=8, heartbeat_s=1.0)) == (15.0, 4.0, 1.0)
    assert beat(keepalive_s=1) == 0.5 and 3 * beat(keepalive_s=60) <= 1.5 * 60


def test_an_outbox_belongs_to_one_device(tmp_path):
    """Lines left waiting are sent under the outbox owner's name, so another device name is refused; the default
    outbox is one file per site and device."""
    from edge_asd.edge.runtime.fleet.settings import settings

    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, "boot-a", "plant-1/pi-07")
    box.add({"event": "anomaly"})
    box.close()
    with pytest.raises(EdgeAsdError, match="outbox of plant-1/pi-07.*own --mqtt-outbox"):
        Outbox(path, "boot-b", "plant-1/pi-08")
    assert Outbox(path, "boot-c", "plant-1/pi-07").depth() == 1
    link = settings({"broker": "mqtt://h", "site": "plant-1", "device": "pi-08"}, tmp_path / "outbox.sqlite")
    assert link.outbox == tmp_path / "outbox-plant-1-pi-08.sqlite"


def test_outbox_keeps_lines_across_boots(tmp_path):
    """Lines leave only when acknowledged; a new boot restarts seq at 1 and the old boot's lines keep theirs."""
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, "boot-a")
    assert [box.add({"event": "anomaly", "k": k}) for k in range(3)] == [1, 2, 3]
    assert box.ack("boot-a", 1, 1) == 1 and box.ack("boot-x", 2, 3) == 0
    box.close()
    box = Outbox(path, "boot-b")
    assert box.add({"event": "verdict"}) == 1 and box.depth() == 3
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    boot, rows = box.batch(0, 10)  # a batch never mixes boots
    assert boot == "boot-a" and [seq for _, seq, _ in rows] == [2, 3]
    assert json.loads(rows[0][2]) == {"event": "anomaly", "k": 1}
    boot, rows = box.batch(rows[-1][0], 10)
    assert boot == "boot-b" and [seq for _, seq, _ in rows] == [1]
    assert box.batch(rows[-1][0], 10) == ("", [])


def _monitor(model, clip, tmp_path, url, *extra):
    return cli("edge-monitor", "--model", model, "--phi", "0", "--input", clip, "--events", tmp_path / "events.jsonl",
               "--mqtt", url, "--mqtt-site", "plant", "--mqtt-device", "pi-1", "--mqtt-outbox", tmp_path / "outbox.sqlite",
               "--heartbeat-s", "0.2", *extra, timeout=120)


def test_monitor_publishes_every_line(broker, model, fan, tmp_path):
    """Every line of the events file reaches the broker in seq order under one boot, between a retained
    birth and a clean 'offline'; acknowledged, it leaves the outbox."""
    seen = Collector(broker.url, "asd/v1/plant/pi-1/#", ack=True)
    proc = _monitor(model, fan["test_anomaly"][0], tmp_path, broker.url)
    assert proc.returncode == 0, proc.stderr
    time.sleep(0.3)
    seen.close()
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(lines) > 10 and lines[-1]["event"] == "summary"
    states = seen.of("state")
    boot = states[0]["boot"]
    assert states[0]["status"] == "online" and states[-1] == {**states[-1], "status": "offline", "reason": "stopped"}
    assert {s["boot"] for s in states} == {boot}
    batches = seen.of("evt")
    sent = [(e["seq"], e["line"]) for b in batches for e in b["events"]]
    assert {b["boot"] for b in batches} == {boot}
    assert [s for s, _ in sent] == list(range(1, len(lines) + 1))
    assert [line for _, line in sent] == lines
    assert max(len(b["events"]) for b in batches) <= 50
    hb = seen.of("hb")[-1]
    assert hb["boot"] == boot and hb["inputs"][0]["phi_source"] == "option" and hb["inputs"][0]["phi"] == 0.0
    assert hb["inputs"][0]["model_sha256"] == lines[0]["model_sha256"] and hb["frames"] > 0
    assert Outbox(tmp_path / "outbox.sqlite", "check").depth() == 0


def test_monitor_works_with_the_broker_down(model, fan, tmp_path):
    """No broker listening: the monitor scores the clip, writes its events file and keeps every line in the
    outbox for later."""
    proc = _monitor(model, fan["test_anomaly"][0], tmp_path, f"mqtt://127.0.0.1:{free_port()}")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    n = len((tmp_path / "events.jsonl").read_text().splitlines())
    assert n > 10 and Outbox(tmp_path / "outbox.sqlite", "check").depth() == n


def test_fleet_options_are_checked(model, fan, tmp_path):
    assert_one_line_error(_monitor(model, fan["test_anomaly"][0], tmp_path, "http://broker"))
    toml = tmp_path / "monitor.toml"
    toml.write_text(f'[fleet]\nbroker = "mqtt://127.0.0.1:1"\nbatchsize = 3\n[[input]]\nsource = "{fan["test_anomaly"][0]}"\n'
                    f'model = "{model}"\nphi = 1.0\n')
    proc = cli("edge-monitor", "--config", toml)
    assert_one_line_error(proc)
    assert "unknown key 'batchsize'" in proc.stderr


def test_the_link_replaces_a_stale_will_and_takes_commands(broker, tmp_path):
    """A retained 'offline' of the device's own boot while it is connected (a will from a half-open connection)
    is replaced by its birth at once; {"cmd": "hb"} gets a heartbeat without waiting for the interval."""
    from edge_asd.edge.runtime.fleet.sink import open_fleet

    seen = Collector(broker.url, "asd/v1/plant/pi-2/#")
    link = open_fleet(settings({"broker": broker.url, "site": "plant", "device": "pi-2", "heartbeat_s": 3600},
                               tmp_path / "outbox.sqlite"), {}).link.start()
    try:
        _until(lambda: [s["status"] for s in seen.of("state")] == ["online"] and len(seen.of("hb")) == 1)
        seen.client.publish("asd/v1/plant/pi-2/state", json.dumps({"status": "offline", "boot": link.boot}), qos=1,
                            retain=True)
        _until(lambda: [s["status"] for s in seen.of("state")] == ["online", "offline", "online"])
        seen.client.publish("asd/v1/plant/pi-2/cmd", json.dumps({"cmd": "hb"}), qos=1)
        _until(lambda: len(seen.of("hb")) == 2)
    finally:
        link.stop(drain_s=0)
        seen.close()


def _until(condition, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_home_assistant_discovery(broker, model, fan, tmp_path):
    """With --mqtt-ha-discovery the device publishes retained discovery configs whose templates, rendered by
    Jinja2 (Home Assistant's engine) on the device's real state and heartbeat messages, give the machine's alarm,
    the anomaly count of the events file, phi and the connectivity; without it, none (off by default)."""
    import jinja2  # the dev extra's; Home Assistant renders templates with it
    seen = Collector(broker.url, "#", ack=True)
    proc = _monitor(model, fan["test_anomaly"][0], tmp_path, broker.url, "--mqtt-ha-discovery",
                    "--mqtt-ha-prefix", "ha/test")
    assert proc.returncode == 0, proc.stderr
    time.sleep(0.3)
    seen.close()
    later = Collector(broker.url, "ha/test/#")  # a Home Assistant that starts after the device: the retained configs
    time.sleep(0.5)
    later.close()
    configs = {t: (body, retain) for t, body, retain in later.messages}
    assert all(retain for _, retain in configs.values())
    assert configs == {t: (body, True) for t, body, _ in seen.messages if t.startswith("ha/test/")}
    assert {t.split("/")[2] for t in configs} == {"binary_sensor", "sensor"}
    assert len({body["unique_id"] for body, _ in configs.values()}) == len(configs) == 7  # 5 device + 2 per input
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    name = lines[0]["input"]
    last = {"state": seen.of("state")[0], "hb": seen.of("hb")[-1]}  # the birth; the last heartbeat

    def value(obj):
        [(body, _)] = [c for t, c in configs.items() if t.endswith(f"/{obj}/config")]
        source = body["state_topic"].rsplit("/", 1)[1]
        return jinja2.Environment().from_string(body["value_template"]).render(value_json=last[source])

    obj = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    assert value("online") == "ON" and value("health") == "OFF"
    assert value(f"alarm_{obj}") == "ON" and any(x["event"] == "alarm" for x in lines)  # phi 0: the alarm is on
    assert int(value("anomaly_events")) == sum(x["event"] == "anomaly" for x in lines) > 0
    assert float(value(f"phi_{obj}")) == 0.0
    last["state"] = seen.of("state")[-1]
    assert value("online") == "OFF"

    from edge_asd.edge.runtime.fleet.settings import check_table
    from edge_asd.edge.runtime.fleet.sink import open_fleet

    link = open_fleet(settings({"broker": broker.url, "device": "pi-9"}, tmp_path / "o.sqlite"), {"mic": {}}).link
    assert link.discovery() == []  # off by default
    link.outbox.close()
    with pytest.raises(EdgeAsdError, match="ha_discovery = 'yes' should be true or false"):
        check_table({"ha_discovery": "yes"}, "monitor.toml [fleet]", tmp_path)
    with pytest.raises(EdgeAsdError, match="ha_prefix"):
        settings({"broker": broker.url, "ha_prefix": "home/#"}, tmp_path / "o.sqlite")


def _certificates(folder):
    """A CA, a server certificate for 127.0.0.1 and a client certificate for pi-1 (PEM files in ``folder``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(name, issuer=None, issuer_key=None, ca=False, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                                serialization.NoEncryption()))
        return cert, key

    ca, ca_key = issue("plant-ca", ca=True)
    issue("broker", ca.subject, ca_key, san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    issue("pi-1", ca.subject, ca_key)
    issue("rogue", None, None)  # self-signed: not the plant's CA
    return {name: (folder / f"{name}.pem", folder / f"{name}.key") for name in ("plant-ca", "broker", "pi-1", "rogue")}


def test_monitor_over_mutual_tls_with_a_password(model, fan, tmp_path):
    """edge-monitor --mqtt mqtts:// to mosquitto with TLS, client certificates required and a password file: every
    line arrives. A wrong password, or a client certificate the plant's CA did not sign, gets no connection (the
    lines wait in the outbox)."""
    from mqtt_broker import Broker, wait_for_port

    folder = tmp_path / "broker"
    folder.mkdir()
    pem = _certificates(folder)
    broker = Broker(folder)
    tls = broker.add_tls_listener(pem["plant-ca"][0], *pem["broker"], {"pi-1": "s3cret"})
    broker.start()
    wait_for_port(tls)
    try:
        (tmp_path / "pw").write_text("s3cret\n")
        (tmp_path / "bad").write_text("guess\n")
        url = f"mqtts://127.0.0.1:{tls}"
        tls_args = ["--mqtt-ca", pem["plant-ca"][0], "--mqtt-username", "pi-1"]
        seen = Collector(broker.url, "asd/v1/plant/pi-1/#", ack=True)
        proc = _monitor(model, fan["test_anomaly"][0], tmp_path, url, *tls_args, "--mqtt-cert", pem["pi-1"][0],
                        "--mqtt-key", pem["pi-1"][1], "--mqtt-password-file", tmp_path / "pw")
        assert proc.returncode == 0, proc.stderr
        time.sleep(0.3)
        lines = (tmp_path / "events.jsonl").read_text().splitlines()
        assert len([e for b in seen.of("evt") for e in b["events"]]) == len(lines) > 10
        assert Outbox(tmp_path / "outbox.sqlite", "check").depth() == 0
        for cert, password in ((pem["pi-1"], "bad"), (pem["rogue"], "pw")):
            (tmp_path / "events.jsonl").unlink()
            before = len(seen.of("state"))
            proc = _monitor(model, fan["test_anomaly"][0], tmp_path, url, *tls_args, "--mqtt-cert", cert[0],
                            "--mqtt-key", cert[1], "--mqtt-password-file", tmp_path / password)
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
            n = len((tmp_path / "events.jsonl").read_text().splitlines())
            assert len(seen.of("state")) == before and Outbox(tmp_path / "outbox.sqlite", "check").depth() == n
            (tmp_path / "outbox.sqlite").unlink()
            for side in ("-wal", "-shm"):
                (tmp_path / f"outbox.sqlite{side}").unlink(missing_ok=True)
        seen.close()
    finally:
        broker.stop()
