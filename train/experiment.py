"""The objective experiment of Koizumi et al. 2019, sec. 4.2, on real recordings: reusable parts.

For one machine ID, :func:`prepare` decodes the audio and computes every test feature once; then
:func:`run_one` trains one model with the trainer's API and scores all test sets with it, so every
model of an experiment meets exactly the same clips and the same mixtures.

Test sets (each a list of items with labels 0 = normal, 1 = anomalous):

* ``real``: the machine ID's test clips, normal and anomalous (only where both exist).
* ``clip_<ANR>dB`` (paper-style, sec. 4.2.1): the held-out normal clips against the paper's
  anomalous sounds (DCASE 2016 office events) mixed into them at that ANR, one mixture per sound.
* ``segment_<ANR>dB``: the same on fixed-length segments of the held-out normal clips (default 2 s):
  with 1-5 held-out normal clips a clip-level AUC has only 1-5 negatives, segments give 5x more
  (not independent: segments of one clip share its recording conditions).

A mixture changes only the context vectors whose samples overlap the added sound, so only those are
stored (their log-mel frames, a "patch") and scored; the rest of its frame scores are the clean
item's. Clip score = max of the frame scores (eq. 11), and the mean.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_asd.core.batches import overlapping_vectors
from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import LogMel, logmel, standardized_vectors
from edge_asd.core.loudness import clip_level_dbfs
from edge_asd.core.presets import FeatureConfig, get_preset
from edge_asd.datasets.layout import assign_mimii_split, scan
from edge_asd.datasets.locate import local_data_root, require_data_root
from edge_asd.train.mixtures import PAPER_ANRS_DB, Mixture, mix_at_anr, plan_mixtures

log = logging.getLogger("edge_asd")

BASELINE_ARCH = "dcase2020"
"""The DCASE 2020 Task 2 baseline AE: trained on its own preset with RE (MSE) only."""
ARCH_PRESET = {"fcn-small": "koizumi2019", "fcn-large": "koizumi2019", "dcase2020": "dcase2020"}


@dataclass
class TestSet:
    """Items (indices into :attr:`Prepared.items`) and their labels, 1 = anomalous."""

    items: list[int]
    labels: list[int]


@dataclass
class Prepared:
    """One machine ID, ready to train and score on: audio once, test features once per preset."""

    machine_type: str
    machine_id: str
    train_audio: list[np.ndarray]
    """Normal training clips, mono float32 at 16 kHz."""
    items: list[str] = field(default_factory=list)
    """Names of the test items: clean clips/segments first, then mixtures."""
    n_clean: int = 0
    patches: list[tuple[int, Mixture, tuple[int, int]]] = field(default_factory=list)
    """Per mixture: (clean item it is mixed into, the mixture, its span in samples)."""
    sets: dict[str, TestSet] = field(default_factory=dict)
    features: dict[str, dict] = field(default_factory=dict)
    """Per preset: {"mean", "std", "clean": [frames], "patches": [(first vector, frames)]}."""


def segments_of(clip: np.ndarray, segment_samples: int) -> list[np.ndarray]:
    """Consecutive non-overlapping segments of ``segment_samples``; a shorter remainder is dropped."""
    return [clip[i:i + segment_samples] for i in range(0, len(clip) - segment_samples + 1, segment_samples)]


def prepare(machine_type: str, machine_id: str, train_audio: list[np.ndarray], test_normal: dict[str, np.ndarray],
            test_anomaly: dict[str, np.ndarray], sounds: dict[str, np.ndarray] | None,
            presets: list[str] | dict[str, FeatureConfig],
            anrs_db=PAPER_ANRS_DB, segment_s: float = 2.0, mixture_seed: int = 0) -> Prepared:
    """Build the test items and sets of one machine ID and compute their log-mel frames per preset.

    Args:
        train_audio: normal training clips; test_normal / test_anomaly: name -> clip (mono float32,
            16 kHz); sounds: name -> anomalous sound for the paper-style mixtures, or None to skip them.
        presets: feature preset names, or name -> feature config (e.g. a preset with another
            ``level_norm``): the keys of ``prep.features``; segment_s: segment length, s; mixture_seed: seed of
            :func:`plan_mixtures` (the same mixtures for every model).
    Raises:
        ValueError: no normal training clip.
    """
    if not train_audio:
        raise ValueError(f"{machine_type} {machine_id}: no normal training clip")
    prep = Prepared(machine_type, machine_id, train_audio)
    audio: list[np.ndarray] = []

    def add(name: str, samples: np.ndarray) -> int:
        prep.items.append(name)
        audio.append(samples)
        return len(audio) - 1

    normal_idx = [add(n, a) for n, a in test_normal.items()]
    anomaly_idx = [add(n, a) for n, a in test_anomaly.items()]
    if normal_idx and anomaly_idx:
        prep.sets["real"] = TestSet(normal_idx + anomaly_idx, [0] * len(normal_idx) + [1] * len(anomaly_idx))
    seg_samples = round(segment_s * 16000)
    seg_idx = [add(f"{n}#{k}", s) for n, a in test_normal.items() for k, s in enumerate(segments_of(a, seg_samples))]
    prep.n_clean = len(audio)
    names, waves = list(sounds or {}), list((sounds or {}).values())
    if waves and normal_idx:
        for level, base in (("clip", normal_idx), ("segment", seg_idx)):
            if not base:
                continue
            plan = plan_mixtures([len(audio[i]) for i in base], [len(w) for w in waves], anrs_db, seed=mixture_seed)
            for anr in anrs_db:
                mixed = []
                for m in (m for m in plan if m.anr_db == anr):
                    clean = base[m.normal_index]
                    span = (m.start, min(len(audio[clean]), m.start + len(waves[m.sound_index])))
                    prep.patches.append((clean, m, span))
                    mixed.append(len(prep.items))
                    prep.items.append(f"{prep.items[clean]}+{names[m.sound_index]}@{anr:g}dB@{m.start}")
                prep.sets[f"{level}_{anr:g}dB"] = TestSet(base + mixed, [0] * len(base) + [1] * len(mixed))
    configs = presets if isinstance(presets, dict) else {p: get_preset(p) for p in presets}
    for name, cfg in configs.items():
        prep.features[name] = _features(prep, audio, waves, cfg)
    return prep


def _features(prep: Prepared, audio: list[np.ndarray], waves: list[np.ndarray], cfg: FeatureConfig) -> dict:
    from edge_asd.train.data import band_statistics

    fn = LogMel(cfg)
    mean, std = band_statistics(prep.train_audio, cfg)
    clean = [logmel(a, cfg, fn) for a in audio]
    patches = []
    for clean_index, m, span in prep.patches:
        base = audio[clean_index]
        mixed = mix_at_anr(base, waves[m.sound_index], m.anr_db, m.start)
        n_vectors = max(0, len(clean[clean_index]) - cfg.n_context_frames + 1)
        hit = np.flatnonzero(overlapping_vectors(n_vectors, span, cfg))
        if len(hit) == 0:
            patches.append((0, np.zeros((0, cfg.n_mels), np.float32)))
            continue
        first, last = int(hit[0]), int(hit[-1])  # vectors first..last, frames first..last + L - 1
        start = first * cfg.hop_samples
        stop = (last + cfg.n_context_frames - 1) * cfg.hop_samples + cfg.n_fft
        patches.append((first, logmel(mixed[start:stop], cfg, fn)))
    return {"mean": mean, "std": std, "clean": clean, "patches": patches}


def frame_scorer(ae, mean: np.ndarray, std: np.ndarray, cfg: FeatureConfig, device, chunk: int = 16384):
    """A function: list of log-mel frame arrays (T_i, M) -> list of anomaly scores per context vector (eq. 5).

    Frames are standardized per mel band (as the device does), stacked into context vectors (centred with
    ``cfg.level_norm == "context"``) and scored in chunks of at most ``chunk`` vectors.
    """
    import torch

    def score(frame_list: list[np.ndarray]) -> list[np.ndarray]:
        vectors = [standardized_vectors(f, cfg, mean, std) for f in frame_list]
        sizes = [len(v) for v in vectors]
        out, batch, n = [], [], 0
        for v in vectors + [None]:
            if v is None or (n + len(v) > chunk and batch):
                if batch:
                    x = torch.from_numpy(np.concatenate(batch)).to(device)
                    with torch.no_grad():
                        out.append((x - ae(x)).pow(2).sum(-1).float().cpu().numpy())
                batch, n = [], 0
            if v is not None:
                batch.append(v)
                n += len(v)
        flat = np.concatenate(out) if out else np.zeros(0, np.float32)
        return np.split(flat, np.cumsum(sizes)[:-1])

    return score


def score_items(prep: Prepared, preset: str, scorer) -> dict[str, np.ndarray]:
    """Clip scores of every test item: {"max": (n_items,), "mean": (n_items,)} float64 (eq. 11 and the mean)."""
    feats = prep.features[preset]
    clean = scorer(feats["clean"])
    patched = scorer([frames for _, frames in feats["patches"]])
    frame_scores = list(clean)
    for (clean_index, _, _), (first, _), part in zip(prep.patches, feats["patches"], patched):
        s = clean[clean_index].copy()
        s[first:first + len(part)] = part
        frame_scores.append(s)
    return {"max": np.array([s.max() for s in frame_scores], np.float64),
            "mean": np.array([s.mean() for s in frame_scores], np.float64)}


@dataclass(frozen=True)
class RunSpec:
    """One model of the grid; ``settings`` are the experiment-wide ones (updates, lambda, lr, ...)."""

    machine_type: str
    machine_id: str
    arch: str
    loss: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.machine_type}/{self.machine_id}/{self.arch}/{self.loss}/{self.seed}"

    @property
    def preset(self) -> str:
        return ARCH_PRESET[self.arch]


def run_one(spec: RunSpec, prep: Prepared, something_else: list[np.ndarray] | None, settings: dict,
            device: str = "auto") -> dict:
    """Train ``spec`` on ``prep``'s normal clips with the trainer's API, score every test set; a JSON-able dict.

    ``settings``: {"updates", "lr", "lambda", "sigma", "epsilon", "anr_train_db"}, optionally with a
    validation split as edge-train makes it: "val_fraction" (of the normal training clips, default 0),
    "epochs" (the updates split into this many epochs, the unit of validation; default 1), "patience"
    (early stopping, default 0 = never) and "keep" (auto / best / last). The result holds, per test set,
    the labels and the max / mean clip scores (6 significant digits), and the checkpoint's "validation".
    """
    from edge_asd.core.batches import BatchConfig
    from edge_asd.train.checkpoint import restore
    from edge_asd.train.trainer import TrainConfig, resolve_device, train

    cfg = get_preset(spec.preset)
    feats = prep.features[spec.preset]
    epochs = int(settings.get("epochs", 1))
    tcfg = TrainConfig(machine_type=spec.machine_type, machine_ids=[spec.machine_id], preset=spec.preset,
                       arch=spec.arch, loss=spec.loss, epochs=epochs, batches_per_epoch=int(settings["updates"]) // epochs,
                       lr=float(settings["lr"]), seed=spec.seed, device=device, sigma=settings.get("sigma"),
                       lam=settings["lambda"], epsilon=float(settings["epsilon"]),
                       batch=BatchConfig(anr_db=tuple(settings["anr_train_db"])),
                       val_fraction=float(settings.get("val_fraction", 0.0)), patience=int(settings.get("patience", 0)),
                       keep=settings.get("keep", "auto"))
    t0 = time.perf_counter()
    ckpt = train(tcfg, cfg, prep.train_audio, something_else, feats["mean"], feats["std"], progress=False)
    train_s = time.perf_counter() - t0
    ae = restore(ckpt)[0].to(resolve_device(device))
    scores = score_items(prep, spec.preset, frame_scorer(ae, feats["mean"], feats["std"], cfg, resolve_device(device)))
    history = ckpt.get("history") or [{}]
    tail = history[-max(1, len(history) // 10):]
    result = {
        "key": spec.key, "machine_type": spec.machine_type, "machine_id": spec.machine_id, "arch": spec.arch,
        "preset": spec.preset, "loss": spec.loss, "seed": spec.seed, "settings": settings,
        "loss_params": ckpt["loss"]["params"], "device": ckpt["device"], "train_seconds": round(train_s, 2),
        "score_seconds": round(time.perf_counter() - t0 - train_s, 2),
        "final": {k: float(np.nanmean([h.get(k, np.nan) for h in tail])) for k in ("loss", "score_u", "score_a")},
        "train_config": ckpt.get("train_config"),
        "updates_done": len(history) if ckpt.get("history") else 0,
        "validation": ckpt.get("validation"),
        "sets": {},
    }
    for name, ts in prep.sets.items():
        idx = np.asarray(ts.items)
        result["sets"][name] = {"labels": ts.labels,
                                **{p: [float(f"{v:.6g}") for v in scores[p][idx]] for p in ("max", "mean")}}
    return result


def item_names(prep: Prepared) -> dict[str, list[str]]:
    """Per test set, the names of its items in order (a sidecar to the per-run scores)."""
    return {name: [prep.items[i] for i in ts.items] for name, ts in prep.sets.items()}


def describe(prep: Prepared) -> str:
    parts = [f"{name}: {ts.labels.count(0)} normal / {ts.labels.count(1)} anomalous" for name, ts in prep.sets.items()]
    return f"{prep.machine_type} {prep.machine_id}: {len(prep.train_audio)} train normals; " + "; ".join(parts)


def load_audio(paths: list[Path]) -> dict[str, np.ndarray]:
    """name -> mono float32 at 16 kHz (the rate of both presets)."""
    from edge_asd.firmware_io.audio_file import read_audio

    return {Path(p).name: read_audio(p, 16000) for p in paths}


def find_machines(data: Path | None, types: list[str] | None, ids: list[str] | None):
    """(data root, {(machine_type, machine_id): {"train": [...], "test_normal": [...], "test_anomaly": [...]}})
    for every machine ID with normal training clips that passes the filters."""
    data = data or require_data_root()
    clips = assign_mimii_split(scan(data))
    machines: dict[tuple[str, str], dict[str, list[Path]]] = {}
    for c in clips:
        if (types and c.machine_type.casefold() not in {t.casefold() for t in types}) or (ids and c.machine_id not in ids):
            continue
        kind = "train" if c.split == "train" else f"test_{c.label}"
        if c.split == "train" and c.label != "normal":
            continue
        machines.setdefault((c.machine_type, c.machine_id), {"train": [], "test_normal": [], "test_anomaly": []})[kind].append(c.path)
    machines = {k: v for k, v in sorted(machines.items()) if v["train"]}
    if not machines:
        raise EdgeAsdError(f"no machine ID with normal training clips under {data} for types {types or 'all'}, "
                           f"IDs {ids or 'all'}")
    return data, machines


def sound_dir(given: Path | None, data: Path, sub: str) -> Path | None:
    """``given`` (a folder that must exist), else ``something_else/SUB`` under ``data`` or the local data root,
    else None. Raises EdgeAsdError for a ``given`` folder that does not exist."""
    if given is not None:
        if not given.is_dir():
            raise EdgeAsdError(f"{given}: no such directory")
        return given
    for root in (data, local_data_root()):
        if root is not None and (Path(root) / "something_else" / sub).is_dir():
            return Path(root) / "something_else" / sub
    return None


def evenly(files: list, n: int | None) -> list:
    """At most ``n`` of ``files``, evenly spaced over the list (all of them for n None)."""
    if not n or n >= len(files):
        return files
    return [files[round(i * (len(files) - 1) / max(1, n - 1))] for i in range(n)]


def item_levels(prep, test_normal: dict, test_anomaly: dict, sounds: dict | None,
                segment_s: float) -> dict[str, list[float]]:
    """Per test set of ``prep``, the RMS level (dBFS, 0.001 dB) of each item in order: the scores of the
    loudness reference.

    The clean items are rebuilt in :func:`edge_asd.train.experiment.prepare`'s order (normal clips,
    anomalous clips, segments of the normal clips), the mixtures with the same
    :func:`edge_asd.train.mixtures.mix_at_anr` call as their features.

    Args:
        test_normal, test_anomaly: name -> clip, as given to ``prepare``; sounds: its anomalous sounds.
    Raises:
        RuntimeError: the rebuilt items are not ``prep``'s (``prepare`` changed its order).
    """
    seg_samples = round(segment_s * 16000)
    segments = [(f"{n}#{k}", s) for n, a in test_normal.items() for k, s in enumerate(segments_of(a, seg_samples))]
    clean = [*test_normal.items(), *test_anomaly.items(), *segments]
    if [name for name, _ in clean] != prep.items[:prep.n_clean]:
        raise RuntimeError("item_levels: the test items are not in prepare()'s order")
    audio = [a for _, a in clean]
    waves = list((sounds or {}).values())
    levels = [clip_level_dbfs(a) for a in audio]
    levels += [clip_level_dbfs(mix_at_anr(audio[c], waves[m.sound_index], m.anr_db, m.start)) for c, m, _ in prep.patches]
    return {name: [round(levels[i], 3) for i in ts.items] for name, ts in prep.sets.items()}


def check_settings(path: Path, settings: dict) -> None:
    """Runs of one output folder share their settings; a folder with other settings is refused."""
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise EdgeAsdError(f"{path.parent} holds runs with other settings {diff} (old, new); use another --out")
    else:
        path.write_text(json.dumps(settings, indent=1) + "\n")
