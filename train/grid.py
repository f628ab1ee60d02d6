"""Running a grid of training runs for the experiment scripts (``examples/objective_experiment.py``,
``examples/level_remedies.py``): in this process or in forked workers, each result appended to a JSONL
file as soon as it finishes, so that an interrupted grid resumes where it stopped.

Forked workers inherit what the parent prepared (decoded audio, test features) copy-on-write; the parent
must not have touched CUDA. One failed run is logged and counted, never loses the others.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from edge_asd.core.commands import setup_logging
from edge_asd.core.errors import EdgeAsdError

log = logging.getLogger("edge_asd")


def worker_init(threads: int) -> None:
    """Torch and the BLAS under numpy both get ``threads``: numpy's OpenBLAS would otherwise start one
    thread per core in every worker for the log-mel matmul, and N workers x all cores spin against each other."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    setup_logging(quiet=True)


def end_torn_line(path: Path) -> None:
    """End a last line an interruption cut short, so that the next appended line is whole."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def append_line(path: Path, result: dict) -> None:
    """``result`` as one JSON line at the end of ``path``, locked (two experiments may share one file) and fsynced."""
    with open(path, "a") as f:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no lock
            pass
        f.write(json.dumps(result) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_grid(tasks: Sequence, fn: Callable, args: tuple, jobs: int, threads: int, runs_path: Path,
             done: Callable[[int, object, dict], None] | None = None) -> tuple[list[dict], int]:
    """``fn(task, *args)`` for every task: ``jobs`` forked workers (one: this process) of ``threads`` threads.

    Each result is appended to ``runs_path`` (:func:`append_line`) as it finishes, then ``done(i, task, result)``
    is called (i counts from 1). ``fn`` must be a module-level function (the pool pickles it).
    Returns (the results in the order they finished, the number of failed runs).
    Raises:
        EdgeAsdError: raised by a run in this process (a user mistake: every run would fail alike).
    """
    end_torn_line(runs_path)
    results, failed = [], 0

    def record(i: int, task, result: dict) -> None:
        append_line(runs_path, result)
        results.append(result)
        if done is not None:
            done(i, task, result)

    if jobs == 1 or "fork" not in multiprocessing.get_all_start_methods():
        worker_init(threads)
        setup_logging()
        for i, task in enumerate(tasks, 1):
            try:
                record(i, task, fn(task, *args))
            except EdgeAsdError:
                raise
            except Exception as e:  # one failed run must not lose the others
                failed += 1
                log.error("%s failed: %s: %s", getattr(task, "key", task), type(e).__name__, e)
        return results, failed
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=worker_init, initargs=(threads,)) as pool:
        futures = {pool.submit(fn, task, *args): task for task in tasks}
        try:
            for i, fut in enumerate(as_completed(futures), 1):
                try:
                    record(i, futures[fut], fut.result())
                except Exception as e:
                    failed += 1
                    log.error("%s failed: %s: %s", getattr(futures[fut], "key", futures[fut]), type(e).__name__, e)
        except KeyboardInterrupt:
            for fut in futures:
                fut.cancel()
            raise
    return results, failed
