"""Machine IDs as DCASE names them: ``id_00`` (DCASE 2020, MIMII) or ``section_00`` (DCASE 2021+)."""

from __future__ import annotations

import re

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
