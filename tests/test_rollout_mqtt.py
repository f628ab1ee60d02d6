"""Issue 18 §2 over MQTT against the real broker: a running edge-monitor --mqtt takes its cohort's desired release
into the trial slot (the health gate then fails it and the same process goes back to good), and signed commands
(edge-release send): set-phi takes effect in the running monitor, an old seq or a wrong key is refused with a
command line, a retained duplicate is ignored silently. Real fan id_00 audio is fed on stdin as it plays."""

from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest
from test_rollout import device, keys, lines, ok, phi_for, variant  # noqa: F401 - fixtures

from conftest import BIN, cli
from edge_asd.edge.runtime import phi_store
from edge_asd.edge.runtime.fleet.topics import cohort_topic
from mqtt_broker import Collector


class Running:
    """edge-monitor --mqtt on a slot directory, its stdin fed with the real fan clip (looped) 5x faster than real time."""

    def __init__(self, device, broker, fan_int16, *extra):  # noqa: F811
        self.events, self.pcm = device / "events.jsonl", fan_int16.tobytes()
        self.proc = subprocess.Popen(
            [BIN / "edge-monitor", "--model", device / "slots", "--store", device / "phi.json", "--trust-dir",
             device / "trust", "--input", "-", "--pcm-rate", "16000", "--events", self.events, "--mqtt", broker.url,
             "--mqtt-site", "plant", "--mqtt-device", "pi-1", "--mqtt-outbox", device / "outbox.sqlite",
             "--heartbeat-s", "0.2", "--trial-windows", "50", "--trial-minutes", "0.05", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.at = 0

    def lines(self) -> list[dict]:
        return lines(self.events) if self.events.exists() else []

    def feed_until(self, condition, timeout_s: float = 60.0) -> list[dict]:
        end = time.monotonic() + timeout_s
        while not condition(out := self.lines()):
            assert time.monotonic() < end, f"timed out; lines: {[x['event'] for x in out]}"
            chunk = self.pcm[self.at:self.at + 8000]  # 0.25 s
            self.at = (self.at + 8000) % len(self.pcm)
            self.proc.stdin.write(chunk)
            self.proc.stdin.flush()
            time.sleep(0.05)
        return out

    def close(self) -> str:
        self.proc.stdin.close()
        err = self.proc.stderr.read().decode()
        assert self.proc.wait(60) == 0, err
        return err


def of(out, kind):
    return [x for x in out if x["event"] == kind]


def test_signed_commands_reach_the_running_monitor(broker, device, keys, calibrated, model, fan_int16):  # noqa: F811
    store = device / "ops-phi.json"
    phi_for(store, calibrated[0], model, 2.0)  # the operations' new phi for id_00: twice the calibrated one
    k = keys

    def command(seq, *args, key="ops"):
        path = device / f"cmd-{seq}-{key}.json"
        ok(cli("edge-release", "command", *args, "--device", "pi-1", "--seq", seq, "--key", k / f"{key}.key", "-o", path))
        return path

    set_phi = command(2, "set-phi", "--store", store, "--machine-id", "00")
    hb = Collector(broker.url, "asd/v1/plant/pi-1/hb")
    run = Running(device, broker, fan_int16)
    try:
        run.feed_until(lambda out: len(of(out, "start")) == 1 and hb.of("hb"))
        beat = hb.of("hb")[-1]
        assert beat["cohort"] == "all"
        assert beat["inputs"][0]["release"] == {"current": 1, "trial": None, "state": "good", "last_failure": None}
        sent = ok(cli("edge-release", "send", set_phi, "--mqtt", broker.url, "--mqtt-site", "plant"))
        assert sent["topic"] == "asd/v1/plant/pi-1/cmd"
        out = run.feed_until(lambda out: len(of(out, "start")) == 2)
        first, second = of(out, "start")
        assert second["phi"] == first["phi"] * 2 and second["model_sha256"] == first["model_sha256"]
        assert [(c["seq"], c["action"], c["result"]) for c in of(out, "command")] == [(2, "set-phi", "applied")]
        ok(cli("edge-release", "send", set_phi, "--mqtt", broker.url, "--mqtt-site", "plant"))  # the same seq again
        ok(cli("edge-release", "send", command(1, "finetune-on"), "--mqtt", broker.url, "--mqtt-site", "plant"))
        ok(cli("edge-release", "send", command(9, "finetune-on", key="release"), "--mqtt", broker.url, "--mqtt-site",
               "plant"))
        out = run.feed_until(lambda out: len(of(out, "command")) == 3)
        old, wrong = of(out, "command")[1:]
        assert (old["seq"], old["result"]) == (1, "refused") and "not above the last accepted (2)" in old["reason"]
        assert (wrong["seq"], wrong["result"]) == (9, "refused") and "operations" in wrong["reason"]
    finally:
        run.close()
        hb.close()
    assert len(of(run.lines(), "command")) == 3  # the retained duplicate of seq 2 left no line
    assert phi_store.history(device / "phi.json", "id_00")["id_00"][-1].phi == of(out, "start")[1]["phi"]


def test_the_cohort_release_goes_on_trial_fails_the_gate_and_reverts(broker, device, keys, variant, calibrated,  # noqa: F811
                                                                      fan_int16):
    """A release signed by the wrong key is refused; release 2 (phi / 1000) goes on trial in the running monitor,
    alarms at once, fails the gate (--trial-extra 0) and the monitor goes back to release 1 in the same process."""
    import paho.mqtt.client  # noqa: F401

    store = device / "desk.json"
    phi_for(store, calibrated[0], variant, 1e-3)
    for version, key in ((5, "ops"), (2, "release")):
        ok(cli("edge-release", "sign", variant, "--key", keys / f"{key}.key", "--version", str(version), "--phi-store",
               store, "--out", device / f"rel{version}.json"))
    pub = Collector(broker.url, "asd/v1/plant/_cohort/+/release")
    b64 = base64.b64encode(variant.read_bytes()).decode()

    def publish(version, cohort):
        body = {"release": json.loads((device / f"rel{version}.json").read_text()), "model_b64": b64}
        pub.client.publish(cohort_topic("plant", cohort), json.dumps(body), qos=1, retain=True).wait_for_publish(5)

    run = Running(device, broker, fan_int16, "--trial-extra", "0")
    try:
        run.feed_until(lambda out: len(of(out, "start")) == 1)
        publish(5, "all")
        out = run.feed_until(lambda out: of(out, "rollout"))
        refused = of(out, "rollout")[0]
        assert (refused["release_version"], refused["result"]) == (5, "refused")
        assert "release key" in refused["reason"]
        publish(2, "all")
        out = run.feed_until(lambda out: len(of(out, "rollout")) == 3)
    finally:
        err = run.close()
        pub.close()
    assert [(r["release_version"], r["result"]) for r in of(out, "rollout")] == [(5, "refused"), (2, "trial"), (2, "failed")]
    starts = of(out, "start")
    assert len(starts) >= 3 and starts[0]["model_sha256"] == starts[2]["model_sha256"] != starts[1]["model_sha256"]
    assert starts[1]["phi"] * 1000 == pytest.approx(starts[0]["phi"]) and starts[0]["phi"] == starts[2]["phi"]
    state = json.loads((device / "slots" / "slots.json").read_text())
    assert state["trial"] is None and state["good"]["version"] == 1 and state["last_failure"]["version"] == 2
    assert "Traceback" not in err


def test_a_rollback_command_ends_the_trial_in_the_running_monitor(broker, device, keys, variant, calibrated,  # noqa: F811
                                                                  fan_int16):
    """Release 2 on trial (a gate too long to decide here); a signed rollback fails it and the same process goes
    back to release 1."""
    from test_rollout import trial

    trial(device, keys, variant, calibrated, 1.0)
    cmd = device / "rollback.json"
    ok(cli("edge-release", "command", "rollback", "--device", "pi-1", "--seq", "1", "--key", keys / "ops.key", "-o", cmd))
    run = Running(device, broker, fan_int16, "--trial-minutes", "600", "--trial-extra", "1000")
    try:
        run.feed_until(lambda out: len(of(out, "start")) == 1)
        ok(cli("edge-release", "send", cmd, "--mqtt", broker.url, "--mqtt-site", "plant"))
        out = run.feed_until(lambda out: len(of(out, "start")) == 2 and of(out, "rollout"))  # the line follows the start
    finally:
        run.close()
    state = json.loads((device / "slots" / "slots.json").read_text())
    assert [(c["action"], c["result"]) for c in of(out, "command")] == [("rollback", "applied")]
    first, second = of(out, "start")
    assert [(r["release_version"], r["sha256"], r["result"], r["reason"]) for r in of(out, "rollout")] == \
        [(2, first["model_sha256"], "failed", "rollback command")]
    assert second["model_sha256"] == state["good"]["sha256"] != first["model_sha256"]
    assert state["trial"] is None and state["last_failure"]["reason"] == "rollback command"
