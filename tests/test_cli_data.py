"""edge-data through click's CliRunner and as a subprocess, against a loopback server."""

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_asd.datasets.cli import main

try:  # the loopback server and archive live with the download tests
    from test_datasets_download import LoopbackServer, make_archive, write_registry
except ImportError:  # tests/ imported as a package
    from tests.test_datasets_download import LoopbackServer, make_archive, write_registry

CLI = [sys.executable, "-m", "edge_asd.datasets.cli"]


@pytest.fixture
def served(tmp_path):
    """(server, registry path): test_fan.zip served on 127.0.0.1, named with its md5 in the registry."""
    server = LoopbackServer()
    archive = make_archive()
    server.files["test_fan.zip"] = archive
    reg = write_registry(tmp_path / "reg.json", server.url, "md5:" + hashlib.md5(archive).hexdigest())
    yield server, reg
    server.close()


def one_line_error(result_output: str) -> str:
    lines = result_output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result_output
    assert "Traceback" not in result_output
    return lines[0]


def run(args, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_ASD_")}
    full_env.update(env)
    return subprocess.run(CLI + args, capture_output=True, text=True, env=full_env, timeout=60)


def test_help_and_version():
    runner = CliRunner()
    for flag in ("-h", "--help"):
        result = runner.invoke(main, [flag])
        assert result.exit_code == 0
        assert all(name in result.output for name in ("fetch", "where", "list"))
    result = runner.invoke(main, ["fetch", "-h"])
    assert result.exit_code == 0 and "--machine-type" in result.output and "--no-verify" in result.output
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and "0.1.0" in result.output


def test_help_does_not_import_pooch():
    code = (
        "import sys\nfrom edge_asd.datasets.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED', [m for m in ('pooch', 'requests', 'tqdm') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "LOADED []" in out, out


def test_where(tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(main, ["where"], env={"EDGE_ASD_DATA": str(tmp_path)})
    assert result.exit_code == 0 and result.stdout.strip() == str(tmp_path)
    result = runner.invoke(main, ["where"], env={"EDGE_ASD_DATA": str(tmp_path / "gone")})
    assert result.exit_code == 1 and "no such directory" in one_line_error(result.output)
    # no variable, no ../shared/data, no checkout data: the hint
    from edge_asd.datasets import locate

    monkeypatch.setattr(locate, "__file__", str(tmp_path / "a" / "b" / "locate.py"))
    (tmp_path / "c" / "d").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "c" / "d")
    result = runner.invoke(main, ["where"], env={"EDGE_ASD_DATA": None})
    line = one_line_error(result.output)
    assert result.exit_code == 1 and "EDGE_ASD_DATA" in line and "edge-data fetch" in line


def test_list_real_data(data_root):
    result = CliRunner().invoke(main, ["list", str(data_root), "--machine-type", "fan"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["machine_type", "machine_id", "train/normal", "test/normal", "test/anomaly"]
    assert ["fan", "id_00", "10", "5", "10"] in [line.split() for line in lines]
    assert lines[-1].split() == ["total", *map(str, manifest_totals(data_root, machine_type="fan"))]
    result = CliRunner().invoke(main, ["list"], env={"EDGE_ASD_DATA": str(data_root)})
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1].split() == ["total", *map(str, manifest_totals(data_root))]


def manifest_totals(data_root, machine_type=None) -> tuple[int, int, int]:
    """train/normal, test/normal, test/anomaly clip counts, as the data's own manifest lists them."""
    with open(data_root / "machines" / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if machine_type in (None, r["machine_type"])]
    return tuple(sum((r["split"], r["label"]) == key for r in rows)
                 for key in (("train", "normal"), ("test", "normal"), ("test", "anomaly")))


def test_list_errors(tmp_path, data_root):
    runner = CliRunner()
    result = runner.invoke(main, ["list", str(tmp_path)])
    assert result.exit_code == 1 and "no labelled clips found" in one_line_error(result.output)
    result = runner.invoke(main, ["list", str(data_root), "--machine-id", "fan"])
    assert result.exit_code == 1 and "bad machine ID 'fan'" in one_line_error(result.output)


def test_fetch_with_runner(served, tmp_path):
    server, reg = served
    dest = tmp_path / "dest"
    result = CliRunner().invoke(
        main,
        ["fetch", "testset", "-m", "fan", "--dest", str(dest)],
        env={"EDGE_ASD_REGISTRY": str(reg), "EDGE_ASD_DATA_MIRROR": None},
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == str(dest / "testset" / "test_fan" / "fan")
    assert ["fan", "id_00", "2", "1", "1"] in [line.split() for line in lines]
    assert "edge-train " in result.stderr and "edge-train" not in result.stdout  # advice on stderr only


def test_fetch_errors_with_runner(served, tmp_path):
    server, reg = served
    runner = CliRunner()
    env = {"EDGE_ASD_REGISTRY": str(reg)}
    result = runner.invoke(main, ["fetch", "nope", "-m", "fan", "--dest", str(tmp_path)], env=env)
    assert result.exit_code == 1 and "unknown dataset 'nope'" in one_line_error(result.output)
    result = runner.invoke(main, ["fetch", "testset", "-m", "fan", "--snr", "-6dB", "--dest", str(tmp_path)], env=env)
    assert result.exit_code == 1 and "has no SNR versions" in one_line_error(result.output)
    result = runner.invoke(
        main,
        ["fetch", "testset", "-m", "fan", "--dest", str(tmp_path)],
        env={"EDGE_ASD_REGISTRY": str(tmp_path / "missing.json")},
    )
    assert result.exit_code == 1 and "EDGE_ASD_REGISTRY" in one_line_error(result.output)
    write_registry(reg, server.url, "md5:" + "0" * 32)
    result = runner.invoke(main, ["fetch", "testset", "-m", "fan", "-q", "--dest", str(tmp_path)], env=env)
    assert result.exit_code == 1 and "checksum mismatch for test_fan.zip" in result.output
    assert "Traceback" not in result.output


def test_fetch_and_where_as_subprocess(served, tmp_path):
    server, reg = served
    dest = tmp_path / "dest"
    proc = run(["fetch", "testset", "--machine-type", "fan", "--dest", str(dest)], EDGE_ASD_REGISTRY=str(reg))
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.splitlines()[0])
    assert folder == dest / "testset" / "test_fan" / "fan" and (folder / "train").is_dir()
    assert "Traceback" not in proc.stderr
    proc = run(["where"], EDGE_ASD_DATA=str(folder))
    assert proc.returncode == 0 and proc.stdout.strip() == str(folder)
    proc = run(["list"], EDGE_ASD_DATA=str(folder))
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1].split() == ["total", "2", "1", "1"]


def test_errors_as_subprocess(tmp_path):
    proc = run(
        ["fetch", "testset", "-m", "fan", "--dest", str(tmp_path), "--base-url", "http://127.0.0.1:9/"],
        EDGE_ASD_REGISTRY=str(write_registry(tmp_path / "r.json", "http://127.0.0.1:9", "md5:" + "1" * 32)),
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "could not reach 127.0.0.1" in errors[0]
    proc = run(["where"], EDGE_ASD_DATA=str(tmp_path / "gone"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert one_line_error(proc.stderr).endswith("no such directory; fix the path or unset EDGE_ASD_DATA")
    proc = run(["fetch"])
    assert proc.returncode == 2 and "Missing argument 'DATASET'" in proc.stderr and "Traceback" not in proc.stderr
