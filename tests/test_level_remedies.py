"""examples/level_remedies.py: which alarms a gain raises, and the target's verdict per machine ID."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def remedies():
    sys.path.insert(0, str(EXAMPLES))  # the script imports its sibling scripts, as when it runs
    try:
        import level_remedies
    finally:
        sys.path.remove(str(EXAMPLES))
    return level_remedies


def run(config: str, phi: float, scores_by_gain: dict[float, list[float]], segment_auc: float) -> dict:
    sets = {f"segment_{anr}dB": {"labels": [0, 0, 1, 1], "max": [1.0, 2.0, 3.0 if segment_auc == 1 else 1.5, 4.0],
                                 "level_dbfs": [-40.0, -40.1, -39.9, -40.0]} for anr in (-10, -15, -20)}
    return {"machine_type": "fan", "machine_id": "id_00", "config": config, "seed": 0, "phi": phi,
            "phi_on": "training clips", "sets": sets,
            "gains": [{"gain_db": g, "max_scores": s, "n_over_phi": sum(x >= phi for x in s)} for g, s in scores_by_gain.items()]}


def test_only_alarms_the_gain_raises_count(remedies):
    # clip 0 alarms at 0 dB already (not raised), clip 1 at +1 dB (raised), clip 2 only at +3 dB (outside +-1 dB)
    r = run("baseline", 10.0, {-1.0: [11, 1, 1], 0.0: [12, 2, 2], 1.0: [13, 10, 3], 3.0: [14, 20, 10]}, 1)
    assert remedies.raised_by_gain(r, 1.0) == 1 and remedies.raised_by_gain(r, 3.0) == 2


def test_target_needs_no_raised_alarm_and_the_mixture_auc_within_two_points(remedies):
    quiet = {-1.0: [1, 1], 0.0: [1, 1], 1.0: [1, 1]}
    runs = [run("baseline", 10.0, {**quiet, 1.0: [11, 1]}, 1),  # raises one alarm at +1 dB
            run("context", 10.0, quiet, 1),  # same mixture AUC, no alarm: met
            run("gain3", 10.0, quiet, 0.5)]  # no alarm, but a lower mixture AUC: not met
    rows = {r["config"]: r for r in remedies.summarize(runs, n_boot=100)}
    assert [rows[c]["target_met"] for c in ("baseline", "context", "gain3")] == [False, True, False]
    assert rows["gain3"]["mixture_auc_drop"] == pytest.approx(0.25)
    assert "met by context." in remedies.markdown(list(rows.values()), ["baseline", "context", "gain3"])
