"""Which recordings a device command takes, by what their DCASE / MIMII file names say.

edge-calibrate (recordings and ``--check``), edge-report (``--normals``, ``--test-dir``) and edge-finetune
(recordings and ``--check``) read the machine type, machine ID and label of each recording from its name
(:func:`edge_asd.datasets.layout.parse_clip_name`):

- ``anomaly_*`` clips (and MIMII ``abnormal/`` clips) are refused where normal recordings are expected:
  a fault in the sample phi is set on raises phi above the faults it should catch;
- clips whose name says another machine ID than the one the command works for, or another machine type
  than the model's (its metadata's ``machine_type``), are refused unless ``--accept-other-machines``;
- files whose name says nothing are taken as they are.

``--machine-id 00`` means the model's own ID form (``id_00`` or ``section_00``,
:func:`edge_asd.core.machine_id.resolve_machine_id`); :func:`resolve_for_model` logs which in one INFO line.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.machine_id import resolve_machine_id
from edge_asd.datasets.layout import ClipName, parse_clip_name

log = logging.getLogger("edge_asd")

ACCEPT_OTHER_MACHINES = "--accept-other-machines"
"""The option that takes recordings whose names say another machine (one name for every command)."""
NAMES_SHOWN = 5
"""File names an error lists before it says how many more there are."""


@dataclass(frozen=True)
class Machine:
    """The machine a command works for: what a recording's name must not contradict."""

    machine_type: str | None
    """The model's machine type (its metadata's ``machine_type``), or None when it does not say."""
    machine_id: str | None
    """``id_NN`` / ``section_NN`` (resolved ``--machine-id``), or None when not known."""

    def describe(self) -> str:
        return " ".join(x for x in (self.machine_type, self.machine_id) if x) or "one machine"


def resolve_for_model(requested: str | int, meta: dict, files: Sequence[Path] = ()) -> str:
    """``--machine-id`` as the model names its machines: a bare number takes the ID form of the model's
    ``machine_ids`` (the IDs it was trained on), else that of ``files``' names; logs the result in one
    INFO line (e.g. ``--machine-id 00 is section_00 (the model's ID form)``).

    Raises:
        EdgeAsdError: not a machine ID.
    """
    names = [parse_clip_name(f) for f in files]
    machine_id, note = resolve_machine_id(requested, meta.get("machine_ids"), (n.machine_id for n in names if n))
    log.info("%s", note)
    return machine_id


def model_machine(meta: dict, machine_id: str | None) -> Machine:
    """The :class:`Machine` of a model (its metadata ``meta``) working for ``machine_id`` (resolved); without
    ``machine_id``, the model's only machine ID when it was trained on one."""
    ids = meta.get("machine_ids") or []
    if machine_id is None and len(ids) == 1:
        machine_id = ids[0]
    return Machine(meta.get("machine_type") or None, machine_id)


def _listed(files: Sequence[Path]) -> str:
    shown = ", ".join(Path(f).name for f in files[:NAMES_SHOWN])
    return shown + (f" and {len(files) - NAMES_SHOWN} more" if len(files) > NAMES_SHOWN else "")


def _name_of(name: ClipName) -> str:
    return " ".join(x for x in (name.machine_type, name.machine_id) if x)


def refuse_anomalies(files: Sequence[Path], what: str) -> None:
    """Refuse ``anomaly_*`` clips (by name, or a MIMII ``abnormal/`` folder) given as normal recordings.

    ``what``: how the error names the recordings, e.g. ``"--check recordings"``.

    Raises:
        EdgeAsdError: one line naming them (the first :data:`NAMES_SHOWN`) and how many.
    """
    bad = [f for f in files if (n := parse_clip_name(f)) is not None and n.label == "anomaly"]
    if bad:
        raise EdgeAsdError(f"{len(bad)} of the {len(files)} {what} are anomalous by their names ({_listed(bad)}): "
                           "refused as normal recordings; give normal_* recordings only")


def other_machines(files: Sequence[Path], machine: Machine) -> list[tuple[Path, ClipName]]:
    """The files whose name says another machine ID than ``machine.machine_id`` or another machine type than
    ``machine.machine_type`` (case-insensitive), with what their names say. Names that say nothing, and
    fields the machine does not know, contradict nothing."""
    out = []
    for f in files:
        n = parse_clip_name(f)
        if n is None:
            continue
        other_id = machine.machine_id is not None and n.machine_id is not None and n.machine_id != machine.machine_id
        other_type = (machine.machine_type is not None and n.machine_type is not None
                      and n.machine_type.casefold() != machine.machine_type.casefold())
        if other_id or other_type:
            out.append((Path(f), n))
    return out


def check_machines(files: Sequence[Path], machine: Machine, what: str, accept_other_machines: bool = False) -> None:
    """Refuse recordings whose names say another machine than ``machine`` (:func:`other_machines`); when
    ``machine.machine_id`` is None, recordings whose names say more than one machine ID. With
    ``accept_other_machines`` they are taken, with a WARNING naming how many.

    Raises:
        EdgeAsdError: one line with how many recordings, of which machines, and the option that accepts them.
    """
    if machine.machine_id is None:
        ids = Counter(n.machine_id for f in files if (n := parse_clip_name(f)) is not None and n.machine_id)
        if len(ids) > 1:
            counts = ", ".join(f"{i}: {k}" for i, k in sorted(ids.items()))
            if not accept_other_machines:
                raise EdgeAsdError(f"the {len(files)} {what} name {len(ids)} machine IDs ({counts}): give --machine-id, "
                                   f"or pass {ACCEPT_OTHER_MACHINES} to take them together")
            log.warning("%s: the %d %s name %d machine IDs (%s), taken together", ACCEPT_OTHER_MACHINES, len(files),
                        what, len(ids), counts)
    bad = other_machines(files, machine)
    if not bad:
        return
    counts = ", ".join(f"{k}: {n}" for k, n in sorted(Counter(_name_of(name) for _, name in bad).items()))
    if not accept_other_machines:
        raise EdgeAsdError(f"{len(bad)} of the {len(files)} {what} are of another machine by their names ({counts}; "
                           f"{_listed([f for f, _ in bad])}), not {machine.describe()}: pass {ACCEPT_OTHER_MACHINES} "
                           "to use them anyway")
    log.warning("%s: using %d of the %d %s of another machine than %s (%s)", ACCEPT_OTHER_MACHINES, len(bad),
                len(files), what, machine.describe(), counts)


def check_normal_recordings(files: Sequence[Path], machine: Machine, what: str,
                            accept_other_machines: bool = False) -> None:
    """:func:`refuse_anomalies`, then :func:`check_machines`: normal recordings of this machine only.

    Raises:
        EdgeAsdError: as those do (one line).
    """
    refuse_anomalies(files, what)
    check_machines(files, machine, what, accept_other_machines)
