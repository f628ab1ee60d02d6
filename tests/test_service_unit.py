"""The systemd unit of examples/service, read by systemd itself (systemd-analyze), not by us."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "examples" / "service" / "edge-asd-monitor.service"
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed (apt-get install systemd; .ci/run does)")


def installed(tmp_path: Path, replace: tuple[str, str] | None = None) -> Path:
    """The unit as installed here: ExecStart points at this environment's edge-monitor."""
    exe = Path(sys.executable).parent / "edge-monitor"
    assert exe.is_file(), f"{exe}: edge-asd is not installed in this environment"
    text = re.sub(r"^ExecStart=.*$", f"ExecStart={exe}", UNIT.read_text(), flags=re.M)
    if replace:
        text = text.replace(*replace)
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)


def test_systemd_accepts_every_line_of_the_unit(tmp_path):
    result = analyze("verify", str(installed(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == ""


def test_a_misspelt_value_is_reported(tmp_path):
    result = analyze("verify", str(installed(tmp_path, ("KillSignal=SIGTERM", "KillSignal=SIGTREM"))))
    assert "SIGTREM" in result.stderr


def test_the_unit_runs_without_privileges(tmp_path):
    unit = installed(tmp_path)
    text = unit.read_text()
    assert re.search(r"^User=edge-asd$", text, re.M) and re.search(r"^CapabilityBoundingSet=$", text, re.M)
    # systemd's own exposure score, 0 (locked down) to 10 (unprotected); the unit scores 3.4, a bare one 9.6
    result = analyze("security", "--offline=true", "--threshold=40", str(unit))
    assert result.returncode == 0, result.stdout[-2000:]
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout).group(1))
    assert exposure <= 4.0
