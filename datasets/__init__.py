"""Machine-sound datasets: read DCASE/MIMII folders, find local data, download public archives.

``edge_asd.datasets.layout`` (scan, Clip, ...) and ``edge_asd.datasets.locate`` need only the
standard library; ``edge_asd.datasets.download`` needs pooch (``pip install edge-asd[data]``) and is
not imported here.
"""

from edge_asd.datasets.layout import Clip, assign_mimii_split, machine_types, normalize_machine_id, scan, summary
from edge_asd.datasets.locate import local_data_root, require_data_root

__all__ = [
    "Clip",
    "assign_mimii_split",
    "local_data_root",
    "machine_types",
    "normalize_machine_id",
    "require_data_root",
    "scan",
    "summary",
]
