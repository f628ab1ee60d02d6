"""The device path on 64-bit ARM, under qemu-user, against the same commands on this x86 machine.

Builds once (cached, outside the repository) a Debian bookworm arm64 userland, the base of Raspberry Pi OS
64-bit, with ``debootstrap --arch=arm64 --foreign`` and its second stage run through qemu-user-static;
installs the kit's ``edge`` and ``finetune`` extras there from their aarch64 wheels (the same versions of
numpy, ai-edge-litert, soxr, soundfile and flatbuffers as this machine's environment), then runs on real
clips (fan id_00), here and in the root: edge-inspect, edge-calibrate (phi), edge-monitor --events on a
normal and two anomalous test clips, edge-score of the test folder, the log-mel features and frame scores
of three clips (edge_asd.edge.runtime.scorer.Scorer), and a short edge-finetune followed by edge-score of
the fine-tuned model. Prints one table comparing phi, scores (largest absolute and relative difference and
float32 ulp), events and the fine-tuned model's scores; ``--json PATH`` writes the figures.

The root, and how commands run in it under qemu (an ARM /proc/cpuinfo, ``QEMU_CPU`` = cortex-a72 for a
Raspberry Pi 4, default, or cortex-a76 for a Pi 5): :mod:`arm64_root`. This module runs the commands on both
sides and compares them. Wall times are qemu's, not a Pi's.

    sudo .venv/bin/python bench/arm64_check.py [--root ~/.cache/edge-asd/arm64-root] [--cpu cortex-a72]
        [--model fan.tflite] [--json out/arm64/arm64.json]

Needs root (debootstrap, chroot, mounts) and, the first time, the network (Debian's packages, PyPI).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from arm64_root import (
    CPUS,
    DEFAULT_ROOT,
    REPO,
    VENV,
    build_root,
    chroot,
    emulated_hwcaps,
    ensure_binfmt,
    ensure_host_tools,
    install_kit,
    run,
)

TIMING_KEYS = ("wall_time", "compute_s", "real_time_factor")   # event-line fields that time the machine
FINETUNE_STEPS = 3    # updates of the short fine-tune; --minutes is set far above what they take, so both run all

# Run inside the root and here: log-mel features and frame scores of clips -> one .npz.
FRAMES_SCRIPT = """
import sys, numpy as np
from edge_asd.core.features import logmel
from edge_asd.edge.runtime.scorer import Scorer
from edge_asd.firmware_io.audio_file import read_audio
scorer = Scorer(sys.argv[1])
out = {}
for i, clip in enumerate(sys.argv[3:]):
    samples = read_audio(clip, scorer.features.sample_rate)
    out[f"logmel_{i}"] = logmel(samples, scorer.features)
    out[f"scores_{i}"] = scorer.score_audio(samples)
np.savez(sys.argv[2], **out)
"""


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 units in the last place between a and b (same shape), as int64.

    The float32 bit patterns are mapped to integers that are ordered as the floats are (negative floats
    mirrored below zero), so the difference counts the representable float32 values between them; +0 and
    -0 are 0 apart.
    """
    def ordered(x):
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)
    return np.abs(ordered(a) - ordered(b))


def compare(a, b) -> dict:
    """Largest absolute and relative difference (to |a|) and float32 ulp distance between two score arrays.

    Raises:
        ValueError: the shapes differ (another number of frames or clips is a failure of its own).
    """
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return {"n": 0, "max_abs": 0.0, "max_rel": 0.0, "max_ulp": 0}
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    rel = diff / np.maximum(np.abs(a.astype(np.float64)), np.finfo(np.float32).tiny)
    return {"n": int(a.size), "max_abs": float(diff.max()), "max_rel": float(rel.max()),
            "max_ulp": int(ulp_distance(a, b).max())}


def merge(*results: dict) -> dict:
    """The worst of several ``compare`` results."""
    return {"n": sum(r["n"] for r in results), "max_abs": max(r["max_abs"] for r in results),
            "max_rel": max(r["max_rel"] for r in results), "max_ulp": max(r["max_ulp"] for r in results)}


def comparable_events(lines: list[str]) -> list[dict]:
    """Event lines (JSON text) with what must differ between two machines taken out: the clocks
    (TIMING_KEYS) and paths (``input``) cut to their file names."""
    events = []
    for line in lines:
        event = json.loads(line)
        for key in TIMING_KEYS:
            event.pop(key, None)
        if isinstance(event.get("input"), str):
            event["input"] = Path(event["input"]).name
        events.append(event)
    return events


def same_but_rounding(a, b, rel: float = 1e-5) -> bool:
    """Whether two JSON values are equal, floats within ``rel`` of each other (events whose scores differ
    by float32 rounding: same lines, frames, times, states)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and bool(np.isclose(a, b, rtol=rel, atol=0))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_but_rounding(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_but_rounding(u, v, rel) for u, v in zip(a, b))
    return a == b


# Building the root ----------------------------------------------------------------------------------------

class Side:
    """Where one run happens: ``bin`` holds the console scripts, ``data`` and ``work`` are the paths of the
    data folder and of this side's work folder as the commands see them."""

    def __init__(self, name: str, work: Path, data: str, workpath: str, bin: str, root: Path | None = None,
                 cpu: str = "", data_host: Path | None = None):
        self.name, self.work, self.data, self.workpath, self.bin = name, work, data, workpath, bin
        self.root, self.cpu, self.data_host = root, cpu, data_host
        self.ok: dict[str, bool] = {}
        self.errors: dict[str, str] = {}
        self.xnnpack = False   # LiteRT said it created its XNNPACK delegate

    def __call__(self, label: str, tool: str, *args: str) -> str:
        argv = [f"{self.bin}/{tool}", *args]
        if self.root is None:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        else:
            proc = chroot(self.root, self.cpu, argv, {self.data_host: self.data, self.work: self.workpath})
        self.ok[label] = self.ok.get(label, True) and proc.returncode == 0
        self.xnnpack = self.xnnpack or "XNNPACK delegate" in proc.stderr
        if proc.returncode != 0:
            self.errors[label] = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            print(f"{self.name}: {label} failed: {proc.stderr[-2000:]}", file=sys.stderr)
        return proc.stdout


def run_commands(side: Side, clips: dict[str, list[str]]) -> dict:
    """The device commands on one side; returns what is compared. ``clips`` hold paths relative to data."""
    d, w = side.data, side.workpath
    model, store = f"{w}/fan.tflite", f"{w}/phi.json"
    at = lambda names: [f"{d}/{n}" for n in names]  # noqa: E731
    start = time.monotonic()
    out: dict = {"inspect": side("edge-inspect", "edge-inspect", "--json", model)}
    cal = side("edge-calibrate", "edge-calibrate", "--model", model, "--machine-id", "00", "--store", store, "-q",
               *at(clips["train"]))
    out["calibrate"] = json.loads(cal) if cal.strip() else None
    for clip in at(clips["monitor"]):
        side("edge-monitor --events", "edge-monitor", "--model", model, "--machine-id", "00", "--store", store,
             "--input", clip, "--events", f"{w}/events.jsonl", "-q")
    events = side.work / "events.jsonl"
    out["events"] = comparable_events(events.read_text().splitlines()) if events.exists() else []
    out["score"] = json.loads(side("edge-score", "edge-score", "--model", model, "--machine-id", "00", "--json", "-q",
                                   f"{d}/{clips['test']}")
                              or "null")
    side("scorer.score_audio", "python", "-c", FRAMES_SCRIPT, model, f"{w}/frames.npz", *at(clips["frames"]))
    frames = side.work / "frames.npz"
    out["frames"] = dict(np.load(frames)) if frames.exists() else {}
    shutil.copy(side.work / "fan.tflite", side.work / "ft.tflite")
    ft = side("edge-finetune", "edge-finetune", "--model", f"{w}/ft.tflite", "--machine-id", "00", "--store", store,
              "--steps", str(FINETUNE_STEPS), "--minutes", "600", "--seed", "0", "-q", *at(clips["train"]))
    out["finetune"] = json.loads(ft) if ft.strip() else None
    out["finetune_score"] = json.loads(side("edge-score (fine-tuned)", "edge-score", "--model", f"{w}/ft.tflite",
                                            "--machine-id", "00", "--json", "-q", f"{d}/{clips['test']}") or "null")
    out["wall_s"] = time.monotonic() - start
    return out


def clip_scores(score_json: dict | None) -> np.ndarray:
    """(n_clips, 2) max and mean score per clip of an edge-score --json result, in file-name order."""
    if not score_json:
        return np.zeros((0, 2), np.float32)
    clips = sorted(score_json["clips"], key=lambda c: Path(c["file"]).name)
    return np.array([[c["max_score"], c["mean_score"]] for c in clips], dtype=np.float32)


def pick_clips(data: Path) -> dict:
    """fan id_00 paths relative to ``data``: the training normals (calibrate, fine-tune), one normal and two
    anomalous test clips (edge-monitor, frame scores) and the test folder (edge-score)."""
    rel = lambda pattern: sorted(str(Path(p).relative_to(data)) for p in glob.glob(str(data / pattern)))  # noqa: E731
    normal, anomaly = rel("machines/fan/test/normal_id_00_*.flac"), rel("machines/fan/test/anomaly_id_00_*.flac")
    monitor = [normal[0], *anomaly[:2]]
    return {"train": rel("machines/fan/train/normal_id_00_*.flac"), "monitor": monitor, "frames": monitor,
            "test": "machines/fan/test"}


def compare_runs(x86: dict, arm: dict) -> dict:
    """The figures of the report from the two sides' ``run_commands`` results."""
    frames = [compare(x86["frames"][k], arm["frames"][k]) for k in sorted(x86["frames"]) if k.startswith("scores_")]
    logmel = [compare(x86["frames"][k], arm["frames"][k]) for k in sorted(x86["frames"]) if k.startswith("logmel_")]
    clips = compare(clip_scores(x86["score"]), clip_scores(arm["score"]))
    event_scores = compare([e["score"] for e in x86["events"] if "score" in e],
                           [e["score"] for e in arm["events"] if "score" in e]) \
        if len(x86["events"]) == len(arm["events"]) else {"n": 0, "max_abs": np.inf, "max_rel": np.inf, "max_ulp": -1}
    scores = merge(clips, *frames)
    finetuned = compare(clip_scores(x86["finetune_score"]), clip_scores(arm["finetune_score"]))
    phi = lambda run: run["calibrate"]["phi"] if run["calibrate"] else None  # noqa: E731
    ft_phi = lambda run: run["finetune"].get("phi") if run["finetune"] else None  # noqa: E731
    return {"phi_x86": phi(x86), "phi_arm": phi(arm), "scores": scores, "frames": merge(*frames), "clips": clips,
            "logmel": merge(*logmel), "event_scores": event_scores,
            "events": (len(x86["events"]), len(arm["events"])), "events_identical": x86["events"] == arm["events"],
            "events_same_but_rounding": same_but_rounding(x86["events"], arm["events"]),
            "anomaly_events": (sum(e["event"] == "anomaly" for e in x86["events"]),
                               sum(e["event"] == "anomaly" for e in arm["events"])),
            "finetune_phi": (ft_phi(x86), ft_phi(arm)), "finetuned": finetuned,
            "inspect_identical": inspect_view(x86["inspect"]) == inspect_view(arm["inspect"])}


def inspect_view(text: str) -> dict | None:
    """edge-inspect --json output without the model's path."""
    if not text.strip():
        return None
    info = json.loads(text)
    info.pop("path", None)
    return info


def fmt(r: dict) -> str:
    return f"max |diff| {r['max_abs']:.3g}, rel {r['max_rel']:.2g}, {r['max_ulp']} ulp (n={r['n']})"


def print_table(c: dict, cpu: str, x86: Side, arm: Side, wall: tuple[float, float]) -> None:
    rows = [("phi (edge-calibrate)", f"{c['phi_x86']}", f"{c['phi_arm']}",
             "identical" if c["phi_x86"] == c["phi_arm"] else f"{abs(c['phi_x86'] - c['phi_arm']):.3g}"),
            ("log-mel features", "", "", "bit-identical" if c["logmel"]["max_ulp"] == 0 else fmt(c["logmel"])),
            ("frame scores (3 clips)", "", "", fmt(c["frames"])),
            ("clip max/mean (edge-score)", "", "", fmt(c["clips"])),
            ("edge-monitor event lines", str(c["events"][0]), str(c["events"][1]),
             "identical" if c["events_identical"] else
             f"{'same but rounding' if c['events_same_but_rounding'] else 'differ'}; scores {fmt(c['event_scores'])}"),
            ("  of them anomaly events", str(c["anomaly_events"][0]), str(c["anomaly_events"][1]), ""),
            ("edge-inspect --json", "", "", "identical" if c["inspect_identical"] else "differ"),
            ("phi after edge-finetune", f"{c['finetune_phi'][0]}", f"{c['finetune_phi'][1]}", ""),
            ("fine-tuned clip scores", "", "", fmt(c["finetuned"])),
            ("LiteRT XNNPACK delegate", str(x86.xnnpack), str(arm.xnnpack), ""),
            ("commands ok", str(sum(x86.ok.values())), str(sum(arm.ok.values())), f"of {len(x86.ok)}"),
            ("wall time, s", f"{wall[0]:.0f}", f"{wall[1]:.0f} (qemu, not a Pi)", "")]
    head = ("", "x86_64 (this machine)", f"arm64 (qemu {cpu})", "difference")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def qemu_version() -> str:
    out = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the cached arm64 root (built when missing)")
    ap.add_argument("--cpu", choices=sorted(CPUS), default="cortex-a72", help="QEMU_CPU: cortex-a72 = Pi 4, cortex-a76 = Pi 5")
    ap.add_argument("--model", type=Path, help="int8 .tflite model (default: out/demo/fan.tflite, else train one)")
    ap.add_argument("--data", type=Path, help="data folder (default: ../shared/data or $EDGE_ASD_DATA)")
    ap.add_argument("--work", type=Path, default=REPO / "out" / "arm64", help="work folder (models, outputs)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("needs root: debootstrap, chroot and bind mounts")
    from edge_asd.datasets.locate import require_data_root
    data = (args.data or require_data_root()).resolve()
    work = args.work.resolve()
    model = args.model or next((p for p in [REPO / "out/demo/fan.tflite"] if p.exists()), None) or train_model(data, work)

    ensure_host_tools()
    ensure_binfmt()
    build_root(args.root)
    install_kit(args.root, args.cpu)
    hwcaps = emulated_hwcaps(args.root, args.cpu)

    clips = pick_clips(data)
    sides = {}
    for name in ("x86", "arm"):
        sub = work / name
        if sub.exists():
            shutil.rmtree(sub)
        sub.mkdir(parents=True)
        shutil.copy(model, sub / "fan.tflite")
        sides[name] = Side("x86", sub, str(data), str(sub), str(Path(sys.executable).parent)) if name == "x86" else \
            Side("arm64", sub, "/mnt/data", "/mnt/work", f"{VENV}/bin", args.root, args.cpu, data)
    runs = {name: run_commands(side, clips) for name, side in sides.items()}
    c = compare_runs(runs["x86"], runs["arm"])
    x86, arm = sides["x86"], sides["arm"]
    print(f"arm64 check: Debian bookworm arm64 root under {qemu_version()}, QEMU_CPU={args.cpu} "
          f"(HWCAP {' '.join(hwcaps) or 'without atomics, asimddp, sve'}); model {model}")
    print_table(c, args.cpu, x86, arm, (runs["x86"]["wall_s"], runs["arm"]["wall_s"]))
    ok = [label for label in x86.ok if x86.ok[label] and arm.ok.get(label)]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "arm64": True, "cpu": args.cpu, "qemu": qemu_version(), "userland": "debian bookworm arm64",
            "phi_x86": c["phi_x86"], "phi_arm": c["phi_arm"], "max_abs_score_diff": c["scores"]["max_abs"],
            "max_rel_score_diff": c["scores"]["max_rel"], "max_ulp": c["scores"]["max_ulp"],
            "logmel_max_ulp": c["logmel"]["max_ulp"], "events_identical": c["events_identical"],
            "events_same_but_rounding": c["events_same_but_rounding"],
            "events": c["events"][1], "finetune_max_abs_diff": c["finetuned"]["max_abs"],
            "finetune_max_rel_diff": c["finetuned"]["max_rel"], "finetune_max_ulp": c["finetuned"]["max_ulp"], "finetune_phi": list(c["finetune_phi"]),
            "xnnpack_arm": arm.xnnpack, "hwcaps": hwcaps, "commands_ok": ok,
            "commands_failed": sorted(set(x86.ok) - set(ok)), "errors": {"x86": x86.errors, "arm": arm.errors},
            "timings": "none reported: qemu's are not a Pi's"}, indent=1) + "\n")
    return 0 if len(ok) == len(x86.ok) else 1


def train_model(data: Path, work: Path) -> Path:
    """A small fan id_00 model (120 updates) converted to int8, with this environment's edge-train and edge-convert."""
    work.mkdir(parents=True, exist_ok=True)
    model = work / "fan.tflite"
    if not model.exists():
        bin = Path(sys.executable).parent
        run([bin / "edge-train", data, "--machine-type", "fan", "--machine-id", "00", "--epochs", 4,
             "--batches-per-epoch", 30, "--something-else", data / "something_else/train", "--out", work / "fan.pt", "-q"])
        run([bin / "edge-convert", work / "fan.pt", "--to", "tflite", "--int8", "--calibration", data, "--out", model])
    return model


if __name__ == "__main__":
    sys.exit(main())
