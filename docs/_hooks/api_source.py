"""mkdocs hook: the source folders under the names they are installed as, for mkdocstrings.

pyproject.toml's ``[tool.setuptools.package-dir]`` maps ``edge_asd.core`` to ``core/``,
``edge_asd.edge`` to ``edge/``, and so on; griffe (mkdocstrings' reader) finds a package only in a
folder of its own name, and the editable install's import hook is not a folder. Before mkdocstrings
reads anything, this hook links ``build/docs-api/edge_asd/<name>`` to ``<folder>`` for every entry of
that table, so the API pages are read statically from the working tree (nothing is imported) and a
module added to a package appears on its page without an edit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mkdocs.plugins import event_priority

LINK_ROOT = Path("build") / "docs-api"
"""Relative to the folder of mkdocs.yml; mkdocs.yml's ``paths`` for the python handler names it."""

_SECTION = re.compile(r"^\[tool\.setuptools\.package-dir\]\s*$(?P<body>.*?)(?=^\[|\Z)", re.M | re.S)
_ENTRY = re.compile(r'^\s*"(?P<package>[\w.]+)"\s*=\s*"(?P<folder>[^"]+)"', re.M)


def package_dirs(pyproject: Path) -> dict[str, str]:
    """``{"edge_asd.core": "core", ...}`` from pyproject.toml's package-dir table (no TOML parser needed)."""
    section = _SECTION.search(pyproject.read_text(encoding="utf-8"))
    if section is None:
        raise RuntimeError(f"{pyproject}: no [tool.setuptools.package-dir] table")
    return {m["package"]: m["folder"] for m in _ENTRY.finditer(section["body"])}


def link_sources(root: Path) -> Path:
    """Create (or refresh) the link tree under ``root / LINK_ROOT``; return its path."""
    base = root / LINK_ROOT
    for package, folder in package_dirs(root / "pyproject.toml").items():
        link = base.joinpath(*package.split("."))
        link.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(root / folder, link.parent)
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return base


@event_priority(100)  # before mkdocstrings sets up its search paths
def on_config(config):
    link_sources(Path(config.config_file_path).resolve().parent)
    return config
