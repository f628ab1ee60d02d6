"""Operation windows: whole stream, fixed length, and machine-on segments found by the energy gate.

The gate is driven by a realistic machine cycle: the real fan clip running (about -40 dBFS) and, while
the machine is "off", the same clip 40 dB down (what a microphone hears of the hall around it).
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.windows import EnergyGate, FixedWindows, WholeStream, make_windows

RATE, HOP = 16000, 256


def cycle(fan_audio, pattern):
    """Concatenate (seconds, on?) pieces of the fan clip: on = as recorded, off = 40 dB down."""
    out, pos = [], 0
    for seconds, on in pattern:
        n = int(seconds * RATE)
        piece = fan_audio[pos:pos + n]
        pos += n
        out.append(piece if on else 0.01 * piece)
    return np.concatenate(out).astype(np.float32)


def gate_windows(gate, audio, block):
    """Window of each hop end, pushing ``audio`` in blocks of ``block`` samples."""
    for lo in range(0, len(audio), block):
        gate.push(audio[lo:lo + block])
    return [gate.window_at(e) for e in range(HOP, len(audio) + 1, HOP)]


def segments(states):
    """(first hop, last hop, window) of each run of equal, non-None states."""
    out, start = [], None
    for k, s in enumerate(states + [None]):
        if start is not None and s != states[start]:
            out.append((start, k - 1, states[start]))
            start = None
        if s is not None and start is None:
            start = k
    return out


def test_gate_finds_machine_cycles(fan_audio):
    audio = cycle(fan_audio, [(1.0, False), (3.0, True), (2.0, False), (3.0, True), (1.0, False)])
    states = gate_windows(EnergyGate(RATE, HOP, on_db=-50.0, min_on_s=0.5, min_off_s=1.0), audio, 4000)
    hop_s = HOP / RATE
    found = [(a * hop_s, b * hop_s, w) for a, b, w in segments(states)]
    assert [w for _, _, w in found] == [0, 1]  # two cycles, two windows
    # each opens min_on_s after the machine starts and closes min_off_s after it stops (causal gate)
    for (start, end, _), (on_s, off_s) in zip(found, [(1.0, 4.0), (6.0, 9.0)]):
        assert start == pytest.approx(on_s + 0.5, abs=2 * hop_s)
        assert end == pytest.approx(off_s + 1.0, abs=2 * hop_s)


def test_gate_is_independent_of_block_size(fan_audio):
    audio = cycle(fan_audio, [(0.7, False), (2.0, True), (1.5, False), (1.0, True)])
    ref = gate_windows(EnergyGate(RATE, HOP, on_db=-50.0), audio, len(audio))
    for block in (1, 100, 256, 1000, 16384):
        assert gate_windows(EnergyGate(RATE, HOP, on_db=-50.0), audio, block) == ref


def test_gate_ignores_short_bursts_and_dips(fan_audio):
    """A 0.3-s knock while off does not open a window; a 0.5-s dip while on does not close it."""
    audio = cycle(fan_audio, [(1.0, False), (0.3, True), (1.0, False), (2.0, True), (0.5, False), (2.0, True),
                              (1.5, False)])
    states = gate_windows(EnergyGate(RATE, HOP, on_db=-50.0, min_on_s=0.5, min_off_s=1.0), audio, 2048)
    assert [w for _, _, w in segments(states)] == [0]


def test_gate_keeps_its_state_across_a_gap(fan_audio):
    gate = EnergyGate(RATE, HOP, on_db=-50.0)
    gate.push(fan_audio[:RATE])
    assert gate.window_at(RATE) == 0
    gate.skip(1000)  # samples lost: the machine is still running
    gate.push(fan_audio[RATE:2 * RATE])
    assert gate.window_at(2 * RATE + 1000) == 0 and gate.window == 0


def test_fixed_and_whole():
    fixed = FixedWindows(2.0, RATE)
    assert [fixed.window_at(int(t * RATE)) for t in (0.35, 1.99, 2.0, 5.9, 6.0)] == [0, 0, 1, 2, 3]
    assert WholeStream().window_at(10**9) == 0


@pytest.mark.parametrize("spec, kind", [(None, WholeStream), ("whole", WholeStream), ("2", FixedWindows),
                                        ("0.5s", FixedWindows), (10, FixedWindows), ("gate", EnergyGate)])
def test_make_windows(spec, kind):
    assert isinstance(make_windows(spec, RATE, HOP), kind)


@pytest.mark.parametrize("spec", ["hourly", "0", "-3", "nan", "inf"])
def test_make_windows_refuses(spec):
    with pytest.raises(EdgeAsdError, match="--window"):
        make_windows(spec, RATE, HOP)


def test_array_answers_equal_one_by_one(fan_audio):
    audio = cycle(fan_audio, [(0.7, False), (2.0, True), (1.5, False), (1.0, True)])
    ends = np.arange(5632, len(audio) + 1, HOP)
    for make in (WholeStream, lambda: FixedWindows(0.7, RATE), lambda: EnergyGate(RATE, HOP, on_db=-50.0)):
        one, many = make(), make()
        one.push(audio)
        many.push(audio)
        expected = [-1 if (w := one.window_at(int(e))) is None else w for e in ends]
        assert many.windows_at(ends).tolist() == expected
