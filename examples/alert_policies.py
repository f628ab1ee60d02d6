"""Alert policies side by side: phi, false alarms per hour and detection delay of each k-of-n vote.

    python examples/alert_policies.py --model fan.tflite --machine-type fan --machine-id id_00 \\
        --calibration ../shared/data/machines/fan/train --anr-db -10 --out out/alert_policies_fan.json
    python examples/alert_policies.py --model fan.tflite --machine-type fan --machine-id id_00 --store phi.json

For a model file and one machine ID, every policy of edge-calibrate's ``--votes auto`` grid
(:mod:`edge_asd.edge.calibrate.votes`: n = 1 frame, 0.5, 1, 2, 4 s; k = 1, n/2, n) gets its phi from the
calibration recordings exactly as edge-calibrate sets it (``--window whole``, the default rule: 1.1 x the
worst recording's max policy score), and the auto choice is marked; ``--store`` adds the stored phi with its
policy (edge-calibrate's record for the machine ID and model). Then, per policy:

- **false alarms per hour**: alarm-on transitions (edge-monitor's ``alarm`` lines) while the normal test
  clips of the machine ID are streamed back to back as one input, over the hours of that audio, with the
  95 % upper bound of a Poisson rate (0 events: 3.0 / hours);
- **detection delay** on the real anomalous test clips, each streamed alone: seconds from the clip's start
  to its first alarm-on (stream time, so at least one context vector, 0.352 s for koizumi2019), the median
  over the clips that alarm and how many never alarm;
- with ``--anr-db``: the same on paper-style mixtures (Koizumi et al. 2019, sec. 4.2: the DCASE 2016 office
  sounds of ``something_else/test`` mixed into the normal test clips at that ANR, :mod:`edge_asd.train.mixtures`),
  the delay counted from the sound's onset (an alarm before it does not count).

Scores come from the device code: the model's frame scores of each stream (:meth:`Scorer.score_audio`), the
input-health mask (:func:`~edge_asd.edge.runtime.health.recording_health`), the policy score and the alarm of
:mod:`edge_asd.edge.runtime.alert`, the same functions edge-monitor's loop calls block by block (tests/test_alert.py
checks they agree). A Markdown table goes to stdout, the figures as JSON to ``--out``. Runs unchanged on a full
DCASE 2020 Task 2 or MIMII download (``--data``). Results: docs/calibration.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import numpy as np

from edge_asd.core.commands import script_help, setup_logging, user_errors
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.calibrate import names, votes
from edge_asd.edge.calibrate.recordings import scored_recordings
from edge_asd.edge.calibrate.rules import DEFAULT_MARGIN, DEFAULT_QUANTILE
from edge_asd.edge.runtime.alert import Alarm, AlertPolicy, policy_scores
from edge_asd.edge.runtime.health import recording_health
from edge_asd.edge.runtime.phi_store import lookup_phi
from edge_asd.edge.runtime.scorer import Scorer
from edge_asd.edge.runtime.windows import frame_stamps
from edge_asd.firmware_io.audio_file import find_recordings, read_audio

log = logging.getLogger("edge_asd")


def poisson_upper95(k: int) -> float:
    """One-sided 95 % upper bound of a Poisson mean after ``k`` events (0 -> 2.996)."""
    from scipy.stats import chi2

    return float(chi2.ppf(0.95, 2 * k + 2) / 2)


def machine_test_clips(data: Path | None, machine_type: str, machine_id: str) -> tuple[list[Path], list[Path]]:
    """(normal, anomalous) test clips of one machine ID (MIMII clips get the baselines' split)."""
    from edge_asd.datasets.layout import assign_mimii_split, scan
    from edge_asd.datasets.locate import require_data_root

    clips = assign_mimii_split(scan(data or require_data_root(), machine_type=machine_type, machine_id=machine_id))
    pick = [[c.path for c in clips if c.split == "test" and c.label == label] for label in ("normal", "anomaly")]
    if not all(pick):
        raise EdgeAsdError(f"{machine_type} {machine_id}: needs normal and anomalous test clips")
    return pick[0], pick[1]


class Stream:
    """One input as edge-monitor scores it: frame scores, health mask and stamps (s), computed once."""

    def __init__(self, scorer: Scorer, samples: np.ndarray):
        cfg = scorer.features
        self.scores = scorer.score_audio(samples)
        self.scored = recording_health(samples, cfg.sample_rate, cfg.hop_samples, cfg.samples_per_vector,
                                       vector_hop_samples=cfg.vector_hop_samples).scored[
            :len(self.scores)]
        self.times_s = frame_stamps(0, len(self.scores), cfg) / cfg.sample_rate
        self.seconds = len(samples) / cfg.sample_rate

    def alarm_ons(self, policy: AlertPolicy, phi: float) -> np.ndarray:
        """Stream times (s) of the alarm-on transitions under ``policy`` and ``phi``."""
        values, ok = policy_scores(self.scores, policy, self.scored)
        return np.array([self.times_s[i] for i, on in Alarm(phi, policy.hysteresis).update(values, ok) if on])


def delays(streams: list[Stream], policy: AlertPolicy, phi: float, onsets_s: list[float] | None = None) -> dict:
    """Median delay (s) from each stream's start (or onset) to its first alarm-on at or after it; how many never."""
    got = []
    for i, s in enumerate(streams):
        start = 0.0 if onsets_s is None else onsets_s[i]
        ons = s.alarm_ons(policy, phi)
        ons = ons[ons >= start]
        got.append(float(ons[0] - start) if len(ons) else None)
    hit = [d for d in got if d is not None]
    return {"median_s": float(np.median(hit)) if hit else None, "never": len(got) - len(hit), "n": len(got)}


def mixtures(scorer: Scorer, normals: list[np.ndarray], sounds_dir: Path, anr_db: float) -> tuple[list, list[float]]:
    """(streams, onsets in s) of every paper sound mixed once into a normal test clip at ``anr_db``."""
    from edge_asd.train.mixtures import anomaly_sound_files, plan_mixtures, render

    rate = scorer.features.sample_rate
    sounds = [read_audio(f, rate) for f in anomaly_sound_files(sounds_dir)]
    plan = plan_mixtures([len(x) for x in normals], [len(x) for x in sounds], (anr_db,))
    return [Stream(scorer, x) for x in render(plan, normals, sounds)], [m.start / rate for m in plan]


def evaluate(model: Path, calibration: list[Path], normals: list[Path], anomalies: list[Path],
             anrs_db: tuple[float, ...], sounds_dir: Path, stored=None) -> dict:
    """Every grid policy's phi (set on ``calibration``, if any), false alarms per hour and detection delays (see
    the module docstring); with ``stored`` (a PhiRecord), its phi and policy as one more row."""
    scorer = Scorer(model)
    cfg = scorer.features
    hop_s = cfg.vector_hop_s
    rule = {"quantile": DEFAULT_QUANTILE, "margin": DEFAULT_MARGIN}
    chosen, grid = None, []
    if calibration:
        chosen, grid = votes.choose(scorer, calibration, scored_recordings(scorer, calibration), {"window": "whole"},
                                    rule)
    if stored is not None:
        policy = stored.alert_policy()
        grid.append({"k": policy.k, "n": policy.n, "phi": stored.phi, "headroom": None, "stored": True})
    normal_audio = [read_audio(f, cfg.sample_rate) for f in normals]
    back_to_back = Stream(scorer, np.concatenate(normal_audio))
    hours = back_to_back.seconds / 3600
    real = [Stream(scorer, read_audio(f, cfg.sample_rate)) for f in anomalies]
    mixed = {anr: mixtures(scorer, normal_audio, sounds_dir, anr) for anr in anrs_db}
    rows = []
    for g in grid:
        policy = stored.alert_policy() if g.get("stored") else AlertPolicy(g["k"], g["n"])
        n_alarms = len(back_to_back.alarm_ons(policy, g["phi"]))
        rows.append({**g, "policy": votes.explain(policy, hop_s),
                     "auto": not g.get("stored") and chosen is not None and (policy.k, policy.n) == (chosen.k, chosen.n),
                     "false_alarms": n_alarms, "false_alarms_per_hour": n_alarms / hours,
                     "false_alarms_per_hour_upper95": poisson_upper95(n_alarms) / hours,
                     "real_anomalies": delays(real, policy, g["phi"]),
                     "mixtures": {str(anr): delays(s, policy, g["phi"], on) for anr, (s, on) in mixed.items()}})
    return {"model": str(model), "model_sha256": scorer.sha256, "calibration": [str(f) for f in calibration],
            "normal_test_clips": len(normals), "normal_hours": hours, "anomalous_test_clips": len(anomalies),
            "rule": rule, "window": "whole", "rows": rows}


def markdown(result: dict) -> str:
    """The rows as a Markdown table."""
    anrs = list(result["rows"][0]["mixtures"])
    head = ("| votes | phi | headroom | false alarms / h (95 % upper) | real anomalies: median delay s, never alarmed |"
            + "".join(f" ANR {a} dB mixtures: median delay s, never |" for a in anrs))
    out = [head, "|" + "---|" * (5 + len(anrs))]

    def delay(d):
        return f"{'–' if d['median_s'] is None else format(d['median_s'], '.2f')}, {d['never']} of {d['n']}"

    for r in result["rows"]:
        name = f"**{r['policy']}** (auto)" if r["auto"] else r["policy"] + (" (the store's)" if r.get("stored") else "")
        room = "–" if r["headroom"] is None else f"{r['headroom']:.3g}x"
        out.append(f"| {name} | {r['phi']:.4g} | {room} | {r['false_alarms_per_hour']:.3g} "
                   f"({r['false_alarms_per_hour_upper95']:.3g}) | {delay(r['real_anomalies'])} |"
                   + "".join(f" {delay(r['mixtures'][a])} |" for a in anrs))
    out += ["", f"{result['normal_test_clips']} normal test clips streamed back to back "
                f"({result['normal_hours'] * 3600:.0f} s), {result['anomalous_test_clips']} anomalous test clips; "
                f"grid rows' phi: 1.1 x the worst calibration recording's max policy score (--window whole)."]
    return "\n".join(out) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=script_help(__doc__))
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root (DCASE/MIMII layout). Default: $EDGE_ASD_DATA or ../shared/data.")
@click.option("--machine-type", required=True)
@click.option("--machine-id", required=True, help="e.g. id_00 (the test clips of this ID are used).")
@click.option("--calibration", "calibration", multiple=True,
              help="Normal recordings phi is set on (files or folders, repeatable), as edge-calibrate's RECORDINGS: "
                   "one row per policy of the auto grid.")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Phi store: one more row with its phi and policy for --machine-id and this model.")
@click.option("--anr-db", "anrs_db", type=float, multiple=True, help="Also paper-style mixtures at this ANR (repeatable).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the figures as JSON.")
@click.option("-q", "--quiet", is_flag=True)
@user_errors
def main(model_path, data, machine_type, machine_id, calibration, store, anrs_db, out, quiet):
    """Per alert policy of edge-calibrate's auto grid: phi, false alarms per hour, detection delay."""
    setup_logging(quiet=quiet)
    from edge_asd.datasets.locate import require_data_root

    if not calibration and store is None:
        raise EdgeAsdError("give --calibration recordings and/or --store")
    root = data or require_data_root()
    normals, anomalies = machine_test_clips(root, machine_type, machine_id)
    files = [f for f in find_recordings(calibration) if f not in set(normals)] if calibration else []
    scorer = Scorer(model_path)
    stored = lookup_phi(store, machine_id, scorer.sha256)[1] if store is not None else None
    machine = names.model_machine(scorer.meta, machine_id)
    names.refuse_anomalies(files, "--calibration recordings")
    other = {f for f, _ in names.other_machines(files, machine)}
    if other:
        log.info("--calibration: %d recordings of other machines left out", len(other))
    files = [f for f in files if f not in other]
    result = evaluate(model_path, files, normals, anomalies, tuple(anrs_db), root / "something_else" / "test", stored)
    click.echo(markdown(result), nl=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
