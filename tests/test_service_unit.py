"""The systemd unit of examples/service, read by systemd itself (systemd-analyze), not by us."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

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
    # systemd's own exposure score, 0 (locked down) to 10 (unprotected): 1.6 with the system-call filter,
    # the device ACL and the resource bounds (3.4 without them, 9.6 for a bare unit)
    result = analyze("security", "--offline=true", "--threshold=40", str(unit))
    assert result.returncode == 0, result.stdout[-2000:]
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout).group(1))
    assert exposure <= 2.0


def test_the_unit_bounds_memory_and_tasks():
    text = UNIT.read_text()
    memory_max = re.search(r"^MemoryMax=(\d+)M$", text, re.M)
    tasks_max = re.search(r"^TasksMax=(\d+)$", text, re.M)
    assert memory_max and 128 <= int(memory_max.group(1)) <= 512
    assert tasks_max and 16 <= int(tasks_max.group(1)) <= 256


def expand(group: str, seen: set[str]) -> set[str]:
    """The system calls of a systemd system-call group, nested groups expanded."""
    calls = set()
    for line in analyze("syscall-filter", group).stdout.splitlines()[1:]:
        name = line.strip()
        if name.startswith("@") and name not in seen:
            seen.add(name)
            calls |= expand(name, seen)
        elif name and not name.startswith(("#", "@")):
            calls.add(name)
    return calls


def allowed_calls(text: str) -> set[str]:
    """The system calls the unit's SystemCallFilter= lines allow (an allow list, then ~ deny lists)."""
    allowed: set[str] = set()
    for value in re.findall(r"^SystemCallFilter=(.+)$", text, re.M):
        deny = value.startswith("~")
        calls = set().union(*(expand(item, set()) if item.startswith("@") else {item}
                              for item in value.lstrip("~").split()))
        allowed = allowed - calls if deny else allowed | calls
    return allowed


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (apt-get install strace; .ci/run does)")
def test_every_system_call_of_a_monitor_run_passes_the_filter(model, fan, tmp_path):
    """edge-monitor on a real anomalous clip with events and evidence, traced: each call it makes is allowed."""
    summary = tmp_path / "calls.txt"
    exe = Path(sys.executable).parent / "edge-monitor"
    proc = subprocess.run(["strace", "-f", "-qq", "-c", "-o", str(summary), str(exe), "--model", str(model),
                           "--machine-id", "id_00", "--phi", "1", "--input", str(fan["test_anomaly"][0]),
                           "--events", str(tmp_path / "events.jsonl"), "--evidence-dir", str(tmp_path / "clips"),
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "clips").glob("*.flac")), "the run wrote no evidence clip"
    used = {line.split()[-1] for line in summary.read_text().splitlines()
            if re.match(r"^\s*[\d.]+\s+[\d.]+", line) and line.split()[-1] != "total"}
    assert {"openat", "write", "read"} <= used
    assert used - allowed_calls(UNIT.read_text()) == set()


def test_the_monitor_only_reads_the_phi_store(model, calibrated, fan, tmp_path):
    """The unit mounts the store's folder read-only; a monitor on a read-only mount of a real store runs."""
    store, _ = calibrated
    text = UNIT.read_text()
    config = tomllib.loads((UNIT.parent / "monitor.toml").read_text())
    store_dir = str(Path(config["monitor"]["store"]).parent)
    assert re.search(rf"^ReadOnlyPaths=-?{re.escape(store_dir)}$", text, re.M), store_dir
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        (mount / "phi.json").write_bytes(store.read_bytes())
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        with pytest.raises(OSError):
            (mount / "probe").write_text("x")
        exe = Path(sys.executable).parent / "edge-monitor"
        proc = subprocess.run([str(exe), "--model", str(model), "--machine-id", "id_00", "--store",
                               str(mount / "phi.json"), "--input", str(fan["test_normal"][0]), "--quiet"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        subprocess.run(["umount", str(mount)])
