"""Paper-style synthetic test anomalies: real anomalous sounds mixed into held-out normal clips at an ANR.

Koizumi et al. 2019, sec. 4.2: anomalous sounds (DCASE 2016 Task 2 office events: door slam, knock, keys,
keyboard, drawer, page turn, phone) are mixed with normal sounds at ANR -10, -15 and -20 dB. The
anomaly-to-normal ratio is the power ratio over the span the sound covers, the same definition as the
training mixtures of sec. 4.2.1 (``train.batches``):

    ANR = 10 log10( mean(alpha^2 a_n^2) / mean(x_n^2) )   over the samples n where a is added.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAPER_ANRS_DB = (-10.0, -15.0, -20.0)
PAPER_SUBSET = "dcase2016_paper"


def anomaly_sound_files(folder: str | Path, subset: str | None = PAPER_SUBSET) -> list[Path]:
    """The anomalous sounds of ``folder`` (e.g. ``something_else/test``), sorted.

    With a ``manifest.csv`` one level up whose ``subset`` column names ``subset``, only those files are
    returned (the paper's 140 DCASE 2016 clips in ``../shared/data``); without a manifest, or with
    ``subset=None``, every audio file in ``folder``.

    Raises:
        FileNotFoundError: ``folder`` holds no audio file (of that subset).
    """
    from edge_asd.firmware_io.audio_file import audio_files

    folder = Path(folder)
    files = audio_files(folder)
    manifest = folder.parent / "manifest.csv"
    if subset is not None and manifest.is_file():
        with open(manifest, newline="") as f:
            keep = {Path(row["path"]).name for row in csv.DictReader(f) if row.get("subset") == subset}
        if keep:
            files = [p for p in files if p.name in keep]
    if not files:
        raise FileNotFoundError(f"no anomalous sound files in {folder}")
    return sorted(files)


def mix_at_anr(normal: np.ndarray, sound: np.ndarray, anr_db: float, start: int) -> np.ndarray:
    """``normal`` with ``sound`` added from sample ``start`` at ``anr_db`` dB ANR (float32, same length).

    ``sound`` is cut to what fits. Both are mono float arrays at the same sample rate.

    Raises:
        ValueError: ``start`` outside ``normal``, or ``sound`` silent.
    """
    if not 0 <= start < len(normal):
        raise ValueError(f"start {start} outside a clip of {len(normal)} samples")
    sound = sound[: len(normal) - start].astype(np.float64)
    p_sound = float(np.mean(sound**2))
    if p_sound <= 0.0:
        raise ValueError("the anomalous sound is silent")
    p_normal = float(np.mean(normal[start:start + len(sound)].astype(np.float64) ** 2)) + 1e-12
    alpha = np.sqrt(p_normal / p_sound * 10.0 ** (anr_db / 10.0))
    out = normal.astype(np.float32, copy=True)
    out[start:start + len(sound)] += (alpha * sound).astype(np.float32)
    return out


@dataclass(frozen=True)
class Mixture:
    """One synthetic anomalous test clip: which normal clip, which sound, where, at which ANR (dB)."""

    normal_index: int
    sound_index: int
    start: int
    anr_db: float


def plan_mixtures(normal_lengths: list[int], sound_lengths: list[int], anrs_db=PAPER_ANRS_DB,
                  seed: int = 0) -> list[Mixture]:
    """Every anomalous sound once per ANR, each in a normal clip drawn at random, at a random start.

    Deterministic for a given ``seed`` and inputs, so every model of an experiment meets the same mixtures.
    A sound longer than the normal clip starts at 0 and is cut.
    """
    rng = np.random.default_rng(seed)
    plan = []
    for anr in anrs_db:
        for j, n_sound in enumerate(sound_lengths):
            i = int(rng.integers(len(normal_lengths)))
            start = int(rng.integers(max(1, normal_lengths[i] - n_sound + 1)))
            plan.append(Mixture(i, j, start, float(anr)))
    return plan


def render(plan: list[Mixture], normals: list[np.ndarray], sounds: list[np.ndarray]) -> list[np.ndarray]:
    """The audio of each planned mixture (float32, length of its normal clip)."""
    return [mix_at_anr(normals[m.normal_index], sounds[m.sound_index], m.anr_db, m.start) for m in plan]
