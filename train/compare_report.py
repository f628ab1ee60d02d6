"""Tables of ``examples/compare_methods.py``: clip AUC / pAUC with 95 % bootstrap intervals per method and ID.

A run is one method's scores of one machine ID's test items for one seed (and one few-shot draw):
``{"method", "machine_type", "machine_id", "draw", "seed", "scores": [n_items]}``. A test set is a list of
item indices and labels (1 = anomalous): ``real`` (the ID's test clips) and ``mix_<ANR>dB`` (its normal
test clips and the paper-style mixtures at that ANR).

Intervals:

* all the data: the seed-mean AUC with a stratified bootstrap over the test clips, every replicate
  resampling the clips once for all seeds (:func:`edge_asd.train.bootstrap.auc_ci`): clip sampling
  only; the seed range (lowest and highest single-seed AUC) is given beside it.
* few-shot: per draw the seed-mean AUC; the cell is their mean over draws with a bootstrap over draws
  (the draws differ in the ID and the training clips, so this interval covers both).

pAUC: max FPR 0.1, McClish-standardized as scikit-learn and DCASE 2020 Task 2 compute it.
"""

from __future__ import annotations

import numpy as np

from edge_asd.core.metrics import auc_pauc
from edge_asd.train.bootstrap import Interval, auc_ci, paired_difference_ci


def set_order(name: str) -> tuple:
    return (0, 0.0) if name == "real" else (1, -float(name[len("mix_"):-len("dB")]))


def per_seed(runs: list[dict], sets: dict) -> list[dict]:
    """One row per run and test set: AUC and pAUC of that single scoring. ``sets``: {(type, id): {set: (items,
    labels)}}."""
    rows = []
    for r in runs:
        for name, (items, labels) in sorted(sets[(r["machine_type"], r["machine_id"])].items(), key=lambda s: set_order(s[0])):
            y = np.asarray(labels, bool)
            auc, pauc = auc_pauc(y, np.asarray(r["scores"], np.float64)[items])
            rows.append({k: r[k] for k in ("method", "machine_type", "machine_id", "draw", "seed", "n_train", "fit_seconds")}
                        | {"set": name, "n_normal": int((~y).sum()), "n_anomalous": int(y.sum()),
                           "auc": round(auc, 4), "pauc": round(pauc, 4)})
    return rows


def _grouped(runs: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in runs:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def summarize(runs: list[dict], sets: dict, n_boot: int = 1000) -> list[dict]:
    """Per method, ID and test set: seed-mean AUC / pAUC [clip-bootstrap interval], seed range, n clips."""
    rows = []
    for (method, mtype, mid), group in sorted(_grouped(runs, ("method", "machine_type", "machine_id")).items()):
        scores = np.array([g["scores"] for g in sorted(group, key=lambda g: g["seed"])], np.float64)
        for name, (items, labels) in sorted(sets[(mtype, mid)].items(), key=lambda s: set_order(s[0])):
            auc, pauc = auc_ci(labels, scores[:, items], n_boot=n_boot)
            single = [auc_pauc(np.asarray(labels, bool), s[items])[0] for s in scores]
            rows.append({"method": method, "machine_type": mtype, "machine_id": mid, "set": name, "seeds": len(scores),
                         "n_normal": labels.count(0), "n_anomalous": labels.count(1), "auc": vars(auc),
                         "pauc": vars(pauc), "seed_range": [round(min(single), 4), round(max(single), 4)]})
    return rows


def _mean_over_draws(values: list[float], n_boot: int, seed: int = 0) -> dict:
    v = np.asarray(values, np.float64)
    boot = np.random.default_rng(seed).choice(v, (n_boot, len(v))).mean(1)
    return vars(Interval(float(v.mean()), *map(float, np.percentile(boot, [2.5, 97.5]))))


def summarize_draws(runs: list[dict], sets: dict, n_boot: int = 1000) -> list[dict]:
    """Few-shot: per method, machine type and test set, the mean over draws of each draw's seed-mean AUC /
    pAUC with a bootstrap interval over draws, and the IDs drawn."""
    per_draw: dict[tuple, list[tuple[float, float]]] = {}
    ids: dict[tuple, set] = {}
    counts: dict[tuple, tuple[int, int]] = {}
    for (method, mtype, mid, _draw), group in sorted(_grouped(runs, ("method", "machine_type", "machine_id", "draw")).items()):
        scores = np.array([g["scores"] for g in group], np.float64)
        for name, (items, labels) in sets[(mtype, mid)].items():
            y = np.asarray(labels, bool)
            values = [auc_pauc(y, s[items]) for s in scores]
            per_draw.setdefault((method, mtype, name), []).append(tuple(np.mean(values, 0)))
            ids.setdefault((method, mtype, name), set()).add(mid)
            counts[(method, mtype, name)] = (labels.count(0), labels.count(1))
    rows = []
    for (method, mtype, name), values in sorted(per_draw.items(), key=lambda kv: (kv[0][:2], set_order(kv[0][2]))):
        rows.append({"method": method, "machine_type": mtype, "machine_id": "/".join(sorted(ids[(method, mtype, name)])),
                     "set": name, "draws": len(values), "n_normal": counts[(method, mtype, name)][0],
                     "n_anomalous": counts[(method, mtype, name)][1],
                     "auc": _mean_over_draws([a for a, _ in values], n_boot),
                     "pauc": _mean_over_draws([p for _, p in values], n_boot)})
    return rows


def _cell(iv: dict | None) -> str:
    return "–" if iv is None else f"{iv['value']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]"


def table(rows: list[dict], methods: list[str]) -> str:
    """Markdown: one line per method and ID (the RMS reference first), real AUC / pAUC and the mixtures' AUC."""
    anrs = sorted({r["set"] for r in rows if r["set"] != "real"}, key=set_order)
    by = {(r["method"], r["machine_type"], r["machine_id"], r["set"]): r for r in rows}
    machines = sorted({(r["machine_type"], r["machine_id"]) for r in rows})
    spread = "seed range" if "seed_range" in (rows[0] if rows else {}) else "draws"
    lines = ["| method | machine | real AUC [95 % CI] | real pAUC [95 % CI] | " + spread + " | "
             + " | ".join(f"{a[len('mix_'):]} AUC" for a in anrs) + " |",
             "|---" * (5 + len(anrs)) + "|"]
    for mtype, mid in machines:
        for method in methods:
            real = by.get((method, mtype, mid, "real"))
            mix = [by.get((method, mtype, mid, a)) for a in anrs]
            if real is None and not any(mix):
                continue
            extra = real and (f"{real['seed_range'][0]:.3f}–{real['seed_range'][1]:.3f}" if "seed_range" in real
                              else str(real["draws"]))
            lines.append(f"| {method} | {mtype} {mid} | {_cell(real and real['auc'])} | {_cell(real and real['pauc'])} | "
                         f"{extra or '–'} | " + " | ".join(_cell(m and m["auc"]) for m in mix) + " |")
    return "\n".join(lines) + "\n"


def resolution(runs: list[dict], rows: list[dict], sets: dict, n_boot: int = 1000) -> list[str]:
    """What the test sets can and cannot rank: per ID and set, its clips, the median AUC interval width, and
    for the method with the highest AUC the paired difference to every other (clip bootstrap; an interval
    that includes 0: these clips cannot rank the two)."""
    lines = []
    groups = _grouped(runs, ("machine_type", "machine_id"))
    for (mtype, mid), group in sorted(groups.items()):
        by_method = {m: np.array([g["scores"] for g in sorted(gs, key=lambda g: g["seed"])], np.float64)
                     for (m,), gs in _grouped(group, ("method",)).items()}
        for name, (items, labels) in sorted(sets[(mtype, mid)].items(), key=lambda s: set_order(s[0])):
            mine = [r for r in rows if (r["machine_type"], r["machine_id"], r["set"]) == (mtype, mid, name)]
            widths = [r["auc"]["high"] - r["auc"]["low"] for r in mine]
            best = max(mine, key=lambda r: r["auc"]["value"])["method"]
            verdicts = []
            for other in sorted(set(by_method) - {best}):
                d, _ = paired_difference_ci(labels, by_method[best][:, items], by_method[other][:, items], n_boot=n_boot)
                verdicts.append(f"{other} {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
                                + ("" if d.low > 0 else " (cannot rank)"))
            lines.append(f"{mtype} {mid} {name}: {labels.count(0)} normal / {labels.count(1)} anomalous clips, "
                         f"median AUC interval width {np.median(widths):.3f}; best {best}, AUC difference to "
                         + ("; ".join(verdicts) or "no other method"))
    return lines
