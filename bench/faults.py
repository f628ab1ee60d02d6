"""Kill -9 while logging: faults injected, recoveries and events lost, counted.

    python bench/faults.py --model out/reliability/fan.tflite --kills 20 --json out/reliability/faults.json

edge-monitor streams real fan id_00 test clips (raw s16le PCM on stdin, as fast as it scores, the clips four
times over) with 1-s windows and phi so low that every window opens with an alarm and an anomaly event and
closes with a verdict (heavy logging, every line fsynced) into one events file. Each
run is killed with SIGKILL after a random delay and restarted on the same file, ``--kills`` times, then a last
run ends cleanly. After each kill it checks:

* **events lost**: a line the killed process printed on stdout (the monitor writes the fsynced file first) that
  the events file does not hold, or a complete line present before a restart and missing after it;
* **recoveries**: the restart started (its ``start`` line follows) and the file still reads as JSON lines, a
  torn last line (a line cut by the kill) moved aside or ended by the restart, never glued to the next line.

Prints one table and, with ``--json``, writes ``{"kills", "recoveries", "events_lost", "torn_lines",
"lines", "wall_s"}``. Runs with any model file and any data root with a fan-like layout (``--data``,
``--machine-type``, ``--machine-id``); the timings are this machine's, not a device's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
import numpy as np

from edge_asd.core.commands import script_help, setup_logging, user_errors
from edge_asd.core.errors import EdgeAsdError
from edge_asd.datasets.locate import local_data_root
from edge_asd.firmware_io.audio_file import read_audio

MONITOR = Path(sys.executable).parent / "edge-monitor"


def stream_pcm(data: Path, machine_type: str, machine_id: str, rate: int) -> bytes:
    """The machine ID's test clips, each read mono at ``rate`` Hz, back to back four times as s16le bytes."""
    clips = sorted((data / "machines" / machine_type / "test").glob(f"*_{machine_id}_*"))
    if not clips:
        raise EdgeAsdError(f"no {machine_type} {machine_id} test clips under {data}")
    audio = np.tile(np.concatenate([read_audio(c, rate) for c in clips]), 4)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def complete_lines(path: Path) -> list[str]:
    """The events file's lines that end with a newline (a torn last line is not one)."""
    text = path.read_text() if path.exists() else ""
    return text.split("\n")[:-1]


def run_once(model: Path, events: Path, pcm: bytes, kill_after_s: float | None) -> tuple[list[str], int]:
    """One edge-monitor run on ``pcm``; SIGKILLed after ``kill_after_s`` (None: to the end). Returns the lines it
    printed on stdout and its exit status."""
    proc = subprocess.Popen([str(MONITOR), "--model", str(model), "--machine-id", "id_00", "--phi", "1e-6",
                             "--window", "1", "--input", "-", "--events", str(events), "--quiet"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()

    def feed():
        try:
            proc.stdin.write(pcm)
            proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    if kill_after_s is not None:
        time.sleep(kill_after_s)
        proc.send_signal(signal.SIGKILL)
    status = proc.wait(timeout=600)
    reader.join(10)
    return [line.decode(errors="replace").rstrip("\n") for line in out if line.endswith(b"\n")], status


def inject(model: Path, pcm: bytes, kills: int, seed: int, workdir: Path) -> dict:
    """``kills`` SIGKILLs at random delays, each followed by a restart, then a clean run; the counts."""
    rng = random.Random(seed)
    events = workdir / "events.jsonl"
    lost = recovered = torn = 0
    start = time.monotonic()
    for i in range(kills + 1):
        before = complete_lines(events)
        torn_before = events.exists() and events.stat().st_size and not events.read_bytes().endswith(b"\n")
        printed, status = run_once(model, events, pcm, rng.uniform(1.0, 4.0) if i < kills else None)
        after = complete_lines(events)
        kept = set(after)
        lost += sum(line not in kept for line in before) + sum(line not in kept for line in printed)
        new = after[len(before):] if after[:len(before)] == before else after
        starts = [json.loads(line) for line in new if line.startswith("{")]
        if i > 0:
            torn += bool(torn_before)
            recovered += bool(starts) and starts[0].get("event") == "start"
        if i == kills and status != 0:
            raise EdgeAsdError(f"the last, clean run exited with status {status}")
    for line in complete_lines(events):
        json.loads(line)  # every complete line of the file is one JSON object
    return {"kills": kills, "recoveries": recovered, "events_lost": lost, "torn_lines": torn,
            "lines": len(complete_lines(events)), "wall_s": round(time.monotonic() - start, 1)}


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=script_help(__doc__))
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root (DCASE/MIMII layout). Default: $EDGE_ASD_DATA or ../shared/data.")
@click.option("--machine-type", default="fan", show_default=True)
@click.option("--machine-id", default="id_00", show_default=True)
@click.option("--kills", type=click.IntRange(min=1, max=10_000), default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@user_errors
def main(model_path, data, machine_type, machine_id, kills, seed, json_path):
    setup_logging(quiet=True)
    data = data or local_data_root()
    if data is None:
        raise EdgeAsdError("no data root: give --data or set EDGE_ASD_DATA")
    pcm = stream_pcm(Path(data), machine_type, machine_id, 16000)
    with tempfile.TemporaryDirectory(prefix="edge-asd-faults-") as tmp:
        result = inject(model_path, pcm, kills, seed, Path(tmp))
    click.echo("| SIGKILLs while logging | recoveries | torn lines | events lost | lines | wall s |")
    click.echo("|---|---|---|---|---|---|")
    click.echo(f"| {result['kills']} | {result['recoveries']} | {result['torn_lines']} | {result['events_lost']} | "
               f"{result['lines']} | {result['wall_s']} |")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    if result["events_lost"] or result["recoveries"] != kills:
        raise EdgeAsdError(f"{result['events_lost']} events lost, {result['recoveries']} of {kills} restarts recovered")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
