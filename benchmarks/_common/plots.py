"""Figures shared by the benchmarks: fronts with confidence intervals."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._common import stats  # noqa: E402

STYLES = {
  "full": ("tab:blue", "o-"),
  "full-adamw": ("tab:blue", "o-"),
  "wise-ft": ("tab:cyan", "s--"),
  "profit-ratio": ("tab:red", "D-"),
  "profit-nref": ("tab:orange", "^-"),
  "profit-trust": ("tab:purple", "s-"),
  "profit-precond": ("tab:brown", "p-"),
  "profit-leaf": ("tab:pink", "h-"),
  "profit-warmup": ("k", "x-"),
  "l2sp": ("tab:green", "v-"),
  "ftp": ("tab:olive", "P-"),
  "spd": ("tab:gray", "<-"),
}


def front_points(records_by_knob, stat=np.mean):
  """``[(knob, old, (lo, hi), new, (lo, hi))]`` from ``{knob: (olds, news)}``."""
  ci = lambda xs: stats.bootstrap(xs, stat)
  out = []
  for knob, (olds, news) in sorted(records_by_knob.items()):
    with np.errstate(all="ignore"):
      out.append(
        (knob, float(stat(olds)), ci(olds), float(stat(news)), ci(news))
      )
  return out


def draw_fronts(
  ax, fronts: dict, points: dict, labels: dict, knob_fmt=None, log=False
):
  """Each front as a line with CI bars, each single method as a marker.

  ``fronts``: ``{family: front_points(...)}``; ``points``: ``{method:
  (old, old_ci, new, new_ci)}``. The x axis is the old task, y the new.
  The frame spans the point estimates: a bar that reaches past it (a
  seed that blew up) is cut at the frame rather than squashing the rest.
  """
  centers = [(p[1], p[3]) for pts in fronts.values() for p in pts]
  centers += [(x, y) for x, _, y, _ in points.values()]
  for fam, pts in fronts.items():
    color, style = STYLES.get(fam, ("tab:gray", "o-"))
    pts = [p for p in pts if np.isfinite([p[1], p[3]]).all()]
    if not pts:
      continue
    x = np.array([p[1] for p in pts])
    y = np.array([p[3] for p in pts])
    xerr = np.abs(np.array([p[2] for p in pts]).T - x)
    yerr = np.abs(np.array([p[4] for p in pts]).T - y)
    ax.errorbar(
      x,
      y,
      xerr=np.nan_to_num(xerr),
      yerr=np.nan_to_num(yerr),
      fmt=style,
      color=color,
      ms=4,
      lw=1,
      capsize=2,
      label=labels.get(fam, fam),
    )
    for p in pts:
      text = knob_fmt(fam, p[0]) if knob_fmt else f"{p[0]:g}"
      ax.annotate(
        text,
        (p[1], p[3]),
        fontsize=6,
        xytext=(3, 3),
        textcoords="offset points",
        color=color,
      )
  markers = iter("*PXvhp<>")
  for name, (x, xci, y, yci) in points.items():
    if not np.isfinite([x, y]).all():
      continue
    ax.errorbar(
      [x],
      [y],
      xerr=np.nan_to_num(np.abs(np.array([xci]).T - x)),
      yerr=np.nan_to_num(np.abs(np.array([yci]).T - y)),
      fmt=next(markers, "o"),
      ms=8,
      capsize=2,
      label=labels.get(name, name),
    )
  _frame(ax, np.array(centers, float).reshape(-1, 2), log)


def _frame(ax, centers, log):
  centers = centers[np.isfinite(centers).all(axis=1)]
  if log:
    centers = centers[(centers > 0).all(axis=1)]
  if not len(centers):
    return
  if log:
    ax.set_xscale("log")
    ax.set_yscale("log")
  for axis, set_lim in ((0, ax.set_xlim), (1, ax.set_ylim)):
    lo, hi = centers[:, axis].min(), centers[:, axis].max()
    if log:
      pad = (hi / lo) ** 0.15 if hi > lo else 2.0
      set_lim(lo / pad, hi * pad)
    else:
      pad = 0.15 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
      set_lim(lo - pad, hi + pad)


def save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# How each toolkit front's knob is written beside its points, shared by the
# toy and image reports.
TOOLKIT_KNOB_FMT = {
  "profit-trust": "r{:g}",
  "profit-precond": "/{:g}",
  "profit-leaf": "/{:g}",
  "profit-warmup": "/{:g}",
  "l2sp": "α{:g}",
  "ftp": "k{:g}",
  "spd": "λ{:g}",
}
