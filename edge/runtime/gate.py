"""The health gate's settings of a release on trial (:mod:`.rollout`; monitor.toml ``[rollout]``, edge-monitor
``--trial-*``; docs/releases.md, Health gate)."""

from __future__ import annotations

from dataclasses import dataclass

from edge_asd.core.errors import EdgeAsdError


@dataclass(frozen=True)
class GateSettings:
    """The health gate (monitor.toml ``[rollout]``, edge-monitor ``--trial-*``). Units: minutes of scored audio."""

    trial_windows: int = 200
    trial_minutes: float = 10.0
    factor: float = 3.0
    extra: int = 1

    def allowed(self, good: dict, seconds: float) -> float:
        """Alarms a trial may raise over ``seconds`` of audio: ``factor`` x the good model's alarms per second
        (``good``: its ``alarms`` over ``seconds``; none scored yet: 0) x ``seconds`` + ``extra``."""
        rate = good["alarms"] / good["seconds"] if good.get("seconds") else 0.0
        return self.factor * rate * seconds + self.extra


GATE_RANGES = {"trial_windows": (int, 1, 10**9), "trial_minutes": (float, 0.0, 1e6), "factor": (float, 0.0, 1e6),
               "extra": (int, 0, 10**9)}


def check_gate(table: dict, where: str) -> dict:
    """The health gate's settings of ``table`` (keys of :class:`GateSettings`), types and ranges checked.

    Raises:
        EdgeAsdError: an unknown key, a wrong type or a value out of :data:`GATE_RANGES`.
    """
    out = {}
    for key, value in table.items():
        if key not in GATE_RANGES:
            raise EdgeAsdError(f"{where}: unknown key {key!r} (known: {', '.join(GATE_RANGES)})")
        kind, lo, hi = GATE_RANGES[key]
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) \
                or not lo <= value <= hi:
            raise EdgeAsdError(f"{where}: {key} = {value!r} should be {'a number' if kind is float else 'an integer'} "
                               f"from {lo:g} to {hi:g}")
        out[key] = kind(value)
    return out
