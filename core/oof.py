"""Out-of-fold frame scores in a model file: the ``oof`` entry of its metadata, written by edge-convert from a
checkpoint of ``edge-train --oof-folds K`` and read by edge-calibrate, which sets phi on them instead of on
the model's own scores of the clips it trained on (cross-conformal / CV+: Vovk 2015; Barber, Candes, Ramdas,
Tibshirani 2021, "Predictive inference with the jackknife+", Ann. Statist. 49(1); docs/calibration.md).

Layout::

    "oof": {"folds": K, "seed": 0, "encoding": "float16-le-base64",
            "clips": [{"file_sha256_prefix": "3f2a...", "fold": 2, "n_frames": 604, "scale": 1.0,
                       "scores": "<base64>"}, ...]}

``file_sha256_prefix``: the first :data:`~edge_asd.core.provenance.PREFIX_CHARS` hex characters of the clip
file's sha256, as ``training_data.file_sha256_prefixes`` lists them; ``fold``: the fold the clip was held out
in (0 .. K-1); ``scores``: base64 of the ``n_frames`` frame scores (anomaly score A(x) of each context vector,
eq. 5, of the fold model that never heard the clip) divided by ``scale``, as little-endian float16. ``scale`` is
a power of two, 1 unless the clip's highest score exceeds 32768 (float16 ends at 65504): a score keeps 11
significant bits (relative error <= 2^-11).
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.provenance import PREFIX_CHARS

ENCODING = "float16-le-base64"
FLOAT16_SAFE = 32768.0
"""Scaled scores stay at or below this (float16's largest finite value is 65504)."""


@dataclass(frozen=True)
class OutOfFold:
    """A model file's out-of-fold frame scores, decoded and checked."""

    folds: int
    """K, the number of fold models."""
    seed: int | None
    """edge-train's --seed, which drew the folds."""
    scores: dict[str, np.ndarray]
    """File sha256 prefix -> the clip's out-of-fold frame scores, shape (n_frames,), float32."""


def encode_scores(scores: np.ndarray) -> dict:
    """``{"n_frames", "scale", "scores"}`` of one clip's frame scores (n_frames,) (non-negative, finite)."""
    scores = np.asarray(scores, np.float32)
    peak = float(scores.max()) if len(scores) else 0.0
    scale = 2.0 ** math.ceil(math.log2(peak / FLOAT16_SAFE)) if peak > FLOAT16_SAFE else 1.0
    data = (scores / np.float32(scale)).astype("<f2").tobytes()
    return {"n_frames": int(len(scores)), "scale": scale, "scores": base64.b64encode(data).decode("ascii")}


def read_oof(meta: dict, where: str) -> OutOfFold | None:
    """The out-of-fold scores of a model file's metadata ``meta``, or None when it has none.

    Raises:
        EdgeAsdError: one line naming ``where`` when the ``oof`` entry is damaged: not the layout above, an
            unknown encoding, a fold outside 0..K-1, scores that do not decode to ``n_frames`` finite values.
    """
    oof = meta.get("oof")
    if oof is None:
        return None

    def damaged(what: str) -> EdgeAsdError:
        return EdgeAsdError(f"{where}: damaged out-of-fold scores in the model metadata ({what}); convert the model "
                            "again, or calibrate with --no-oof")

    if not isinstance(oof, dict) or not isinstance(oof.get("clips"), list):
        raise damaged("oof is not an object with a list of clips")
    folds = oof.get("folds")
    if not _integer(folds) or folds < 2:
        raise damaged(f"folds is {folds!r}")
    if oof.get("encoding") != ENCODING:
        raise damaged(f"encoding {oof.get('encoding')!r}, not {ENCODING}")
    scores = {}
    for i, clip in enumerate(oof["clips"]):
        if not isinstance(clip, dict):
            raise damaged(f"clip {i} is not an object")
        prefix, fold, n, scale = (clip.get(k) for k in ("file_sha256_prefix", "fold", "n_frames", "scale"))
        if not isinstance(prefix, str) or len(prefix) != PREFIX_CHARS:
            raise damaged(f"clip {i}: file_sha256_prefix {prefix!r}")
        if not _integer(fold) or not 0 <= fold < folds:
            raise damaged(f"clip {i}: fold {fold!r} of {folds}")
        if not _integer(n) or n < 0:
            raise damaged(f"clip {i}: n_frames {n!r}")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not (0 < scale < math.inf):
            raise damaged(f"clip {i}: scale {scale!r}")
        try:
            data = base64.b64decode(clip.get("scores"), validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise damaged(f"clip {i}: scores are not base64") from None
        if len(data) != 2 * n:
            raise damaged(f"clip {i}: {len(data) // 2} scores for n_frames {n}")
        values = np.frombuffer(data, "<f2").astype(np.float32) * np.float32(scale)
        if not np.all(np.isfinite(values)):
            raise damaged(f"clip {i}: scores that are not finite")
        scores[prefix] = values
    seed = oof.get("seed")
    return OutOfFold(folds, seed if _integer(seed) else None, scores)


def summary(meta: dict) -> str | None:
    """One line for edge-inspect: folds, clips and frames of the metadata's ``oof`` (None when it has none)."""
    oof = meta.get("oof")
    if not isinstance(oof, dict):
        return None if oof is None else "out-of-fold scores: damaged entry"
    clips = [c for c in oof.get("clips") or [] if isinstance(c, dict)]
    frames = sum(c.get("n_frames") for c in clips if _integer(c.get("n_frames")))
    return f"out-of-fold scores: {oof.get('folds')} folds (seed {oof.get('seed')}), {len(clips)} clips, {frames} frames"


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
