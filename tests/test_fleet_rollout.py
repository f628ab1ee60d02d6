"""Staged rollout, the fleet side (docs/fleet.md, Rollout), against a real broker (mosquitto): edge-release
publish of the session's real model and a signed release; edge-fleet rollout over simulated devices that
report their health gate's result as the device contract says (tests/fleet_device.py's lines, in threads)."""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import subprocess
import threading
import time

import pytest

from conftest import BIN, assert_one_line_error, cli
from edge_asd.core import signing
from edge_asd.edge.runtime import signed_docs
from edge_asd.edge.runtime.fleet.link import FleetLink
from edge_asd.edge.runtime.fleet.settings import settings
from edge_asd.edge.runtime.fleet.topics import BrokerUrl
from edge_asd.fleet.db import FleetDb
from edge_asd.fleet.ingest import Ingest


def ok(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def release(model, tmp_path_factory):
    """(model, release, other release): the real model signed as release 7 for every cohort, and a release of
    other bytes under the model's name."""
    d = tmp_path_factory.mktemp("release")
    key = signing.generate("release")
    data = model.read_bytes()
    for name, body in (("rel.json", data), ("other.json", data[:-1] + b"x")):
        payload = signed_docs.release_document(7, model.name, body, "0.1.0", "all")
        (d / name).write_text(json.dumps(signing.sign(signed_docs.RELEASE_TYPE, payload, [key]).to_dict()))
    return model, d / "rel.json", d / "other.json"


def retained(url: str, site: str) -> dict[str, bytes]:
    """cohort -> the retained payload of asd/v1/<site>/_cohort/<cohort>/release now on the broker (a sentinel
    retained message, sent with them on subscribing, says they have all arrived)."""
    import paho.mqtt.client as mqtt

    got: dict[str, bytes] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.__setitem__(m.topic.split("/")[4], m.payload)
    client.connect("127.0.0.1", int(url.rsplit(":", 1)[1]))
    client.loop_start()
    try:
        client.publish(f"asd/v1/{site}/_cohort/~sentinel/release", b"here", qos=1, retain=True).wait_for_publish(5)
        client.subscribe(f"asd/v1/{site}/_cohort/+/release", qos=1)
        end = time.monotonic() + 10
        while "~sentinel" not in got:
            assert time.monotonic() < end, "no retained sentinel"
            time.sleep(0.02)
        time.sleep(0.2)
    finally:
        client.disconnect()
        client.loop_stop()
    return {k: v for k, v in got.items() if k != "~sentinel"}


def test_publish_sets_and_clears_a_cohorts_desired_release(broker, release):
    model, rel, other = release
    args = ["--mqtt", broker.url, "--mqtt-site", "plant"]
    done = ok(cli("edge-release", "publish", model, rel, "--cohort", "canary", *args))
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert (done["topic"], done["version"], done["sha256"]) == ("asd/v1/plant/_cohort/canary/release", 7, sha)
    ok(cli("edge-release", "publish", model, rel, "--cohort", "wave1", "--url", f"file://{model}", *args))
    now = retained(broker.url, "plant")
    body = json.loads(now["canary"])
    assert hashlib.sha256(base64.b64decode(body["model_b64"])).hexdigest() == sha
    envelope = signing.envelope_from_dict(body["release"])
    assert signed_docs.parse_release(envelope.payload).sha256 == sha and envelope.to_dict() == json.loads(rel.read_text())
    assert json.loads(now["wave1"])["url"] == f"file://{model}" and "model_b64" not in json.loads(now["wave1"])
    # a model that is not its release's: refused before anything is published
    refused = cli("edge-release", "publish", model, other, "--cohort", "wave2", *args)
    assert_one_line_error(refused)
    assert "is not the model of" in refused.stderr
    ok(cli("edge-release", "publish", "--cohort", "canary", "--clear", *args))
    assert sorted(retained(broker.url, "plant")) == ["wave1"]


class Device:
    """A device as the rollout contract has it (items 1 and 5), on the real link (outbox, acks, heartbeats):
    its ``cohort`` in every heartbeat and per input ``release``; on a desired release for its cohort (a new
    version), a ``rollout`` line ``trial``, then after ``gate_s`` ``passed``, or ``failed`` with the health
    gate's reason and back to its good release."""

    def __init__(self, url: str, name: str, cohort: str, folder, passes: bool = True, gate_s: float = 0.3,
                 current: int = 6, sha256: str = "ab" * 32):
        import paho.mqtt.client as mqtt

        self.name, self.passes, self.gate_s = name, passes, gate_s
        self.release = {"current": current, "trial": None, "state": "good", "last_failure": None}
        s = settings({"broker": url, "site": "plant", "device": name, "heartbeat_s": 0.5}, folder / f"{name}.sqlite")
        self.link = FleetLink(s, status=lambda: {"cohort": cohort, "health": "ok", "inputs": [
            {"input": "mic", "model_sha256": sha256, "phi": 1120.0, "release": dict(self.release)}]}).start()
        self.sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.sub.on_connect = lambda c, u, f, rc, p: c.subscribe(f"asd/v1/plant/_cohort/{cohort}/release", qos=1)
        self.sub.on_message = lambda c, u, m: threading.Thread(target=self._gate, args=(m.payload,)).start()
        self.sub.connect("127.0.0.1", int(url.rsplit(":", 1)[1]))
        self.sub.loop_start()

    def _gate(self, payload: bytes) -> None:
        if not payload:
            return
        body = json.loads(payload)
        done = signed_docs.parse_release(signing.envelope_from_dict(body["release"]).payload)
        assert hashlib.sha256(base64.b64decode(body["model_b64"])).hexdigest() == done.sha256
        if done.version in (self.release["current"], self.release["trial"]):
            return
        line = {"event": "rollout", "input": "mic", "release_version": done.version, "sha256": done.sha256}
        self.release.update(trial=done.version, state="trial")
        self.link.add({**line, "result": "trial", "time": time.time()})
        time.sleep(self.gate_s)
        if self.passes:
            self.release.update(current=done.version, trial=None, state="good")
            self.link.add({**line, "result": "passed", "time": time.time()})
        else:
            reason = "alarm rate 40.0/h over 3 x 2.0/h + 1 alarm in the trial"
            self.release.update(trial=None, state="good", last_failure={"version": done.version, "reason": reason})
            self.link.add({**line, "result": "failed", "reason": reason, "time": time.time()})

    def stop(self) -> None:
        self.sub.disconnect()
        self.sub.loop_stop()
        self.link.stop(drain_s=1)


@pytest.fixture
def plant(broker, tmp_path):
    """An ingest on ``broker`` writing tmp_path/fleet.sqlite; ``plant["devices"](spec)`` starts Devices
    (name -> (cohort, passes, gate_s)) and waits until the database knows each one's cohort."""
    db_path = tmp_path / "fleet.sqlite"
    ingest = Ingest(BrokerUrl.parse(broker.url), db_path).start()
    devices = []

    def start(spec: dict) -> None:
        for name, (cohort, passes, gate_s) in spec.items():
            devices.append(Device(broker.url, name, cohort, tmp_path, passes, gate_s))
        until(lambda: {d["device"]: d["cohort"] for d in rows(db_path)} == {n: c for n, (c, _, _) in spec.items()})

    yield {"db": db_path, "devices": start}
    for d in devices:
        d.stop()
    ingest.stop()


def until(condition, timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def rows(db_path) -> list[dict]:
    db = FleetDb(db_path)
    try:
        return db.devices()
    finally:
        db.close()


def rollout_args(broker, plant, release, *more):
    model, rel, _ = release
    return ["rollout", model, rel, "--stages", "canary,wave1,wave2", "--db", plant["db"], "--mqtt", broker.url,
            "--mqtt-site", "plant", "--poll", "0.2", "--stage-timeout", "60", *more]


def rollout_lines(db_path) -> dict[str, list[tuple[str, float]]]:
    """device -> its rollout lines' (result, time received by the ingest)."""
    db = FleetDb(db_path)
    out: dict[str, list[tuple[str, float]]] = {}
    for e in db.event_rows():
        if e["kind"] == "rollout":
            out.setdefault(e["device"], []).append((json.loads(e["line"])["result"], e["received"]))
    db.close()
    return out


def test_rollout_promotes_stage_by_stage_and_resumes(broker, plant, release):
    """Every stage passes; the next stage's devices get the release only after the last stage's passed; a
    rollout stopped (SIGTERM) while wave1 runs its trials resumes at wave1 when started again."""
    plant["devices"]({"c1": ("canary", True, 0.3), "w1": ("wave1", True, 4.0), "w2": ("wave1", True, 4.0),
                      "x1": ("wave2", True, 0.3), "x2": ("wave2", True, 0.3)})
    first = subprocess.Popen([str(BIN / "edge-fleet"), *map(str, rollout_args(broker, plant, release))],
                             stderr=subprocess.PIPE, text=True)
    until(lambda: "trial" in [r for r, _ in rollout_lines(plant["db"]).get("w1", [])])
    first.send_signal(signal.SIGTERM)
    assert first.wait(20) == 130 and "the same command resumes it" in first.stderr.read()
    done = cli("edge-fleet", *rollout_args(broker, plant, release), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resuming at stage wave1" in done.stderr and "passed every stage (canary, wave1, wave2)" in done.stdout
    lines = rollout_lines(plant["db"])
    assert {d: [r for r, _ in got] for d, got in lines.items()} == {d: ["trial", "passed"] for d in ("c1", "w1", "w2", "x1", "x2")}
    first_of = {d: got[0][1] for d, got in lines.items()}
    passed_at = {d: got[-1][1] for d, got in lines.items()}
    promoted = [min(first_of["w1"], first_of["w2"]) - passed_at["c1"],
                min(first_of["x1"], first_of["x2"]) - max(passed_at["w1"], passed_at["w2"])]
    print(f"\nrollout: last pass of a stage to the first trial of the next (ingest times, --poll 0.2): "
          f"canary->wave1 {promoted[0]:.2f} s, wave1->wave2 {promoted[1]:.2f} s")
    assert min(promoted) > 0

    def listed():  # the heartbeats that follow the last passed line say current 7, no trial
        rows = [json.loads(x) for x in cli("edge-fleet", "ls", "--db", plant["db"], "--json").stdout.splitlines()]
        return {(d["desired"], d["current"], d["trial"], d["rollout"]) for d in rows}

    until(lambda: listed() == {(7, "7", "-", "1:complete:wave2")}, 10)


def test_a_failing_canary_aborts_the_rollout(broker, plant, release):
    """The canary's devices fail their health gate: exit 1 with the reason, no desired release left for any
    stage, the later cohorts' devices never got it, and edge-fleet show says why."""
    plant["devices"]({"c1": ("canary", False, 0.3), "c2": ("canary", True, 1.0), "w1": ("wave1", True, 0.3),
                      "x1": ("wave2", True, 0.3)})
    done = cli("edge-fleet", *rollout_args(broker, plant, release), timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    why = done.stderr.strip().splitlines()[-1]
    assert "aborted: stage canary: 1 of 1 devices that reported failed (abort at 1); c1 failed: alarm rate" in why
    assert retained(broker.url, "plant") == {}
    assert set(rollout_lines(plant["db"])) <= {"c1", "c2"}
    shown = json.loads(cli("edge-fleet", "show", "plant/c1", "--db", plant["db"]).stdout)
    assert shown["rollout"]["status"] == "aborted" and "c1 failed: alarm rate 40.0/h" in shown["rollout"]["reason"]
    assert shown["last_rollback"]["reason"].startswith("alarm rate 40.0/h") and shown["desired"] is None
    wave = json.loads(cli("edge-fleet", "show", "plant/w1", "--db", plant["db"]).stdout)
    assert wave["rollout"]["cohort_state"] == "cancelled" and wave["current"] == "6"


def test_a_device_already_running_the_release_counts_as_passed(broker, plant, release):
    """The canary took release 7 from an edge-release publish before the rollout: its heartbeat says it runs that
    model as good. The stage promotes at once (it waited for a passed line that never came, then aborted)."""
    model = release[0]
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    db_path = plant["db"]
    plant["devices"]({"w1": ("wave1", True, 0.3)})
    done_device = Device(broker.url, "c1", "canary", db_path.parent, current=7, sha256=sha)
    try:
        until(lambda: {d["device"] for d in rows(db_path)} == {"c1", "w1"})
        done = cli("edge-fleet", "rollout", model, release[1], "--stages", "canary,wave1", "--db", db_path, "--mqtt",
                   broker.url, "--mqtt-site", "plant", "--poll", "0.2", "--stage-timeout", "30", timeout=120)
    finally:
        done_device.stop()
    assert done.returncode == 0, done.stderr
    assert "passed every stage (canary, wave1)" in done.stdout and "c1" not in rollout_lines(db_path)
