"""Staged rollout, the fleet side (docs/fleet.md, Rollout), against a real broker (mosquitto): edge-release
publish of the session's real model and a signed release; edge-fleet rollout over simulated devices that
report their health gate's result as the device contract says (tests/fleet_device.py's lines, in threads)."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest

from conftest import assert_one_line_error, cli
from edge_asd.core import signing
from edge_asd.edge.runtime import signed_docs


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
