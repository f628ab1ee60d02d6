"""CI's slice of ``make fuzz`` (bench/fuzz.py): every target, a fixed hypothesis seed, a few inputs each,
mutated from the session's real model, phi store, a real fan id_00 clip and an event log edge-monitor
wrote. No input may end in a traceback, a hang, a crash, or a damaged model file that loads and scores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

INPUTS = 25
"""Per target: 11 targets x 25 inputs, about 20 s on a busy 2-core VM."""


@pytest.fixture(scope="module")
def seeds(model, calibrated, fan, tmp_path_factory):
    from fuzz_seeds import Seeds, make_events, make_signed

    store, proc = calibrated
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path_factory.mktemp("fuzz")
    events = make_events(model, store, fan["test_anomaly"][0], folder / "events.jsonl")
    make_signed(model, store, folder / "signed")
    return Seeds(model=model, store=store, clip=fan["train"][0], events=events, signed=folder / "signed").load()


def test_seed_inputs_run_clean(seeds, tmp_path):
    """The unmutated seeds pass (else every mutant would fail for the wrong reason): the monitor scores the
    seed WAV, the seed config and the seed store; edge-report reads the seed log."""
    from fuzz import run_case
    from fuzz_targets import Case, _monitor, seed_config, to_toml

    cases = [
        Case("monitor", _monitor(seeds, "--model", str(seeds.model), "--input", "{dir}/clip.wav"), {"clip.wav": seeds.blobs["wav"]}),
        Case("monitor", ("--config", "{dir}/monitor.toml", "-q"), {"monitor.toml": to_toml(seed_config(seeds)).encode()}),
        Case("monitor", _monitor(seeds, "--model", str(seeds.model), "--store", str(seeds.store), "--input", str(seeds.clip),
                                 phi=False)),
        Case("monitor", _monitor(seeds, "--model", str(seeds.model), "--input", "-"), stdin=seeds.blobs["pcm"]),
        Case("report", ("--events", str(seeds.events), "--out", "{dir}/report", "-q")),
    ]
    signed = seeds.signed
    trust = {f"trust/{p.relative_to(signed / 'trust')}": p.read_bytes() for p in (signed / "trust").rglob("*") if p.is_file()}
    cases += [
        Case("release", ("verify", str(seeds.model), str(signed / "release.json"), "--root", str(signed / "root.json"))),
        Case("release", ("apply", str(signed / "cmd.json"), "--trust-dir", "{dir}/trust", "--store", "{dir}/phi.json"),
             {**trust, "phi.json": seeds.blobs["store"].encode()}),
    ]
    for case in cases:
        assert run_case(case, tmp_path) == ("exit0", ""), case.args


def test_fuzz_slice_no_traceback_hang_crash_or_accepted_damage(seeds, tmp_path):
    from fuzz import fuzz_target
    from fuzz_targets import TARGETS

    rows = [fuzz_target(name, seeds, INPUTS, seed=19, timeout_s=20, repro_dir=tmp_path) for name in TARGETS]
    for row in rows:
        assert row["inputs"] == INPUTS, row
        assert row["clean_errors"] > 0, row  # the mutations reach the readers' checks
        bad = {k: row[k] for k in ("tracebacks", "hangs", "crashes", "corrupted_model_accepted") if row[k]}
        assert not bad, (row["target"], bad, row["signatures"])
