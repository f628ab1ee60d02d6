"""Issue 18 §4, rollout, end to end against the real broker: the canary is a real edge-monitor --mqtt on a slot
directory (real fan id_00 audio on stdin), the fleet runs edge-fleet serve's ingest and edge-fleet rollout.
The release is a model whose signed phi is 1000 times too low: on the device it goes on trial, alarms, fails the
health gate and the monitor goes back to its good release in the same process; the fleet sees the failure and
aborts the rollout before wave1 gets it."""

from __future__ import annotations

import json
import subprocess

import pytest
from test_fleet_rollout import Device, retained, rows, until
from test_rollout import keys, lines, ok, phi_for, variant  # noqa: F401 - fixtures
from test_rollout_mqtt import Running, of

from conftest import BIN, cli
from edge_asd.edge.runtime.fleet.topics import BrokerUrl
from edge_asd.fleet.ingest import Ingest


@pytest.fixture
def canary(keys, model, calibrated, tmp_path):  # noqa: F811
    """A device of cohort canary: trust directory, slot directory holding release 1 of the real model."""
    ok(cli("edge-release", "init", "--trust-dir", tmp_path / "trust", "--root", keys / "root.json", "--device", "pi-1",
           "--cohort", "canary"))
    ok(cli("edge-release", "sign", model, "--key", keys / "release.key", "--version", "1", "--phi-store", calibrated[0],
           "--out", tmp_path / "rel1.json"))
    ok(cli("edge-release", "install", model, tmp_path / "rel1.json", "--trust-dir", tmp_path / "trust", "--slots",
           tmp_path / "slots", "--store", tmp_path / "phi.json"))
    return tmp_path


def test_a_canary_that_fails_its_health_gate_reverts_and_the_fleet_aborts(broker, canary, keys, variant, calibrated,  # noqa: F811
                                                                           fan_int16):
    phi_for(canary / "desk.json", calibrated[0], variant, 1e-3)
    ok(cli("edge-release", "sign", variant, "--key", keys / "release.key", "--version", "2", "--cohort", "all",
           "--phi-store", canary / "desk.json", "--out", canary / "rel2.json"))
    db = canary / "fleet.sqlite"
    ingest = Ingest(BrokerUrl.parse(broker.url), db).start()
    wave = Device(broker.url, "w1", "wave1", canary)  # wave1 must exist for the stage; it must never be asked
    run = Running(canary, broker, fan_int16, "--trial-extra", "0")
    try:
        run.feed_until(lambda out: of(out, "start"))
        until(lambda: {d["device"]: d["cohort"] for d in rows(db)} == {"pi-1": "canary", "w1": "wave1"}, 30)
        rollout = subprocess.Popen([str(BIN / "edge-fleet"), "rollout", variant, canary / "rel2.json", "--stages",
                                    "canary,wave1", "--db", db, "--mqtt", broker.url, "--mqtt-site", "plant", "--poll",
                                    "0.2", "--stage-timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        run.feed_until(lambda out: rollout.poll() is not None, timeout_s=150)
        err = rollout.stderr.read()
    finally:
        run.close()
        wave.stop()
        ingest.stop()
    assert rollout.returncode == 1 and "Traceback" not in err, err
    why = err.strip().splitlines()[-1]
    assert "aborted: stage canary: 1 of 1 devices that reported failed" in why and "pi-1 failed:" in why
    assert "alarms in" in why  # the device's own reason, carried through the outbox and the ingest
    assert retained(broker.url, "plant") == {}  # no desired release left for canary, none ever for wave1
    assert wave.release["trial"] is None and wave.release["current"] == 6
    out = lines(canary / "events.jsonl")
    assert [(r["release_version"], r["result"]) for r in of(out, "rollout")] == [(2, "trial"), (2, "failed")]
    starts = of(out, "start")  # good, the trial, good again: in one process
    assert starts[0]["model_sha256"] == starts[-1]["model_sha256"] != starts[1]["model_sha256"]
    state = json.loads((canary / "slots" / "slots.json").read_text())
    assert state["trial"] is None and state["good"]["version"] == 1 and state["last_failure"]["version"] == 2
    shown = json.loads(cli("edge-fleet", "show", "plant/pi-1", "--db", db).stdout)
    assert shown["rollout"]["status"] == "aborted" and shown["last_rollback"]["reason"].startswith(
        state["last_failure"]["reason"][:20])
