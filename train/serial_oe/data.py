"""Which clips train a Serial-OE network, and the crops and windows it sees.

The leakage rule (:func:`training_sets`, checked again by :func:`check_leakage`): only ``train/`` folders feed
training. Positives are the normal training clips of the target machine type (every machine ID); negatives
(pseudo-anomalies) are the normal training clips of the *other* machine types in the data folder plus the
``--something-else`` sounds. The target type's own clips are never negatives, and no test clip of any type is
anyone's negative, so no test clip is ever heard in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import logmel
from edge_asd.core.presets import FeatureConfig
from edge_asd.datasets.layout import Clip, assign_mimii_split, normalize_machine_id, scan
from edge_asd.firmware_io.audio_file import audio_files

SOMETHING_ELSE = "something_else"
"""The kind of a negative that is an everyday sound, not a machine."""


@dataclass(frozen=True)
class TrainingSets:
    """Paths a network may train on."""

    positives: list[Path]
    """Normal ``train/`` clips of the target machine type, every ID."""
    positive_ids: list[str]
    """The machine ID of each positive (``id_00``, ``section_00``)."""
    ids: list[str]
    """The product classes of L_product: the target type's IDs with training clips, sorted."""
    negatives: list[Path]
    """Normal ``train/`` clips of other machine types, then the something-else sounds."""
    negative_kinds: list[str]
    """The machine type of each negative, or :data:`SOMETHING_ELSE`."""


def _clips(data_dir: Path) -> list[Clip]:
    try:
        return assign_mimii_split(scan(data_dir))
    except EdgeAsdError:
        return []


def training_sets(data_dir: Path, machine_type: str, something_else_dir: Path | None = None,
                  exclude: list[Path] = ()) -> TrainingSets:
    """Positives and negatives of ``machine_type`` under the leakage rule (module docstring).

    Args:
        exclude: clips to leave out of training whatever their folder (e.g. the test clips of a comparison).
    Raises:
        EdgeAsdError: no normal training clip of ``machine_type``; no negative at all (no other machine type in
            ``data_dir`` and no something-else sound); a rule broken (:func:`check_leakage`).
    """
    clips = _clips(data_dir)
    target = machine_type.lower()
    skip = {Path(p).resolve() for p in exclude}
    usable = [c for c in clips if c.split == "train" and c.label == "normal" and c.path.resolve() not in skip]
    pos = [c for c in usable if c.machine_type.lower() == target]
    if not pos:
        raise EdgeAsdError(f"no normal training clips of {machine_type} in {data_dir}")
    neg = [c for c in usable if c.machine_type.lower() != target]
    sounds = audio_files(something_else_dir) if something_else_dir else []
    if something_else_dir and not sounds:
        raise EdgeAsdError(f"{something_else_dir}: no .wav/.flac files for --something-else")
    sounds = [p for p in sounds if Path(p).resolve() not in skip]
    tested = [p for p in sounds if _in_test_folder(Path(p), Path(something_else_dir))]
    if tested:
        raise EdgeAsdError(f"--something-else {something_else_dir}: {tested[0]} is in a test/ folder (test anomalies, "
                           "the sounds evaluation mixes in); negatives must come from train/ folders, e.g. "
                           "something_else/train")
    if not neg and not sounds:
        raise EdgeAsdError(f"serial outlier exposure needs negatives: {data_dir} holds no other machine type's training "
                           "clips; add --something-else DIR (everyday sounds)")
    sets = TrainingSets([c.path for c in pos], [c.machine_id for c in pos], sorted({c.machine_id for c in pos}),
                        [c.path for c in neg] + list(sounds), [c.machine_type for c in neg] + [SOMETHING_ELSE] * len(sounds))
    check_leakage(sets, machine_type, clips + (_clips(something_else_dir) if something_else_dir else []), exclude)
    return sets


def _in_test_folder(path: Path, root: Path) -> bool:
    """Whether ``path`` (a file under ``root``) lies in a folder named ``test``: ``root`` itself or one below it."""
    parts = [root.resolve().name, *path.resolve().relative_to(root.resolve()).parts[:-1]]
    return any(part.lower() == "test" for part in parts)


def check_leakage(sets: TrainingSets, machine_type: str, known: list[Clip], exclude: list[Path] = ()) -> None:
    """Raise EdgeAsdError when a training path breaks the rule: a negative of the target type, any clip of a test
    split (or unlabelled) among the positives or negatives, or an excluded clip in training.

    Args:
        known: every labelled clip found in the folders involved (``datasets.layout.scan``), to tell a file's
            machine type and split; a something-else sound not among them is an everyday sound.
    """
    info = {c.path.resolve(): c for c in known}
    skip = {Path(p).resolve() for p in exclude}
    for path in sets.positives + sets.negatives:
        c = info.get(Path(path).resolve())
        if Path(path).resolve() in skip:
            raise EdgeAsdError(f"{path}: an excluded (test) clip would train the network")
        if c is not None and (c.split != "train" or c.label != "normal"):
            raise EdgeAsdError(f"{path}: a {c.split or 'unsplit'} {c.label} clip would train the network; only "
                               "normal clips of train/ folders may")
    for path in sets.negatives:
        c = info.get(Path(path).resolve())
        if c is not None and c.machine_type.lower() == machine_type.lower():
            raise EdgeAsdError(f"{path}: a {machine_type} clip cannot be a negative of {machine_type}")


def inlier_clips(sets: TrainingSets, machine_ids: list[str] = ()) -> list[int]:
    """Indices into ``sets.positives`` of the machine IDs the inlier model is for (all when empty)."""
    wanted = {normalize_machine_id(m) for m in machine_ids}
    idx = [i for i, m in enumerate(sets.positive_ids) if not wanted or m in wanted]
    if not idx:
        raise EdgeAsdError(f"no normal training clips of {sorted(wanted)}; IDs with training clips: {sets.ids}")
    return idx


def crop(audio: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``n_samples`` crop of mono ``audio`` (zero-padded at the end when shorter), float32."""
    if len(audio) <= n_samples:
        return np.pad(audio, (0, n_samples - len(audio))).astype(np.float32)
    start = rng.integers(0, len(audio) - n_samples + 1)
    return np.asarray(audio[start:start + n_samples], np.float32)


def windows(audio: np.ndarray, cfg: FeatureConfig, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The standardized context vectors ("windows") of one recording at the score hop: window i stacks log-mel
    frames [i K, i K + L), L = ``cfg.n_context_frames``, K = ``cfg.context_hop_frames``; each frame standardized
    per band, ``(psi - mean) / std``. Shape (n_windows, L * M) float32 (0 rows when shorter than one window)."""
    psi = ((logmel(audio, cfg) - mean) / std).astype(np.float32)
    L, K = cfg.n_context_frames, cfg.context_hop_frames
    n = 0 if len(psi) < L else 1 + (len(psi) - L) // K
    return np.stack([psi[i * K:i * K + L].reshape(-1) for i in range(n)]) if n else np.zeros((0, cfg.dim), np.float32)


class CropSampler:
    """Balanced mini-batches of 2-s crops: half from the positives, half from the negatives (each clip drawn
    uniformly), with their labels (y_machine 1 / 0, y_product one-hot over the IDs / all zero)."""

    def __init__(self, positives: list[np.ndarray], positive_class: list[int], n_ids: int,
                 negatives: list[np.ndarray], crop_samples: int):
        self.positives, self.positive_class, self.n_ids = positives, positive_class, n_ids
        self.negatives, self.crop_samples = negatives, crop_samples

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(waves (n, crop_samples) float32, y_machine (n,) float32, y_product (n, n_ids) float32)."""
        n_pos = n // 2
        waves = np.zeros((n, self.crop_samples), np.float32)
        y_machine = np.zeros(n, np.float32)
        y_product = np.zeros((n, self.n_ids), np.float32)
        for j in range(n):
            if j < n_pos:
                i = rng.integers(len(self.positives))
                waves[j] = crop(self.positives[i], self.crop_samples, rng)
                y_machine[j], y_product[j, self.positive_class[i]] = 1.0, 1.0
            else:
                waves[j] = crop(self.negatives[rng.integers(len(self.negatives))], self.crop_samples, rng)
        return waves, y_machine, y_product
