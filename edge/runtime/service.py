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
from edge_asd.edge.runtime.phi_store import PhiRecord

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


def build_monitors(configs: list[InputConfig], stdout_sink, pyaudio_module=None, extra_sinks=()) -> tuple[list, list]:
    """(monitors, file sinks) for the inputs; every source is open when this returns. ``extra_sinks`` get every
    input's lines after its events file and before stdout (the fleet's outbox, :mod:`.fleet.sink`).

    Raises:
        EdgeAsdError: a model, phi, window or source problem (what was opened is closed again).
    """
    from edge_asd.core.machine_id import normalize_machine_id
    from edge_asd.edge.runtime import phi_store
    from edge_asd.edge.runtime.decision import RunningMaxDetector
    from edge_asd.edge.runtime.evidence import EvidenceRecorder
    from edge_asd.edge.runtime.health import HealthChecker
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.edge.runtime.stream_loop import Monitor
    from edge_asd.edge.runtime.windows import make_windows
    from edge_asd.firmware_io.sinks import RotatingJsonLinesFile
    from edge_asd.firmware_io.sources import SourceRequest, open_sources

    prepared, file_sinks = [], {}
    try:
        for cfg in configs:
            scorer = Scorer(cfg.model, num_threads=cfg.threads)
            machine_id = normalize_machine_id(cfg.machine_id) if cfg.machine_id else None
            phi, record = cfg.phi, None
            if phi is None:
                machine_id, record = phi_store.lookup_phi(cfg.store or phi_store.default_store_path(), machine_id,
                                                          scorer.sha256)
                phi = float(record.phi)
            if cfg.trust_dir is not None:
                record = _check_signed(cfg, scorer, machine_id, record)
                phi = float(record.phi) if record is not None else phi
            machine_id = machine_id or "unknown"
            feats = scorer.features
            windows = make_windows(cfg.window, feats.sample_rate, feats.hop_samples, cfg.gate_db, cfg.gate_min_on_s,
                                   cfg.gate_min_off_s)
            policy = alert_policy(cfg.label, record, cfg.votes, cfg.hysteresis)
            if cfg.phi is None:
                _check_window(cfg.label, record, windows)
                _check_heard(cfg.label, record)
            evidence = None
            if cfg.evidence_dir is not None:
                evidence = EvidenceRecorder(cfg.evidence_dir, f"{Path(cfg.label).stem}_{machine_id}", feats, cfg.evidence_before_s,
                                            cfg.evidence_after_s, cfg.evidence_png)
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
                                   reference=record.input_level if record is not None else None)
            prepared.append((cfg, scorer, RunningMaxDetector(phi, machine_id, scorer.sha256, policy), windows, evidence,
                             sinks, health, request))
        sources = open_sources([p[-1] for p in prepared], pyaudio_module)
    except BaseException:
        for s in file_sinks.values():
            s.close()
        raise
    monitors, order = [], threading.Lock()  # one line at a time across sinks: stdout and files agree on order
    for (cfg, scorer, detector, windows, evidence, sinks, health, _), source in zip(prepared, sources):
        def emit(record, sinks=sinks):
            with order:
                for s in sinks:
                    s.write(record)

        monitors.append(Monitor(source, scorer, detector, emit, cfg.label, windows, evidence, health))
        log.info("%s: %s (%s), machine ID %s, phi %.3f, window %s, votes %s", cfg.label, Path(cfg.model).name,
                 scorer.backend.name, detector.machine_id, detector.phi, cfg.window, detector.policy.describe())
    return monitors, list(file_sinks.values())


def _check_signed(cfg: InputConfig, scorer, machine_id: str | None, record: PhiRecord | None) -> PhiRecord | None:
    """With a trust directory: refuse a model without a signed release installed and a phi record that is not
    the signed one last accepted (the signed copy replaces the store's); with ``allow_unsigned``, a WARNING
    instead. Returns the phi record to use.

    Raises:
        EdgeAsdError: the refusals of :meth:`~edge_asd.edge.runtime.trust.TrustDir.check_model` and
            :meth:`~edge_asd.edge.runtime.trust.TrustDir.phi_in_service`, or ``--phi`` given (an unsigned phi).
    """
    from edge_asd.edge.runtime.trust import TrustDir

    device = TrustDir(cfg.trust_dir)

    def refuse(reason) -> None:
        if not cfg.allow_unsigned:
            raise EdgeAsdError(f"{cfg.label}: {reason}")
        log.warning("%s: --allow-unsigned (development mode): %s", cfg.label, reason)

    try:
        release = device.check_model(scorer.sha256, scorer.size_bytes, cfg.trusted_clock)
        log.info("%s: signed release %d (cohort %s)", cfg.label, release.version, release.cohort)
    except EdgeAsdError as e:
        refuse(e)
    if record is None:
        if cfg.phi is not None:
            refuse(f"--phi {cfg.phi:g} is an unsigned phi; a trust directory is configured (use the signed phi store)")
        return None
    try:
        return device.phi_in_service(record, machine_id, scorer.sha256, "phi record")
    except EdgeAsdError as e:
        refuse(e)
        return record


def _check_heard(label: str, record: PhiRecord) -> None:
    """Warn when the stored phi was set on recordings the model was trained on (edge-calibrate counts them,
    :mod:`.provenance`): the model scores its training audio low, so that phi raises more false alarms."""
    heard = record.recordings_heard_by_model
    if heard is not None and heard > 0:
        log.warning("%s: phi was set on %d recording%s the model was trained on: expect more false alarms than its "
                    "rule targets; run edge-calibrate on normal recordings the model has not heard", label, heard,
                    "" if heard == 1 else "s")


def alert_policy(label: str, record: PhiRecord | None, votes: str | None, hysteresis: float | None):
    """The alert policy of an input: the phi record's (1/1, off at phi, without one), with ``votes`` (``K/N``)
    and ``hysteresis`` overriding it; a WARNING when an override differs from the stored policy (phi was
    set on the stored policy's scores: a longer vote lowers them, a shorter one raises false alarms).

    Raises:
        EdgeAsdError: bad votes or hysteresis, or a damaged ``alert`` in the record.
    """
    from edge_asd.edge.runtime.alert import AlertPolicy

    stored = record.alert_policy() if record is not None else AlertPolicy()
    policy = stored if votes is None else AlertPolicy.parse(votes, stored.hysteresis)
    if hysteresis is not None:
        policy = AlertPolicy(policy.k, policy.n, float(hysteresis))
    if record is not None and (policy.k, policy.n) != (stored.k, stored.n):
        log.warning("%s: phi was calibrated for votes %s but the monitor uses %s; run edge-calibrate --votes %d/%d",
                    label, stored.describe(), policy.describe(), policy.k, policy.n)
    if record is not None and policy.hysteresis != stored.hysteresis:
        log.warning("%s: the phi record's hysteresis is %g, the monitor uses %g", label, stored.hysteresis,
                    policy.hysteresis)
    return policy


def _check_window(label: str, record: PhiRecord, windows) -> None:
    """Warn when the stored phi was calibrated on other windows than the monitor's: another ``--window``, or
    for the energy gate another on level or hold time (window maxima grow with the window: a phi from 1-s
    windows raises false alarms on whole streams; a gate that opens later or closes sooner changes the
    segments)."""
    from edge_asd.edge.runtime.windows import describe

    monitoring = describe(windows.settings())
    try:
        calibrated = describe(record.window_settings())
    except EdgeAsdError as e:  # the monitor still runs on the phi itself
        log.warning("%s: %s", label, e)
        return
    if calibrated != monitoring:
        log.warning("%s: phi was calibrated with %s but the monitor uses %s; run edge-calibrate with the monitor's "
                    "window options", label, calibrated, monitoring)


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
