"""Trainer speed, as ratios measured in one run (issue 5, part 4). Real fan id_00 audio; koizumi2019 preset (D = 1344).

    python bench/train_bench.py [--device cpu|cuda|auto] [--threads N] [--wall]

1. step time of BU / RE at M_u = 512 (target <= 1.3), with eq. 15 from frames (the trainer's default)
   and from the 1344-d vectors (the paper's per-dimension normalization), plus SNP for reference;
2. achieved FLOP/s of a training step / FLOP/s of a torch GEMM of the first layer's size on the same
   threads (target >= 40 %); a step's FLOPs are counted as 6 n per weight of each linear layer
   (forward 2, backward 4), plus the KDE's Gram matrix for BU;
3. frames/s of the data pipeline (draw + mix + log-mel + standardize, one thread) / frames/s the
   training step consumes on full 30-s mini-batches (target >= 2), and the loop's throughput with the
   background thread vs without;
4. ``--wall``: wall time of edge-train for the demo model (12 x 50 updates, as examples/demo.py) and
   for fan id_00 to early stopping (short schedule, --patience 5), both with validation on, as subprocesses.

With CUDA present (or ``--device cuda``), the step timings run on the CPU and on the GPU (fp32 and
autocast bf16/fp16), printed side by side. Every figure is the median of repeated timings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from edge_asd.core.batches import BatchBuilder
from edge_asd.core.presets import get_preset
from edge_asd.datasets.layout import scan
from edge_asd.datasets.locate import require_data_root
from edge_asd.firmware_io.audio_file import audio_files
from edge_asd.train.context_kde import context_kde_weights
from edge_asd.train.data import band_statistics, load_clips
from edge_asd.train.losses import kde_weights
from edge_asd.train.model import ARCHS, build_autoencoder
from edge_asd.train.pipeline import Prefetcher
from edge_asd.train.trainer import TrainConfig, resolve_precision, train, update

FEATURES = get_preset("koizumi2019")
M_U = 512


def timed_together(fns: dict, device: torch.device, repeat: int, warmup: int = 3) -> dict:
    """Median seconds of each ``fn()``; the functions take turns, so a change of load hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def load(args):
    data = require_data_root()
    clips = scan(data, machine_type="fan", machine_id="00")
    normals = load_clips([c.path for c in clips if c.split == "train" and c.label == "normal"], FEATURES)
    others = load_clips(audio_files(data / "something_else" / "train")[::4], FEATURES)
    mean, std = band_statistics(normals, FEATURES)
    return data, normals, others, mean, std


def small_batch(builder: BatchBuilder, mean, std):
    """M_u = 512 consecutive x^(u) vectors of a real mixture (and its frames), plus its x^(a) (at most 128)."""
    for seed in range(100):
        b = builder.draw(np.random.default_rng(seed), mean, std)
        n_frames = M_U + FEATURES.n_context_frames - 1
        clean = np.flatnonzero(np.convolve(b.is_a, np.ones(M_U), "valid") == 0)  # windows of 512 vectors without x^(a)
        if len(clean) and len(b.x_a):
            i = int(clean[0])
            psi = b.psi[i:i + n_frames]
            x_u = np.lib.stride_tricks.sliding_window_view(psi, FEATURES.n_context_frames, 0)[:M_U]
            x_u = np.ascontiguousarray(x_u.transpose(0, 2, 1).reshape(M_U, -1))
            return x_u, b.x_a[:128], psi
    raise SystemExit("no mixture with 512 consecutive x^(u) vectors")


def step_times(device: torch.device, precision: str, x_u, x_a, psi, repeat: int) -> dict:
    amp = resolve_precision(precision, device)
    arch = {"name": "fcn-small", "dim": FEATURES.dim, **ARCHS["fcn-small"]}
    sigma, eps, lam = 1 / (2 * FEATURES.dim), 1e-6, 2.0 * FEATURES.dim
    xu, xa = torch.from_numpy(x_u).to(device), torch.from_numpy(x_a).to(device)
    ps, is_u = torch.from_numpy(psi).to(device), torch.ones(len(x_u), dtype=torch.bool, device=device)
    fns = {}
    for name, loss, kde in [("RE", "re", None), ("SNP", "snp", None), ("BU frames", "bu", "frames"), ("BU vectors", "bu", "vectors")]:
        torch.manual_seed(0)
        ae = build_autoencoder(arch).to(device).train()
        opt = torch.optim.Adam(ae.parameters(), lr=1e-4, amsgrad=True)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        fns[name] = partial(one_step, ae, opt, scaler, xu, xa, ps, is_u, loss, kde, sigma, eps, lam, amp)
    return timed_together(fns, device, repeat)


def one_step(ae, opt, scaler, xu, xa, ps, is_u, loss, kde, sigma, eps, lam, amp) -> None:
    """One update exactly as the trainer makes it, the BU weights included."""
    w = None
    if kde == "frames":
        w = context_kde_weights(ps, is_u, FEATURES.n_context_frames, sigma, eps)
    elif kde == "vectors":
        w = kde_weights(xu, sigma, eps)
    update(ae, opt, scaler, xu, xa, loss, lam, w, amp)


def linear_flops(n: int) -> float:
    """6 n per weight of fcn-small's linear layers: forward 2 n, backward 4 n multiply-adds x 2."""
    ae = build_autoencoder({"name": "fcn-small", "dim": FEATURES.dim, **ARCHS["fcn-small"]})
    return 6.0 * n * sum(m.weight.numel() for m in ae.modules() if isinstance(m, torch.nn.Linear))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on shared, loaded cores more threads spin and stall)")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--wall", action="store_true", help="also time edge-train for the demo model and to early stopping")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, normals, others, mean, std = load(args)
    builder = BatchBuilder(normals, others, FEATURES)
    x_u, x_a, psi = small_batch(builder, mean, std)
    load_avg = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, load average {load_avg[0]:.1f}; "
          f"koizumi2019 D={FEATURES.dim}, fcn-small, M_u={len(x_u)}, M_a={len(x_a)}")

    devices = [("cpu", "fp32")]
    want_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if want_cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA GPU")
        devices += [("cuda", "fp32"), ("cuda", "auto")]
    print("\n1. step time at M_u = 512 (ms)")
    results = {}
    for dev, prec in devices:
        d = torch.device(dev)
        r = step_times(d, prec, x_u, x_a, psi, args.repeat)
        label = f"{dev} {prec if prec != 'auto' else str(resolve_precision('auto', d)).replace('torch.', '')}"
        results[label] = r
        print(f"  {label:16s} " + "  ".join(f"{k} {v * 1e3:7.2f}" for k, v in r.items())
              + f"   BU/RE {r['BU frames'] / r['RE']:.2f} (frames), {r['BU vectors'] / r['RE']:.2f} (vectors)")
    if want_cuda:
        cpu, gpu = results["cpu fp32"], next(v for k, v in results.items() if k.startswith("cuda") and "fp32" not in k)
        print("  CPU / CUDA step time: " + ", ".join(f"{k} {cpu[k] / gpu[k]:.1f}x" for k in cpu))

    print("\n2. achieved FLOP/s of a step / torch GEMM of the first layer's size, same threads")
    n = len(x_u) + len(x_a)
    a = torch.randn(n, FEATURES.dim)
    b = torch.randn(FEATURES.dim, ARCHS["fcn-small"]["units"])
    t_gemm = timed_together({"gemm": lambda: a @ b}, torch.device("cpu"), args.repeat * 4)["gemm"]
    gemm = 2.0 * n * FEATURES.dim * ARCHS["fcn-small"]["units"] / t_gemm
    cpu = results["cpu fp32"]
    re_flops = linear_flops(len(x_u)) + 2.0 * len(x_a) * sum(  # RE: x^(a) forward only
        m.weight.numel() for m in build_autoencoder({"name": "fcn-small", "dim": FEATURES.dim, **ARCHS["fcn-small"]}).modules()
        if isinstance(m, torch.nn.Linear))
    bu_flops = linear_flops(n) + 2.0 * len(psi) ** 2 * FEATURES.n_mels
    for name, flops, t in [("RE", re_flops, cpu["RE"]), ("BU frames", bu_flops, cpu["BU frames"])]:
        print(f"  {name:10s} {flops / t / 1e9:6.1f} GFLOP/s vs GEMM {gemm / 1e9:6.1f} GFLOP/s: {flops / t / gemm:.0%}")

    print("\n3. data pipeline vs training step, full 30-s mini-batches (frames/s)")
    reps = max(4, args.repeat // 2)
    with Prefetcher(builder, mean, std, seed=0, start=0, stop=10 ** 6, depth=0) as p:
        t = time.perf_counter()
        frames = sum(len(bt.x_u) + len(bt.x_a) for bt in (p.get() for _ in range(reps)))
        pipe_fps = frames / (time.perf_counter() - t)
    full = builder.draw(np.random.default_rng(0), mean, std)
    fu = torch.from_numpy(full.x_u)
    fa = torch.from_numpy(full.x_a)
    ae = build_autoencoder({"name": "fcn-small", "dim": FEATURES.dim, **ARCHS["fcn-small"]}).train()
    opt = torch.optim.Adam(ae.parameters(), lr=1e-4, amsgrad=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    fpsi, fis_u = torch.from_numpy(full.psi), torch.from_numpy(~full.is_a)

    full_step = partial(one_step, ae, opt, scaler, fu, fa, fpsi, fis_u, "bu", "frames", 1 / (2 * FEATURES.dim), 1e-6,
                        2.0 * FEATURES.dim, None)
    step_fps = (len(fu) + len(fa)) / timed_together({"step": full_step}, torch.device("cpu"), reps)["step"]
    print(f"  pipeline {pipe_fps:8.0f}  BU step {step_fps:8.0f}  ratio {pipe_fps / step_fps:.2f}")
    loop = {}
    for depth in (0, 4):
        cfg = TrainConfig(machine_type="fan", machine_ids=["id_00"], preset="koizumi2019", epochs=1, batches_per_epoch=reps,
                          device="cpu", prefetch=depth, lam="2D")
        ck = train(cfg, FEATURES, normals, others, mean, std, progress=False)
        loop[depth] = ck["train_frames"] / ck["train_seconds"]
    print(f"  training loop: {loop[0]:.0f} frames/s with batches drawn in the loop, {loop[4]:.0f} with the background "
          f"thread ({loop[4] / loop[0]:.2f}x)")

    if args.wall:
        print(f"\n4. wall time of edge-train (--threads {args.threads})")
        exe = str(Path(sys.executable).parent / "edge-train")
        common = [str(data), "--machine-type", "fan", "--machine-id", "id_00", "--something-else",
                  str(data / "something_else" / "train"), "--lambda", "2D", "--threads", str(args.threads), "-q"]
        with tempfile.TemporaryDirectory() as tmp:
            for name, extra in [("demo model (examples/demo.py: 12 x 50 updates)", ["--epochs", "12", "--batches-per-epoch", "50"]),
                                ("fan id_00 to early stopping (short schedule: 20 x 50, patience 5)", ["--patience", "5"])]:
                t = time.perf_counter()
                proc = subprocess.run([exe, *common, *extra, "--out", f"{tmp}/m.pt"], capture_output=True, text=True)
                wall = time.perf_counter() - t
                if proc.returncode != 0:
                    print(proc.stderr)
                ck = torch.load(f"{tmp}/m.pt", weights_only=True)
                v = ck.get("validation") or {}
                print(f"  {name}: {wall:.0f} s, {len(ck['history'])} updates"
                      + (f", best epoch {v.get('best_epoch')} of {len(ck['epochs'])}, stopped early: {v.get('stopped_early')}" if v else ""))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f} (2 shared cores: absolute times vary, ratios less)")


if __name__ == "__main__":
    main()
