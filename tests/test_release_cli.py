"""edge-release end to end as a user runs it, on the session's real model file and real fan id_00 clips:
keygen, root, cosign, sign, verify, init, install, command, apply; edge-monitor --trust-dir refusing an
unsigned model and an unsigned phi, and running both with --allow-unsigned; edge-calibrate --sign-key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import assert_one_line_error, cli


def ok(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def summary_phi(proc) -> float:
    line = [x for x in proc.stderr.splitlines() if x.startswith("edge-monitor:")][-1]
    return float(line.split("; phi ")[1].split(";")[0])


@pytest.fixture(scope="module")
def plant(model, calibrated, tmp_path_factory):
    """Keys, a 2-of-3 root, a signed release of the real model, and a device trust directory with it installed."""
    d = tmp_path_factory.mktemp("plant")
    ok(cli("edge-release", "keygen", "root-1", "root-2", "root-3", "release", "ops", "press-07", "--out", d / "keys"))
    k = d / "keys"
    ok(cli("edge-release", "root", "--root-key", k / "root-1.pub", "--root-key", k / "root-2.pub", "--root-key",
           k / "root-3.pub", "--release-key", k / "release.pub", "--operations-key", k / "ops.pub", "--device-key",
           k / "press-07.pub", "--out", d / "root.json"))
    ok(cli("edge-release", "cosign", d / "root.json", "--key", k / "root-1.key"))
    # one root signature of the two the root asks for: no device trusts it
    assert_one_line_error(refused := cli("edge-release", "init", "--trust-dir", d / "t0", "--root", d / "root.json",
                                         "--device", "press-07"))
    assert "threshold not met" in refused.stderr
    ok(cli("edge-release", "cosign", d / "root.json", "--key", k / "root-2.key"))
    signed = ok(cli("edge-release", "sign", model, "--key", k / "release.key", "--version", "3", "--out", d / "rel.json"))
    assert signed["size"] == model.stat().st_size
    ok(cli("edge-release", "verify", model, d / "rel.json", "--root", d / "root.json"))
    ok(cli("edge-release", "init", "--trust-dir", d / "trust", "--root", d / "root.json", "--device", "press-07"))
    installed = ok(cli("edge-release", "install", model, d / "rel.json", "--trust-dir", d / "trust", "--model-dir",
                       d / "models"))
    assert (d / "models" / model.name).read_bytes() == model.read_bytes() and installed["version"] == 3
    shutil.copy(calibrated[0], d / "phi.json")  # phi set with edge-calibrate, unsigned
    return d


@pytest.fixture
def trust(plant, tmp_path):
    """A copy of the plant's device trust directory for one test: tests that install, apply or rotate leave the
    others' trust directory as the fixture made it, in any order."""
    return Path(shutil.copytree(plant / "trust", tmp_path / "trust"))


def monitor(plant, trust, clip, *args, store="phi.json"):
    return cli("edge-monitor", "--model", next((plant / "models").glob("*.tflite")), "--store", plant / store, "--input", clip,
               "--trust-dir", trust, *args)


def test_the_same_release_again_or_a_wrong_key_is_refused(plant, trust, model):
    replay = cli("edge-release", "install", model, plant / "rel.json", "--trust-dir", trust, "--model-dir",
                 plant / "models")
    assert_one_line_error(replay)
    assert "not above the last accepted (3): a rollback or a replay" in replay.stderr
    k = plant / "keys"
    ok(cli("edge-release", "sign", model, "--key", k / "ops.key", "--version", "4", "--out", plant / "by-ops.json"))
    wrong = cli("edge-release", "install", model, plant / "by-ops.json", "--trust-dir", trust, "--model-dir",
                plant / "models")
    assert_one_line_error(wrong)
    assert "not signed by any release key" in wrong.stderr
    ok(cli("edge-release", "sign", model, "--key", k / "release.key", "--version", "5", "--min-kit-version", "99.0",
           "--out", plant / "newer-kit.json"))
    newer = cli("edge-release", "verify", model, plant / "newer-kit.json", "--trust-dir", trust)
    assert_one_line_error(newer)
    assert "needs edge-asd 99.0 or newer" in newer.stderr


def test_monitor_refuses_an_unsigned_phi_and_runs_it_with_allow_unsigned(plant, trust, fan):
    clip = fan["test_anomaly"][0]
    refused = monitor(plant, trust, clip)
    assert_one_line_error(refused)
    assert "unsigned phi record" in refused.stderr and "signed release 3" in refused.stderr
    dev = monitor(plant, trust, clip, "--allow-unsigned")
    assert dev.returncode == 0, dev.stderr
    assert "WARNING" in dev.stderr and "--allow-unsigned (development mode): phi record: unsigned" in dev.stderr
    assert "604 frames" in dev.stderr
    with_phi = monitor(plant, trust, clip, "--phi", "100")
    assert_one_line_error(with_phi)
    assert "--phi 100 is an unsigned phi" in with_phi.stderr


def test_monitor_refuses_an_unsigned_model_even_if_resealed(plant, trust, model, fan, tmp_path):
    """The issue's attack: the metadata changed and the digest recomputed with the kit's own seal; the file
    loads (no --trust-dir) but has no signed release."""
    from edge_asd.core.model_file import (
        DIGEST_KEY,
        read_tflite_metadata,
        seal,
        unsealed_digest,
        write_tflite_metadata,
    )

    data = model.read_bytes()
    meta = read_tflite_metadata(data, "m")
    forged = tmp_path / "forged.tflite"
    forged.write_bytes(seal(write_tflite_metadata(data, {**meta, DIGEST_KEY: unsealed_digest(), "note": "forged"})))
    clip = fan["test_anomaly"][0]
    base = ["--model", forged, "--phi", "1000", "--input", clip]
    assert cli("edge-monitor", *base).returncode == 0  # no trust directory: unchanged behaviour
    refused = cli("edge-monitor", *base, "--trust-dir", trust)
    assert_one_line_error(refused)
    assert "no signed release installed for it" in refused.stderr
    dev = cli("edge-monitor", *base, "--trust-dir", trust, "--allow-unsigned")
    assert dev.returncode == 0 and "an unsigned model" in dev.stderr and "WARNING" in dev.stderr
    toml = tmp_path / "monitor.toml"
    toml.write_text(f'[monitor]\ntrust_dir = "{trust}"\n\n[[input]]\nsource = "{clip}"\nmodel = "{forged}"\n'
                    f'phi = 1000.0\n')
    assert_one_line_error(cli("edge-monitor", "--config", toml))


def test_a_signed_set_phi_command_is_applied_once_and_the_monitor_uses_its_phi(plant, trust, fan, calibrated):
    k = plant / "keys"
    for seq in (1, 2):
        ok(cli("edge-release", "command", "set-phi", "--device", "press-07", "--seq", seq, "--key", k / "ops.key",
               "--store", calibrated[0], "--machine-id", "00", "--out", plant / f"cmd-{seq}.json"))
    applied = ok(cli("edge-release", "apply", plant / "cmd-2.json", "--trust-dir", trust, "--store",
                     plant / "applied.json"))
    stored_phi = json.loads(calibrated[0].read_text())["machines"]["id_00"]["phi"]
    assert applied["phi"] == stored_phi and applied["seq"] == 2
    old = cli("edge-release", "apply", plant / "cmd-1.json", "--trust-dir", trust, "--store",
              plant / "applied.json")
    assert_one_line_error(old)
    assert "sequence number 1 is not above the last accepted (2)" in old.stderr
    clip = fan["test_anomaly"][0]
    run = monitor(plant, trust, clip, store="applied.json")
    assert run.returncode == 0, run.stderr
    assert summary_phi(run) == pytest.approx(stored_phi, rel=1e-3)
    # phi = 1e300 written into the store: the monitor keeps the signed phi
    data = json.loads((plant / "applied.json").read_text())
    data["machines"]["id_00"]["phi"] = 1e300
    (plant / "tampered.json").write_text(json.dumps(data))
    assert summary_phi(monitor(plant, trust, clip, store="tampered.json")) == pytest.approx(stored_phi, rel=1e-3)
    # the command signed by another device's name or with the release key
    ok(cli("edge-release", "command", "finetune-on", "--device", "press-08", "--seq", 9, "--key", k / "ops.key",
           "--out", plant / "other.json"))
    other = cli("edge-release", "apply", plant / "other.json", "--trust-dir", trust)
    assert_one_line_error(other)
    assert "for device 'press-08'" in other.stderr


def test_calibrate_signs_with_the_device_key_the_root_names(plant, trust, fan, model):
    store, k = plant / "local.json", plant / "keys"
    args = [*fan["train"][:2], "--model", plant / "models" / model.name, "--machine-id", "00", "--store", store,
            "--votes", "1/1", "--trust-dir", trust]
    not_named = cli("edge-calibrate", *args, "--sign-key", k / "release.key")
    assert_one_line_error(not_named)
    assert "names this key neither as a device nor as an operations key" in not_named.stderr and not store.exists()
    done = ok(cli("edge-calibrate", *args, "--sign-key", k / "press-07.key"))
    assert "signed" in json.loads(store.read_text())["machines"]["id_00"]
    run = monitor(plant, trust, fan["test_anomaly"][0], store="local.json")
    assert run.returncode == 0, run.stderr
    assert summary_phi(run) == pytest.approx(done["phi"], rel=1e-3)


def test_root_rotation_on_the_device(plant, trust):
    k = plant / "keys"
    ok(cli("edge-release", "keygen", "root-4", "root-5", "--out", k))
    new = ["--root-key", k / "root-3.pub", "--root-key", k / "root-4.pub", "--root-key", k / "root-5.pub",
           "--release-key", k / "release.pub", "--operations-key", k / "ops.pub", "--device-key", k / "press-07.pub",
           "--version", "2"]
    ok(cli("edge-release", "root", *new, "--sign", k / "root-4.key", "--sign", k / "root-5.key", "--out", plant / "r2.json"))
    refused = cli("edge-release", "update-root", plant / "r2.json", "--trust-dir", trust)
    assert_one_line_error(refused)
    assert "of the root it replaces, version 1" in refused.stderr
    for key in ("root-1", "root-2"):  # the old root's holders add their signatures
        ok(cli("edge-release", "cosign", plant / "r2.json", "--key", k / f"{key}.key"))
    assert ok(cli("edge-release", "update-root", plant / "r2.json", "--trust-dir", trust))["root_version"] == 2


def test_verify_on_the_device_imports_no_training_stack(plant, trust, model):
    """edge-release runs on the device install: no torch, onnx, librosa, scipy or matplotlib."""
    from test_edge_imports import HEAVY, OPTIONAL, run_in_fresh_python

    loaded, proc = run_in_fresh_python("cli.release", ["verify", model, plant / "rel.json", "--trust-dir", trust],
                                       plant / "unused.json", heavy=HEAVY + OPTIONAL)
    assert loaded == [] and '"version": 3' in proc.stdout
