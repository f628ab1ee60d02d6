"""Machine IDs as DCASE names them: ``id_00`` (DCASE 2020, MIMII) or ``section_00`` (DCASE 2021+)."""

from __future__ import annotations

import re

from .errors import EdgeAsdError

_ID = re.compile(r"^(?:id_)?(\d{1,2})$")
_SECTION = re.compile(r"^section_(\d{2})$")


def normalize_machine_id(value: str) -> str:
    """Canonical machine ID: ``"00"``, ``"0"`` and ``"id_00"`` -> ``"id_00"``; ``"section_00"`` stays.

    Raises EdgeAsdError for anything else, listing the accepted forms.
    """
    text = str(value).strip()
    if m := _ID.match(text):
        return f"id_{int(m.group(1)):02d}"
    if _SECTION.match(text):
        return text
    raise EdgeAsdError(f"machine ID {value!r} not understood; use 00, id_00 or section_00")
