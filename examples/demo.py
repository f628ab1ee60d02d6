"""The end-to-end demo (`make demo`): real fan recordings -> BU model -> int8 TFLite -> phi -> events.

Every step runs the kit's own command-line tools, as a user would:

1. edge-train     BU (Koizumi et al. 2019) on the normal training clips of one machine ID; with 20 or
                  more, 20 % of them (whole clips) are kept out of training; with fewer, --oof-folds 5:
                  5 more models, each trained on 4/5 of the clips, score the fifth they never heard
2. edge-convert   full-integer int8 TFLite, feature config, normalization (and out-of-fold scores) inside
3. edge-calibrate phi for that machine ID from the clips kept out (with fewer: from all of them, on their
                  out-of-fold scores)
4. edge-monitor   each test clip (normal and anomalous) streamed from its file; events counted
5. edge-monitor   a 10-minute stream of real test normals as raw PCM on stdin: real-time factor

and prints clip AUC / pAUC (max FPR 0.1; clip score = max frame score, eq. 11) of the float and the
int8 model on the test split, beside the loudness reference (the same metric with the clip's RMS level
as the score: what a level meter alone gets on the same clips). Data: $EDGE_ASD_DATA or ../shared/data (see `edge-data`).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
HOLD_OUT_MIN_CLIPS = 20
HOP_S = 256 / 16000
"""The koizumi2019 preset's hop, s (a vote of n frames spans n hops)."""
"""With at least this many normal training clips, 20 % are kept out of training and phi is set on them; with
fewer, phi is set on the out-of-fold scores of all of them (edge-train --oof-folds OOF_FOLDS)."""
OOF_FOLDS = 5


def run(name: str, *args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run one of the kit's commands; stop the demo with its own error message if it fails."""
    cmd = [str(BIN / name), *map(str, args)]
    proc = subprocess.run(cmd, input=stdin, capture_output=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.decode(errors="replace"))
        sys.exit(f"demo: `{name}` failed (exit {proc.returncode})")
    return proc


def step(title: str) -> float:
    print(f"\n== {title}", file=sys.stderr, flush=True)
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="data root (default: $EDGE_ASD_DATA or ../shared/data)")
    parser.add_argument("--machine-type", default="fan")
    parser.add_argument("--machine-id", default="id_00")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batches-per-epoch", type=int, default=50)
    parser.add_argument("--stream-minutes", type=float, default=10.0)
    parser.add_argument("--lambda", dest="lam", default=None,
                        help="lambda of eq. 10 for edge-train (D, 2D, 2M or a number; default: edge-train's, D)")
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    args = parser.parse_args()

    from edge_asd.core.errors import EdgeAsdError
    from edge_asd.datasets.layout import scan
    from edge_asd.datasets.locate import require_data_root

    t_demo = time.perf_counter()
    try:
        data = args.data or require_data_root()
        clips = scan(data, machine_type=args.machine_type, machine_id=args.machine_id)
    except EdgeAsdError as e:
        sys.exit(f"demo: {e}")
    train = [c.path for c in clips if c.split == "train" and c.label == "normal"]
    test = [c for c in clips if c.split == "test"]
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt, model, store = args.out / "model.pt", args.out / f"{args.machine_type}.tflite", args.out / "phi.json"
    something_else = data / "something_else" / "train"
    print(f"data: {data}\n{args.machine_type} {args.machine_id}: {len(train)} normal training clips, "
          f"{sum(c.label == 'normal' for c in test)} normal and {sum(c.label == 'anomaly' for c in test)} anomalous test clips",
          file=sys.stderr)

    # phi should come from normal audio the model has not heard (it scores its training audio low): with
    # enough clips, edge-train keeps 20 % of them out and phi is set on those. The local set's 10 fan clips
    # are too few to spare any (one held-out split decided phi by whichever clip it held out), so below
    # HOLD_OUT_MIN_CLIPS every clip is trained on, and OOF_FOLDS more models, each trained on the other
    # folds, score the clips they never heard; edge-calibrate sets phi on those out-of-fold scores
    # (docs/calibration.md, "phi from out-of-fold scores").
    hold_out = len(train) >= HOLD_OUT_MIN_CLIPS
    t = step("1/5 edge-train (BU)" + ("; 20 % of the clips kept out for phi" if hold_out else
                                      f"; --oof-folds {OOF_FOLDS}: out-of-fold scores for phi"))
    run("edge-train", data, "--machine-type", args.machine_type, "--machine-id", args.machine_id, "--loss", "bu",
        *(["--lambda", args.lam] if args.lam else []), "--val-fraction", "0.2" if hold_out else "0",
        *([] if hold_out else ["--oof-folds", OOF_FOLDS]),
        *(["--something-else", something_else] if something_else.is_dir() else []),
        "--epochs", args.epochs, "--batches-per-epoch", args.batches_per_epoch, "--out", ckpt, "-q")
    train_s = time.perf_counter() - t

    t = step("2/5 edge-convert --to tflite --int8")
    conv = run("edge-convert", ckpt, "--to", "tflite", "--int8", "--calibration", data, "--out", model, "-q")
    print(conv.stdout.decode().strip(), file=sys.stderr)
    convert_s = time.perf_counter() - t

    held = held_out_clips(ckpt, train) if hold_out else train
    t = step(f"3/5 edge-calibrate (phi from the {len(held)} normal clips " +
             ("edge-train kept out of training)" if hold_out else "it trained on, on their out-of-fold scores)"))
    proc = run("edge-calibrate", "--model", model, "--machine-id", args.machine_id, "--store", store, "-q", *held)
    sys.stderr.write(proc.stderr.decode(errors="replace"))  # how many out-of-fold; warnings
    cal = json.loads(proc.stdout)
    print(f"phi = {cal['phi']:.1f}", file=sys.stderr)
    n_oof, left_out = cal.get("oof_recordings") or 0, [Path(p).name for p in cal.get("oof_left_out") or []]
    n_model = len(held) - n_oof - len(left_out)
    phi_source = (f"{len(held)} clips kept out of training" if hold_out else
                  f"out-of-fold scores of {n_oof} of the {len(held)} training clips ({OOF_FOLDS}-fold models that "
                  f"never heard them)" + (f", {n_model} scored by the model" if n_model else "")
                  + (f"; left out as unheard modes: {', '.join(left_out)}" if left_out else ""))
    alert = cal.get("alert") or {}
    votes = f"{alert.get('k', 1)}/{alert.get('n', 1)}" + (f" (auto; {alert['n'] * HOP_S:.2g} s)" if alert.get("choice") == "auto" else "")

    t = step("4/5 edge-monitor on every test clip")
    events = {}
    for c in test:
        proc = run("edge-monitor", "--model", model, "--machine-id", args.machine_id, "--store", store, "--input", c.path, "-q")
        events[c.path] = n_anomalies(proc.stdout)
        print(f"  {c.path.name}: {events[c.path]} event(s)", file=sys.stderr)

    t = step(f"5/5 edge-monitor on a {args.stream_minutes:g}-minute stream of real test normals (raw PCM on stdin)")
    pcm = long_stream([c.path for c in test if c.label == "normal"], args.stream_minutes)
    proc = run("edge-monitor", "--model", model, "--machine-id", args.machine_id, "--store", store, "--input", "-", stdin=pcm)
    rtf = float(re.search(r"real-time factor ([0-9.]+)", proc.stderr.decode()).group(1))
    stream_events = n_anomalies(proc.stdout)

    aucs = evaluate(ckpt, model, test)
    n_anom = [c for c in test if c.label == "anomaly"]
    n_norm = [c for c in test if c.label == "normal"]
    summary = {
        "machine": f"{args.machine_type} {args.machine_id}",
        "model": f"BU, fcn-small, koizumi2019, lambda {args.lam or 'D'}, {args.epochs * args.batches_per_epoch} updates"
                 + ("" if hold_out else f" (and {OOF_FOLDS} out-of-fold models with the same budget)"),
        "test clips": f"{len(n_norm)} normal, {len(n_anom)} anomalous",
        **auc_rows(aucs),
        "anomalous clips with an event": f"{sum(events[c.path] > 0 for c in n_anom)} / {len(n_anom)}",
        "normal clips with an event": f"{sum(events[c.path] > 0 for c in n_norm)} / {len(n_norm)}",
        "phi": f"{cal['phi']:.1f}",
        "alert policy (k of the last n frames reach phi)": votes,
        "phi source": phi_source,
        "model size": f"{model.stat().st_size / 1024:.0f} KiB int8 TFLite",
        f"real-time factor ({args.stream_minutes:g}-min stream, 1 thread)": f"{rtf:.5f} ({stream_events} events)",
        "train / convert time": f"{train_s:.0f} s / {convert_s:.0f} s",
        "demo wall time": f"{time.perf_counter() - t_demo:.0f} s",
    }
    width = max(map(len, summary))
    print("\nedge-asd demo summary")
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def held_out_clips(ckpt: Path, train: list[Path]) -> list[Path]:
    """The normal clips edge-train kept out of training (its checkpoint's ``validation_data``): phi is set on
    them, because a model scores the audio it was trained on low (README, calibration check)."""
    from edge_asd.train.checkpoint import load_checkpoint

    names = set((load_checkpoint(ckpt).get("validation_data") or {}).get("files") or ())
    held = [p for p in train if p.name in names]
    if not held:
        sys.exit("demo: edge-train kept no whole clip out for validation (fewer than 5 clips?)")
    return held


def n_anomalies(stdout) -> int:
    """Anomaly lines among edge-monitor's JSON lines (start, anomaly, verdict, summary; docs/events.md)."""
    text = stdout.decode() if isinstance(stdout, bytes) else stdout
    return sum(json.loads(line)["event"] == "anomaly" for line in text.splitlines() if line.strip())


def long_stream(paths: list[Path], minutes: float) -> bytes:
    """Real clips repeated to ``minutes`` of 16-bit PCM (the stdin framing of edge-monitor)."""
    from edge_asd.firmware_io.audio_file import read_audio

    clips = [read_audio(p, 16000) for p in paths]
    total, out, i = int(minutes * 60 * 16000), [], 0
    while sum(map(len, out)) < total:
        out.append(clips[i % len(clips)])
        i += 1
    audio = np.concatenate(out)[:total]
    return (np.clip(audio, -1, 1 - 2**-15) * 32768).astype("<i2").tobytes()


LOUDNESS_ROW = "loudness reference (clip RMS level as the score)"
"""The summary row with the AUC / pAUC a plain level meter gets on the same test clips."""


def evaluate(ckpt: Path, model: Path, test) -> dict[str, tuple[float, float]]:
    """Clip AUC/pAUC (max frame score) of the float checkpoint and of the int8 file on the test clips, and
    the loudness reference (``"level"``: the clip's RMS level in dBFS as the score, edge_asd.core.loudness)."""
    from edge_asd.core.loudness import clip_level_dbfs, loudness_reference
    from edge_asd.core.metrics import auc_pauc
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio
    from edge_asd.train.checkpoint import load_checkpoint, restore
    from edge_asd.train.evaluate import torch_frame_scorer

    ae, features, mean, std = restore(load_checkpoint(ckpt))
    float_score, int8 = torch_frame_scorer(ae, mean, std, features), Scorer(model)
    audio = [read_audio(c.path, features.sample_rate) for c in test]
    y = [c.label == "anomaly" for c in test]
    return {"float": auc_pauc(y, [float_score(a).max() for a in audio]),
            "int8": auc_pauc(y, [int8.score_audio(a).max() for a in audio]),
            "level": loudness_reference(y, [clip_level_dbfs(a) for a in audio])}


def auc_rows(aucs: dict[str, tuple[float, float]]) -> dict[str, str]:
    """The summary's AUC / pAUC rows: float and int8 model, then the loudness reference beside them."""
    return {"AUC float / int8": f"{aucs['float'][0]:.3f} / {aucs['int8'][0]:.3f}",
            "pAUC(0.1) float / int8": f"{aucs['float'][1]:.3f} / {aucs['int8'][1]:.3f}",
            LOUDNESS_ROW: f"AUC {aucs['level'][0]:.3f}, pAUC(0.1) {aucs['level'][1]:.3f}"}


if __name__ == "__main__":
    main()
