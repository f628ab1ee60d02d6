"""``make fuzz``: every file and stream the device reads, mutated by hypothesis and run through the kit's
own commands in process, with counts per target.

Each input is a small case (files, command-line arguments, stdin bytes) built by a hypothesis strategy
from real seeds: a 1.5-s fan id_00 clip (as WAV, FLAC, raw s16le and framed PCM), a sealed int8 model
file, the phi store edge-calibrate wrote for it, ``examples/service/monitor.toml`` and an ``events.jsonl``
that edge-monitor wrote. The strategies mutate structure (WAV and FLAC header fields, JSON and TOML
values, event lines, model metadata re-sealed) and bytes (flips, interesting integers, inserts, deletes,
truncation); hypothesis draws every choice, so a seed replays the same inputs.

A case runs in a forked worker through click's CliRunner (edge-monitor, edge-report): an exception other
than SystemExit is a traceback, a nonzero exit a clean error, a worker killed by a signal a crash, a case
over ``--timeout`` seconds a hang (the worker is killed and a fresh one forked). A model whose bytes differ
from the seed's and which was not re-sealed must never load and score (``corrupted_model_accepted``).

    python bench/fuzz.py                      # 10 000 inputs per target (make fuzz)
    python bench/fuzz.py --inputs 200 --targets model,phi_store --json out/fuzz.json
    python bench/fuzz.py --replay out/fuzz/repro/phi_store/0   # rerun one saved reproducer in process

Three modules: the seeds (:mod:`fuzz_seeds`), the targets that mutate them into cases (:mod:`fuzz_targets`,
``TARGETS``: name -> strategy builder and what it fuzzes; MQTT payloads go there when they land), and this
one, which runs the cases in forked workers, counts the outcomes and saves reproducers.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from fuzz_seeds import Seeds, build_seeds
from fuzz_targets import TARGETS, Case
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUTS = 10_000
"""Inputs per target of ``make fuzz`` (issue 19)."""
TIMEOUT_S = 10.0
"""A case running longer than this is a hang, s."""
WORKER_MEMORY_BYTES = 4 << 30
"""Address-space limit of the worker: a case that wants more gets MemoryError (a traceback), not the host's RAM."""
OUTCOMES = ("clean_errors", "exit0", "tracebacks", "hangs", "crashes")


# ---- running a case ------------------------------------------------------------------------------------

PRELOAD = ["matplotlib.pyplot", "soxr", "edge_asd.edge.report.build", "edge_asd.edge.runtime.service",
           "edge_asd.firmware_io.pcm", "edge_asd.edge.cli.monitor", "edge_asd.edge.cli.report",
           "edge_asd.edge.cli.release"]
"""Modules the cases import, loaded once by the fork server: each worker starts warm."""


def _commands():
    from edge_asd.edge.cli.monitor import main as monitor
    from edge_asd.edge.cli.release import main as release
    from edge_asd.edge.cli.report import main as report

    return {"monitor": monitor, "report": report, "release": release}


def run_case(case: Case, folder: Path) -> tuple[str, str]:
    """Run ``case`` in process with its files in ``folder``: (outcome, detail), outcome one of clean_errors
    (nonzero exit, click's one-line error), exit0, tracebacks (detail: the formatted traceback)."""
    from click.testing import CliRunner

    for name, data in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    args = [a.replace("{dir}", str(folder)) for a in case.args]
    result = CliRunner().invoke(_commands()[case.command], args, input=case.stdin, catch_exceptions=True)
    if result.exception is None or isinstance(result.exception, SystemExit):
        return ("exit0", "") if result.exit_code == 0 else ("clean_errors", result.output.strip().splitlines()[-1:][0]
                                                              if result.output.strip() else "")
    return "tracebacks", "".join(traceback.format_exception(*result.exc_info))


def _worker(conn, scratch: str) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    logging.basicConfig(stream=open(os.devnull, "w"))  # before setup_logging, whose basicConfig is then a no-op
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    while (case := _receive(conn)) is not None:
        folder = Path(tempfile.mkdtemp(dir=scratch))
        try:
            conn.send(run_case(case, folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _receive(conn):
    try:
        return conn.recv()
    except EOFError:  # the parent is gone
        return None


class Worker:
    """A forked process that runs cases; restarted after a crash or a hang."""

    def __init__(self, scratch: str):
        self.scratch, self.proc = scratch, None

    def _start(self):
        # forkserver, not fork: the caller may hold threads (pytest's session imports JAX), and a fork of a
        # multithreaded process can deadlock; the server preloads the commands, so a new worker starts warm
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, self.scratch), daemon=True)
        self.proc.start()
        child.close()

    def run(self, case: Case, timeout_s: float) -> tuple[str, str]:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(case)
        if not self.conn.poll(timeout_s):
            self.close(kill=True)
            return "hangs", f"no result after {timeout_s:g} s"
        try:
            return self.conn.recv()
        except (EOFError, ConnectionError):
            self.proc.join()
            code, self.proc = self.proc.exitcode, None
            return "crashes", f"worker exit code {code}" + (f" (signal {-code})" if code and code < 0 else "")

    def close(self, kill: bool = False):
        if self.proc is not None:
            if kill:
                self.proc.kill()
            else:
                self.conn.send(None)
            self.proc.join(5)
            self.proc = None


def save_reproducer(folder: Path, case: Case, outcome: str, detail: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    if case.stdin is not None:
        (folder / "stdin.bin").write_bytes(case.stdin)
    (folder / "case.json").write_text(json.dumps({"command": case.command, "args": list(case.args),
                                                  "files": sorted(case.files), "stdin": case.stdin is not None,
                                                  "outcome": outcome}, indent=1) + "\n")
    (folder / "detail.txt").write_text(detail)
    return folder


def replay(folder: Path) -> tuple[str, str]:
    """Rerun a saved reproducer in this process (its files copied to a scratch folder)."""
    meta = json.loads((folder / "case.json").read_text())
    stdin = (folder / "stdin.bin").read_bytes() if meta["stdin"] else None
    case = Case(meta["command"], tuple(meta["args"]), {n: (folder / n).read_bytes() for n in meta["files"]}, stdin)
    with tempfile.TemporaryDirectory() as scratch:
        return run_case(case, Path(scratch))


def _signature(detail: str) -> str:
    """The last frame and the exception line of a traceback: same signature, same defect (most likely)."""
    lines = [x for x in detail.strip().splitlines() if x.strip()]
    frames = [x.strip() for x in lines if x.strip().startswith("File ")]
    return f"{frames[-1] if frames else '?'} | {lines[-1] if lines else '?'}"


def fuzz_target(name: str, seeds: Seeds, inputs: int, seed: int, timeout_s: float = TIMEOUT_S,
                repro_dir: Path | None = None) -> dict:
    """Run ``inputs`` cases of target ``name``; the counts as ``make fuzz``'s JSON holds them, and ``signatures``
    (traceback / hang / crash kind -> count and the first reproducer's folder)."""
    counts = Counter({k: 0 for k in OUTCOMES}, corrupted_model_accepted=0, inputs=0)
    signatures: dict[str, dict] = {}
    scratch = tempfile.mkdtemp(prefix="edge-asd-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    worker = Worker(scratch)
    started = time.monotonic()

    @settings(max_examples=inputs, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(TARGETS[name].strategy(seeds))
    def one(case):
        outcome, detail = worker.run(case, timeout_s)
        counts["inputs"] += 1
        counts[outcome] += 1
        if case.damaged_model and outcome == "exit0":
            counts["corrupted_model_accepted"] += 1
            outcome, detail = "corrupted_model_accepted", "a damaged model file loaded and scored"
        if outcome in ("tracebacks", "hangs", "crashes", "corrupted_model_accepted"):
            sig = f"{outcome}: " + (_signature(detail) if outcome == "tracebacks" else detail)
            entry = signatures.setdefault(sig, {"count": 0, "reproducer": None})
            entry["count"] += 1
            if entry["reproducer"] is None and repro_dir is not None:
                entry["reproducer"] = str(save_reproducer(repro_dir / name / str(len(signatures) - 1), case, outcome, detail))

    try:
        hypothesis_seed(seed)(one)()
    finally:
        worker.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return {"target": name, **{k: counts[k] for k in ("inputs", *OUTCOMES, "corrupted_model_accepted")},
            "seconds": round(time.monotonic() - started, 1), "signatures": signatures}


def table(rows: list[dict]) -> str:
    cols = ["inputs", "clean_errors", "exit0", "tracebacks", "hangs", "crashes", "corrupted_model_accepted"]
    head = "| target | " + " | ".join(c.replace("_", " ") for c in cols) + " | inputs/s |"
    out = [head, "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        rate = r["inputs"] / r["seconds"] if r["seconds"] else 0.0
        out.append(f"| {r['target']} | " + " | ".join(str(r[c]) for c in cols) + f" | {rate:.1f} |")
    return "\n".join(out)


def _commit() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_json(path: Path, rows: list[dict], seed: int, commit: str) -> None:
    """``{"targets": [{"target", "inputs", "clean_errors", "exit0", "tracebacks", "hangs", "crashes",
    "corrupted_model_accepted", "seconds"}], "seed", "commit"}`` (read by ``make reliability``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"targets": [{k: v for k, v in r.items() if k != "signatures"} for r in rows],
                                "seed": seed, "commit": commit}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=DEFAULT_INPUTS, help="inputs per target (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed: the same seed, the same inputs (default 0)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, of: " + ", ".join(TARGETS))
    ap.add_argument("--json", type=Path, default=None, help="write the counts here as JSON")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds after which a case is a hang (default %(default)s)")
    ap.add_argument("--seeds", type=Path, default=REPO / "out" / "fuzz" / "seeds",
                    help="folder of the seed model, phi store and event log (built once if missing)")
    ap.add_argument("--data", type=Path, default=None, help="real recordings (default ../shared/data or $EDGE_ASD_DATA)")
    ap.add_argument("--repro", type=Path, default=REPO / "out" / "fuzz" / "repro", help="where reproducers are saved")
    ap.add_argument("--replay", type=Path, default=None, help="rerun one saved reproducer folder and print its outcome")
    a = ap.parse_args(argv)
    if a.replay:
        if not (a.replay / "case.json").is_file():
            ap.error(f"{a.replay}: not a saved reproducer (no case.json); make fuzz saves them under out/fuzz/repro "
                     "only when an input fails")
        outcome, detail = replay(a.replay)
        print(outcome, detail, sep="\n")
        return 0 if outcome in ("exit0", "clean_errors") else 1
    names = [t.strip() for t in a.targets.split(",") if t.strip()]
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    from edge_asd.datasets.locate import local_data_root

    data = a.data or local_data_root()
    if data is None:
        ap.error("no real recordings found: pass --data or set EDGE_ASD_DATA")
    commit = _commit()
    seeds = build_seeds(a.seeds, Path(data)).load()
    if a.repro.exists():
        shutil.rmtree(a.repro)
    rows = []
    for name in names:
        row = fuzz_target(name, seeds, a.inputs, a.seed, a.timeout, a.repro)
        rows.append(row)
        print(f"{name}: {row['inputs']} inputs in {row['seconds']} s", file=sys.stderr, flush=True)
        if a.json:  # after each target: a long run stopped early keeps what it measured
            write_json(a.json, rows, a.seed, commit)
    print(table(rows))
    found = [(r["target"], sig, s) for r in rows for sig, s in r["signatures"].items()]
    for target, sig, s in found:
        print(f"{target}: {s['count']} x {sig}\n    reproducer: {s['reproducer']}")
    if found:
        print(f"reproducers under {a.repro} (rerun one: python bench/fuzz.py --replay FOLDER)")
    bad = sum(r[k] for r in rows for k in ("tracebacks", "hangs", "crashes", "corrupted_model_accepted"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
