"""Alert policies: k-of-n votes over the frame anomaly scores, and an alarm with hysteresis.

The decision of Koizumi et al. 2019 (eq. 11) alarms on one frame: a window is anomalous when
``max_t A(x_t) >= phi``. One loud frame of a normal recording then decides phi for every window. A vote
over a longer span asks for a sustained rise instead:

- the **policy score** of frame t is the k-th largest anomaly score among frames ``t-n+1 .. t`` of the
  stream, so "k of the last n frames reach phi" holds exactly when the policy score reaches phi;
  ``k = n`` asks for a minimum time of n hops above phi, ``k = 1`` for the max of the last n (which
  alarms as early as 1/1 and stays up n-1 hops longer); 1/1 is the paper's decision (the default: the
  policy score is the frame score itself, bit for bit);
- frames not scored (failed input health, ``scored`` False) and frames outside every operation window
  vote with -inf; a frame whose last n frames hold fewer than k scored ones has no policy score (it is
  not scored, like a health failure). A NaN or infinite frame score votes as -inf (NaN) or +inf and its
  own policy score stays that value, so the detector counts it as non-finite as before. The votes restart
  at the stream's start and after lost samples (a Gap: :meth:`VoteFilter.reset`).

The **alarm** (:class:`Alarm`) is on from the first frame whose policy score reaches phi until the policy
score falls below ``hysteresis * phi`` (1.0: below phi); frames without a policy score leave it as it is.
The detector (:mod:`~edge_asd.edge.runtime.decision`) writes its transitions as ``alarm`` lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edge_asd.core.errors import EdgeAsdError

MAX_VOTE_FRAMES = 37500
"""Longest vote, frames: 10 min of 16-ms hops (hop 256 at 16 kHz)."""
_CHUNK_VALUES = 1 << 22  # rows x n of one np.partition call, to bound memory on whole recordings


@dataclass(frozen=True)
class AlertPolicy:
    """k of the last n frames reach phi; the alarm ends below ``hysteresis * phi``.

    Args:
        k: votes needed, 1 <= k <= n. n: frames (hops) voting, 1 <= n <= :data:`MAX_VOTE_FRAMES`.
        hysteresis: the alarm's off level as a share of phi, 0 < hysteresis <= 1.
    Raises:
        EdgeAsdError: any of them out of range or not a number.
    """

    k: int = 1
    n: int = 1
    hysteresis: float = 1.0

    def __post_init__(self):
        for name in ("k", "n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise EdgeAsdError(f"votes: {name} = {value!r} is not a whole number")
        if not 1 <= self.k <= self.n <= MAX_VOTE_FRAMES:
            raise EdgeAsdError(f"votes {self.k}/{self.n}: need 1 <= K <= N <= {MAX_VOTE_FRAMES} (frames)")
        h = self.hysteresis
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not (math.isfinite(h) and 0 < h <= 1):
            raise EdgeAsdError(f"hysteresis {h!r}: must be a number in (0, 1] (the alarm's off level over phi)")

    @classmethod
    def parse(cls, votes: str, hysteresis: float = 1.0) -> AlertPolicy:
        """The policy of a ``--votes K/N`` value (``"1"`` is 1/1). Raises EdgeAsdError for another spelling."""
        text = str(votes).strip()
        k, slash, n = text.partition("/")
        try:
            k, n = int(k), int(n if slash else k)
        except ValueError:
            raise EdgeAsdError(f"--votes {votes!r}: use K/N, e.g. 16/31 (K of the last N frames reach phi)") from None
        return cls(k, n, float(hysteresis))

    @classmethod
    def from_dict(cls, data) -> AlertPolicy:
        """The policy of a phi record's ``alert`` (``{"k", "n", "hysteresis"}``; None: 1/1, off at phi).

        Raises:
            EdgeAsdError: a damaged ``alert`` (not an object, or values out of range).
        """
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise EdgeAsdError(f"alert {data!r} is not an object")
        return cls(data.get("k", 1), data.get("n", 1), data.get("hysteresis", 1.0))

    def to_dict(self) -> dict:
        return {"k": int(self.k), "n": int(self.n), "hysteresis": float(self.hysteresis)}

    def describe(self, hop_s: float | None = None) -> str:
        """``16/31`` and, given the hop in s, its span: ``16/31 (0.5 s)``; with hysteresis ``, off below 0.8 phi``."""
        text = f"{self.k}/{self.n}"
        if hop_s is not None and self.n > 1:
            text += f" ({self.n * hop_s:.2g} s)"
        return text + (f", off below {self.hysteresis:g} phi" if self.hysteresis < 1 else "")


class VoteFilter:
    """The policy score of a stream, block by block (same result for any block sizes as one call on the whole).

    ``push(scores, scored)`` takes a block's frame scores, shape (m,), and which were scored (bool, (m,);
    None: all) and returns (policy scores, float64 (m,); has a policy score, bool (m,)). It carries the
    last n-1 votes; :meth:`reset` forgets them (stream start, a Gap).
    """

    def __init__(self, policy: AlertPolicy):
        self.policy = policy
        self.reset()

    def reset(self) -> None:
        n = self.policy.n
        self._votes = np.full(n - 1, -np.inf)
        self._counted = np.zeros(n - 1, dtype=np.int64)  # 1 for a frame that votes (scored)

    def push(self, scores: np.ndarray, scored: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        scores = np.asarray(scores, dtype=np.float64)
        scored = np.ones(len(scores), dtype=bool) if scored is None else np.asarray(scored, dtype=bool)
        k, n = self.policy.k, self.policy.n
        if n == 1:
            return scores, scored
        votes = np.r_[self._votes, np.where(scored & ~np.isnan(scores), scores, -np.inf)]
        counted = np.r_[self._counted, scored.astype(np.int64)]
        self._votes, self._counted = votes[len(votes) - (n - 1):], counted[len(counted) - (n - 1):]
        if len(scores) == 0:
            return scores, scored
        count = np.convolve(counted, np.ones(n, dtype=np.int64), "valid")  # scored frames among each frame's last n
        views = sliding_window_view(votes, n)
        step = max(1, _CHUNK_VALUES // n)
        out = np.concatenate([np.partition(views[a:a + step], n - k, axis=1)[:, n - k]
                              for a in range(0, len(views), step)])
        own = ~np.isfinite(scores)
        out[own] = scores[own]  # a NaN or infinite frame keeps its score: the detector counts it
        return out, scored & (count >= k)


EQ11 = AlertPolicy()
"""1/1: one frame at or over phi alarms (Koizumi et al. 2019, eq. 11), the default everywhere."""


def policy_scores(scores: np.ndarray, policy: AlertPolicy, scored: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The policy scores of a whole recording streamed alone: :meth:`VoteFilter.push` of all its frames.

    Args:
        scores: frame anomaly scores, shape (n_frames,). scored: bool (n_frames,), None: all.
    Returns:
        (policy scores, float64 (n_frames,); has a policy score, bool (n_frames,)).
    """
    return VoteFilter(policy).push(scores, scored)


class Alarm:
    """The alarm state over a stream: on at a policy score >= phi, off below ``hysteresis * phi``.

    ``update(scores, valid)`` takes a block's policy scores (m,) and which have one (bool (m,)); it returns
    the transitions ``[(index in the block, True for on / False for off), ...]``. Vectorised: the state
    of each frame is the last "up" (>= phi) or "down" (< off level) mark so far.
    """

    def __init__(self, phi: float, hysteresis: float = 1.0):
        self.phi, self.off_level = phi, hysteresis * phi
        self.on = False
        self.n_on = 0  # alarm-on transitions so far

    def update(self, scores: np.ndarray, valid: np.ndarray | None = None) -> list[tuple[int, bool]]:
        s = np.asarray(scores, dtype=np.float64)
        if not self.on and not (s >= self.phi).any():  # the common case: off, and no score to turn it on
            return []
        ok = np.isfinite(s) if valid is None else np.asarray(valid, dtype=bool) & np.isfinite(s)
        up, down = ok & (s >= self.phi), ok & (s < self.off_level)
        marked = np.where(up | down, np.arange(len(s)), -1)
        last = np.maximum.accumulate(marked) if len(s) else marked
        state = np.where(last >= 0, up[np.maximum(last, 0)], self.on)
        change = np.flatnonzero(np.diff(np.r_[self.on, state].astype(np.int8)))
        if len(state):
            self.on = bool(state[-1])
        out = [(int(i), bool(state[i])) for i in change]
        self.n_on += sum(on for _, on in out)
        return out
