"""Alert policies (edge/runtime/alert.py): the k-th largest score of the last n frames, streamed or whole, the
alarm with hysteresis, and both in the monitoring loop on real fan id_00 audio."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.alert import MAX_VOTE_FRAMES, Alarm, AlertPolicy, VoteFilter, policy_scores
from edge_asd.edge.runtime.decision import RunningMaxDetector
from edge_asd.edge.runtime.stream_loop import Monitor
from edge_asd.edge.runtime.windows import FixedWindows
from edge_asd.firmware_io.blocks import Gap

RATE = 16000


def brute(scores, scored, k, n):
    """The definition, frame by frame: k-th largest of the last n (unscored: -inf), None under k scored."""
    out = []
    for t in range(len(scores)):
        span = range(max(0, t - n + 1), t + 1)
        votes = sorted((scores[j] if scored[j] else -np.inf for j in span), reverse=True)
        out.append(votes[k - 1] if scored[t] and sum(scored[j] for j in span) >= k else None)
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(0, 11), st.lists(st.floats(-5, 5), min_size=0, max_size=60),
       st.integers(0, 2**32 - 1))
def test_policy_score_is_the_kth_largest_of_the_last_n_in_any_blocks(n, dk, values, seed):
    k = 1 + dk % n
    rng = np.random.default_rng(seed)
    scores = np.array(values, dtype=np.float64)
    scored = rng.random(len(scores)) > 0.2
    whole, ok = policy_scores(scores, AlertPolicy(k, n), scored)
    assert [None if not o else v for v, o in zip(whole, ok)] == brute(scores, scored, k, n)
    f, parts = VoteFilter(AlertPolicy(k, n)), []
    cuts = np.sort(rng.integers(0, len(scores) + 1, size=4))
    for a, b in zip([0, *cuts], [*cuts, len(scores)]):
        parts.append(f.push(scores[a:b], scored[a:b]))
    assert np.array_equal(np.concatenate([p[0] for p in parts]), whole)  # blocks: the same bits
    assert np.array_equal(np.concatenate([p[1] for p in parts]), ok)


def test_one_of_one_passes_the_scores_through():
    scores = np.array([3.0, np.nan, -1.0, np.inf], dtype=np.float32)
    scored = np.array([True, True, False, True])
    out, ok = policy_scores(scores, AlertPolicy(), scored)
    assert np.array_equal(out, scores.astype(np.float64), equal_nan=True) and np.array_equal(ok, scored)


def test_a_nonfinite_frame_keeps_its_score_and_votes_low():
    out, ok = policy_scores(np.array([5.0, np.nan, 5.0, 5.0]), AlertPolicy(2, 2))
    assert ok.tolist() == [False, True, True, True]  # the first frame has only one vote
    assert np.isnan(out[1]) and out[2] == -np.inf and out[3] == 5.0  # NaN votes as -inf


@pytest.mark.parametrize("k, n, h, words", [
    (0, 3, 1.0, "1 <= K <= N"), (4, 3, 1.0, "1 <= K <= N"), (1, MAX_VOTE_FRAMES + 1, 1.0, "1 <= K <= N"),
    (1, 1, 0.0, "hysteresis"), (1, 1, 1.5, "hysteresis"), (1, 1, float("nan"), "hysteresis"),
    (1.5, 2, 1.0, "whole number"),
])
def test_bad_policies_are_refused(k, n, h, words):
    with pytest.raises(EdgeAsdError, match=words):
        AlertPolicy(k, n, h)


def test_votes_strings():
    assert AlertPolicy.parse("16/31", 0.8) == AlertPolicy(16, 31, 0.8)
    assert AlertPolicy.parse(" 3 ") == AlertPolicy(3, 3)
    for bad in ("a/b", "3/", "", "1/2/3"):
        with pytest.raises(EdgeAsdError, match="--votes"):
            AlertPolicy.parse(bad)
    assert AlertPolicy.from_dict(None) == AlertPolicy() and AlertPolicy.from_dict(AlertPolicy(2, 5, 0.5).to_dict()) == \
        AlertPolicy(2, 5, 0.5)


def test_alarm_goes_off_below_the_hysteresis_level_only():
    alarm = Alarm(phi=10.0, hysteresis=0.5)
    s = np.array([1, 12, 7, 6, 4, 9, 11, 11, 2.0])
    assert alarm.update(s) == [(1, True), (4, False), (6, True), (8, False)]
    assert alarm.n_on == 2 and not alarm.on
    plain = Alarm(phi=10.0)  # hysteresis 1: off at the first score below phi
    assert plain.update(s) == [(1, True), (2, False), (6, True), (8, False)]


def test_alarm_in_blocks_equals_alarm_whole_and_skips_frames_without_a_score():
    rng = np.random.default_rng(1)
    s = rng.normal(10, 3, 300)
    valid = rng.random(300) > 0.3
    whole = Alarm(10.0, 0.8).update(s, valid)
    alarm, got = Alarm(10.0, 0.8), []
    for a in range(0, 300, 7):
        got += [(a + i, on) for i, on in alarm.update(s[a:a + 7], valid[a:a + 7])]
    assert got == whole and len(whole) > 4
    assert all(valid[i] for i, _ in whole)  # a frame without a policy score never switches it


# in the monitoring loop, on real audio -------------------------------------------------------------------

def run(source, scorer, phi, policy, **kw):
    records = []
    mon = Monitor(source, scorer, RunningMaxDetector(phi, "id_00", scorer.sha256, policy), records.append, "t", **kw)
    return records, mon.run()


def of(records, kind):
    return [r for r in records if r["event"] == kind]


def test_monitor_decides_on_the_policy_score_and_writes_alarm_lines(scorer, anomaly):
    """16/31 on a real anomalous clip: anomaly events and the verdict follow the policy scores of the whole clip,
    alarm lines alternate on/off at the frames where they cross phi and 0.9 phi, the summary counts the ons."""
    policy = AlertPolicy(16, 31, 0.9)
    votes, ok = policy_scores(scorer.score_audio(anomaly), policy)
    phi = float(np.median(votes[ok]))
    records, summary = run((anomaly[i:i + 4096] for i in range(0, len(anomaly), 4096)), scorer, phi, policy)
    assert of(records, "start")[0]["alert"] == {"k": 16, "n": 31, "hysteresis": 0.9}
    np.testing.assert_allclose(of(records, "verdict")[0]["max_score"], votes[ok].max(), rtol=1e-5)
    events = of(records, "anomaly")
    assert events and all(e["frame"] >= 15 for e in events)  # the first 15 frames have fewer than 16 votes
    np.testing.assert_allclose([e["score"] for e in events], votes[[e["frame"] for e in events]], rtol=1e-5)
    alarms = of(records, "alarm")
    assert [a["state"] for a in alarms] == ["on", "off"] * (len(alarms) // 2) + ["on"] * (len(alarms) % 2)
    for a in alarms:
        before = votes[a["frame"] - 1]
        if a["state"] == "on":
            assert a["score"] >= phi and (a["frame"] == 15 or before < phi)
        else:
            assert a["score"] < 0.9 * phi == pytest.approx(a["off_level"])
    assert summary.alarms == len(of(records, "alarm")) - len([a for a in alarms if a["state"] == "off"]) >= 1
    assert of(records, "summary")[0]["alarms"] == summary.alarms


def test_one_of_one_in_the_monitor_gives_todays_lines(scorer, anomaly):
    """The default policy: events, verdict and summary are those of the running max of the frame scores."""
    scores = scorer.score_audio(anomaly)
    phi = float(np.quantile(scores, 0.9))
    records, summary = run(iter([anomaly]), scorer, phi, AlertPolicy())
    events = of(records, "anomaly")
    running = np.maximum.accumulate(scores)
    expected = [i for i in range(len(scores)) if scores[i] >= phi and (i == 0 or scores[i] > running[i - 1])]
    assert [e["frame"] for e in events] == expected
    assert summary.max_score == pytest.approx(float(scores.max()), rel=1e-6)
    ons = [a["frame"] for a in of(records, "alarm") if a["state"] == "on"]
    assert ons == [i for i in range(len(scores)) if scores[i] >= phi and (i == 0 or scores[i - 1] < phi)]


def test_a_gap_restarts_the_votes(scorer, anomaly):
    """8/8 with a window per frame and phi below everything: every frame with a policy score raises an event;
    after the Gap the first 7 frames have none (the votes restarted), as at the stream's start."""
    cut, lost = 3 * RATE, RATE // 2
    every_frame = FixedWindows(0.001, RATE)
    records, summary = run(iter([anomaly[:cut], Gap(lost), anomaly[cut + lost:]]), scorer, -1e9, AlertPolicy(8, 8),
                           windows=every_frame)
    before, after = len(scorer.score_audio(anomaly[:cut])), len(scorer.score_audio(anomaly[cut + lost:]))
    assert [e["frame"] for e in of(records, "anomaly")] == [*range(7, before), *range(before + 7, before + after)]
    assert [a["frame"] for a in of(records, "alarm")] == [7]  # on once, never off: frames without a score keep it
    assert summary.frames == before + after and summary.nonfinite == 0
