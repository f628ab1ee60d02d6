"""Setting phi for one machine ID, as edge-calibrate does it: score normal recordings with the model (or take
the out-of-fold scores the model file holds for its training clips), fit phi to their window maxima by a
rule, check it on held-out recordings, and build the phi record the store keeps
(:class:`~edge_asd.edge.runtime.phi_store.PhiRecord`).

Python use::

    from edge_asd.edge.calibrate.fit import CalibrateOptions, RuleOptions, WindowOptions, calibrate_machine

    done = calibrate_machine(CalibrateOptions(recordings=(Path("normal/"),), model_path=Path("fan.tflite"),
                                              machine_id="id_00", store=Path("phi.json"),
                                              window=WindowOptions("1"), rule=RuleOptions(alarms_per_day=1.0)))
    done.record.phi
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_asd.core.commands import kit_version
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.oof import read_oof
from edge_asd.core.provenance import heard
from edge_asd.edge.calibrate import diagnose, names, votes
from edge_asd.edge.calibrate.recordings import (
    UNHEARD_MODE_RATIO,
    held_out_maxima,
    out_of_fold_scores,
    recording_levels,
    recordings_window_maxima,
    scored_recordings,
    split_holdout,
    unheard_modes,
    write_maxima,
)
from edge_asd.edge.calibrate.rules import (
    DEFAULT_MARGIN,
    DEFAULT_QUANTILE,
    WindowMax,
    calibrate,
    phi_maxima,
    rule_arguments,
    seconds_per_window,
)
from edge_asd.edge.runtime import phi_store
from edge_asd.edge.runtime.alert import AlertPolicy
from edge_asd.edge.runtime.health import BAND_SHARE_FLOOR
from edge_asd.edge.runtime.input_level import level_statistics
from edge_asd.edge.runtime.phi_store import PhiRecord
from edge_asd.edge.runtime.scorer import Scorer
from edge_asd.edge.runtime.windows import (
    DEFAULT_GATE_DB,
    DEFAULT_GATE_MIN_OFF_S,
    DEFAULT_GATE_MIN_ON_S,
    make_windows,
)
from edge_asd.firmware_io.audio_file import find_recordings, read_audio

log = logging.getLogger("edge_asd")


@dataclass(frozen=True)
class WindowOptions:
    """The decision windows, as edge-monitor's ``--window`` and gate options give them."""

    window: str = "whole"
    """``whole`` (one recording = one window), a number of seconds, or ``gate``."""
    gate_db: float = DEFAULT_GATE_DB
    """``gate``: machine on at or above this level, dBFS (off 3 dB lower)."""
    gate_min_on_s: float = DEFAULT_GATE_MIN_ON_S
    """``gate``: seconds at or above ``gate_db`` before the gate opens."""
    gate_min_off_s: float = DEFAULT_GATE_MIN_OFF_S
    """``gate``: seconds below the off level before the gate closes."""

    def make(self, sample_rate: int, hop_samples: int):
        """Fresh windows (:func:`~edge_asd.edge.runtime.windows.make_windows`; ``sample_rate`` Hz, ``hop_samples``
        the model's hop). Raises EdgeAsdError for a bad window or hold time."""
        return make_windows(self.window, sample_rate, hop_samples, self.gate_db, self.gate_min_on_s, self.gate_min_off_s)


@dataclass(frozen=True)
class RuleOptions:
    """The rule phi is set by (:func:`~edge_asd.edge.calibrate.rules.calibrate`): the quantile rule
    (``quantile``, ``margin``, or ``target_fpr``) or the false-alarm budget (``alarms_per_day``, ``tail``,
    ``n_boot``)."""

    quantile: float = DEFAULT_QUANTILE
    """Quantile rule: q of the window max scores that phi is placed above."""
    margin: float | None = None
    """Quantile rule: phi = margin x quantile (None: 1.1, or 1.0 with ``target_fpr``)."""
    target_fpr: float | None = None
    """Quantile rule at a false-positive rate per window: q = 1 - target_fpr."""
    alarms_per_day: float | None = None
    """Budget rule: phi for this many false alarms a day, from an extreme-value fit to the window maxima."""
    tail: str = "gumbel"
    """Budget rule: ``gumbel`` or ``gev``."""
    n_boot: int = 200
    """Budget rule: parametric-bootstrap refits for phi's uncertainty (0: none)."""


@dataclass(frozen=True)
class CalibrateOptions:
    """Everything edge-calibrate needs to set phi for one machine ID."""

    recordings: tuple[Path, ...]
    """Normal recordings: files, or directories of audio files."""
    model_path: Path
    """The model file (.tflite or .onnx)."""
    machine_id: str
    """00, id_00 or section_00."""
    store: Path
    """The phi store (JSON) the record is saved to."""
    window: WindowOptions = WindowOptions()
    rule: RuleOptions = RuleOptions()
    holdout: float | None = None
    """Keep this fraction of the recordings (the last ones) out of the fit and check phi on them."""
    check: tuple[Path, ...] = ()
    """Held-out normal recordings (files or directories) to check phi on (not with ``holdout``)."""
    maxima_out: Path | None = None
    """Write every window (fitted and held out) to this JSONL file."""
    threads: int = 1
    """Inference threads."""
    accept_other_machines: bool = False
    """Take recordings whose names say another machine ID or type (:mod:`edge_asd.edge.calibrate.names`)."""
    use_oof: bool = True
    """Take the out-of-fold frame scores the model file holds (``edge-train --oof-folds``) for the recordings
    they belong to; False (``--no-oof``): the model scores every recording."""
    oof_all: bool = False
    """Keep the recordings whose out-of-fold scores sound like an unheard mode
    (:func:`~edge_asd.edge.calibrate.recordings.unheard_modes`) in phi; False: they are named and left out."""
    votes: str = "auto"
    """The alert policy phi is set for: ``K/N`` (K of the last N frames reach phi; ``1/1``: eq. 11), or ``auto``
    (:mod:`edge_asd.edge.calibrate.votes`)."""
    hysteresis: float = 1.0
    """The alarm's off level over phi, stored with the policy (edge-monitor's default)."""


@dataclass(frozen=True)
class Calibration:
    """What one calibration did."""

    machine_id: str
    """The machine ID, in the model's ID form (``id_00`` or ``section_00``, :mod:`.names`)."""
    record: PhiRecord
    """The record saved to the store."""
    fit_windows: list[WindowMax]
    """The windows of the recordings phi was set on."""
    held_windows: list[WindowMax]
    """The windows of the held-out recordings phi was checked on."""
    recordings: list[Path]
    """The recordings phi was set on."""
    hop_s: float = 0.016
    """The model's score hop, s (a vote of n scores spans n hops)."""
    oof_folds: int | None = None
    """K of the model file's out-of-fold scores when they were used (None: the model has none, or ``use_oof``
    is off); ``record.oof_recordings`` counts the recordings phi was set on with them."""
    oof_held: int = 0
    """How many of the held-out recordings were checked with their out-of-fold scores."""


def calibrate_machine(options: CalibrateOptions) -> Calibration:
    """edge-calibrate without its option parsing: score the recordings with the model (a recording whose
    out-of-fold scores the model file holds, ``edge-train --oof-folds``: those scores, unless ``use_oof`` is
    off; ``record.oof_recordings`` counts them), choose the alert policy (``votes``: given, or ``auto``,
    :mod:`.votes`), set phi by the rule on the window maxima of its policy score on the windows edge-monitor
    would decide on, check it on the held-out recordings (``holdout`` or ``check``), write the window maxima
    (``maxima_out``) and save the record to the store for the machine ID.

    The recordings' names are checked first (:mod:`.names`): ``anomaly_*`` clips are refused, and so are
    clips of another machine ID or type unless ``accept_other_machines``; ``machine_id`` 00 takes the model's
    ID form (one INFO line). WARNINGs (:mod:`.diagnose`) name a recording that decides phi alone, and say
    when the energy gate leaves recordings without a window or sits within 3 dB of their level.

    Raises:
        EdgeAsdError: both ``holdout`` and ``check``, recordings refused by their names, a bad model (or a
            damaged ``oof`` entry in its metadata), recording, window or rule, too little data for the rule,
            or a store that cannot be read or written (nothing is saved then).
    """
    if options.holdout is not None and options.check:
        raise EdgeAsdError("give either --holdout or --check, not both")
    scorer = Scorer(options.model_path, num_threads=options.threads)
    files = find_recordings(options.recordings)
    held_files = find_recordings(options.check) if options.check else []
    machine_id = names.resolve_for_model(options.machine_id, scorer.meta, [*files, *held_files])
    machine = names.model_machine(scorer.meta, machine_id)
    names.check_normal_recordings(files, machine, "recordings", options.accept_other_machines)
    names.check_normal_recordings(held_files, machine, "--check recordings", options.accept_other_machines)
    if options.holdout is not None:
        files, held_files = split_holdout(files, options.holdout)
    windows = options.window.make(scorer.features.sample_rate, scorer.features.hop_samples)
    oof = read_oof(scorer.meta, str(options.model_path)) if options.use_oof else None
    decoded = {f: read_audio(f, scorer.features.sample_rate) for f in [*files, *held_files]}  # each decoded once
    known = out_of_fold_scores(oof, [*files, *held_files], scorer.features, audio=decoded)
    n_heard = warn_if_heard(scorer.meta, files, held_files, known)
    left_out = [] if options.oof_all else unheard_modes(known, files)
    if left_out:
        log.warning("out-of-fold scores: %s %s, from start to end, like an anomaly to the fold models that did not "
                    "hear %s (median frame score over %gx the recordings' median): a mode of the machine's sound "
                    "too rare in the training clips, or a mislabelled anomaly. Left out of phi (--oof-all keeps "
                    "them); listen to %s, and record more normal audio of that state", ", ".join(f.name for f in left_out),
                    "sounds" if len(left_out) == 1 else "sound", "it" if len(left_out) == 1 else "them",
                    UNHEARD_MODE_RATIO, "it" if len(left_out) == 1 else "them")
        files = [f for f in files if f not in left_out]
    rule = options.rule
    rule_kwargs = dict(quantile=rule.quantile, margin=rule.margin, target_fpr=rule.target_fpr,
                       alarms_per_day=rule.alarms_per_day, tail=rule.tail, n_boot=rule.n_boot)
    auto = str(options.votes).strip().lower() == "auto"
    policy = AlertPolicy(hysteresis=options.hysteresis) if auto else AlertPolicy.parse(options.votes, options.hysteresis)
    scored = scored_recordings(scorer, files, audio=[decoded[f] for f in files], known=known)
    alert = {**policy.to_dict(), "choice": "given"}
    if auto:
        policy, grid = votes.choose(scorer, files, scored, windows.settings(), rule_kwargs, options.hysteresis)
        alert = {**policy.to_dict(), "choice": "auto", "grid": grid}
    fit_windows, durations, clip_max = recordings_window_maxima(scorer, files, **windows.settings(), scored=scored,
                                                                policy=policy)
    if windows.name == "gate":  # before phi_maxima refuses a sample the gate left empty
        levels = recording_levels(files, scorer.features.sample_rate, audio=[samples for samples, _ in scored])
        diagnose.warn_gate(diagnose.gate_check([str(f) for f in files], levels, fit_windows, options.window.gate_db))
    held_windows, held = held_out_maxima(scorer, held_files, windows, audio=[decoded[f] for f in held_files],
                                         policy=policy, known=known)
    result = calibrate(phi_maxima(fit_windows), seconds_per_window(windows, durations, len(fit_windows)),
                       heldout_maxima=held, **rule_kwargs)
    diagnose.warn_dominant(fit_windows, result["phi"])
    result["window_maxima"]["cut_short"] = sum(not w.complete for w in fit_windows)
    if options.maxima_out is not None:
        write_maxima(options.maxima_out, fit_windows, held_windows)
    record = dataclasses.replace(phi_record(scorer, options.model_path, files, result, windows, clip_max, held_files),
                                 recordings_heard_by_model=n_heard, alert=alert,
                                 input_level=input_level(scorer, files, [a for a, _ in scored]),
                                 oof_recordings=sum(f in known for f in files) if oof is not None else None,
                                 oof_left_out=tuple(map(str, left_out)) or None)
    if record.fit is not None:
        fit, boot = record.fit, record.fit.get("bootstrap")
        log.info("%s fit of %d window maxima %s (KS p %.2f); phi %.4g for p %.3g per window%s", fit["fit"]["family"],
                 fit["fit"]["n_maxima"], fit["fit"]["params"], fit["fit"]["ks_pvalue"], record.phi, fit["p_window"],
                 f", bootstrap 90% interval [{boot['phi_p5']:.4g}, {boot['phi_p95']:.4g}]" if boot else "")
    phi_store.save_phi(options.store, machine_id, record)
    cfg = scorer.features
    return Calibration(machine_id, record, fit_windows, held_windows, files, cfg.vector_hop_s,
                       oof.folds if oof is not None else None, sum(f in known for f in held_files))


def phi_record(scorer, model_path: str | Path, files: Sequence[Path], result: dict, windows, clip_max: list[float],
               held_files: Sequence[Path] = ()) -> PhiRecord:
    """The phi store's record of a calibration: phi, the model (sha256, path, machine type), the rule (and
    its ``fit`` / ``check`` when made), the windows' ``settings()`` (``window``; for the gate ``gate_db``
    in dBFS, ``gate_min_on_s`` and ``gate_min_off_s`` in s) with ``window_s`` (s, None unless fixed), the
    window maxima, each recording's max frame score, the recordings, the time (UTC) and the kit version.
    ``result``: :func:`~edge_asd.edge.calibrate.rules.calibrate`'s; ``clip_max``: each recording's max frame
    score; ``held_files``: the held-out recordings phi was checked on (``heldout_recordings``), if any.
    """
    return PhiRecord(
        phi=result["phi"],
        model_sha256=scorer.sha256,
        model_path=str(Path(model_path).resolve()),
        machine_type=scorer.meta.get("machine_type"),
        rule=result["rule"],
        **windows.settings(),
        window_s=float(windows.spec) if windows.name == "fixed" else None,
        window_maxima=result["window_maxima"],
        clip_max_scores={"min": min(clip_max), "median": float(np.median(clip_max)), "max": max(clip_max)},
        recordings=tuple(str(f) for f in files),
        calibrated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        kit_version=kit_version(),
        fit=result.get("fit"),
        check=result.get("check"),
        heldout_recordings=tuple(str(f) for f in held_files) if held_files else None,
    )


def calibrate_like(previous: PhiRecord | None, scorer, model_path: str | Path, files: Sequence[Path],
                   audio: list[np.ndarray] | None = None, held_files: Sequence[Path] = (),
                   held_audio: list[np.ndarray] | None = None) -> PhiRecord:
    """Calibrate again as an earlier phi record was: the same rule with the same parameters
    (:func:`~edge_asd.edge.calibrate.rules.rule_arguments`; the budget rule with as many bootstrap refits)
    on the same windows (:meth:`PhiRecord.window_settings`) and alert policy (:meth:`PhiRecord.alert_policy`),
    applied to ``files`` (or their decoded ``audio``, see :func:`recordings_window_maxima`) scored by ``scorer``.
    ``previous`` None: edge-calibrate's defaults (1.1 x the worst recording, whole windows).
    ``held_files`` (decoded: ``held_audio``): held-out normal recordings; the new phi is checked on their
    windows as edge-calibrate ``--check`` does (the record's ``check`` and ``heldout_recordings``).

    Returns the new phi record (:func:`phi_record`). Raises EdgeAsdError when the rule or window cannot be
    applied: an unknown or damaged rule or window, no complete window, too few windows for a tail fit, ...
    """
    default_rule = {"name": "clip-max-quantile", "quantile": DEFAULT_QUANTILE, "margin": DEFAULT_MARGIN}
    arguments = rule_arguments((previous.rule if previous is not None else None) or default_rule)
    settings = previous.window_settings() if previous is not None else {"window": "whole"}
    cfg = scorer.features
    windows = make_windows(settings.pop("window"), cfg.sample_rate, cfg.hop_samples, **settings)
    policy = previous.alert_policy() if previous is not None else AlertPolicy()
    fit_windows, durations, clip_max = recordings_window_maxima(scorer, list(files), **windows.settings(), audio=audio,
                                                                policy=policy)
    n_boot = (((previous.fit if previous is not None else None) or {}).get("bootstrap") or {}).get("n", 0)
    held = held_out_maxima(scorer, held_files, windows, held_audio, policy)[1]
    result = calibrate(phi_maxima(fit_windows), seconds_per_window(windows, durations, len(fit_windows)), n_boot=n_boot,
                       heldout_maxima=held, **arguments)
    result["window_maxima"]["cut_short"] = sum(not w.complete for w in fit_windows)
    alert = {**policy.to_dict(), "choice": "given"} if previous is not None and previous.alert is not None else None
    return dataclasses.replace(phi_record(scorer, model_path, files, result, windows, clip_max, held_files),
                               alert=alert, input_level=input_level(scorer, files, audio))


def input_level(scorer, files: Sequence[Path], audio: list[np.ndarray] | None = None) -> dict | None:
    """The recordings' level statistics for the phi record (``input_level``,
    :func:`~edge_asd.edge.runtime.input_level.level_statistics`): per-second RMS level (dBFS) and high-band share,
    at the model's sample rate; ``audio``: the recordings already decoded (else read from ``files``)."""
    cfg = scorer.features
    if audio is None:
        audio = [read_audio(f, cfg.sample_rate) for f in files]
    stats = level_statistics(audio, cfg.sample_rate, cfg.hop_samples)
    if stats is not None and stats["high_band_share"] is not None and stats["high_band_share"] < BAND_SHARE_FLOOR:
        log.warning("the recordings have almost no energy above %d Hz (%.2g of the total): recorded at a lower rate "
                    "and upsampled? phi set on them does not fit the machine as the model hears it; the monitor "
                    "does not score such input (band_limited)", cfg.sample_rate // 4, stats["high_band_share"])
    return stats


def warn_if_heard(meta: dict, files: Sequence[Path], held_files: Sequence[Path], oof: Collection[Path] = ()) -> int:
    """Warn when the model was trained on some of the recordings (:mod:`edge_asd.core.provenance`) and scores
    them itself; return how many of ``files`` those are. phi set on them is low, and a check on them is
    optimistic. Recordings in ``oof`` (those with out-of-fold scores) are not counted: no model that heard
    them scores them."""
    fit = [f for f in heard(meta, files) if f not in oof]
    held = [f for f in heard(meta, held_files) if f not in oof]
    if fit:
        log.warning("%d of the %d recordings were used to train this model (e.g. %s): it scores them lower than new "
                    "audio, so phi comes out low and false alarms above the target; calibrate on normal recordings "
                    "the model has not heard", len(fit), len(files), fit[0].name)
    if held:
        log.warning("%d of the %d held-out recordings were used to train this model (e.g. %s): the check on them is "
                    "optimistic", len(held), len(held_files), held[0].name)
    return len(fit)


def check_line(check: dict) -> str:
    """The held-out check (a record's ``check``) as one sentence."""
    line = (f"check on {check['windows']} held-out normal windows: {check['false_alarms']} false alarms, "
            f"realized {check['per_day']:.3g}/day (95% upper bound {check['per_day_upper95']:.3g}/day)")
    if "target_per_day" in check:
        verdict = "met" if check["meets_target"] else "NOT met"
        if check["meets_target"] and check["per_day_upper95"] > check["target_per_day"]:
            verdict += " but not confirmed at 95%" + (
                f" ({check['windows_needed']} alarm-free windows would confirm it)" if check["false_alarms"] == 0 else "")
        line += f"; target {check['target_per_day']:.3g}/day: {verdict}"
    return line


def oof_line(done: Calibration) -> str | None:
    """How phi used the model file's out-of-fold scores, as one sentence (None when they were not used)."""
    if done.oof_folds is None:
        return None
    n, m, left = done.record.oof_recordings, len(done.recordings), len(done.record.oof_left_out or ())
    line = (f"phi from out-of-fold scores for {n} of {m + left} recordings ({done.oof_folds}-fold models that never "
            f"heard them); {m - n} scored by the model")
    if left:
        line += f"; {left} left out as unheard modes"
    if done.record.heldout_recordings:
        line += (f"; the check: {done.oof_held} of {len(done.record.heldout_recordings)} held-out recordings from "
                 "out-of-fold scores")
    return line
