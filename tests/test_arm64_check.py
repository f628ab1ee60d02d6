"""bench/arm64_check.py: the device path on 64-bit ARM (qemu-user, Debian bookworm arm64) against x86.

The helpers' tests run everywhere; the check itself (about 7 minutes under emulation) is marked slow and runs
only when asked (``EDGE_ASD_ARM64=1``) where its cached arm64 root exists (``make arm64`` builds it, ~10 min the
first time): the default run, CI included, never debootstraps nor emulates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import arm64_check as a  # noqa: E402
import arm64_root as r  # noqa: E402


def test_cpuinfo_is_the_pi_kernels_for_each_core():
    text = r.cpuinfo_text("cortex-a72")
    blocks = [b for b in text.split("\n\n") if b]
    assert len(blocks) == 4 and [b.splitlines()[0] for b in blocks] == [f"processor\t: {i}" for i in range(4)]
    fields = dict(line.split(":", 1) for line in blocks[0].splitlines())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["CPU implementer"] == "0x41" and fields["CPU part"] == "0xd08" and fields["CPU architecture"] == "8"
    assert "asimd" in fields["Features"].split() and "atomics" not in fields["Features"].split()  # ARMv8.0
    pi5 = r.cpuinfo_text("cortex-a76", cores=1)
    assert "CPU part\t: 0xd0b" in pi5 and "asimddp" in pi5 and pi5.count("processor") == 1
    with pytest.raises(ValueError, match="cortex-a72"):
        r.cpuinfo_text("cortex-a53")


def test_ulp_distance_counts_float32_steps_across_zero():
    one = np.float32(1.0)
    up3 = np.nextafter(np.nextafter(np.nextafter(one, 2, dtype=np.float32), 2, dtype=np.float32), 2, dtype=np.float32)
    tiny = np.float32(1e-45)   # the smallest float32 denormal
    got = a.ulp_distance(np.array([one, one, tiny, 0.0, 1500.0], np.float32),
                         np.array([up3, one, -tiny, -0.0, 1500.0001], np.float32))
    assert got.tolist() == [3, 0, 2, 0, 1]   # 1500 + 1e-4 rounds to the next float32 (spacing 1.2e-4)


def test_compare_reports_the_worst_difference_and_refuses_other_shapes():
    x86 = np.array([983.6385, 1727.9739, 0.5], np.float32)
    arm = x86.copy()
    arm[1] = np.nextafter(arm[1], np.float32(np.inf), dtype=np.float32)
    got = a.compare(x86, arm)
    assert got["n"] == 3 and got["max_ulp"] == 1
    assert got["max_abs"] == pytest.approx(2.0 ** -13) and got["max_rel"] == pytest.approx(2.0 ** -13 / 1727.9739, rel=1e-6)
    assert a.compare(x86, x86) == {"n": 3, "max_abs": 0.0, "max_rel": 0.0, "max_ulp": 0}
    assert a.merge(got, a.compare(x86, x86))["max_ulp"] == 1
    with pytest.raises(ValueError, match="shapes differ"):
        a.compare(x86, x86[:2])


def test_events_compare_without_clocks_and_paths():
    line = {"event": "summary", "frames": 604, "max_score": 823.29296875, "schema": 3, "compute_s": 0.098,
            "real_time_factor": 0.0098, "wall_time": "2026-12-01T21:23:33.229Z",
            "input": "/work/shared/data/machines/fan/test/normal_id_00_00000010.flac"}
    arm = {**line, "compute_s": 4.1, "real_time_factor": 0.41, "wall_time": "2026-12-01T21:40:00.000Z",
           "input": "/mnt/data/machines/fan/test/normal_id_00_00000010.flac"}
    x86_events, arm_events = a.comparable_events([json.dumps(line)]), a.comparable_events([json.dumps(arm)])
    assert x86_events == arm_events and x86_events[0]["input"] == "normal_id_00_00000010.flac"
    assert "compute_s" not in x86_events[0]
    other = a.comparable_events([json.dumps({**arm, "max_score": 823.2930297851562})])
    assert other != x86_events   # one float32 ulp in a score is a difference...
    assert a.same_but_rounding(other, x86_events)   # ...that rounding explains
    later = a.comparable_events([json.dumps({**arm, "frames": 605})])
    assert not a.same_but_rounding(later, x86_events) and not a.same_but_rounding(x86_events, x86_events * 2)
    assert not a.same_but_rounding([{"score": 823.3}], [{"score": 823.4}]) and not a.same_but_rounding(1.0, "1.0")


MAX_ULP = 8   # measured: 3 (frame scores), 2 (clip scores) with the cortex-a72 cpuinfo; 23 without XNNPACK


def _root_ready() -> str | None:
    root = Path(os.environ.get("EDGE_ASD_ARM64_ROOT", r.DEFAULT_ROOT))
    if os.environ.get("EDGE_ASD_ARM64") != "1":
        return "the arm64 check runs on request: EDGE_ASD_ARM64=1 (or make arm64)"
    if os.geteuid() != 0:
        return "needs root (chroot, bind mounts)"
    if not (root / r.DEBOOTSTRAP_DONE).exists() or not (root / r.DEPS_DONE).exists():
        return f"no cached arm64 root at {root} (make arm64 builds it, ~10 min)"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_root_ready() is not None, reason=str(_root_ready()))
def test_device_path_on_arm64_matches_x86(int8_model, data_root, tmp_path):
    out = tmp_path / "arm64.json"
    root = os.environ.get("EDGE_ASD_ARM64_ROOT", str(r.DEFAULT_ROOT))
    proc = subprocess.run([sys.executable, str(BENCH / "arm64_check.py"), "--model", str(int8_model[0]),
                           "--data", str(data_root), "--root", root, "--work", str(tmp_path), "--json", str(out)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["commands_failed"] == [] and len(got["commands_ok"]) == 7, got
    assert got["xnnpack_arm"] and got["logmel_max_ulp"] == 0
    assert got["phi_arm"] == pytest.approx(got["phi_x86"], rel=1e-6)
    assert got["max_ulp"] <= MAX_ULP and got["events_same_but_rounding"], got
    assert got["finetune_max_rel_diff"] <= 1e-4, got   # measured 1.3e-6 (3 numpy updates, then int8)
