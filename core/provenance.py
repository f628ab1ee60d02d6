"""Which audio a model has heard: short sha256 digests of its training recordings, kept in its metadata.

A model scores the recordings it was trained on lower than new audio of the same machine, so a phi set
on them is low and the false-alarm rate in service comes out above the target (README, calibration
check). The model file lists a 48-bit prefix of each training file's sha256 (``training_data`` for the
desktop training, each ``fine_tuning`` entry for on-device fine-tuning), and edge-calibrate warns when
it is given one of those recordings. 12 hex characters per file: a chance collision among 10^4 files
has probability about 2e-7; models trained on more than MAX_FILES files carry no list.
"""

from __future__ import annotations

import importlib
from pathlib import Path

PREFIX_CHARS = 12
MAX_FILES = 2048
"""Longer lists are left out: the metadata travels in the model file (and in a microcontroller's flash)."""


def new_sha256():
    """A SHA-256 hasher (``update``, ``hexdigest``): CPython's own (module ``_sha2`` from 3.12, ``_sha256``
    before) when present, else hashlib's. hashlib maps OpenSSL's libcrypto, about 3.5 MB of resident memory
    on the device for the one digest per model load (docs/device.md, Memory)."""
    for name in ("_sha2", "_sha256"):
        try:
            return importlib.import_module(name).sha256()
        except ImportError:
            pass
    import hashlib

    return hashlib.sha256()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data`` (:func:`new_sha256`)."""
    h = new_sha256()
    h.update(data)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks). Raises OSError when it cannot be read."""
    h = new_sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prefixes(digests) -> list[str] | None:
    """Sorted short digests of full hex sha256 ``digests``; None for more than MAX_FILES (or none)."""
    digests = list(digests)
    if not digests or len(digests) > MAX_FILES:
        return None
    return sorted(d[:PREFIX_CHARS] for d in digests)


def heard_prefixes(meta: dict) -> set[str]:
    """Every short digest a model's metadata lists: its desktop training data and every fine-tune."""
    lists = [(meta.get("training_data") or {}).get("file_sha256_prefixes")]
    lists += [(entry or {}).get("file_sha256_prefixes") for entry in meta.get("fine_tuning") or []]
    return {p for lst in lists if isinstance(lst, list) for p in lst if isinstance(p, str)}


def heard(meta: dict, files: list[Path]) -> list[Path]:
    """The ``files`` whose content the model was trained on (by their sha256 prefix in its metadata)."""
    known = heard_prefixes(meta)
    if not known:
        return []
    return [f for f in files if file_sha256(f)[:PREFIX_CHARS] in known]
