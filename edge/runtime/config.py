"""What one monitored input needs, from command-line options or from a TOML file listing several.

``monitor.toml`` (see ``examples/service/monitor.toml``)::

    [monitor]                       # defaults for every input
    store = "phi.json"
    events = "events.jsonl"
    window = "gate"

    [[input]]
    name = "fan-1"
    source = "mic:USB Audio"        # mic, mic:INDEX, mic:NAME, serial:PORT, -, or an audio file
    channel = 0
    model = "fan.tflite"
    machine_id = "id_00"

Every key may appear in ``[monitor]`` or in an ``[[input]]`` (which wins): the fields of
:class:`InputConfig`, where ``source`` and the keys of where audio comes from (``channel``, ``pcm_channels``,
``pcm_rate``, ``pcm_framing``, ``baud``, ``stall_s``, ``buffer_s``) fill its
:class:`~edge_asd.firmware_io.sources.SourceSpec`. An optional ``[fleet]`` table sends the lines to an MQTT
broker too (:func:`load_fleet_table`, docs/fleet.md). Relative paths are relative to the TOML file's folder.
Unknown keys and wrong types are refused.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.backends import MAX_THREADS
from edge_asd.edge.runtime.health import HOLD_S, LEVEL_DRIFT_DB, SILENT_DBFS, HealthLimits
from edge_asd.edge.runtime.windows import DEFAULT_GATE_DB, DEFAULT_GATE_MIN_OFF_S, DEFAULT_GATE_MIN_ON_S
from edge_asd.firmware_io.sources import PCM_FRAMINGS, SourceSpec

PATH_KEYS = ("model", "store", "events", "evidence_dir", "trust_dir")


@dataclass
class InputConfig:
    """One input and what runs on it. Units: seconds (``_s``), dBFS (``gate_db``), MB (``events_max_mb``)."""

    source: SourceSpec = dataclasses.field(default_factory=SourceSpec)
    """Where the audio comes from and how to read it (config keys ``source``, ``channel``, ``pcm_*``, ...)."""
    model: Path | None = None
    """The model file, or a slot directory (a folder holding ``slots.json``: :mod:`~edge_asd.edge.runtime.slots`)."""
    name: str | None = None
    """Name in every JSON line (``input``); default: the source."""
    machine_id: str | None = None
    store: Path | None = None
    phi: float | None = None
    window: str = "whole"
    gate_db: float = DEFAULT_GATE_DB
    gate_min_on_s: float = DEFAULT_GATE_MIN_ON_S
    """Energy gate: seconds at or above ``gate_db`` before it opens (edge-calibrate --gate-min-on-s)."""
    gate_min_off_s: float = DEFAULT_GATE_MIN_OFF_S
    """Energy gate: seconds below ``gate_db - 3`` before it closes (edge-calibrate --gate-min-off-s)."""
    votes: str | None = None
    """Alert policy ``K/N`` (edge-monitor --votes); None: the phi record's (1/1 without one)."""
    hysteresis: float | None = None
    """The alarm's off level over phi (edge-monitor --hysteresis); None: the phi record's (1.0 without one)."""
    events: Path | None = None
    events_max_mb: float = 0.0
    """Rotate the events file beyond this size, MB; 0 = never."""
    events_backups: int = 5
    evidence_dir: Path | None = None
    evidence_before_s: float = 5.0
    evidence_after_s: float = 5.0
    evidence_png: bool = False
    threads: int = 1
    silent_dbfs: float = SILENT_DBFS
    """Input health: a hop below this level is silent (a dead microphone), dBFS."""
    silent_s: float = HOLD_S["silent"]
    """Input health: seconds of silence before the ``silent`` health line."""
    level_drift_db: float = LEVEL_DRIFT_DB
    """Input health: tolerance of the level around the calibrated one, dB (``level_drift``)."""
    trust_dir: Path | None = None
    """Trust directory (docs/releases.md): the model needs a signed release installed there and phi a signed
    record; None: no signature checks."""
    allow_unsigned: bool = False
    """Development mode: with ``trust_dir``, run an unsigned model or phi after a WARNING instead of refusing."""
    trusted_clock: bool = False
    """The clock is trusted: expired roots and releases are refused."""

    def health_limits(self) -> HealthLimits:
        """The input-health thresholds of this input (:mod:`edge_asd.edge.runtime.health`).

        Raises:
            EdgeAsdError: ``silent_s`` or ``level_drift_db`` negative or not finite.
        """
        for key in ("silent_s", "level_drift_db"):
            value = getattr(self, key)
            if not 0 <= value < math.inf:
                raise EdgeAsdError(f"{self.label}: {key} {value}: must be a finite number >= 0")
        limits = HealthLimits(silent_dbfs=self.silent_dbfs, level_drift_db=self.level_drift_db)
        limits.hold_s["silent"] = self.silent_s
        return limits

    @property
    def label(self) -> str:
        """The input's name in logs and JSON lines: ``name``, else the source's spelling."""
        return self.name or self.source.spec


SOURCE_KEYS = {("source" if f.name == "spec" else f.name): f for f in dataclasses.fields(SourceSpec)}
"""Config key -> the :class:`SourceSpec` field it sets (the key ``source`` is its ``spec``)."""
_TYPES = {**{key: f.type for key, f in SOURCE_KEYS.items()},
          **{f.name: f.type for f in dataclasses.fields(InputConfig) if f.name != "source"}}


RANGES = {  # key: (lowest, highest) a value may take, both included; every float must also be finite
    "channel": (0, 63), "pcm_channels": (1, 64), "pcm_rate": (1000, 768000), "baud": (300, 100_000_000),
    "stall_s": (0.1, 3600.0), "buffer_s": (0.1, 3600.0), "phi": (1e-300, 1e300),
    "gate_db": (-200.0, 0.0), "gate_min_on_s": (0.0, 3600.0), "gate_min_off_s": (0.0, 3600.0),
    "hysteresis": (1e-6, 1.0), "events_max_mb": (0.0, 1e6), "events_backups": (0, 1000),
    "evidence_before_s": (0.0, 600.0), "evidence_after_s": (0.0, 600.0), "threads": (1, MAX_THREADS),
    "silent_dbfs": (-200.0, 0.0), "silent_s": (0.0, 3600.0), "level_drift_db": (0.0, 200.0),
}
"""Absurd values are refused where they are read (edge-monitor's options of the same names take the same ranges) (``threads = 100000`` exhausted the host's process IDs,
``events_max_mb = -1`` rotated before every line, ``gate_db = nan`` gated everything off)."""

ZERO_OR_AT_LEAST = {"events_max_mb": 0.1}
"""Keys whose 0 means "off" and whose other values must reach this floor: ``events_max_mb = 0.0001`` rotated
the events file on every line, so the backups held the last few lines and every earlier one was deleted."""


def _show(value) -> str:
    """``repr(value)``, cut to 40 characters (an integer of 400 digits stays a readable one-line error)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_range(key: str, value, where: str) -> None:
    """EdgeAsdError unless ``value`` is finite and within :data:`RANGES` for ``key``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise EdgeAsdError(f"{where}: {key} = {value} should be a finite number")
    if key in RANGES and value is not None:
        lo, hi = RANGES[key]
        if not lo <= value <= hi:
            raise EdgeAsdError(f"{where}: {key} = {_show(value)} is out of range ({lo:g} to {hi:g})")
        floor = ZERO_OR_AT_LEAST.get(key)
        if floor is not None and 0 < value < floor:
            raise EdgeAsdError(f"{where}: {key} = {_show(value)} is below {floor:g} (0 turns it off)")


def _coerce(key: str, value, where: str):
    kind = _TYPES[key]
    ok = {
        "str": isinstance(value, str), "str | None": isinstance(value, str),
        "Path | None": isinstance(value, str), "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "int | None": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "float | None": isinstance(value, (int, float)) and not isinstance(value, bool),
    }[kind]
    if key in ("window", "votes") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not ok:
        raise EdgeAsdError(f"{where}: {key} = {value!r} should be {kind.replace(' | None', '').replace('Path', 'a path')}")
    if key == "pcm_framing" and value not in PCM_FRAMINGS:
        raise EdgeAsdError(f"{where}: pcm_framing = {value!r} should be one of {', '.join(PCM_FRAMINGS)}")
    if kind.startswith("float"):
        try:
            return float(value)
        except OverflowError:  # a TOML integer like 10**400 (tomllib reads any size)
            raise EdgeAsdError(f"{where}: {key} = {_show(value)} should be a finite number") from None
    return value


def _apply(cfg: InputConfig, table: dict, where: str, base: Path) -> None:
    for key, value in table.items():
        if key not in _TYPES:
            raise EdgeAsdError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(_TYPES))})")
        value = _coerce(key, value, where)
        _check_range(key, value, where)
        if key in PATH_KEYS:
            value = base / Path(value).expanduser()
        if key in SOURCE_KEYS:
            cfg.source = dataclasses.replace(cfg.source, **{SOURCE_KEYS[key].name: value})
        else:
            setattr(cfg, key, value)


def load_config(path: str | Path) -> list[InputConfig]:
    """The inputs of a TOML file, each with the ``[monitor]`` defaults applied.

    Raises:
        EdgeAsdError: unreadable or invalid TOML, unknown keys or tables, wrong types, no input, an input
            without ``model``, or two inputs with the same name.
    """
    path = Path(path)
    data = _read_toml(path)
    unknown = set(data) - {"monitor", "input", "fleet", "rollout"}
    if unknown:
        raise EdgeAsdError(f"{path}: unknown table(s) {', '.join(sorted(unknown))} (use [monitor], [[input]], [fleet] "
                           "and [rollout])")
    defaults, inputs = data.get("monitor", {}), data.get("input", [])
    if not isinstance(defaults, dict) or not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise EdgeAsdError(f"{path}: [monitor] must be a table and [[input]] an array of tables")
    if not inputs:
        raise EdgeAsdError(f"{path}: no [[input]] listed")
    base = path.resolve().parent
    out = []
    for k, table in enumerate(inputs):
        cfg = InputConfig()
        _apply(cfg, defaults, f"{path} [monitor]", base)
        _apply(cfg, table, f"{path} [[input]] #{k + 1}", base)
        if cfg.model is None:
            raise EdgeAsdError(f"{path} [[input]] #{k + 1} ({cfg.label}): no model")
        out.append(cfg)
    names = [c.label for c in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EdgeAsdError(f"{path}: several inputs named {', '.join(dupes)}; give each a distinct name")
    if sum(c.source.spec == "-" for c in out) > 1:
        raise EdgeAsdError(f"{path}: only one input can read stdin (-)")
    return out


def _read_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        raise EdgeAsdError("--config needs Python 3.11 or newer (tomllib)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeAsdError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeAsdError(f"{path}: cannot read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise EdgeAsdError(f"{path}: not valid TOML ({e})") from None
    return data


def load_fleet_table(path: str | Path) -> dict:
    """The ``[fleet]`` table of a monitor.toml (docs/fleet.md), types checked, paths relative to the file's
    folder; {} when there is none.

    Raises:
        EdgeAsdError: unreadable TOML, a ``fleet`` that is not a table, an unknown key or a wrong type.
    """
    from edge_asd.edge.runtime.fleet.settings import check_table

    path = Path(path)
    table = _read_toml(path).get("fleet", {})
    if not isinstance(table, dict):
        raise EdgeAsdError(f"{path}: [fleet] must be a table")
    return check_table(table, f"{path} [fleet]", path.resolve().parent)


def load_rollout_table(path: str | Path) -> dict:
    """The ``[rollout]`` table of a monitor.toml: the health gate of slot directories (``trial_windows``,
    ``trial_minutes``, ``factor``, ``extra``; :class:`~edge_asd.edge.runtime.gate.GateSettings`); {} when there
    is none.

    Raises:
        EdgeAsdError: unreadable TOML, a ``rollout`` that is not a table, an unknown key, a wrong type or range.
    """
    from edge_asd.edge.runtime.gate import check_gate

    path = Path(path)
    table = _read_toml(path).get("rollout", {})
    if not isinstance(table, dict):
        raise EdgeAsdError(f"{path}: [rollout] must be a table")
    return check_gate(table, f"{path} [rollout]")
