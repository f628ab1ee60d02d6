"""RunningMaxDetector: the frame-wise decision of Koizumi et al. 2019, eqs. (4) and (11), streamed.

Rule under test: an event for every frame whose score is >= phi AND greater than the running max of
the current operation window so far; a new window resets that running max and closes the old one with
a verdict (max score, its time, anomalous = max >= phi, eq. 11). Windows here are fixed-length
(index ``int(t // window_s)``); the windows themselves are tested in test_windows.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_asd.edge.runtime.decision import OFF, RunningMaxDetector
from edge_asd.edge.runtime.events import EVENT_SCHEMA, AlarmLine, Event, Verdict

SHA = "ab" * 32


def window_of(t, window_s):
    return 0 if window_s is None else int(t // window_s)


def run(scores, phi, window_s=None, hop_s=0.016, t0=0.352):
    """Feed scores at frame times t0 + k * hop_s; return (detector, events, running max after each frame)."""
    det = RunningMaxDetector(phi, "id_00", SHA)
    events, maxima = [], []
    for k, s in enumerate(scores):
        t = t0 + k * hop_s
        events += [r for r in det.update(k, t, s, window_of(t, window_s)) if isinstance(r, Event)]
        maxima.append(det.running_max)
    return det, events, maxima


def reference(times, scores, phi, window_s):
    """Brute force: (frame, score, max of the same window's earlier scores or None, window) per event."""
    out = []
    for i, (t, s) in enumerate(zip(times, scores)):
        w = 0 if window_s is None else int(t // window_s)
        earlier = [scores[j] for j in range(i) if (0 if window_s is None else int(times[j] // window_s)) == w]
        prev = max(earlier) if earlier else None
        if s >= phi and (prev is None or s > prev):
            out.append((i, s, prev, w))
    return out


@pytest.mark.parametrize(
    "scores, phi, frames, running_max",
    [
        # rises over phi, a higher peak later, then lower scores: events at the new maxima only
        ([1, 2, 5, 4, 6, 6, 3, 7], 5, [2, 4, 7], [1, 2, 5, 5, 6, 6, 6, 7]),
        # score exactly phi counts (>= phi); an equal score later is not greater than the max: no event
        ([5, 5, 5], 5, [0], [5, 5, 5]),
        # the running max is tracked below phi too: a frame over phi but under an earlier peak is silent
        ([9, 6, 7, 10], 5, [0, 3], [9, 9, 9, 10]),
        # nothing reaches phi: no event, but the max still runs
        ([1, 3, 2], 10, [], [1, 3, 3]),
        # a maximum below phi, then one that crosses it
        ([1, 4, 3, 4.5, 12, 11, 13], 10, [4, 6], [1, 4, 4, 4.5, 12, 12, 13]),
        # negative scores and a negative threshold
        ([-3.0, -5.0, -1.0], -2.0, [2], [-3.0, -3.0, -1.0]),
    ],
)
def test_events_at_new_maxima_over_phi(scores, phi, frames, running_max):
    det, events, maxima = run([float(s) for s in scores], float(phi))
    assert [e.frame for e in events] == frames
    assert maxima == running_max
    # each event reports the max *before* its frame, and its own score
    for e in events:
        before = [scores[j] for j in range(e.frame)]
        assert e.running_max == (max(before) if before else None)
        assert e.score == scores[e.frame]
        assert e.score >= phi
    assert det.n_events == len(frames)
    assert det.n_frames == len(scores)
    assert det.max_score == max(scores)


def test_running_max_is_previous_value_and_strictly_increases():
    scores = [10.0, 12.0, 11.0, 15.0, 15.0, 20.0]
    _, events, _ = run(scores, 0.0)
    assert [e.score for e in events] == [10.0, 12.0, 15.0, 20.0]
    assert [e.running_max for e in events] == [None, 10.0, 12.0, 15.0]
    # successive events: the running max each reports equals the previous event's score
    for a, b in zip(events, events[1:]):
        assert b.running_max == a.score and b.score > a.score


def test_window_resets_running_max():
    # hop 0.5 s from t=0: frames 0-3 in window 0 ([0, 2) s), 4-7 in window 1, 8-9 in window 2
    scores = [5.0, 9.0, 8.0, 7.0, 6.0, 5.0, 7.0, 10.0, 1.0, 8.0]
    det, events, maxima = run(scores, 5.0, window_s=2.0, hop_s=0.5, t0=0.0)
    assert [(e.frame, e.window) for e in events] == [(0, 0), (1, 0), (4, 1), (6, 1), (7, 1), (9, 2)]
    assert [e.running_max for e in events] == [None, 5.0, None, 6.0, 7.0, 1.0]
    assert maxima == [5.0, 9.0, 9.0, 9.0, 6.0, 6.0, 7.0, 10.0, 1.0, 8.0]
    assert det.window == 2


def test_verdict_per_closed_window():
    """Eq. (11) per window: anomalous iff the window's max reaches phi; one verdict when it closes."""
    scores = [5.0, 9.0, 8.0, 7.0, 1.0, 2.0, 4.9, 3.0, 1.0, 8.0]
    det = RunningMaxDetector(5.0, "id_00", SHA)
    records = []
    for k, s in enumerate(scores):
        records += det.update(k, 0.5 * k, s, int(0.5 * k // 2.0))
    records.append(det.close())
    verdicts = [r for r in records if isinstance(r, Verdict)]
    assert [(v.window, v.frames, v.max_score, v.max_time_s, v.anomalous, v.events) for v in verdicts] == [
        (0, 4, 9.0, 0.5, True, 2), (1, 4, 4.9, 3.0, False, 0), (2, 2, 8.0, 4.5, True, 1)]
    assert [(v.start_s, v.end_s) for v in verdicts] == [(0.0, 1.5), (2.0, 3.5), (4.0, 4.5)]
    # a verdict comes right before the first record of the next window
    kinds = [(type(r).__name__, r.window) for r in records]
    assert kinds.index(("Verdict", 0)) < kinds.index(("Event", 2))
    assert det.n_windows == 3 and det.n_anomalous_windows == 2
    assert det.close() is None  # nothing open any more
    d = verdicts[1].to_dict()
    assert d["event"] == "verdict" and d["schema"] == EVENT_SCHEMA and d["anomalous"] is False
    assert json.loads(json.dumps(d)) == d


def test_frames_outside_every_window_close_it_and_are_not_judged():
    """Energy gate off (window None): the open window closes at once; off frames raise nothing."""
    det = RunningMaxDetector(5.0, "id_00", SHA)
    assert det.update(0, 0.1, 6.0, 0)[0].frame == 0
    (verdict,) = det.update(1, 0.2, 100.0, None)
    assert isinstance(verdict, Verdict) and verdict.window == 0 and verdict.max_score == 6.0
    assert det.update(2, 0.3, 100.0, None) == []
    (event,) = det.update(3, 0.4, 7.0, 1)
    assert event.window == 1 and event.running_max is None
    assert det.n_off == 2 and det.max_score == 7.0  # the gated-off 100s are no part of any decision


def test_nonfinite_scores_are_skipped_and_counted():
    det = RunningMaxDetector(5.0, "id_00", SHA)
    assert det.update(0, 0.1, math.nan) == []
    alarm, event = det.update(1, 0.2, 6.0)
    assert event.running_max is None  # NaN never became the running max
    assert isinstance(alarm, AlarmLine) and alarm.state == "on" and alarm.frame == 1  # an alarm line comes first
    assert det.update(2, 0.3, math.inf) == [] and det.update(3, 0.4, 7.0)[0].running_max == 6.0
    assert det.n_alarms == 1  # inf was skipped: the alarm stayed on
    assert det.n_nonfinite == 2
    assert det.close().frames == 4


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.one_of(st.floats(-10, 10), st.just(math.nan)), max_size=80),
       windows=st.lists(st.sampled_from([OFF, 0, 1, 2]), max_size=80), phi=st.floats(-10, 10))
def test_block_update_equals_frame_by_frame(scores, windows, phi):
    n = min(len(scores), len(windows))
    scores, windows = scores[:n], sorted(windows[:n], key=lambda w: w if w != OFF else 0.5)  # windows in order
    times = 0.016 * np.arange(n)
    one, block = RunningMaxDetector(phi, "m", SHA), RunningMaxDetector(phi, "m", SHA)
    a = [r for k in range(n) for r in one.update(k, times[k], scores[k], None if windows[k] == OFF else windows[k])]
    b = []
    for lo in range(0, n, 7):  # blocks of 7 frames, cutting across windows
        b += block.update_block(lo, times[lo:lo + 7], np.array(scores[lo:lo + 7]), np.array(windows[lo:lo + 7]))
    assert a == b
    assert one.close() == block.close()


def test_same_scores_without_window_give_fewer_events():
    scores = [5.0, 9.0, 8.0, 7.0, 6.0, 5.0, 7.0, 10.0, 1.0, 8.0]
    _, events, _ = run(scores, 5.0, window_s=None, hop_s=0.5, t0=0.0)
    assert [(e.frame, e.window) for e in events] == [(0, 0), (1, 0), (7, 0)]


def test_window_index_follows_stream_time_and_skipped_windows():
    det = RunningMaxDetector(0.0, "id_00", SHA)
    assert det.update(0, 0.2, 3.0, 0)[0].window == 0
    assert det.update(1, 0.9, 2.0, 0) == []  # below the window's max
    verdict, e = det.update(2, 3.5, 1.0, 3)  # windows 1 and 2 had no frames
    assert verdict.window == 0 and verdict.max_score == 3.0
    assert e.window == 3 and e.running_max is None


def test_event_dict_fields():
    det = RunningMaxDetector(2.5, "id_03", SHA)
    det.update(0, 1.0, 1.0, 0)
    _, alarm, e = det.update(1, 5.123456, 3.0, 1)  # the verdict of window 0, the alarm going on, the event
    assert isinstance(e, Event) and isinstance(alarm, AlarmLine)
    d = e.to_dict()
    assert set(d) == {"schema", "event", "time_s", "frame", "score", "running_max", "phi", "machine_id",
                      "model_sha256", "window"}
    assert d["schema"] == EVENT_SCHEMA == 3
    assert d["event"] == "anomaly"
    assert d["time_s"] == pytest.approx(5.1235)
    assert d["frame"] == 1 and d["score"] == 3.0 and d["phi"] == 2.5
    assert d["running_max"] is None  # first frame of window 1
    assert d["machine_id"] == "id_03" and d["model_sha256"] == SHA and d["window"] == 1
    assert json.loads(json.dumps(d)) == d  # one JSON line as edge-monitor prints it


def test_bad_arguments():
    with pytest.raises(ValueError):
        RunningMaxDetector(math.nan, "id_00", SHA)
    with pytest.raises(ValueError):
        RunningMaxDetector(math.inf, "id_00", SHA)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(min_value=0.0, max_value=1.5), finite), min_size=0, max_size=60),
    phi=finite,
    window_s=st.one_of(st.none(), st.floats(min_value=0.05, max_value=5.0)),
    small_ints=st.booleans(),
)
def test_matches_brute_force(steps, phi, window_s, small_ints):
    times, scores, t = [], [], 0.0
    for dt, s in steps:
        t += dt
        times.append(t)
        scores.append(float(round(s) % 7) if small_ints else s)  # small ints: many ties with phi and the max
    if small_ints:
        phi = float(round(phi) % 7)
    det = RunningMaxDetector(phi, "id_00", SHA)
    got = []
    for i, (ti, s) in enumerate(zip(times, scores)):
        for e in det.update(i, ti, s, window_of(ti, window_s)):
            if isinstance(e, Event):
                got.append((e.frame, e.score, e.running_max, e.window))
    assert got == reference(times, scores, phi, window_s)
    assert det.n_events == len(got) and det.n_frames == len(scores)


def test_frames_not_scored_never_raise_an_event_or_the_running_max():
    """Frames that failed an input-health check (``scored`` False) stay in their window, out of its max."""
    scores = np.array([1.0, 50.0, 60.0, 2.0, 3.0, 9.0])
    times = 0.352 + 0.016 * np.arange(6)
    scored = np.array([True, False, False, True, True, True])
    det = RunningMaxDetector(5.0, "id_00", SHA)
    out = det.update_block(0, times, scores, np.zeros(6, dtype=np.int64), scored)
    assert [(e.frame, e.score, e.running_max) for e in out if isinstance(e, Event)] == [(5, 9.0, 3.0)]
    assert [(a.frame, a.state) for a in out if isinstance(a, AlarmLine)] == [(5, "on")]  # unscored frames: no alarm
    verdict = det.close()
    assert verdict.frames == 6 and verdict.max_score == 9.0 and det.max_score == 9.0 and det.n_frames == 6
    det = RunningMaxDetector(5.0, "id_00", SHA)  # a window whose frames are all unscored has no max
    assert det.update_block(0, times, scores, np.zeros(6, dtype=np.int64), np.zeros(6, dtype=bool)) == []
    verdict = det.close()
    assert verdict.max_score is None and not verdict.anomalous and verdict.frames == 6
