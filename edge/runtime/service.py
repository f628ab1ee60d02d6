"""Run several monitored inputs in one process: one inference thread per input, clean shutdown.

Each input (an :class:`~edge_asd.edge.runtime.config.InputConfig`) gets its own model interpreter, phi,
detector, windows and evidence recorder; inputs on one microphone device share its PortAudio stream.
SIGTERM or SIGINT (Ctrl-C) stop every input at its next block; each closes its open window, writes
its pending evidence and its summary line, so a service manager's stop loses nothing already seen.
An input that fails (device unplugged, bad data) stops the others too and the process exits 1, so
a service manager restarts it with every input fresh.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.config import InputConfig
from edge_asd.edge.runtime.prepare import Prepared, _check_window, alert_policy, prepare_model  # noqa: F401

log = logging.getLogger("edge_asd")

SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    """``<priority>name: message``: journald reads the priority prefix (SyslogLevelPrefix, on by default)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>{record.name}: {record.getMessage()}"


def use_journald_format_if_under_systemd() -> bool:
    """Under systemd (``$JOURNAL_STREAM`` names our stderr), log with syslog priority prefixes instead of
    level words, so ``journalctl -p warning`` works. Returns whether it switched."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
        if stream != f"{st.st_dev}:{st.st_ino}":
            return False
    except (OSError, ValueError, AttributeError):
        return False
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_JournalFormatter())
    return True


class Shutdown:
    """SIGTERM and SIGINT set ``event`` instead of killing the process (main thread only)."""

    def __init__(self):
        self.event = threading.Event()
        self.signal_name: str | None = None
        self._old = {}

    def __enter__(self) -> Shutdown:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        self.event.set()

    def reader_gone(self) -> None:
        """stdout's reader went away (``| head``): stop every input as SIGTERM does."""
        self.signal_name = "stdout closed by its reader"
        self.event.set()

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def build_monitors(configs: list[InputConfig], stdout_sink, pyaudio_module=None, extra_sinks=(),
                   gate=None) -> tuple[list, list]:
    """(monitors, file sinks) for the inputs; every source is open when this returns. ``extra_sinks`` get every
    input's lines after its events file and before stdout (the fleet's outbox, :mod:`.fleet.sink`). An input
    whose model is a slot directory (:mod:`.slots`) runs its trial under the health gate ``gate``
    (:class:`~edge_asd.edge.runtime.gate.GateSettings`; None: the defaults), else its good model.

    Raises:
        EdgeAsdError: a model, phi, window or source problem (what was opened is closed again).
    """
    from edge_asd.edge.runtime.evidence import EvidenceRecorder
    from edge_asd.edge.runtime.health import HealthChecker
    from edge_asd.edge.runtime.rollout import Rollout
    from edge_asd.edge.runtime.slots import Slots, is_slot_dir
    from edge_asd.edge.runtime.stream_loop import Monitor
    from edge_asd.edge.runtime.windows import make_windows
    from edge_asd.firmware_io.sinks import RotatingJsonLinesFile
    from edge_asd.firmware_io.sources import SourceRequest, open_sources

    prepared, file_sinks = [], {}
    try:
        for cfg in configs:
            rollout = Rollout(Slots(cfg.model), cfg, gate) if is_slot_dir(cfg.model) else None
            p = rollout.start() if rollout is not None else prepare_model(cfg, cfg.model)
            feats = p.scorer.features
            windows = make_windows(cfg.window, feats.sample_rate, feats.hop_samples, cfg.gate_db, cfg.gate_min_on_s,
                                   cfg.gate_min_off_s)
            if cfg.phi is None:
                _check_window(cfg.label, p.record, windows)
            evidence = None
            if cfg.evidence_dir is not None:
                evidence = EvidenceRecorder(cfg.evidence_dir, f"{Path(cfg.label).stem}_{p.detector.machine_id}", feats,
                                            cfg.evidence_before_s, cfg.evidence_after_s, cfg.evidence_png)
            sinks = []  # the events file first (fsynced), then stdout: a line anyone has seen is already on disk
            if cfg.events is not None:
                key = Path(cfg.events).resolve()
                if key not in file_sinks:
                    file_sinks[key] = RotatingJsonLinesFile(cfg.events, int(cfg.events_max_mb * 1e6), cfg.events_backups)
                sinks.append(file_sinks[key])
            sinks.extend(extra_sinks)
            sinks.append(stdout_sink)
            request = SourceRequest(cfg.source, feats.sample_rate, _block_samples(cfg.source.spec, feats.hop_samples))
            health = HealthChecker(feats.sample_rate, feats.hop_samples, cfg.health_limits(),
                                   reference=p.record.input_level if p.record is not None else None)
            prepared.append((cfg, p, rollout, windows, evidence, sinks, health, request))
        sources = open_sources([p[-1] for p in prepared], pyaudio_module)
    except BaseException:
        for s in file_sinks.values():
            s.close()
        raise
    monitors, order = [], threading.Lock()  # one line at a time across sinks: stdout and files agree on order
    for (cfg, p, rollout, windows, evidence, sinks, health, _), source in zip(prepared, sources):
        def emit(record, sinks=sinks):
            with order:
                for s in sinks:
                    s.write(record)

        m = Monitor(source, p.scorer, p.detector, emit, cfg.label, windows, evidence, health)
        m.rollout, m.config = rollout, cfg
        monitors.append(m)
        log.info("%s: %s (%s), machine ID %s, phi %.3f, window %s, votes %s", cfg.label, p.model.name,
                 p.scorer.backend.name, p.detector.machine_id, p.detector.phi, cfg.window, p.detector.policy.describe())
    return monitors, list(file_sinks.values())


def _block_samples(spec: str, hop: int) -> int:
    """Samples per block: about 0.26 s for files (fewer calls; larger blocks measured slower), about 0.1 s for live inputs (latency)."""
    live = spec == "-" or spec.startswith(("mic", "serial:"))
    from edge_asd.edge.runtime.stream_loop import BLOCK_HOPS, LIVE_BLOCK_HOPS

    return hop * (LIVE_BLOCK_HOPS if live else BLOCK_HOPS)


def run_monitors(monitors: list, shutdown: Shutdown, grace_s: float = 3.0) -> tuple[list, BaseException | None]:
    """Run every monitor in its own thread until all end, one fails, or ``shutdown.event`` is set.

    Returns (summaries in order, the first input's error or None); every summary is written either way.
    """
    errors: list[BaseException] = []

    def work(m):
        try:
            m.run()
        except BaseException as e:  # noqa: B036 - reported by the main thread
            if not isinstance(e, (EdgeAsdError, OSError)):
                log.exception("%s: unexpected error", m.name)
            errors.append(e)
            shutdown.event.set()

    threads = [threading.Thread(target=work, args=(m,), name=f"monitor-{m.name}", daemon=True) for m in monitors]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) and not shutdown.event.wait(0.1):
        pass
    if shutdown.event.is_set():
        if shutdown.signal_name:
            log.info("%s: stopping every input", shutdown.signal_name)
        for m in monitors:
            m.stop()
        for t in threads:
            t.join(grace_s / len(threads))
    summaries = [m.finish("stopped") for m in monitors]  # a monitor stuck in a read is finished from here
    return summaries, (errors[0] if errors else None)
