"""Statistics over seeds: bootstrap intervals, paired differences, fronts.

Every interval is a 95 % percentile bootstrap over seeds (10000 resamples,
a fixed generator, so a report is reproducible). Records of different
methods with the same seed share the pretrained model and the batch stream,
so comparisons resample seeds jointly (paired).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

N_BOOT = 10_000
LEVEL = 0.95


def _resamples(n: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, n, size=(N_BOOT, n))


def _interval(samples: np.ndarray) -> tuple[float, float]:
  tail = 100 * (1 - LEVEL) / 2
  lo, hi = np.nanpercentile(samples, [tail, 100 - tail])
  return float(lo), float(hi)


def bootstrap(
  xs: Sequence[float], stat: Callable = np.mean
) -> tuple[float, float]:
  """The 95 % bootstrap interval of ``stat(xs)``."""
  xs = np.asarray(xs, np.float64)
  if len(xs) < 2:
    return float("nan"), float("nan")
  with np.errstate(all="ignore"):
    samples = stat(xs[_resamples(len(xs))], axis=1)
  return _interval(samples)


def summary(xs: Sequence[float]) -> dict:
  """Mean and median with their bootstrap intervals."""
  xs = np.asarray(xs, np.float64)
  with np.errstate(all="ignore"):
    return {
      "n": int(len(xs)),
      "mean": float(np.mean(xs)),
      "mean_ci": bootstrap(xs, np.mean),
      "median": float(np.median(xs)),
      "median_ci": bootstrap(xs, np.median),
    }


def paired(
  xs: Sequence[float],
  ys: Sequence[float],
  higher_is_better: bool,
  stat: Callable = np.mean,
) -> dict:
  """``x`` against ``y`` seed by seed.

  Returns the statistic of the differences ``x - y`` with its bootstrap
  interval, how many seeds ``x`` is better on, and a verdict: ``"wins"`` or
  ``"loses"`` when the interval excludes 0, else ``"ties"``.
  """
  xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  if xs.shape != ys.shape:
    raise ValueError(
      f"paired needs one value per seed: {xs.shape} vs {ys.shape}"
    )
  with np.errstate(all="ignore"):
    d = xs - ys
    lo, hi = bootstrap(d, stat)
    better = d > 0 if higher_is_better else d < 0
    value = float(stat(d))
  if not np.isfinite([lo, hi]).all():
    verdict = "undetermined"
  elif higher_is_better:
    verdict = "wins" if lo > 0 else "loses" if hi < 0 else "ties"
  else:
    verdict = "wins" if hi < 0 else "loses" if lo > 0 else "ties"
  return {
    "diff": value,
    "ci": (lo, hi),
    "wins": int(np.sum(better)),
    "n": int(len(d)),
    "verdict": verdict,
  }


def pareto(points: np.ndarray) -> np.ndarray:
  """The non-dominated rows of ``points`` (both coordinates maximised),
  sorted by the first coordinate, without repeats."""
  points = points[np.all(np.isfinite(points), axis=1)].reshape(-1, 2)
  # By the first coordinate, then the second, both descending: a point is
  # dominated exactly when one before it reaches its second coordinate.
  s = points[np.lexsort((-points[:, 1], -points[:, 0]))]
  reach = np.maximum.accumulate(s[:, 1])
  keep = s[s[:, 1] > np.concatenate([[-np.inf], reach[:-1]])]
  return keep[::-1]


def gap_to_front(point: np.ndarray, front: np.ndarray) -> tuple[float, str]:
  """How far ``point`` = (old, new) lies beyond ``front`` (both maximised).

  The front is the piecewise-linear curve through its Pareto points. Inside
  the front's range of old-task values the gap is measured in the new-task
  metric at the point's old-task value: positive means beyond the front.
  Outside that range the gap is to the nearest end of the front in the
  new-task metric, and ``where`` says so (``"more retentive"``: the point
  keeps more of the old task than every rival point; ``"less retentive"``).
  """
  p = pareto(front)
  if len(p) == 0 or not np.all(np.isfinite(point)):
    return float("nan"), "undefined"
  old, new = point
  if old < p[0, 0]:
    return float(new - p[0, 1]), "less retentive"
  if old > p[-1, 0]:
    return float(new - p[-1, 1]), "more retentive"
  return float(new - np.interp(old, p[:, 0], p[:, 1])), "inside"


def front_verdict(
  point: tuple[np.ndarray, np.ndarray],
  rivals: Sequence[tuple[np.ndarray, np.ndarray]],
  higher_is_better: bool,
  stat: Callable = np.mean,
) -> dict:
  """Whether a method's point lies beyond its rivals' fronts, with a CI.

  ``point`` and each entry of ``rivals`` are ``(old, new)`` arrays of one
  value per seed, aligned by seed. Seeds are resampled jointly; each
  resample recomputes every point (``stat`` over seeds), the rivals' Pareto
  front and the gap of :func:`gap_to_front`. Verdict: ``"beyond"`` when the
  interval of the gap is above 0, ``"behind"`` when below, else ``"on"``.
  """
  sign = 1.0 if higher_is_better else -1.0
  old, new = (sign * np.asarray(x, np.float64) for x in point)
  rv = [
    (sign * np.asarray(o, np.float64), sign * np.asarray(n, np.float64))
    for o, n in rivals
  ]

  def points(idx):
    # ``stat`` over seeds of every resample in ``idx`` (one per row) at once.
    with np.errstate(all="ignore"):
      p = np.stack([stat(old[idx], axis=-1), stat(new[idx], axis=-1)], -1)
      f = np.stack(
        [
          np.stack([stat(o[idx], axis=-1), stat(n[idx], axis=-1)], -1)
          for o, n in rv
        ],
        -2,
      )
    return p, f

  value, where = gap_to_front(*points(np.arange(len(old))))
  ps, fs = points(_resamples(len(old))[:2000])
  samples = np.array([gap_to_front(p, f)[0] for p, f in zip(ps, fs)])
  lo, hi = _interval(samples) if len(old) > 1 else (float("nan"),) * 2
  if not np.isfinite([lo, hi]).all():
    verdict = "undetermined"
  else:
    verdict = "beyond" if lo > 0 else "behind" if hi < 0 else "on"
  # The gap is in the new-task metric, positive = better (for an error
  # metric: how much lower the error is than the front's).
  return {
    "gap": value,
    "ci": (lo, hi),
    "where": where,
    "verdict": verdict,
  }
