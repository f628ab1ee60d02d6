"""The public archives ``edge-data fetch`` knows, with their published checksums and sizes.

Schema (the same for the built-in :data:`REGISTRY` and for a JSON file named by the environment
variable ``EDGE_ASD_REGISTRY``, whose datasets replace built-in ones of the same name)::

    {"version": 1,
     "datasets": {
       "<name>": {"title": str, "licence": str, "homepage": str,
                  "base_url": str,           # the archive URL is base_url + file + url_suffix
                  "url_suffix": str,         # optional, "" by default; dropped for a mirror
                  "default_snr": str,        # optional: for datasets whose archives have "snr"
                  "archives": [{"machine_type": str, "file": str,
                                "known_hash": "md5:<hex>" | "sha256:<hex>" | null,
                                "size": int | null, "snr": str (optional)}]}}}

Checksums are the ones Zenodo publishes (md5), cross-checked against two independent copies:

* dcase2020-dev: github.com/soundata/soundata, ``soundata/datasets/dcase2020task2.py`` (REMOTES,
  commit 18250c9), and github.com/datasets-mila/datasets--dcase2020, ``md5sums`` and the
  git-annex keys (``MD5E-s<size>--<md5>``) of its ``dev_data_*.zip`` links, which give the sizes.
* mimii: github.com/datasets-mila/datasets--mimii, ``README.rst`` (a copy of the Zenodo file list),
  ``md5sums`` (checked with ``md5sum -c`` by its ``scripts/download.sh``) and the git-annex keys
  of its ``*_dB_*.zip`` links, which give the sizes.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

from edge_asd.core.errors import EdgeAsdError

ENV_VAR = "EDGE_ASD_REGISTRY"


def _archives(pairs, snr=None):
    out = []
    for machine_type, file, md5, size in pairs:
        entry = {"machine_type": machine_type, "file": file, "known_hash": f"md5:{md5}", "size": size}
        if snr:
            entry["snr"] = snr
        out.append(entry)
    return out


REGISTRY: dict = {
    "version": 1,
    "datasets": {
        "dcase2020-dev": {
            "title": "DCASE 2020 Challenge Task 2 development dataset",
            "licence": "CC BY-NC-SA 4.0 (non-commercial)",
            "homepage": "https://zenodo.org/records/3678171",
            "base_url": "https://zenodo.org/records/3678171/files/",
            "url_suffix": "?download=1",
            "archives": _archives(
                [
                    ("fan", "dev_data_fan.zip", "649bdfc06263ae7a838963f43b6641e6", 1354774772),
                    ("pump", "dev_data_pump.zip", "90e7091ef722b7238a7f1009365779cd", 1031279015),
                    ("slider", "dev_data_slider.zip", "da24a757719f0d94d5aa2d646bbfdc86", 1002998966),
                    ("valve", "dev_data_valve.zip", "34d2672f55bb041589ef79c10dc89934", 1013925627),
                    ("ToyCar", "dev_data_ToyCar.zip", "4dec75ca8d9f666aa9e4c1894a740501", 1816443231),
                    ("ToyConveyor", "dev_data_ToyConveyor.zip", "03b6aa1bfd09a39d53af0ba39f71fa91", 1868564070),
                ]
            ),
        },
        "mimii": {
            "title": "MIMII dataset (public 1.0), 8-channel, normal and abnormal, 6/0/-6 dB SNR",
            "licence": "CC BY-SA 4.0",
            "homepage": "https://zenodo.org/records/3384388",
            "base_url": "https://zenodo.org/records/3384388/files/",
            "url_suffix": "?download=1",
            "default_snr": "6dB",
            "archives": _archives(
                [
                    ("fan", "6_dB_fan.zip", "0890f7d3c2fd8448634e69ff1d66dd47", 10158673161),
                    ("pump", "6_dB_pump.zip", "a09ba6060c10fc09cd4c8770213b0b9f", 7659077508),
                    ("slider", "6_dB_slider.zip", "838c2b3441858359c4704ef13a1b27ff", 7129464289),
                    ("valve", "6_dB_valve.zip", "fe5fb7c337cd701b1d31dc641e621892", 6915951837),
                ],
                snr="6dB",
            )
            + _archives(
                [
                    ("fan", "0_dB_fan.zip", "6354d1cc2165c52168f9ef1bcd9c7c52", 10411902283),
                    ("pump", "0_dB_pump.zip", "488748295c3f60b25de07b58fe75b049", 7869431302),
                    ("slider", "0_dB_slider.zip", "4d674c21474f0646ecd75546db6c0c4e", 7508958315),
                    ("valve", "0_dB_valve.zip", "178478eb0d11c79080a35562bfdeee71", 7486536802),
                ],
                snr="0dB",
            )
            + _archives(
                [
                    ("fan", "-6_dB_fan.zip", "f02ae808a58d84b6815b7ec38ff30879", 10878096548),
                    ("pump", "-6_dB_pump.zip", "d20b783a0ff9c93d58f452f98c37b112", 8236951723),
                    ("slider", "-6_dB_slider.zip", "49913eda7d37f182cbf8ed5c984140e0", 7951254230),
                    ("valve", "-6_dB_valve.zip", "fdfaf185fea61b21e11952a070a4ada7", 8037536346),
                ],
                snr="-6dB",
            ),
        },
    },
}

_HASH = re.compile(r"(md5:[0-9a-fA-F]{32}|sha256:[0-9a-fA-F]{64}|[0-9a-fA-F]{64})")


def _check(datasets: dict, source: str) -> None:
    """Raise EdgeAsdError when a registry's datasets do not follow the schema."""
    if not isinstance(datasets, dict) or not datasets:
        raise EdgeAsdError(f"{source}: 'datasets' must be a non-empty object; see edge_asd.datasets.registry")
    for name, entry in datasets.items():
        where = f"{source}: dataset {name!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("base_url"), str):
            raise EdgeAsdError(f"{where}: needs a 'base_url' string; see edge_asd.datasets.registry")
        archives = entry.get("archives")
        if not isinstance(archives, list) or not archives:
            raise EdgeAsdError(f"{where}: needs a non-empty 'archives' list; see edge_asd.datasets.registry")
        for archive in archives:
            if not isinstance(archive, dict) or not all(
                isinstance(archive.get(k), str) for k in ("machine_type", "file")
            ):
                raise EdgeAsdError(f"{where}: each archive needs 'machine_type' and 'file' strings")
            known = archive.setdefault("known_hash", None)
            if known is not None and not (isinstance(known, str) and _HASH.fullmatch(known)):
                hint = "use md5:<32 hex>, sha256:<64 hex> or null"
                raise EdgeAsdError(f"{where}: bad known_hash {known!r} for {archive['file']}; {hint}")
            archive.setdefault("size", None)


def load_registry() -> dict:
    """The built-in registry, with the datasets of the ``EDGE_ASD_REGISTRY`` file (if set) on top.

    Returns:
        dict: ``{"version": 1, "datasets": {name: entry}}`` (a copy; safe to modify).

    Raises:
        EdgeAsdError: the override file is missing, not JSON, or does not follow the schema.
    """
    registry = copy.deepcopy(REGISTRY)
    path = os.environ.get(ENV_VAR)
    if path:
        try:
            override = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
        except OSError as exc:
            raise EdgeAsdError(
                f"{ENV_VAR}={path}: cannot read it ({exc.strerror}); fix the path or unset {ENV_VAR}"
            ) from None
        except ValueError as exc:
            raise EdgeAsdError(f"{ENV_VAR}={path}: not valid JSON ({exc}); fix the file or unset {ENV_VAR}") from None
        if not isinstance(override, dict):
            raise EdgeAsdError(f"{ENV_VAR}={path}: must hold a JSON object with a 'datasets' object")
        _check(override.get("datasets"), f"{ENV_VAR}={path}")
        registry["datasets"].update(override["datasets"])
    return registry


def normalize_snr(snr: str) -> str:
    """``"6dB"``, ``"6"``, ``"6_dB"``, ``"+6 dB"`` -> ``"6dB"``; ``"-6dB"``, ``"min6dB"`` -> ``"-6dB"``.

    Raises:
        EdgeAsdError: not an SNR.
    """
    match = re.fullmatch(r"\s*(min|m|-|\+)?\s*(\d+)\s*_?\s*(db)?\s*", str(snr), re.IGNORECASE)
    if not match:
        raise EdgeAsdError(f"bad SNR {snr!r}: use 6dB, 0dB or -6dB")
    sign = "-" if match.group(1) and match.group(1).lower() in ("min", "m", "-") and match.group(2) != "0" else ""
    return f"{sign}{int(match.group(2))}dB"


def find_archive(registry: dict, dataset: str, machine_type: str, snr: str | None = None) -> tuple[dict, dict]:
    """The dataset entry and the archive entry for one machine type (and SNR, for MIMII).

    Raises:
        EdgeAsdError: unknown dataset, machine type or SNR (the message lists the known ones), or an
            SNR given for a dataset that has none.
    """
    datasets = registry["datasets"]
    if dataset not in datasets:
        raise EdgeAsdError(f"unknown dataset {dataset!r}: use one of {', '.join(sorted(datasets))}")
    entry = datasets[dataset]
    archives = entry["archives"]
    has_snr = any("snr" in a for a in archives)
    if snr is not None and not has_snr:
        raise EdgeAsdError(f"{dataset} has no SNR versions; leave out --snr")
    if has_snr:
        snr = normalize_snr(snr or entry.get("default_snr") or archives[0]["snr"])
    matches = [a for a in archives if a["machine_type"].casefold() == machine_type.casefold()]
    if not matches:
        types = sorted({a["machine_type"] for a in archives})
        raise EdgeAsdError(f"{dataset} has no machine type {machine_type!r}: use one of {', '.join(types)}")
    if has_snr:
        found = [a for a in matches if "snr" in a and normalize_snr(a["snr"]) == snr]
        if not found:
            snrs = sorted({a.get("snr", "?") for a in matches})
            raise EdgeAsdError(f"{dataset} has no {machine_type} archive at SNR {snr}: use one of {', '.join(snrs)}")
        matches = found
    return entry, matches[0]
