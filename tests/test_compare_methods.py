"""examples/compare_methods.py on real recordings: a smoke run on a DCASE 2020-layout copy of fan and slider
id_00, the few-shot draws, the loudness reference against a hand RMS ranking, hooks that are stubbed,
missing or broken."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.metrics import auc_pauc
from edge_asd.train.compare import few_shot_draws, fit_score_rms
from edge_asd.train.experiment import find_machines

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "compare_methods.py"


@pytest.fixture(scope="module")
def compare_methods():
    spec = importlib.util.spec_from_file_location("compare_methods", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_methods"] = module
    spec.loader.exec_module(module)
    return module


def run(module, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(module.main, ["-q", "--max-anomaly-sounds", "2", "--n-boot", "100", *args])
    return result.exit_code, result.output


def hand_rms(path: Path) -> float:
    x, rate = sf.read(path, dtype="float64")
    assert rate == 16000
    return float(np.sqrt(np.mean(x**2)))


def test_smoke_run_on_a_dcase2020_layout_copy_writes_the_table(compare_methods, data_root, fan, tmp_path):
    root = tmp_path / "dev_data"  # what unzipping dev_data_<type>.zip of DCASE 2020 Task 2 gives
    slider = data_root / "machines" / "slider"
    for path in [*fan["train"], *fan["test_normal"], *fan["test_anomaly"], *sorted(slider.glob("train/*_id_00_*"))[:3],
                 *slider.glob("test/*_id_00_*")]:
        split, mtype = path.parent.name, path.parent.parent.name
        (root / mtype / split).mkdir(parents=True, exist_ok=True)
        (root / mtype / split / path.name.replace(".flac", ".wav")).symlink_to(path)  # a DCASE download holds WAVs
    out = tmp_path / "out"
    code, output = run(compare_methods, "--data", str(root), "--budget", "smoke", "--methods", "re", "--seeds", "0,1",
                       "--out", str(out))
    assert code == 0, output
    md = (out / "compare.md").read_text()
    for row in ("| rms | fan id_00 |", "| re | fan id_00 |", "| rms | slider id_00 |", "| re | slider id_00 |"):
        assert row in md
    assert "What these clips can rank" in md and "fan id_00 real: 5 normal / 10 anomalous clips" in md
    rows = list(csv.DictReader(open(out / "per_seed.csv")))
    re_fan = [r for r in rows if r["method"] == "re" and r["machine_type"] == "fan"]
    assert {r["seed"] for r in re_fan} == {"0", "1"} and {r["set"] for r in re_fan} == {"real", "mix_-10dB", "mix_-15dB", "mix_-20dB"}
    assert {r["n_train"] for r in rows if r["machine_type"] == "slider"} == {"3"}
    # the loudness reference's real-clip AUC is that of the hand RMS of the same clips
    tests = [*fan["test_normal"], *fan["test_anomaly"]]
    expected, _ = auc_pauc(np.r_[np.zeros(5), np.ones(10)].astype(bool), np.array([hand_rms(p) for p in tests]))
    rms_real = next(r for r in rows if r["method"] == "rms" and r["machine_type"] == "fan" and r["set"] == "real")
    assert float(rms_real["auc"]) == pytest.approx(expected, abs=1e-4)
    summary = json.loads((out / "compare.json").read_text())
    assert summary["not_available"] == {} and summary["failed"] == [] and len(summary["per_seed"]) == len(rows)
    # a rerun reads the finished runs instead of training again
    lines = (out / "runs.jsonl").read_text()
    assert run(compare_methods, "--data", str(root), "--budget", "smoke", "--methods", "re", "--seeds", "0,1",
               "--out", str(out))[0] == 0
    assert (out / "runs.jsonl").read_text() == lines
    # --report-only with a seed not run yet: nothing trains, the report covers the finished runs
    code, output = run(compare_methods, "--data", str(root), "--budget", "smoke", "--methods", "re,snp", "--seeds",
                       "0,1,2", "--out", str(out), "--report-only")
    assert code == 0, output
    assert (out / "runs.jsonl").read_text() == lines
    md = (out / "compare.md").read_text()
    assert "| re | fan id_00 |" in md and "snp: no finished run yet" in md


def test_loudness_reference_ranks_as_hand_rms(fan):
    clips = [*fan["test_normal"], *fan["test_anomaly"]]
    scores = fit_score_rms(test_clips=clips, train_clips=fan["train"], seed=0)
    hand = np.array([hand_rms(p) for p in clips])
    assert scores.dtype == np.float64 and scores.shape == (15,)
    assert np.array_equal(np.argsort(scores), np.argsort(hand))
    assert scores == pytest.approx(20 * np.log10(hand), abs=1e-6)


def test_few_shot_draws_take_n_clips_of_one_id_per_type_and_differ(data_root):
    _, machines = find_machines(data_root, None, None)
    draws = few_shot_draws(machines, 5, 4)
    assert len(draws) == 4
    for draw in draws:
        assert sorted(t for t, _ in draw) == ["fan", "slider"]  # one ID per type that has 5 clips and test anomalies
        for key, paths in draw.items():
            assert len(paths["train"]) == 5 and set(paths["train"]) <= set(machines[key]["train"])
            assert paths["test_anomaly"] == machines[key]["test_anomaly"]
    assert len({tuple(d[("slider", "id_00")]["train"]) for d in draws}) > 1
    assert few_shot_draws(machines, 5, 4) == draws  # the same draws for every method
    assert list(few_shot_draws(machines, 11, 1)[0]) == [("slider", "id_00")]
    with pytest.raises(EdgeAsdError, match="few-shot 1000"):
        few_shot_draws(machines, 1000, 1)


def test_hooks_stubbed_missing_and_broken_are_reported(compare_methods, monkeypatch, tmp_path):
    calls = []

    def fit_score(*, data_dir, machine_type, machine_id, train_clips, test_clips, something_else_dir, seed,
                  budget="short"):
        calls.append((machine_type, machine_id, len(train_clips), seed, budget))
        return -fit_score_rms(test_clips=test_clips)

    def fit_score_broken(**_):
        raise RuntimeError("stub failure")

    stub = types.ModuleType("edge_asd.train.serial_oe.compare")
    stub.fit_score, stub.fit_score_broken = fit_score, fit_score_broken
    monkeypatch.setitem(sys.modules, "edge_asd.train.serial_oe.compare", stub)
    monkeypatch.setitem(sys.modules, "edge_asd.train.transfer_metric.compare", None)  # import fails
    out = tmp_path / "out"
    code, output = run(compare_methods, "--machine-types", "fan", "--ids", "id_00", "--methods",
                       "serial-oe,transfer-metric", "--seeds", "3", "--budget", "smoke", "--out", str(out))
    assert code == 0, output
    assert calls == [("fan", "id_00", 10, 3, "smoke")]
    md = (out / "compare.md").read_text()
    assert "| serial-oe | fan id_00 |" in md and "| rms | fan id_00 |" in md
    assert "transfer-metric: not available" in md and "serial-oe/broken: failed" in md
    rows = {(r["method"], r["set"]): float(r["auc"]) for r in csv.DictReader(open(out / "per_seed.csv"))}
    assert rows[("serial-oe", "real")] == pytest.approx(1 - rows[("rms", "real")], abs=1e-4)  # -RMS reverses the ranking
    code, output = run(compare_methods, "--methods", "nope", "--out", str(tmp_path / "x"))
    assert code == 1 and "unknown method 'nope'" in output


def test_a_costly_variant_runs_only_when_named():
    """serial-oe/efficientnet_lite0 (an hour per network on a CPU core) is not part of the serial-oe family's
    default expansion; named, it resolves to its hook."""
    pytest.importorskip("torch")
    from edge_asd.train.compare import method_names, resolve_methods

    assert "serial-oe/efficientnet_lite0" not in method_names(["serial-oe", "transfer-metric"])
    found, missing = resolve_methods(["serial-oe/efficientnet_lite0"])
    assert list(found) == ["serial-oe/efficientnet_lite0"] and not missing
