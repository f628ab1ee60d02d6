"""A disk that fills while edge-monitor logs events and writes evidence (issue 19, part 3): a one-line error
and exit 1, every line already written whole, no cut clip at a path an event names, and a restart after
space is freed moves the torn last line aside and appends whole lines. The disk is a 256 KiB tmpfs
(mounting needs root: CI and this machine; elsewhere the test is skipped with mount's reason)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import assert_one_line_error, cli


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs mounted in tmp_path, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True,
                              text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True, timeout=30)


def pcm(audio: np.ndarray) -> bytes:
    """Float samples -> raw s16le PCM (stdin)."""
    return np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2").tobytes()


def test_a_full_disk_leaves_whole_lines_whole_clips_and_a_torn_line_moved_aside_on_restart(model, scorer, anomaly,
                                                                                            small_disk):
    phi = float(np.quantile(scorer.score_audio(anomaly), 0.9))
    events, evidence = small_disk / "events.jsonl", small_disk / "evidence"
    args = ["--model", model, "--phi", phi, "--input", "-", "--pcm-rate", "16000", "--window", "1",
            "--events", events, "--evidence-dir", evidence, "--evidence-seconds", "1", "-q"]
    proc = cli("edge-monitor", *args, input=pcm(np.tile(anomaly, 30)))  # 300 s of a real anomaly: fills 256 KiB
    assert_one_line_error(proc)
    assert "Error: disk: No space left on device" in proc.stderr, proc.stderr

    text = events.read_text()
    *whole, torn = text.split("\n")  # torn: what follows the last newline ("" when the last line was whole)
    records = [json.loads(line) for line in whole]  # every line written is whole JSON
    assert len(records) > 100 and records[0]["event"] == "start"
    named = [r["evidence"]["audio"] for r in records if r["event"] == "anomaly"]
    present = [p for p in dict.fromkeys(named) if Path(p).exists()]
    for path in present:  # a clip at a named path is whole: its FLAC decodes to the length its header gives
        samples, rate = sf.read(path, dtype="int16")
        assert rate == 16000 and len(samples) == sf.info(path).frames > 16000
    assert 0 < len(present) < len(set(named))  # some clips were written, the disk refused others
    assert not list(evidence.glob(".*.tmp"))  # no temporary left behind

    for clip in evidence.glob("*.flac"):  # free the space
        clip.unlink()
    again = cli("edge-monitor", *args, input=pcm(anomaly))
    assert again.returncode == 0, again.stderr
    aside = list(small_disk.glob("events.jsonl.torn-*"))
    if torn:
        assert len(aside) == 1 and f"moved to {aside[0]}" in again.stderr and aside[0].read_text() == torn
    else:
        assert not aside
    new = events.read_text()
    assert new.startswith("\n".join(whole) + "\n") and new.endswith("\n")
    restarted = [json.loads(line) for line in new.splitlines()[len(whole):]]
    assert restarted[0]["event"] == "start" and restarted[-1]["event"] == "summary"


def test_a_torn_line_that_cannot_be_saved_stops_the_start_and_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    from edge_asd.core.errors import EdgeAsdError
    from edge_asd.firmware_io import sinks

    def disk_full(path, data):
        raise EdgeAsdError(f"{path}: cannot write (No space left on device); the previous file is unchanged")

    log = tmp_path / "events.jsonl"
    log.write_bytes(b'{"event": "start"}\n{"event": "anom')
    monkeypatch.setattr(sinks, "atomic_write_bytes", disk_full)
    with pytest.raises(EdgeAsdError, match="cut short and cannot be moved aside.*No space left"):
        sinks.open_log_for_append(log)
    assert log.read_bytes() == b'{"event": "start"}\n{"event": "anom' and list(tmp_path.iterdir()) == [log]
