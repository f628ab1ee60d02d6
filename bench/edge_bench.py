"""Speed and footprint of the device path against the pipeline a user would otherwise write, in one run.

Ours: ``edge-monitor``'s loop (streaming numpy log-mel + the int8 .tflite model through LiteRT, blocks
of BLOCK_HOPS hops). Reference: librosa ``melspectrogram`` per 10-s clip + onnxruntime float32 on the
.onnx of the same model. Both run pinned to one CPU core, single-threaded, on the same stream: real
clips (fan id_00, normal and anomalous, train and test) concatenated to ``--hours`` of audio.

Measured: real-time factor (compute s / audio s, the fastest of ``--repeat`` runs), per-call latency p50/p99 (ours: one block of
``--block-hops`` hops; reference: one 10-s clip) and per hop amortized, peak RSS and cold start (process
start to the first score on stdout) of each as a subprocess fed the stream as PCM on stdin. Targets
are the issue's; the ratio column is reference / ours.

    python bench/edge_bench.py --tflite out/demo/fan.tflite --onnx out/demo/fan.onnx [--hours 1] [--core 0]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # one core: no BLAS / OpenMP thread pools in any process of the bench

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SR = 16000
CLIP_S = 10.0  # the reference's unit of work: one 10-s clip, as in DCASE
TARGETS = {"rtf": 0.001, "speedup": 20.0, "rss_mb": 60.0, "cold_start_s": 0.5, "p99_ms": 1.0, "venv_mb": 200.0}


def load_clips(data_root: Path | None) -> list[np.ndarray]:
    from edge_asd.datasets.layout import scan
    from edge_asd.datasets.locate import require_data_root
    from edge_asd.firmware_io.audio_file import read_audio

    clips = scan(data_root or require_data_root(), machine_type="fan", machine_id="00")
    return [read_audio(c.path, SR) for c in clips]


def stream(clips: list[np.ndarray], seconds: float, block: int):
    """Blocks of ``block`` samples (float32) of the clips played back to back, cycled, ``seconds`` long."""
    total = int(seconds * SR)
    joined = np.concatenate(clips)
    pos = 0
    while pos < total:
        start = pos % len(joined)
        n = min(block, total - pos, len(joined) - start)
        yield joined[start:start + n]
        pos += n


def run_ours(model: Path, clips, seconds: float, block_hops: int) -> dict:
    """edge-monitor's loop (monitor.monitor) on the stream; latency = time between the source's yields."""
    from edge_asd.edge.runtime.decision import RunningMaxDetector
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.edge.runtime.stream_loop import monitor

    scorer = Scorer(model)
    block = block_hops * scorer.features.hop_samples
    latencies, events = [], []

    def source():  # resumes after the monitor processed a block: the time since the last yield is its cost
        last = None
        for b in stream(clips, seconds, block):
            if last is not None:
                latencies.append(time.perf_counter() - last)
            last = time.perf_counter()
            yield b

    monitor(stream(clips, 5.0, block), scorer, RunningMaxDetector(1e30, "bench", scorer.sha256), events.append)  # warm-up
    summary = monitor(source(), scorer, RunningMaxDetector(1e30, "bench", scorer.sha256), events.append)
    lat = np.array(latencies)
    return {"rtf": summary.real_time_factor, "rtf_median_call": np.median(lat) / (block / SR),
            "p50_ms": 1e3 * np.percentile(lat, 50), "p99_ms": 1e3 * np.percentile(lat, 99),
            "per_hop_us": 1e6 * summary.compute_s / summary.frames, "frames": summary.frames, "call": f"{block_hops} hops"}


def time_halves(blocks, features, model) -> dict:
    """Per-hop time of ``features(block) -> vectors`` and ``model(vectors)``, timed apart over ``blocks``, in us."""
    t_feat = t_model = 0.0
    hops = 0
    for b in blocks:
        t0 = time.perf_counter()
        x = features(b)
        t1 = time.perf_counter()
        model(x)
        t_model += time.perf_counter() - t1
        t_feat += t1 - t0
        hops += len(x)
    return {"features_us": 1e6 * t_feat / hops, "model_us": 1e6 * t_model / hops}


def run_breakdown(model: Path, clips, seconds: float, block_hops: int) -> dict:
    """Where our per-hop time goes: streaming log-mel context vectors vs. the model call, timed apart
    on the same blocks (us per hop)."""
    from edge_asd.edge.runtime.scorer import Scorer

    scorer = Scorer(model)
    block = block_hops * scorer.features.hop_samples
    return time_halves(stream(clips, seconds, block), scorer.stream().push, scorer.score_inputs)


class Reference:
    """What a user would write: librosa log-mel of each 10-s clip, context frames, onnxruntime float32."""

    def __init__(self, onnx_path: Path):
        import librosa
        import onnxruntime as ort

        from edge_asd.core.model_file import read_model_file

        self.librosa = librosa
        _, _, info = read_model_file(onnx_path)
        self.cfg, self.mean, self.std = info.features, info.mean, info.std
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        self.sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name

    def scores(self, clip: np.ndarray) -> np.ndarray:
        return self.model(self.vectors(clip))

    def vectors(self, clip: np.ndarray) -> np.ndarray:
        """The feature half: standardized context vectors of one clip, (n, D) float32."""
        c = self.cfg
        mel = self.librosa.feature.melspectrogram(y=clip, sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_samples,
                                                  n_mels=c.n_mels, power=c.magnitude_power, center=False,
                                                  fmin=c.fmin_hz, fmax=c.fmax_hz)
        psi = np.log(mel + c.log_floor) if c.log == "ln" else (20 / c.magnitude_power) * np.log10(mel + c.log_floor)
        ctx = np.lib.stride_tricks.sliding_window_view(psi.T, c.n_context_frames, axis=0)  # (T-L+1, M, L)
        x = ctx.transpose(0, 2, 1).reshape(len(ctx), -1)
        return ((x.reshape(len(x), -1, c.n_mels) - self.mean) / self.std).reshape(len(x), -1).astype(np.float32)

    def model(self, x: np.ndarray) -> np.ndarray:
        """The model half: one onnxruntime call on a clip's vectors -> (n,) anomaly scores."""
        return self.sess.run(None, {self.input: x})[0].reshape(-1)


def run_reference_breakdown(onnx_path: Path, clips, seconds: float) -> dict:
    """Where the reference's per-hop time goes: librosa log-mel context vectors vs. the onnxruntime call."""
    ref = Reference(onnx_path)
    ref.scores(clips[0])  # warm-up, as in run_reference
    return time_halves(stream(clips, seconds, int(CLIP_S * SR)), ref.vectors, ref.model)


def run_reference(onnx_path: Path, clips, seconds: float) -> dict:
    ref = Reference(onnx_path)
    ref.scores(clips[0])  # warm-up: librosa's numba kernels compile on the first call (counted in cold start)
    lat, frames = [], 0
    for clip in stream(clips, seconds, int(CLIP_S * SR)):
        t = time.perf_counter()
        frames += len(ref.scores(clip))
        lat.append(time.perf_counter() - t)
    lat = np.array(lat)
    return {"rtf": lat.sum() / seconds, "rtf_median_call": np.median(lat) / CLIP_S, "p50_ms": 1e3 * np.percentile(lat, 50), "p99_ms": 1e3 * np.percentile(lat, 99),
            "per_hop_us": 1e6 * lat.sum() / frames, "frames": frames, "call": f"{CLIP_S:g}-s clip"}


def same_model(a: Path, b: Path) -> None:
    """Exit unless the two files agree on features, normalization and training data (a conversion pair)."""
    from edge_asd.core.model_file import read_model_file

    (_, _, x), (_, _, y) = read_model_file(a), read_model_file(b)
    if (x.features != y.features or not np.array_equal(x.mean, y.mean) or not np.array_equal(x.std, y.std)
            or x.meta.get("training_data") != y.meta.get("training_data")):
        sys.exit(f"bench: {a} and {b} are not conversions of the same model")


def reference_child(onnx_path: Path) -> None:
    """The reference as a process: s16le PCM on stdin, one score line per frame on stdout."""
    ref = Reference(onnx_path)
    n = int(CLIP_S * SR) * 2
    while True:
        data = sys.stdin.buffer.read(n)
        if len(data) < n:
            break
        scores = ref.scores(np.frombuffer(data, "<i2").astype(np.float32) / 32768.0)
        sys.stdout.write(f"{float(scores.max())}\n")
        sys.stdout.flush()


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set of a running process since its exec (VmHWM), MB; None once it is gone.

    getrusage's ru_maxrss is no use here: Linux carries the forking parent's peak across exec."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def process_footprint(cmd: list[str], clips, seconds: float) -> dict:
    """Cold start (spawn to first stdout line, s) and peak RSS (MB) of ``cmd`` fed the stream as PCM."""
    pcm = (np.clip(np.concatenate(clips), -1, 1 - 2**-15) * 32768).astype("<i2").tobytes()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first: list[float] = []

    def feed():
        left = int(seconds * SR) * 2
        try:
            while left > 0:
                chunk = pcm[: min(left, len(pcm))]
                proc.stdin.write(chunk)
                left -= len(chunk)
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()

    def read():
        for i, _ in enumerate(proc.stdout):
            if i == 0:
                first.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=read, daemon=True)]
    for t in threads:
        t.start()
    err = proc.stderr.read  # drained at the end; the commands write little to stderr
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, vm_hwm_mb(proc.pid) or 0.0)
        time.sleep(0.02)
    for t in threads:
        t.join()
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd[1:4])} failed: {err().decode(errors='replace')[-2000:]}")
    return {"cold_start_s": first[0] if first else float("nan"), "rss_mb": peak}


def venv_size_mb(repo: Path) -> float:
    """Size of a fresh venv with only ``edge-asd[edge]`` installed (needs the package index)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "venv", tmp], check=True)
        subprocess.run([f"{tmp}/bin/pip", "install", "-q", f"{repo}[edge]"], check=True)
        return int(subprocess.run(["du", "-sm", tmp], capture_output=True, text=True).stdout.split()[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tflite", type=Path, help="int8 .tflite model (required)")
    p.add_argument("--onnx", type=Path, help="float32 .onnx of the same model (the reference)")
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--block-hops", type=int, default=None, help="hops per call of our loop (default: edge-monitor's block)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each pipeline; the fastest is reported")
    p.add_argument("--core", type=int, default=0, help="CPU core to pin every process of the bench to")
    p.add_argument("--data", type=Path, default=None, help="data root (default: $EDGE_ASD_DATA or ../shared/data)")
    p.add_argument("--venv-size", action="store_true", help="also measure a fresh venv with only edge-asd[edge]")
    p.add_argument("--json", type=Path, help="write the figures here too")
    p.add_argument("--child-reference", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.sched_setaffinity(0, {args.core})
    if args.child_reference:
        return reference_child(args.onnx)
    if args.tflite is None:
        p.error("--tflite is required")

    seconds = args.hours * 3600
    if args.block_hops is None:
        from edge_asd.edge.runtime.stream_loop import BLOCK_HOPS

        args.block_hops = BLOCK_HOPS
    if args.onnx:
        same_model(args.tflite, args.onnx)
    clips = load_clips(args.data)
    best = lambda runs: min(runs, key=lambda r: r["rtf"])  # noqa: E731 - the run least disturbed by other load
    rows = {"ours": best([run_ours(args.tflite, clips, seconds, args.block_hops) for _ in range(args.repeat)]),
            "ours, 1 hop per call": best([run_ours(args.tflite, clips, min(seconds, 600), 1) for _ in range(args.repeat)])}
    rows["ours"].update(process_footprint([sys.executable, "-m", "edge_asd.edge.cli.monitor", "--model", str(args.tflite),
                                           "--phi", "0", "--input", "-", "--pcm-rate", str(SR), "-q"], clips, seconds))
    if args.onnx:
        rows["reference"] = best([run_reference(args.onnx, clips, seconds) for _ in range(args.repeat)])
        rows["reference"].update(process_footprint([sys.executable, __file__, "--child-reference", "--onnx", str(args.onnx),
                                                    "--core", str(args.core)], clips, seconds))
    # the floor of any Python device program, measured the same way: interpreter start + import numpy
    rows["floor: python + import numpy"] = process_footprint([sys.executable, "-c", "import numpy; print(1)"], clips, 0)
    extra = {"venv_mb": venv_size_mb(Path(__file__).resolve().parents[1])} if args.venv_size else {}

    load = os.getloadavg()
    print(f"edge_bench: {seconds / 3600:g} h of real fan id_00 clips, core {args.core}, one thread each, "
          f"best of {args.repeat} runs; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs\n")
    names = list(rows)
    print("| measure | " + " | ".join(names) + " | reference / ours | target |")
    print("|---" * (len(names) + 3) + "|")
    for key, label, fmt in [("rtf", "real-time factor (total compute / audio)", "{:.5f}"),
                            ("rtf_median_call", "real-time factor of the median call", "{:.5f}"), ("per_hop_us", "compute per hop (us)", "{:.1f}"),
                            ("call", "unit of one call", "{}"), ("p50_ms", "latency per call p50 (ms)", "{:.3f}"),
                            ("p99_ms", "latency per call p99 (ms)", "{:.3f}"), ("rss_mb", "peak RSS (MB)", "{:.1f}"),
                            ("cold_start_s", "cold start to first score (s)", "{:.3f}")]:
        cells = [fmt.format(rows[n][key]) if key in rows[n] else "" for n in names]
        ratio = ""
        if "reference" in rows and key in rows["reference"] and key != "call":
            ratio = f"{rows['reference'][key] / rows['ours'][key]:.1f}x"
        target = {"rtf": "<= 0.001", "rss_mb": "<= 60", "cold_start_s": "<= 0.5", "p99_ms": "<= 1"}.get(key, "")
        if key.startswith("rtf"):
            target = "<= 0.001 (reference / ours >= 20x)"
        print(f"| {label} | " + " | ".join(cells) + f" | {ratio} | {target} |")
    parts = min((run_breakdown(args.tflite, clips, min(seconds, 600), args.block_hops) for _ in range(args.repeat)),
                             key=lambda r: r["features_us"] + r["model_us"])
    print(f"\nwhere a hop goes ({args.block_hops} hops per call, best of {args.repeat}): log-mel context vectors "
          f"{parts['features_us']:.1f} us, model {parts['model_us']:.1f} us")
    rows["breakdown"] = parts
    if "reference" in rows:
        ref = min((run_reference_breakdown(args.onnx, clips, min(seconds, 600)) for _ in range(args.repeat)),
                  key=lambda r: r["features_us"] + r["model_us"])
        rows["reference breakdown"] = ref
        print(f"reference (one call per {CLIP_S:g}-s clip): librosa log-mel context vectors {ref['features_us']:.1f} us, "
              f"onnxruntime {ref['model_us']:.1f} us")
        print(f"halves, reference / ours: features {ref['features_us'] / parts['features_us']:.1f}x, "
              f"model {ref['model_us'] / parts['model_us']:.1f}x (the whole hop's ratio lies between the two)")
        budget = rows["reference"]["per_hop_us"] / TARGETS["speedup"]
        print(f"reference / ours >= {TARGETS['speedup']:g}x leaves {budget:.2f} us per hop for both: the model call alone "
              f"takes {parts['model_us'] / budget:.1f}x that, the features {parts['features_us'] / budget:.1f}x")
    if extra:
        print(f"\nfresh venv with only edge-asd[edge]: {extra['venv_mb']} MB (target <= 200 MB)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, **extra, "load": load, "seconds": seconds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
