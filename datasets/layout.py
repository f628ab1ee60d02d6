"""Find the clips in a machine-sound dataset folder, whatever public layout it came in.

Understood layouts (extensions .wav/.flac, any case; anything else is ignored, not an error):

* DCASE 2020 Task 2 and this kit's data folder:
  ``<machine_type>/{train,test}/{normal,anomaly}_id_<NN>_<NNNNNNNN>.wav``
  (``dev_data/fan/train/...`` or, after unzipping ``dev_data_fan.zip``, ``fan/train/...``).
* Section clips as kept in this kit's data folder:
  ``<machine_type>/{train,test}/{normal,anomaly}_section_<NN>_{source,target}_<NNNN>.flac``.
* DCASE 2021+ official names: ``<machine_type>/<folder>/section_<NN>_{source,target}_{train,test}_
  {normal,anomaly}_<NNNN>[_<attributes>].wav`` (the split comes from the name).
* MIMII: ``[<snr>_<type>/]<machine_type>/id_<NN>/{normal,abnormal}/<NNNNNNNN>.wav``. "abnormal" is
  read as "anomaly". MIMII has no train/test split: its clips get ``split=None``; use
  :func:`assign_mimii_split` for the split the MIMII/DCASE 2020 baselines used. Scan one SNR folder
  (e.g. ``6_dB_fan``) at a time: the three SNR versions of a clip share one path below it.

Unlabelled clips (DCASE evaluation sets) are ignored by :func:`scan`. :func:`parse_clip_name` reads what
one file's name and folders say (machine type, ID, label, split, domain), for the commands that check
their inputs by name (edge-calibrate, edge-report, edge-finetune, edge-score).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.machine_id import normalize_machine_id
from edge_asd.firmware_io.audio_file import audio_files

AUDIO_EXTENSIONS = (".wav", ".flac")  # the public datasets' formats; other audio is not a dataset clip

SPLITS = ("train", "test")
LABELS = ("normal", "anomaly")
_SPLIT_FOLDERS = {"train", "test", "source_test", "target_test"}

_ID_NAME = re.compile(r"(normal|anomaly)_id_(\d{1,2})_\d+")
_SECTION_NAME = re.compile(r"(normal|anomaly)_section_(\d{1,2})_(source|target)_\d+")
_DCASE2021_NAME = re.compile(r"section_(\d{1,2})_(source|target)_(train|test)_(normal|anomaly)_\d+(?:_.*)?")
_MIMII_NAME = re.compile(r"\d+")
_UNLABELLED_NAME = re.compile(r"(id|section)_(\d{1,2})_(?:(source|target)_(train|test)_)?\d+")  # evaluation sets


@dataclass(frozen=True)
class Clip:
    """One labelled audio file.

    Attributes:
        path: the audio file (``root`` as given, joined with the path below it).
        machine_type: folder name of the machine type, e.g. ``"fan"``, ``"ToyCar"``.
        machine_id: ``"id_NN"`` or ``"section_NN"``, as in the file names.
        split: ``"train"``, ``"test"`` or ``None`` (MIMII: no split).
        label: ``"normal"`` or ``"anomaly"``.
        domain: ``"source"``, ``"target"`` or ``None`` (DCASE 2020 and MIMII have no domains).
    """

    path: Path
    machine_type: str
    machine_id: str
    split: str | None
    label: str
    domain: str | None = None


class SummaryRow(NamedTuple):
    """Number of clips of one machine type, machine ID, split and label."""

    machine_type: str
    machine_id: str
    split: str | None
    label: str
    count: int


@dataclass(frozen=True)
class ClipName:
    """What a DCASE / MIMII file name and its folders say about a recording; None where they say nothing.

    Attributes:
        machine_type: the machine type folder, only where the layout places it (``<type>/{train,test,
            source_test,target_test}/<name>`` or MIMII ``<type>/id_NN/{normal,abnormal}/<NNNNNNNN>``).
        machine_id: ``"id_NN"`` or ``"section_NN"``.
        label: ``"normal"`` or ``"anomaly"`` (MIMII ``abnormal/`` reads as ``"anomaly"``); None for the
            unlabelled names of DCASE evaluation sets (``id_01_00000000``, ``section_03_0000``).
        split: ``"train"`` or ``"test"`` (from the name in DCASE 2021+, else from a ``train``/``test`` folder).
        domain: ``"source"`` or ``"target"`` (DCASE 2021+ names).
    """

    machine_type: str | None
    machine_id: str | None
    label: str | None
    split: str | None = None
    domain: str | None = None


def parse_clip_name(path: str | os.PathLike) -> ClipName | None:
    """Machine type, machine ID, label, split and domain from a DCASE 2020 / DCASE 2021+ / MIMII file name
    and its folders, or None when the name follows none of these layouts (a name that says nothing).

    Names read (extension ignored): ``{normal,anomaly}_id_NN_N``, ``{normal,anomaly}_section_NN_{source,
    target}_N`` (this kit's data folder), ``section_NN_{source,target}_{train,test}_{normal,anomaly}_N[_attrs]``
    (DCASE 2021+), ``<type>/id_NN/{normal,abnormal}/NNNNNNNN`` (MIMII), and the unlabelled evaluation names
    ``id_NN_N``, ``section_NN_N``, ``section_NN_{source,target}_test_N``. The path is not opened.
    """
    full = Path(os.path.abspath(path))  # folder names, even for a path like "./x.wav"
    stem, parent, grand = full.stem, full.parent, full.parent.parent
    split_folder = parent.name in _SPLIT_FOLDERS
    folder_type = grand.name if split_folder and grand.name else None
    folder_split = parent.name if parent.name in SPLITS else None
    if m := _ID_NAME.fullmatch(stem):
        return ClipName(folder_type, f"id_{int(m[2]):02d}", m[1], folder_split)
    if m := _SECTION_NAME.fullmatch(stem):
        return ClipName(folder_type, f"section_{int(m[2]):02d}", m[1], folder_split, m[3])
    if m := _DCASE2021_NAME.fullmatch(stem):
        return ClipName(folder_type, f"section_{int(m[1]):02d}", m[4], m[3], m[2])
    if _MIMII_NAME.fullmatch(stem) and parent.name in ("normal", "abnormal"):
        id_match = re.fullmatch(r"id_(\d{1,2})", grand.name)
        if id_match:
            label = "normal" if parent.name == "normal" else "anomaly"
            return ClipName(grand.parent.name or None, f"id_{int(id_match[1]):02d}", label)
    if m := _UNLABELLED_NAME.fullmatch(stem):
        return ClipName(folder_type, f"{m[1]}_{int(m[2]):02d}", None, m[4] or folder_split, m[3])
    return None


def _parse(path: Path) -> Clip | None:
    """The labelled clip for one audio file path (:func:`parse_clip_name`), or None when its name fits no
    known layout or carries no label. Where the folders do not place the machine type, the parent folder's
    name stands for it (a folder of one machine type's clips)."""
    name = parse_clip_name(path)
    if name is None or name.label is None:
        return None
    machine_type = name.machine_type or Path(os.path.abspath(path)).parent.name
    return Clip(path, machine_type, name.machine_id, name.split, name.label, name.domain)


def _resolve_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise EdgeAsdError(
            f"{path}: no such directory; give the data folder (set EDGE_ASD_DATA or run edge-data fetch)"
        )
    if not path.is_dir():
        raise EdgeAsdError(f"{path}: not a directory; give the folder that holds the machine types")
    return path / "machines" if (path / "machines").is_dir() else path


def _names(values: Iterable[str | None]) -> str:
    return ", ".join(sorted({"-" if v is None else v for v in values})) or "none"


def scan(
    root: str | os.PathLike,
    machine_type: str | None = None,
    machine_id: str | int | None = None,
    split: str | None = None,
    label: str | None = None,
) -> list[Clip]:
    """All labelled clips below ``root``, sorted by path.

    Args:
        root: the data root (the folder holding ``machines/``), a folder of machine types
            (``dev_data``, ``6_dB_fan``) or one machine type's folder.
        machine_type: keep this machine type only (case-insensitive).
        machine_id: keep this machine ID only; any form :func:`normalize_machine_id` accepts.
        split: ``"train"`` or ``"test"``.
        label: ``"normal"`` or ``"anomaly"`` (``"abnormal"`` is accepted too).

    Raises:
        EdgeAsdError: root is missing or not a folder, a filter value is invalid, no clip is found,
            or a filter matches nothing (the message lists what exists).
    """
    base = _resolve_root(root)
    if split is not None and split not in SPLITS:
        raise EdgeAsdError(f"bad split {split!r}: use train or test")
    if label == "abnormal":
        label = "anomaly"
    if label is not None and label not in LABELS:
        raise EdgeAsdError(f"bad label {label!r}: use normal or anomaly")
    wanted_id = None if machine_id is None else normalize_machine_id(machine_id)

    files = (p for p in audio_files(base) if p.suffix.lower() in AUDIO_EXTENSIONS)
    clips = [clip for clip in map(_parse, files) if clip is not None]
    if not clips:
        raise EdgeAsdError(
            f"{root}: no labelled clips found; expected <type>/train/normal_id_00_00000000.wav (DCASE) "
            "or <type>/id_00/normal/00000000.wav (MIMII) below it"
        )
    what: list[str] = []  # the filters applied so far, for the messages
    for kind, value, field in (
        ("machine types", machine_type, "machine_type"),
        ("machine IDs", wanted_id, "machine_id"),
        ("splits", split, "split"),
        ("labels", label, "label"),
    ):
        if value is None:
            continue
        if field == "machine_type":
            kept = [c for c in clips if c.machine_type.casefold() == value.casefold()]
        else:
            kept = [c for c in clips if getattr(c, field) == value]
        if not kept:
            hint = ""
            if field == "split" and all(c.split is None for c in clips):
                hint = "; MIMII has no split: scan without split= and use assign_mimii_split()"
            found = _names(getattr(c, field) for c in clips)
            raise EdgeAsdError(f"no {' '.join([*what, value])} clips under {root}; {kind} found: {found}{hint}")
        clips = kept
        what.append(value)
    return sorted(clips, key=lambda c: c.path)


def assign_mimii_split(clips: Iterable[Clip]) -> list[Clip]:
    """Give clips without a split (MIMII) the train/test split of the MIMII and DCASE 2020 baselines.

    For each (machine type, machine ID), with normals and anomalies each sorted by path: all
    anomalies and the first N normals go to ``"test"``, N being the number of anomalies; the other
    normals go to ``"train"``. Deterministic: the same files always give the same split. Clips that
    already have a split are returned unchanged.

    Returns:
        list[Clip]: the clips with ``split`` set, sorted by path.
    """
    clips = sorted(clips, key=lambda c: c.path)
    anomalies = Counter((c.machine_type, c.machine_id) for c in clips if c.split is None and c.label == "anomaly")
    normals_to_test = dict(anomalies)
    out = []
    for clip in clips:
        if clip.split is None:
            key = (clip.machine_type, clip.machine_id)
            if clip.label == "anomaly":
                clip = dataclasses.replace(clip, split="test")
            elif normals_to_test.get(key, 0) > 0:
                normals_to_test[key] -= 1
                clip = dataclasses.replace(clip, split="test")
            else:
                clip = dataclasses.replace(clip, split="train")
        out.append(clip)
    return out


def machine_types(root: str | os.PathLike) -> list[str]:
    """The machine types that have clips below ``root``, sorted.

    Raises:
        EdgeAsdError: as :func:`scan`.
    """
    return sorted({clip.machine_type for clip in scan(root)})


def count_clips(clips: Iterable[Clip]) -> list[SummaryRow]:
    """Clip counts per machine type, machine ID, split and label, sorted (no split sorts last)."""
    counts = Counter((c.machine_type, c.machine_id, c.split, c.label) for c in clips)
    rows = [SummaryRow(*key, n) for key, n in counts.items()]
    order = {"train": 0, "test": 1, None: 2}
    return sorted(
        rows, key=lambda r: (r.machine_type.casefold(), r.machine_id, order.get(r.split, 1), r.label != "normal")
    )


def summary(root: str | os.PathLike, **filters) -> list[SummaryRow]:
    """Clip counts below ``root`` per machine type / machine ID / split / label.

    ``filters`` are those of :func:`scan`.

    Raises:
        EdgeAsdError: as :func:`scan`.
    """
    return count_clips(scan(root, **filters))


def format_summary(rows: list[SummaryRow]) -> str:
    """A plain-text table: one line per machine type and ID, one column per split/label."""
    order = {"train": 0, "test": 1, None: 2}
    columns = sorted({(r.split, r.label) for r in rows}, key=lambda k: (order.get(k[0], 1), k[1] != "normal", k[1]))
    names = [f"{split or '-'}/{label}" for split, label in columns]
    table: dict[tuple[str, str], dict] = {}
    for r in rows:
        table.setdefault((r.machine_type, r.machine_id), {})[(r.split, r.label)] = r.count
    lines = [["machine_type", "machine_id", *names]]
    for (mtype, mid), cells in table.items():
        lines.append([mtype, mid, *(str(cells.get(col, "")) for col in columns)])
    lines.append(["total", "", *(str(sum(c.get(col, 0) for c in table.values())) for col in columns)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)
