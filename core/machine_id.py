"""Machine IDs as DCASE names them: ``id_00`` (DCASE 2020, MIMII) or ``section_00`` (DCASE 2021+), and what
a user's ``--machine-id`` means for a given model (:func:`resolve_machine_id`, shared by edge-score,
edge-calibrate, edge-report and edge-finetune)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from edge_asd.core.errors import EdgeAsdError

_MACHINE_ID = re.compile(r"(?:(id|section)_)?(\d{1,2})", re.IGNORECASE)


def normalize_machine_id(machine_id: str | int) -> str:
    """The canonical machine ID: ``"00"``, ``"id_00"``, ``0`` -> ``"id_00"``; ``"7"`` -> ``"id_07"``;
    ``"section_00"`` -> ``"section_00"``.

    Raises:
        EdgeAsdError: anything else.
    """
    text = str(machine_id).strip()
    match = _MACHINE_ID.fullmatch(text)
    if not match:
        raise EdgeAsdError(
            f"bad machine ID {machine_id!r}: use a number (00, 7), id_NN (id_00) or section_NN (section_00)"
        )
    kind = (match.group(1) or "id").lower()
    return f"{kind}_{int(match.group(2)):02d}"


def resolve_machine_id(requested: str | int, model_ids: Sequence[str] | None,
                       clip_ids: Iterable[str | None] = ()) -> tuple[str, str]:
    """(machine ID, how it was read) for ``--machine-id``.

    A bare number (``00``, ``7``) takes the ID form of the model's machine IDs (its metadata's
    ``machine_ids``, the IDs it was trained on: ``id_NN`` or ``section_NN``), else that of the clips'
    names (``clip_ids``, e.g. from :func:`edge_asd.datasets.layout.parse_clip_name`; None entries are
    ignored), else ``id_NN``. An explicit ``id_NN`` / ``section_NN`` is kept. The second value is one
    sentence for the user, e.g. ``"--machine-id 00 is section_00 (the model's ID form)"``.

    Raises:
        EdgeAsdError: not a machine ID (see :func:`normalize_machine_id`).
    """
    canonical = normalize_machine_id(requested)
    number = canonical.rpartition("_")[2]
    model_forms = {m.rpartition("_")[0] for m in model_ids or () if "_" in m}
    if not re.fullmatch(r"\s*\d{1,2}\s*", str(requested)):
        note = f"--machine-id {requested} is {canonical}"
        if model_ids and canonical not in model_ids:
            note += f" (the model was trained on {', '.join(model_ids)})"
        return canonical, note
    clip_forms = {c.rpartition("_")[0] for c in clip_ids if c}
    for forms, whose in ((model_forms, "the model's"), (clip_forms, "the file names'")):
        if len(forms) == 1:
            resolved = f"{forms.pop()}_{number}"
            return resolved, f"--machine-id {requested} is {resolved} ({whose} ID form)"
    return canonical, f"--machine-id {requested} is {canonical}"
