"""Soak test of edge-monitor: hours of real audio at accelerated speed; memory and descriptors over time;
events checked against a straight run of the same audio.

The soak run is the real CLI as a subprocess, fed real fan id_00 test clips (anomalous and normal, looped
to ``--hours`` of audio) as raw s16le PCM on stdin as fast as it reads them, with ``--window 1``,
``--events`` and ``--evidence-dir`` (the issue's worst case for memory). Every ``--sample-s`` seconds it
reads the process's VmRSS (/proc/PID/status) and open descriptors (/proc/PID/fd). RSS at start is the
first sample after the ``start`` line was written (the model loaded), at end the last one before exit;
descriptors at start and end are the fewest over the first and last five samples (an evidence clip being
written holds one more for a moment; ``fds_peak`` counts it).

The reference run is the same audio in one piece: a WAV file read with ``--input FILE`` (file blocks of
16 hops instead of stdin's 6). Every event line must be identical (wall time, input name and the time stamp
in evidence file names left out) and so must every evidence clip, byte for byte.

    .venv/bin/python bench/soak.py --model out/demo/fan.tflite --store out/demo/phi.json --machine-id 00 \\
        [--hours 8] [--json soak.json]

Prints audio hours, wall time, RSS start / peak / end (MB), growth, descriptors start / end, events and
whether they are identical; ``--json`` writes the same keys. Exit 1 when the events differ or a run fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
"""Hz: the fan clips' rate and the model's."""
MB = 1 << 20


def fan_clips(data: Path) -> list[np.ndarray]:
    """The fan id_00 test clips (anomalies, then normals) as int16 samples at 16 kHz."""
    paths = sorted((data / "machines" / "fan" / "test").glob("*_id_00_*.flac"))
    if not paths:
        sys.exit(f"soak: no fan id_00 test clips under {data}/machines/fan/test")
    clips = []
    for p in paths:
        samples, rate = sf.read(p, dtype="int16")
        assert rate == RATE and samples.ndim == 1, p
        clips.append(samples)
    return clips


def stream(clips: list[np.ndarray], n_samples: int):
    """int16 blocks: the clips in turn, looped, ``n_samples`` in all."""
    k = 0
    while n_samples > 0:
        block = clips[k % len(clips)][:n_samples]
        yield block
        n_samples -= len(block)
        k += 1


def proc_stats(pid: int) -> tuple[int, int] | None:
    """(VmRSS in kB, open descriptors) of process ``pid``, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None


def monitor_cmd(args, source: str, out: Path) -> list[str]:
    exe = Path(sys.executable).parent / "edge-monitor"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge_asd.edge.cli.monitor"]
    cmd += ["--model", str(args.model), "--input", source, "--window", args.window,
            "--events", str(out / "events.jsonl"), "--evidence-dir", str(out / "evidence"), "-q"]
    if args.phi is not None:
        cmd += ["--phi", str(args.phi)]
    else:
        cmd += ["--store", str(args.store)] + (["--machine-id", args.machine_id] if args.machine_id else [])
    return cmd + (["--pcm-rate", str(RATE)] if source == "-" else [])


def run(cmd: list[str], blocks, sample_s: float, events: Path) -> dict:
    """Run ``cmd``, feeding ``blocks`` (int16 arrays) on stdin when given; sample its RSS and descriptors."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if blocks is not None else subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples = []  # (wall s, RSS kB, descriptors, monitoring started)

    def watch():
        while proc.poll() is None:
            stats = proc_stats(proc.pid)
            if stats is not None:
                samples.append((time.perf_counter() - t0, *stats, events.exists() and events.stat().st_size > 0))
            time.sleep(sample_s)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stderr = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    reader.start()
    if blocks is not None:
        try:
            for block in blocks:
                proc.stdin.write(block.astype("<i2").tobytes())
        except BrokenPipeError:
            pass
        proc.stdin.close()
    proc.wait()
    watcher.join()
    reader.join()
    if proc.returncode != 0:
        sys.exit(f"soak: {' '.join(cmd)} exited {proc.returncode}:\n{stderr[0].decode(errors='replace')[-2000:]}")
    return {"wall_s": time.perf_counter() - t0, "samples": samples}


def comparable(path: Path) -> list[dict]:
    """The event lines without what differs between two runs of the same audio: wall time, input name, the
    time stamp and input name in evidence paths, compute time."""
    lines = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        record.pop("wall_time")
        record.pop("input")
        if record.get("evidence"):
            record["evidence"] = {k: re.search(r"_w\d+_f\d+\.\w+$", v).group() for k, v in record["evidence"].items()}
        if record["event"] == "summary":
            for key in ("compute_s", "real_time_factor"):
                record.pop(key)
        lines.append(record)
    return lines


def clip_digests(folder: Path) -> dict[str, str]:
    """{``_w<window>_f<frame>.flac``: sha256} of the evidence clips in ``folder``."""
    return {re.search(r"_w\d+_f\d+\.\w+$", p.name).group(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.glob("*.flac")}


def soak(args) -> dict:
    clips = fan_clips(args.data)
    n_samples = round(args.hours * 3600 * RATE)
    with tempfile.TemporaryDirectory(prefix="edge-soak-") as tmp:
        tmp = Path(tmp)
        (tmp / "soak").mkdir()
        got = run(monitor_cmd(args, "-", tmp / "soak"), stream(clips, n_samples), args.sample_s,
                  tmp / "soak" / "events.jsonl")
        started = [s for s in got["samples"] if s[3]]
        if not started:
            sys.exit("soak: no RSS sample after the start line (a run too short for --sample-s?)")
        lines = comparable(tmp / "soak" / "events.jsonl")
        if args.trace is not None:
            args.trace.write_text("wall_s,rss_kb,fds\n" + "".join(f"{t:.2f},{r},{f}\n" for t, r, f, _ in got["samples"]))
        result = {
            "audio_hours": round(n_samples / RATE / 3600, 4),
            "wall_s": round(got["wall_s"], 1),
            "rss_start_mb": round(started[0][1] * 1024 / MB, 1),
            "rss_peak_mb": round(max(s[1] for s in got["samples"]) * 1024 / MB, 1),
            "rss_end_mb": round(started[-1][1] * 1024 / MB, 1),
            "fds_start": min(s[2] for s in started[:5]),  # a clip being written holds one more for a moment
            "fds_end": min(s[2] for s in started[-5:]),
            "fds_peak": max(s[2] for s in started),
            "samples": len(got["samples"]),
            "events": sum(r["event"] == "anomaly" for r in lines),
            "lines": len(lines),
            "evidence_clips": len(list((tmp / "soak" / "evidence").glob("*.flac"))),
            "events_identical": None,
        }
        result["rss_growth_mb"] = round(result["rss_end_mb"] - result["rss_start_mb"], 1)
        if not args.no_reference:
            wav = tmp / "straight.wav"
            with wave.open(str(wav), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(RATE)
                for block in stream(clips, n_samples):
                    w.writeframes(block.astype("<i2").tobytes())
            (tmp / "straight").mkdir()
            run(monitor_cmd(args, str(wav), tmp / "straight"), None, args.sample_s, tmp / "straight" / "events.jsonl")
            wav.unlink()
            result["events_identical"] = (lines == comparable(tmp / "straight" / "events.jsonl")
                                          and clip_digests(tmp / "soak" / "evidence")
                                          == clip_digests(tmp / "straight" / "evidence"))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="the .tflite (or .onnx) model")
    ap.add_argument("--store", type=Path, help="phi store (edge-calibrate); or --phi")
    ap.add_argument("--machine-id", default=None)
    ap.add_argument("--phi", type=float, default=None, help="threshold instead of the store's")
    ap.add_argument("--hours", type=float, default=8.0, help="hours of audio [8]")
    ap.add_argument("--window", default="1", help="edge-monitor --window [1: 1-s windows]")
    ap.add_argument("--sample-s", type=float, default=1.0, help="seconds between RSS samples [1]")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("EDGE_ASD_DATA", REPO.parent / "shared" / "data")),
                    help="real data folder [../shared/data or $EDGE_ASD_DATA]")
    ap.add_argument("--no-reference", action="store_true", help="skip the straight run (events_identical: null)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--trace", type=Path, default=None, help="write every sample here (CSV: wall s, RSS kB, fds)")
    args = ap.parse_args(argv)
    if args.phi is None and args.store is None:
        ap.error("give --store (with --machine-id) or --phi")
    r = soak(args)
    same = {None: "not checked", True: "yes", False: "NO"}[r["events_identical"]]
    print(f"audio {r['audio_hours']:g} h in {r['wall_s']:.0f} s wall; RSS start {r['rss_start_mb']:.1f} MB, "
          f"peak {r['rss_peak_mb']:.1f} MB, end {r['rss_end_mb']:.1f} MB (growth {r['rss_growth_mb']:+.1f} MB); "
          f"descriptors {r['fds_start']} -> {r['fds_end']} (peak {r['fds_peak']}); {r['events']} events "
          f"({r['lines']} lines, {r['evidence_clips']} evidence clips); identical to the straight run: {same}")
    if args.json is not None:
        args.json.write_text(json.dumps(r, indent=1) + "\n")
    return 0 if r["events_identical"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
