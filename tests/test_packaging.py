"""The wheel: one namespace (edge_asd.*), no top-level train/convert/edge in site-packages, light extras."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["edge_asd.edge", "edge_asd.train", "edge_asd.convert", "edge_asd.firmware_io", "edge_asd.datasets",
            "edge_asd.edge.runtime.fleet", "edge_asd.fleet"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    (whl,) = out.glob("edge_asd-*.whl")
    return whl


def test_wheel_holds_only_the_edge_asd_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"edge_asd"}
    for pkg in PACKAGES:
        assert f"{pkg.replace('.', '/')}/__init__.py" in names
    assert not any(n.endswith((".wav", ".flac", ".pt", ".tflite", ".onnx")) for n in names)


def test_extras_keep_the_device_install_light(wheel):
    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))
    lines = zipfile.ZipFile(wheel).read(meta).decode().splitlines()
    requires = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    edge = [r for r in requires if "extra == \"edge\"" in r]
    for heavy in ("torch", "onnx", "librosa", "litert-torch", "tensorflow"):
        assert not any(r.split()[0].startswith(heavy) for r in base + edge), (heavy, base + edge)
    assert any(r.startswith("ai-edge-litert") for r in edge)
    assert any(r.startswith("cryptography") for r in edge)  # edge-release, edge-monitor --trust-dir
    assert any(r.startswith("torch") for r in requires if "extra == \"train\"" in r)
    scripts = [ln for ln in zipfile.ZipFile(wheel).read(meta.replace("METADATA", "entry_points.txt")).decode().splitlines()]
    assert any(r.startswith("paho-mqtt") for r in requires if "extra == \"mqtt\"" in r)  # edge-monitor --mqtt, edge-fleet
    for name in ("edge-train", "edge-convert", "edge-calibrate", "edge-monitor", "edge-data", "edge-inspect", "edge-release",
                 "edge-fleet"):
        assert any(s.startswith(f"{name} =") for s in scripts)


def test_installed_wheel_imports_each_package_from_a_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Install the wheel alone, then let the fresh venv see this venv's third-party packages (numpy, ...)
    # through a .pth file *after* its own site-packages, so edge_asd can only come from the wheel.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    outer = sysconfig.get_paths()["purelib"]
    (site / "zz_outer.pth").write_text(outer + "\n")
    code = (
        "import importlib, pathlib, sys\n"
        f"for name in {PACKAGES!r}:\n"
        "    m = importlib.import_module(name)\n"
        f"    assert pathlib.Path(m.__file__).is_relative_to({str(site)!r}), m.__file__\n"
        "import edge_asd.core.features, edge_asd.edge.runtime.scorer, edge_asd.firmware_io.pcm\n"
        "print('ok')\n"
    )
    proc = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr
    for stray in ("train", "convert", "edge", "firmware_io", "datasets", "tests", "examples"):
        assert not (site / stray).exists(), f"top-level {stray} in site-packages"

