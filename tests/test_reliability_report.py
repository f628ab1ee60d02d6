"""bench/reliability.py's report: every part's counts in one table, and a missed target named (exit 1)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import reliability  # noqa: E402

FUZZ_ROW = {"target": "model", "inputs": 100, "clean_errors": 90, "exit0": 10, "tracebacks": 0, "hangs": 0, "crashes": 0,
            "corrupted_model_accepted": 0}
PARTS = {
    "fuzz": {"targets": [FUZZ_ROW]},
    "faults": {"kills": 3, "recoveries": 3, "torn_lines": 0, "events_lost": 0},
    "disk_full": {"tests": 2, "passed": 2},
    "soak": {"audio_hours": 8, "rss_start_mb": 55.3, "rss_peak_mb": 58.8, "rss_end_mb": 58.3, "fds_start": 4,
             "fds_end": 4, "events": 91776, "events_identical": True},
}


def test_a_clean_run_meets_every_target():
    text, missed = reliability.report(PARTS)
    assert missed == [] and "All met." in text
    assert "| model | 100 | 90 | 10 | 0 | 0 | 0 | 0 |" in text and "| 8 | 55.3 | 58.8 | 58.3 | 4 | 4 | 91776 | True |" in text
    assert "2 of 2 checks passed" in text and "not run: `make arm64`" in text


def test_each_missed_target_is_named():
    bad = {**PARTS, "fuzz": {"targets": [{**FUZZ_ROW, "tracebacks": 2}]},
           "faults": {**PARTS["faults"], "events_lost": 1},
           "disk_full": {"tests": 2, "passed": 1},
           "soak": {**PARTS["soak"], "rss_peak_mb": 61.0},
           "arm64": {"cpu": "cortex-a72", "commands_failed": ["edge-monitor"], "events_same_but_rounding": True}}
    _, missed = reliability.report(bad)
    assert [m.split(":")[0] for m in missed] == ["fuzz model", "faults", "disk full", "soak", "arm64"]


def test_a_part_without_a_result_is_a_miss_unless_it_was_left_out():
    _, missed = reliability.report({})
    assert {m.split(":")[0] for m in missed} == {"fuzz", "faults", "disk_full", "soak"}
    text, missed = reliability.report({}, skipped=("fuzz", "faults", "disk_full", "soak", "arm64"))
    assert missed == [] and text.count("left out (--skip).") == 5


def test_junit_counts_read_a_pytest_report(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1"/></testsuites>')
    assert reliability.junit_counts(xml) == {"tests": 3, "passed": 1}
    assert reliability.junit_counts(tmp_path / "missing.xml") == {"tests": 1, "passed": 0}
