"""Issue 18 §2 on the device: phi carried in a signed release, slot directories and the health gate inside the
running monitor (edge-release sign --phi-store, install --slots, edge-monitor --model DIR), on the session's real
model and real fan id_00 clips."""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error, cli
from edge_asd.core import signing
from edge_asd.edge.runtime import phi_store, signed_docs

GATE = ("--trial-windows", "50", "--trial-minutes", "0.05")  # 3 s of audio: a 10-s clip decides the trial


def ok(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A root (one root key) naming a release and an operations key; the keys' files."""
    d = tmp_path_factory.mktemp("keys")
    made = {name: signing.generate(name) for name in ("root", "release", "ops")}
    for key in made.values():
        signing.write_keypair(key, d)
    pub = {n: signing.load_public_key(d / f"{n}.pub") for n in made}
    payload = signed_docs.root_document(1, {"root": [pub["root"]], "release": [pub["release"]],
                                            "operations": [pub["ops"]]}, {"root": 1})
    envelope = signing.sign(signed_docs.ROOT_TYPE, payload, [made["root"]])
    (d / "root.json").write_text(json.dumps(envelope.to_dict()))
    return d


@pytest.fixture(scope="module")
def variant(model, tmp_path_factory):
    """A second model file (the same weights, other metadata: another sha256) that scores as the first."""
    from edge_asd.core.model_file import DIGEST_KEY, read_tflite_metadata, seal, unsealed_digest, write_tflite_metadata

    data = model.read_bytes()
    meta = read_tflite_metadata(data, "m")
    path = tmp_path_factory.mktemp("variant") / model.name
    path.write_bytes(seal(write_tflite_metadata(data, {**meta, DIGEST_KEY: unsealed_digest(), "note": "v2"})))
    return path


def phi_for(store, source_store, model_path, factor: float = 1.0):
    """``store`` gets the calibrated id_00 record of ``source_store`` for ``model_path``, phi x ``factor``."""
    from edge_asd.core.provenance import sha256_bytes

    record = phi_store.history(source_store, "id_00")["id_00"][-1].to_dict()
    record.update(model_sha256=sha256_bytes(model_path.read_bytes()), phi=record["phi"] * factor)
    phi_store.save_phi(store, "id_00", phi_store.PhiRecord.from_dict(record))


@pytest.fixture
def device(keys, model, calibrated, tmp_path):
    """A trust directory, and a slot directory holding release 1 of the real model with its calibrated phi."""
    ok(cli("edge-release", "init", "--trust-dir", tmp_path / "trust", "--root", keys / "root.json", "--device", "pi-1"))
    signed = ok(cli("edge-release", "sign", model, "--key", keys / "release.key", "--version", "1", "--phi-store",
                    calibrated[0], "--out", tmp_path / "rel1.json"))
    assert signed["phi"] == ["id_00"]
    done = ok(cli("edge-release", "install", model, tmp_path / "rel1.json", "--trust-dir", tmp_path / "trust",
                  "--slots", tmp_path / "slots", "--store", tmp_path / "phi.json"))
    assert done["slot"] == "good" and done["installed"].endswith("v1-" + model.name)
    return tmp_path


def trial(device, keys, variant, calibrated, factor: float, version: int = 2) -> dict:
    """Release ``version`` of the variant, its phi = the calibrated one x ``factor``, installed on trial."""
    store = device / f"desk-{version}.json"
    phi_for(store, calibrated[0], variant, factor)
    ok(cli("edge-release", "sign", variant, "--key", keys / "release.key", "--version", str(version), "--phi-store",
           store, "--out", device / f"rel{version}.json"))
    return ok(cli("edge-release", "install", variant, device / f"rel{version}.json", "--trust-dir", device / "trust",
                  "--slots", device / "slots", "--store", device / "phi.json"))


def monitor(device, clip, *extra):
    return cli("edge-monitor", "--model", device / "slots", "--store", device / "phi.json", "--input", clip,
               "--trust-dir", device / "trust", "--events", device / "events.jsonl", *GATE, *extra)


def test_the_release_carries_phi_and_a_changed_phi_is_refused(keys, model, calibrated, fan, tmp_path):
    ok(cli("edge-release", "init", "--trust-dir", tmp_path / "trust", "--root", keys / "root.json", "--device", "pi-1"))
    ok(cli("edge-release", "sign", model, "--key", keys / "release.key", "--version", "1", "--phi-store", calibrated[0],
           "--out", tmp_path / "rel.json"))
    ok(cli("edge-release", "install", model, tmp_path / "rel.json", "--trust-dir", tmp_path / "trust", "--model-dir",
           tmp_path / "models", "--store", tmp_path / "phi.json"))
    calibrated_phi = phi_store.history(calibrated[0], "id_00")["id_00"][-1].phi
    run = ["--model", tmp_path / "models" / model.name, "--store", tmp_path / "phi.json", "--input",
           fan["test_normal"][0], "--trust-dir", tmp_path / "trust", "--events", tmp_path / "events.jsonl"]
    proc = cli("edge-monitor", *run)
    assert proc.returncode == 0, proc.stderr
    assert lines(tmp_path / "events.jsonl")[0]["phi"] == pytest.approx(calibrated_phi)
    data = json.loads((tmp_path / "phi.json").read_text())
    data["machines"]["id_00"]["phi"] = calibrated_phi * 1000  # a blinded monitor
    (tmp_path / "phi.json").write_text(json.dumps(data))
    refused = cli("edge-monitor", *run)
    assert_one_line_error(refused)
    assert "differs from the one signed in release 1" in refused.stderr
    no_phi = cli("edge-release", "sign", model, "--key", keys / "release.key", "--version", "2", "--phi-store",
                 tmp_path / "empty.json")
    assert_one_line_error(no_phi)


def test_a_trial_that_alarms_fails_the_gate_and_the_monitor_goes_back_to_good(device, keys, variant, calibrated, fan):
    """phi / 1000: the trial's alarm goes on at once; with --trial-extra 0 the gate fails it, and the same
    process goes on with the good model and its phi."""
    assert trial(device, keys, variant, calibrated, 1e-3)["slot"] == "trial"
    proc = monitor(device, fan["test_normal"][0], "--trial-extra", "0")
    assert proc.returncode == 0, proc.stderr
    out = lines(device / "events.jsonl")
    starts = [x for x in out if x["event"] == "start"]
    rollout = [x for x in out if x["event"] == "rollout"]
    good_sha = json.loads((device / "slots" / "slots.json").read_text())["good"]["sha256"]
    assert [s["model_sha256"] == good_sha for s in starts] == [False, True]
    assert starts[1]["phi"] == pytest.approx(1000 * starts[0]["phi"])
    assert [r["result"] for r in rollout] == ["failed"] and rollout[0]["release_version"] == 2
    assert "1 alarms in" in rollout[0]["reason"] and "allows 0.0" in rollout[0]["reason"]
    state = json.loads((device / "slots" / "slots.json").read_text())
    assert state["trial"] is None and state["good"]["version"] == 1 and state["last_failure"]["version"] == 2
    summary = out[-1]  # it counts both models: the trial's alarm and every frame scored
    assert summary["event"] == "summary" and summary["alarms"] >= 1 and 550 < summary["frames"] <= 604


def test_a_sound_trial_passes_and_becomes_good(device, keys, variant, calibrated, fan, tmp_path):
    """The variant with its calibrated phi, given as a monitor.toml input's model = DIR."""
    trial(device, keys, variant, calibrated, 1.0)
    toml = tmp_path / "monitor.toml"
    toml.write_text(f'[rollout]\ntrial_windows = 50\ntrial_minutes = 0.05\n[[input]]\nsource = "{fan["test_normal"][0]}"\n'
                    f'model = "{device / "slots"}"\nstore = "{device / "phi.json"}"\ntrust_dir = "{device / "trust"}"\n'
                    f'events = "{device / "events.jsonl"}"\n')
    proc = cli("edge-monitor", "--config", toml)
    assert proc.returncode == 0, proc.stderr
    rollout = [x for x in lines(device / "events.jsonl") if x["event"] == "rollout"]
    assert [r["result"] for r in rollout] == ["passed"] and rollout[0]["release_version"] == 2
    state = json.loads((device / "slots" / "slots.json").read_text())
    assert state["good"]["version"] == 2 and state["previous"]["version"] == 1 and state["trial"] is None
    assert state["good_stats"]["windows"] >= 50 and state["good_stats"]["seconds"] >= 3


def test_a_trial_that_does_not_load_fails_at_once(device, keys, variant, calibrated, fan):
    trial(device, keys, variant, calibrated, 1.0)
    state = json.loads((device / "slots" / "slots.json").read_text())
    (device / "slots" / state["trial"]["file"]).write_bytes(b"damaged on the way to flash")
    proc = monitor(device, fan["test_normal"][0])
    assert proc.returncode == 0, proc.stderr
    out = lines(device / "events.jsonl")
    rollout = [x for x in out if x["event"] == "rollout"]
    assert [r["result"] for r in rollout] == ["failed"] and "does not load" in rollout[0]["reason"]
    assert [x["model_sha256"] for x in out if x["event"] == "start"] == [state["good"]["sha256"]]
    assert json.loads((device / "slots" / "slots.json").read_text())["last_failure"]["version"] == 2


def test_a_release_from_the_fleet_is_staged_from_base64_or_a_url(variant, tmp_path):
    """The link's staging (edge/runtime/fleet/control.py): base64 or file:// into <slots>.staging; a size other than
    the release's, another URL scheme or damaged base64 is refused before anything is installed."""
    import base64

    from edge_asd.core.errors import EdgeAsdError
    from edge_asd.edge.runtime.fleet.control import stage
    from edge_asd.edge.runtime.signed_docs import parse_release, release_document

    data = variant.read_bytes()
    release = parse_release(release_document(4, variant.name, data, "0.1", "all"))
    staged = stage(tmp_path / "slots", {"url": variant.as_uri()}, release)
    assert staged == tmp_path / "slots.staging" / f"v4-{variant.name}" and staged.read_bytes() == data
    assert stage(tmp_path / "slots", {"model_b64": base64.b64encode(data).decode()}, release).read_bytes() == data
    short = tmp_path / "short.tflite"
    short.write_bytes(data[:-1])
    for body, message in (({"url": short.as_uri()}, "the release says"), ({"url": "http://x/m"}, "only file://"),
                          ({"model_b64": "not base64!"}, "not base64"), ({}, "neither")):
        with pytest.raises(EdgeAsdError, match=message):
            stage(tmp_path / "slots", body, release)


def test_the_gate_allows_factor_times_the_good_rate_plus_extra():
    from edge_asd.core.errors import EdgeAsdError
    from edge_asd.edge.runtime.gate import GateSettings, check_gate

    gate = GateSettings(**check_gate({"trial_windows": 10, "trial_minutes": 30, "factor": 3, "extra": 1}, "t"))
    assert gate.allowed({"alarms": 2, "seconds": 3600.0}, 1800.0) == pytest.approx(3 * 1 + 1)  # 2/h over 0.5 h, x3, +1
    assert gate.allowed({"alarms": 0, "seconds": 0.0}, 600.0) == 1  # no good statistics yet: only the extra alarms
    for table in ({"trial_windows": 0}, {"factor": "3"}, {"extra": 1.5}, {"minutes": 3}):
        with pytest.raises(EdgeAsdError):
            check_gate(table, "monitor.toml [rollout]")


def test_an_alarm_held_on_all_trial_long_fails_it(device, keys, variant, calibrated, fan):
    """phi / 1000 with the default --trial-extra 1: the alarm goes on once and stays on, one alarm-on line, within
    the allowance; a new-user check saw such a release pass the gate and a whole rollout. It fails now."""
    trial(device, keys, variant, calibrated, 1e-3)
    proc = monitor(device, fan["test_normal"][0])
    assert proc.returncode == 0, proc.stderr
    rollout = [x for x in lines(device / "events.jsonl") if x["event"] == "rollout"]
    assert [r["result"] for r in rollout] == ["failed"] and "alarm is still on when the trial ends" in rollout[0]["reason"]
    assert json.loads((device / "slots" / "slots.json").read_text())["good"]["version"] == 1


def test_a_signed_phi_for_the_trial_does_not_block_the_way_back_to_good(device, keys, variant, calibrated, fan):
    """A set-phi for the trial's model (accepted after release 1) made the good model's release phi look replaced:
    the failed trial's monitor exited 1 and every restart too. Pins count for their own model only."""
    trial(device, keys, variant, calibrated, 1e-3)
    ops = device / "ops.json"
    phi_for(ops, calibrated[0], variant, 1e-3)
    ok(cli("edge-release", "command", "set-phi", "--device", "pi-1", "--seq", "1", "--key", keys / "ops.key", "--store",
           ops, "--machine-id", "00", "-o", device / "cmd1.json"))
    ok(cli("edge-release", "apply", device / "cmd1.json", "--trust-dir", device / "trust", "--store", device / "phi.json"))
    for _ in range(2):  # the failed trial goes back to good; a restart runs good again
        proc = monitor(device, fan["test_normal"][0])
        assert proc.returncode == 0, proc.stderr
    starts = [x for x in lines(device / "events.jsonl") if x["event"] == "start"]
    calibrated_phi = phi_store.history(calibrated[0], "id_00")["id_00"][-1].phi
    assert [s["phi"] == pytest.approx(calibrated_phi) for s in starts] == [False, True, True]


@pytest.mark.parametrize("option, value", [("--trial-factor", "nan"), ("--trial-minutes", "inf"),
                                           ("--trial-minutes", "nan"), ("--trial-windows", "1" + "0" * 22)])
def test_absurd_gate_options_are_refused(option, value):
    """--trial-factor nan passed a trial with 1036 alarms; --trial-minutes inf kept a trial forever."""
    proc = cli("edge-monitor", "--model", "m.tflite", option, value)
    assert proc.returncode == 2 and f"Invalid value for '{option}'" in proc.stderr and "Traceback" not in proc.stderr
