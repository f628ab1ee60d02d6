"""Tables and a plot of the objective experiment from its per-run JSON lines (``train.experiment.run_one``).

Per model (machine type, machine ID, architecture, loss) and test set: AUC and pAUC (max FPR 0.1) of
each seed, their mean and standard deviation over seeds, and a 95 % bootstrap interval over clips of the
seed-mean AUC (``train.bootstrap``: one resample of the clips applied to every seed). Paired comparisons
(BU - SNP, SNP - RE, BU - RE on the same clips and seeds) use :func:`train.bootstrap.paired_difference_ci`.
Beside the models, one row per machine ID gives the loudness reference: the same metric with each test
item's RMS level (dBFS) as the score (:mod:`edge_asd.core.loudness`), from the levels a run carries.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from edge_asd.train.bootstrap import auc_ci, paired_difference_ci, weighted_auc_pauc

LOSS_ORDER = ("re", "snp", "bu")
ARCH_ORDER = ("fcn-small", "fcn-large", "dcase2020")
PAIRS = (("bu", "snp"), ("snp", "re"), ("bu", "re"))
NAMES = {"re": "RE", "snp": "SNP", "bu": "BU"}
FEW = 3
"""Fewer clips than this in a class: the interval cannot reflect that class's sampling (marked †)."""


def read_runs(path: Path) -> list[dict]:
    """The finished runs of a JSON-lines file; a damaged line (an interrupted write) is skipped."""
    runs = []
    if not path.is_file():
        return runs
    for line in path.read_text().splitlines():
        try:
            run = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(run, dict) and "key" in run and "sets" in run:
            runs.append(run)
    return runs


def model_name(arch: str, loss: str) -> str:
    return "DCASE 2020 baseline AE (RE)" if arch == "dcase2020" else f"{arch} {NAMES.get(loss, loss)}"


def _set_order(name: str) -> tuple:
    if name == "real":
        return (0, 0.0)
    level, anr = name.split("_")
    return (1 if level == "segment" else 2, -float(anr.removesuffix("dB")))


def group(runs: list[dict]) -> dict[tuple, list[dict]]:
    """(machine_type, machine_id, arch, loss) -> runs sorted by seed (the last line wins for a repeated key)."""
    by_key = {r["key"]: r for r in runs}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in by_key.values():
        groups[(r["machine_type"], r["machine_id"], r["arch"], r["loss"])].append(r)
    for v in groups.values():
        v.sort(key=lambda r: r["seed"])
    arch_rank = {a: i for i, a in enumerate(ARCH_ORDER)}
    loss_rank = {x: i for i, x in enumerate(LOSS_ORDER)}
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], arch_rank.get(kv[0][2], 9),
                                                        loss_rank.get(kv[0][3], 9))))


def summarize(runs: list[dict], n_boot: int = 1000) -> list[dict]:
    """One row per model, test set and pooling (max / mean): per-seed AUC and pAUC, mean, std, 95 % CI."""
    rows = []
    for (mtype, mid, arch, loss), seeds in group(runs).items():
        for set_name in sorted(seeds[0]["sets"], key=_set_order):
            y = np.asarray(seeds[0]["sets"][set_name]["labels"], bool)
            for pooling in ("max", "mean"):
                s = np.array([r["sets"][set_name][pooling] for r in seeds], np.float64)
                ones = np.ones((1, int((~y).sum()))), np.ones((1, int(y.sum())))
                per_seed = [weighted_auc_pauc(y, row, *ones) for row in s]
                auc = np.array([a[0] for a, _ in per_seed])
                pauc = np.array([p[0] for _, p in per_seed])
                ci_auc, ci_pauc = auc_ci(y, s, n_boot=n_boot)
                rows.append({"machine_type": mtype, "machine_id": mid, "arch": arch, "loss": loss, "set": set_name,
                             "pooling": pooling, "n_seeds": len(seeds), "n_normal": int((~y).sum()),
                             "n_anomalous": int(y.sum()), "auc": auc.tolist(), "pauc": pauc.tolist(),
                             "auc_mean": float(auc.mean()), "auc_std": float(auc.std()),
                             "pauc_mean": float(pauc.mean()), "pauc_std": float(pauc.std()),
                             "auc_ci": [ci_auc.low, ci_auc.high], "pauc_ci": [ci_pauc.low, ci_pauc.high]})
    return rows


def paired(runs: list[dict], pooling: str = "max", n_boot: int = 1000) -> list[dict]:
    """BU - SNP, SNP - RE and BU - RE per machine ID, architecture and test set, seeds paired by index."""
    groups = group(runs)
    rows = []
    for (mtype, mid, arch, loss_a), seeds_a in groups.items():
        for a, b in PAIRS:
            if loss_a != a or (mtype, mid, arch, b) not in groups:
                continue
            seeds_b = groups[(mtype, mid, arch, b)]
            common = sorted({r["seed"] for r in seeds_a} & {r["seed"] for r in seeds_b})
            if not common:
                continue
            ra = [r for r in seeds_a if r["seed"] in common]
            rb = [r for r in seeds_b if r["seed"] in common]
            for set_name in sorted(ra[0]["sets"], key=_set_order):
                y = np.asarray(ra[0]["sets"][set_name]["labels"], bool)
                sa = np.array([r["sets"][set_name][pooling] for r in ra])
                sb = np.array([r["sets"][set_name][pooling] for r in rb])
                d_auc, d_pauc = paired_difference_ci(y, sa, sb, n_boot=n_boot)
                rows.append({"machine_type": mtype, "machine_id": mid, "arch": arch, "a": a, "b": b, "set": set_name,
                             "pooling": pooling, "n_seeds": len(common), "d_auc": d_auc.value,
                             "d_auc_ci": [d_auc.low, d_auc.high], "d_pauc": d_pauc.value,
                             "d_pauc_ci": [d_pauc.low, d_pauc.high]})
    return rows


LOUDNESS_MODEL = "loudness reference (clip RMS level as the score)"
"""The model column of the loudness reference's rows."""


def loudness_rows(runs: list[dict], n_boot: int = 1000) -> list[dict]:
    """One row per machine ID and test set: AUC and pAUC (max FPR 0.1) of the items' RMS levels (dBFS) as
    anomaly scores, with the 95 % bootstrap interval over clips, from the first run that carries the
    levels (``sets[name]["level_dbfs"]``; the levels do not depend on the model). Runs recorded before
    the levels were stored give no row."""
    from edge_asd.core.loudness import loudness_reference

    rows, seen = [], set()
    for r in runs:
        for set_name, s in sorted(r["sets"].items(), key=lambda kv: _set_order(kv[0])):
            key = (r["machine_type"], r["machine_id"], set_name)
            if key in seen or "level_dbfs" not in s:
                continue
            seen.add(key)
            y = np.asarray(s["labels"], bool)
            levels = np.asarray(s["level_dbfs"], np.float64)
            auc, pauc = loudness_reference(y, levels)
            ci_auc, ci_pauc = auc_ci(y, levels[None], n_boot=n_boot)
            rows.append({"machine_type": key[0], "machine_id": key[1], "set": set_name, "n_normal": int((~y).sum()),
                         "n_anomalous": int(y.sum()), "auc": auc, "pauc": pauc, "auc_ci": [ci_auc.low, ci_auc.high],
                         "pauc_ci": [ci_pauc.low, ci_pauc.high]})
    return sorted(rows, key=lambda x: (x["machine_type"], x["machine_id"], _set_order(x["set"])))


def _level_cell(row: dict | None, metric: str) -> str:
    if row is None:
        return "–"
    low, high = row[metric + "_ci"]
    return f"{row[metric]:.3f} [{low:.2f}, {high:.2f}]" + (" †" if min(row["n_normal"], row["n_anomalous"]) < FEW else "")


def _cell(row: dict, metric: str = "auc", ci: bool = True) -> str:
    text = f"{row[metric + '_mean']:.3f} ± {row[metric + '_std']:.3f}"
    if ci:
        low, high = row[metric + "_ci"]
        text += f" [{low:.2f}, {high:.2f}]"
        if min(row["n_normal"], row["n_anomalous"]) < FEW:
            text += " †"
    return text


def _verdict(low: float, high: float) -> str:
    return "**>**" if low > 0 else ("**<**" if high < 0 else "≈")


def markdown(rows: list[dict], pairs: list[dict], header: str, loudness: list[dict] | None = None) -> str:
    """The report: real test clips, paper-style (Fig. 4) mixtures, paired differences, all rows; with
    ``loudness`` (:func:`loudness_rows`), each machine ID's loudness reference under its clip counts."""
    out = [header, ""]
    level = {(r["machine_type"], r["machine_id"], r["set"]): r for r in loudness or []}
    sets = sorted({r["set"] for r in rows}, key=_set_order)
    models = list(dict.fromkeys((r["machine_type"], r["machine_id"], r["arch"], r["loss"]) for r in rows))
    index = {(r["machine_type"], r["machine_id"], r["arch"], r["loss"], r["set"], r["pooling"]): r for r in rows}

    def table(title: str, set_names: list[str], metric: str, pooling: str, note: str) -> None:
        present = [s for s in set_names if any((*m, s, pooling) in index for m in models)]
        if not present:
            return
        out.extend([f"### {title}", "", note, ""])
        out.append("| machine | model | seeds | " + " | ".join(present) + " |")
        out.append("|---|---|---|" + "---|" * len(present))
        last = None
        for m in models:
            cells = [_cell(index[(*m, s, pooling)], metric) if (*m, s, pooling) in index else "–" for s in present]
            if all(c == "–" for c in cells):
                continue
            if m[:2] != last:  # a row with the clip counts of this machine ID's test sets
                last = m[:2]
                counts = [index[(*m, s, pooling)] if (*m, s, pooling) in index else None for s in present]
                out.append(f"| **{m[0]} {m[1]}** | clips (normal / anomalous) | | " + " | ".join(
                    "" if c is None else f"{c['n_normal']} / {c['n_anomalous']}" for c in counts) + " |")
                if any((*last, s) in level for s in present):
                    out.append(f"| {m[0]} {m[1]} | {LOUDNESS_MODEL} | – | " + " | ".join(
                        _level_cell(level.get((*last, s)), metric) for s in present) + " |")
            n = next(index[(*m, s, pooling)]["n_seeds"] for s in present if (*m, s, pooling) in index)
            out.append(f"| {m[0]} {m[1]} | {model_name(m[2], m[3])} | {n} | " + " | ".join(cells) + " |")
        out.append("")

    real = [s for s in sets if s == "real"]
    seg = [s for s in sets if s.startswith("segment_")]
    clip = [s for s in sets if s.startswith("clip_")]
    ci_note = ("mean ± std over seeds [95 % bootstrap CI over clips of the seed-mean]; the bold rows give "
               f"the clips of each test set (normal / anomalous). †: fewer than {FEW} clips in a class, so the interval understates "
               "the uncertainty (with 1 normal clip it ignores which normal clip was recorded).")
    if loudness:
        ci_note += (f" The {LOUDNESS_MODEL} row scores each clip, segment or mixture by its RMS level (dBFS) alone "
                    "[95 % bootstrap CI]: a model at or below it may be a level meter.")
    table("Real anomalous test clips: AUC, clip score = max frame score (eq. 11)", real, "auc", "max", ci_note)
    table("Real anomalous test clips: pAUC (max FPR 0.1), clip score = max", real, "pauc", "max", ci_note)
    table("Real anomalous test clips: AUC, clip score = mean frame score", real, "auc", "mean", ci_note)
    table("Paper-style (Fig. 4): held-out normal segments vs. DCASE 2016 anomalies mixed in at the ANR; AUC, max",
          seg, "auc", "max", ci_note + " Segments of one clip are not independent.")
    table("Paper-style on whole held-out clips: AUC, max", clip, "auc", "max", ci_note)
    table("Paper-style segments: pAUC (max FPR 0.1), max", seg, "pauc", "max", ci_note)
    table("Paper-style segments: AUC, clip score = mean frame score", seg, "auc", "mean", ci_note)

    if pairs:
        out.extend(["### Paired differences (same clips, seeds paired), clip score = max", "",
                    "AUC_a - AUC_b of the seed means [95 % paired bootstrap CI over clips]; **>** / **<**: the CI "
                    "excludes 0, ≈: this test set cannot tell them apart.", ""])
        pair_sets = sorted({p["set"] for p in pairs}, key=_set_order)
        out.append("| machine | arch | comparison | " + " | ".join(pair_sets) + " |")
        out.append("|---|---|---|" + "---|" * len(pair_sets))
        keyed = {(p["machine_type"], p["machine_id"], p["arch"], p["a"], p["b"], p["set"]): p for p in pairs}
        for key in dict.fromkeys((p["machine_type"], p["machine_id"], p["arch"], p["a"], p["b"]) for p in pairs):
            cells = []
            for s in pair_sets:
                p = keyed.get((*key, s))
                cells.append("–" if p is None else
                             f"{p['d_auc']:+.3f} [{p['d_auc_ci'][0]:+.2f}, {p['d_auc_ci'][1]:+.2f}] "
                             f"{_verdict(*p['d_auc_ci'])}")
            out.append(f"| {key[0]} {key[1]} | {key[2]} | {NAMES[key[3]]} − {NAMES[key[4]]} | " + " | ".join(cells) + " |")
        out.append("")
        n_pos = sum(p["d_auc_ci"][0] > 0 for p in pairs)
        n_neg = sum(p["d_auc_ci"][1] < 0 for p in pairs)
        out.extend([f"Of {len(pairs)} paired comparisons, {n_pos} favour the first method with a CI above 0, "
                    f"{n_neg} favour the second with a CI below 0, {len(pairs) - n_pos - n_neg} cannot be told apart.", ""])
    return "\n".join(out)


def plot(rows: list[dict], path: Path, pooling: str = "max") -> None:
    """Fig. 4-style bars: AUC per test set (real clips, then segments at each ANR), one panel per machine ID,
    one bar per model, 95 % CI as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["pooling"] == pooling and (r["set"] == "real" or r["set"].startswith("segment_"))]
    machines = list(dict.fromkeys((r["machine_type"], r["machine_id"]) for r in rows))
    if not machines:
        return
    all_models = list(dict.fromkeys((r["arch"], r["loss"]) for r in rows))
    colour = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(all_models)}
    fig, axes = plt.subplots(len(machines), 1, figsize=(9, 3.6 * len(machines)), squeeze=False, constrained_layout=True)
    for ax, (mtype, mid) in zip(axes[:, 0], machines):
        mine = [r for r in rows if (r["machine_type"], r["machine_id"]) == (mtype, mid)]
        sets = sorted({r["set"] for r in mine}, key=_set_order)
        models = list(dict.fromkeys((r["arch"], r["loss"]) for r in mine))
        width = 0.8 / len(models)
        for k, (arch, loss) in enumerate(models):
            x, y, err = [], [], [[], []]
            for i, s in enumerate(sets):
                r = next((r for r in mine if (r["arch"], r["loss"], r["set"]) == (arch, loss, s)), None)
                if r is None:
                    continue
                x.append(i - 0.4 + width * (k + 0.5))
                y.append(r["auc_mean"])
                err[0].append(max(0.0, r["auc_mean"] - r["auc_ci"][0]))
                err[1].append(max(0.0, r["auc_ci"][1] - r["auc_mean"]))
            ax.bar(x, y, width, yerr=err, capsize=2, label=model_name(arch, loss), color=colour[(arch, loss)])
        ax.set_xticks(range(len(sets)), [s.replace("segment_", "segments ").replace("real", "real clips") for s in sets])
        ax.set(ylim=(0.0, 1.0), ylabel=f"AUC (clip score = {pooling})", title=f"{mtype} {mid}")
        ax.axhline(0.5, color="grey", lw=0.5, ls=":")
        ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def compare(runs_a: list[dict], runs_b: list[dict], pooling: str = "max", n_boot: int = 1000) -> list[dict]:
    """Paired differences between two experiment folders (settings A vs B) for every model both hold.

    Runs are matched by model (machine type, ID, architecture, loss) and seed; the test sets must hold the
    same clips in both (same data, same mixture plan), which the labels and item counts check.
    """
    ga, gb = group(runs_a), group(runs_b)
    rows = []
    for model, seeds_a in ga.items():
        if model not in gb:
            continue
        common = sorted({r["seed"] for r in seeds_a} & {r["seed"] for r in gb[model]})
        if not common:
            continue
        ra = [r for r in seeds_a if r["seed"] in common]
        rb = [r for r in gb[model] if r["seed"] in common]
        for set_name in sorted(set(ra[0]["sets"]) & set(rb[0]["sets"]), key=_set_order):
            y = ra[0]["sets"][set_name]["labels"]
            if y != rb[0]["sets"][set_name]["labels"]:
                continue
            sa = np.array([r["sets"][set_name][pooling] for r in ra])
            sb = np.array([r["sets"][set_name][pooling] for r in rb])
            d_auc, d_pauc = paired_difference_ci(y, sa, sb, n_boot=n_boot)
            (auc_a, _), (auc_b, _) = auc_ci(y, sa, n_boot=100), auc_ci(y, sb, n_boot=100)
            rows.append({"model": model, "set": set_name, "n_seeds": len(common), "auc_a": auc_a.value,
                         "auc_b": auc_b.value, "d_auc": d_auc.value, "d_auc_ci": [d_auc.low, d_auc.high],
                         "d_pauc": d_pauc.value, "d_pauc_ci": [d_pauc.low, d_pauc.high]})
    return rows


def compare_markdown(rows: list[dict], label_a: str, label_b: str) -> str:
    out = [f"| model | seeds | test set | AUC {label_a} | AUC {label_b} | difference [95 % paired CI] | |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["model"]
        out.append(f"| {m[0]} {m[1]} {model_name(m[2], m[3])} | {r['n_seeds']} | {r['set']} | {r['auc_a']:.3f} | "
                   f"{r['auc_b']:.3f} | {r['d_auc']:+.3f} [{r['d_auc_ci'][0]:+.3f}, {r['d_auc_ci'][1]:+.3f}] | "
                   f"{_verdict(*r['d_auc_ci'])} |")
    return "\n".join(out) + "\n"
