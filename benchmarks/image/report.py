"""Reports of the image benchmark: tables and figures computed from records.

Every number and verdict is computed from the records, so a re-rendered
report (``--from-json``) says what the data say.
"""

from __future__ import annotations

import math
import re

import numpy as np

from benchmarks._common import plots, stats
from benchmarks._common import report as rep
from benchmarks.image import run

TARGETS = {"cnn": 0.990, "vit": 0.975}  # pretraining test accuracy aimed at
LABELS = {
  "full-sgd": "full, SGD (momentum 0.9)",
  "full-adamw": "full, AdamW",
  "full-lookahead": "full, Lookahead(Adam)",
  "full-adan": "full, Adan",
  "head-adamw": "head only, AdamW",
  "profit": "PROFIT (AdamW)",
  "profit-warmup": "PROFIT (warmup)",
  "wise-ft": "WiSE-FT (AdamW)",
  "profit-ratio": "PROFIT by lr_main/lr_ref",
  "profit-nref": "PROFIT by n_ref",
}
# The paper's Table 2 (CIFAR10 -> CIFAR100 accuracy, %), for scale.
PAPER_TABLE2 = {
  "ResNet-18": {
    "SGD": (24.49, 74.59),
    "Adam": (34.64, 73.11),
    "Lookahead": (26.10, 73.82),
    "Adan": (35.17, 72.70),
    "PROFIT": (35.26, 74.70),
  },
}


def _pct(x: float) -> str:
  return "n/a" if not math.isfinite(x) else f"{100 * x:.2f}"


def _ci(xs) -> str:
  s = stats.summary(xs)
  lo, hi = s["mean_ci"]
  return f"{_pct(s['mean'])} [{_pct(lo)}, {_pct(hi)}]"


def _settings(records):
  return sorted(
    {
      (r["arch"], r["shift"])
      for r in records
      if "shift" in r and r["method"] != "pretrained"
    }
  )


def chosen_runs(records, arch, shift) -> dict[str, dict]:
  """``{method: {lr, ratio, n_ref}}`` of the chosen values."""
  out = {}
  for r in rep.select(
    records,
    arch=arch,
    shift=shift,
    stage="chosen",
    seed=run.TUNE_SEED,
    metric="acc_new",
  ):
    out[r["method"]] = {"lr": r["lr"], "ratio": r["ratio"], "n_ref": r["n_ref"]}
  return out


# A plateau: the chosen rate's new-task validation accuracy gains less than
# this from the horizon to twice the horizon (0.5 points; a 5000-image
# validation split's standard error is 0.2 points at 98 % accuracy and 0.4
# at 90 %).
PLATEAU_GAIN = 0.005


def score_of(meta) -> str:
  """The run's validation score (``run.SCORES``): from its configuration;
  runs from before the choice of score existed used ``"mean"``."""
  m = re.search(r"score='(\w+)'", meta.get("config", ""))
  return m.group(1) if m else "mean"


# What every fine-tuning report's numbers are (its opening paragraph).
def _accuracies(score) -> tuple[str, ...]:
  what = {
    "new": "new-task validation accuracy",
    "mean": "mean of old and new validation accuracy",
  }[score]
  return (
    "Accuracies in %. `old`: MNIST test accuracy through the old head (the",
    "fine-tuned model itself for `rotated`); `new`: the new task's test",
    "accuracy. Every hyperparameter was chosen on validation splits held out",
    f"of the training sets (score: {what}),",
    "on seed 0; the test sets are only reported. Intervals: 95% bootstrap",
    "over seeds.",
  )


def _cell(knob, old, new, score) -> str:
  """``knob: old val / new val``, and the score where it is not new."""
  cell = f"{knob:g}: {_pct(old)} / {_pct(new)}"
  return cell + (
    f" ({_pct(run.SCORES[score]({'acc_old_val': old, 'acc_new_val': new}))})"
    if score != "new"
    else ""
  )


def main_report(records, meta, out, name) -> str:
  score = score_of(meta)
  lines = [
    "# Image classification (Sec. 4.2 protocol): tuned rivals, seeds and fronts",
    "",
    *rep.header(meta),
    *_accuracies(score),
    "",
  ]
  lines += _pretraining(records, out, name)
  lines += _horizon(records, out, name, score)
  for arch, shift in _settings(records):
    lines += _setting(records, arch, shift, score)
  _fronts_figure(records, out / f"{name}_fronts.png")
  lines += [f"![fronts]({name}_fronts.png)", ""]
  return "\n".join(lines)


def _pretraining(records, out, name, diff_column=False) -> list[str]:
  import matplotlib.pyplot as plt

  extra = " max abs diff to the cached weights |" if diff_column else ""
  lines = [
    "## Pretraining on MNIST",
    "",
    "| arch | test accuracy | aimed at | reached | val accuracy at the last two curve points |"
    + extra,
    "| --- | ---: | ---: | --- | --- |" + (" ---: |" if diff_column else ""),
  ]
  fig, ax = plt.subplots(figsize=(6, 3.8))
  for arch in sorted(
    {r["arch"] for r in rep.select(records, method="pretrained")}
  ):
    at = {"arch": arch, "method": "pretrained"}
    (acc,) = [
      r["value"]
      for r in rep.select(records, **at, metric="acc_old")
      if "shift" not in r
    ]
    curve = sorted(
      (r["step"], r["value"])
      for r in rep.select(records, **at, metric="pretrain_acc_val")
    )
    tail = (
      ", ".join(f"{_pct(v)} (step {s})" for s, v in curve[-2:])
      or "weights from the cache: curve in `image_pretraining.md`"
    )
    row = (
      f"| {arch} | {_pct(acc)} | {_pct(TARGETS[arch])} |"
      f" {'yes' if acc >= TARGETS[arch] else 'no'} | {tail} |"
    )
    if diff_column:
      diff = [
        r["value"]
        for r in rep.select(records, **at, metric="max_abs_diff_cached")
      ]
      row += f" {diff[0]:.3g} |" if diff else " n/a |"
    lines.append(row)
    if curve:
      ax.plot(*zip(*curve), "o-", ms=3, label=arch)
  if not ax.lines:  # weights from the cache, which keeps no curve
    plt.close(fig)
    return lines + [
      "",
      "The pretraining curves are in `image_pretraining.md`"
      " (`python -m benchmarks.image --pretraining`).",
      "",
    ]
  ax.set_xlabel("pretraining step")
  ax.set_ylabel("MNIST validation accuracy")
  ax.legend()
  plots.save(fig, out / f"{name}_pretrain.png")
  return lines + ["", f"![pretraining curves]({name}_pretrain.png)", ""]


def pretraining_report(records, meta, out, name) -> str:
  """Pretraining redone from scratch: the curves, and whether the weights
  are the cached ones the fine-tuning runs started from."""
  lines = [
    "# Image benchmark: pretraining on MNIST, redone from scratch",
    "",
    *rep.header(meta),
    "AdamW with cosine decay, random translations of up to 2 pixels;",
    "validation: images held out of MNIST's training set. The fine-tuning",
    "runs load the pretrained weights from the cache; the last column is",
    "the largest absolute difference between the weights recomputed here",
    "and the cached ones (0: the runs started from these very weights).",
    "",
  ]
  return "\n".join(lines + _pretraining(records, out, name, diff_column=True))


def _horizon(records, out, name, score) -> list[str]:
  import matplotlib.pyplot as plt

  settings = _settings(records)
  best_cols = score != "new"  # the chosen rate is the best new-task rate
  lines = [
    "## The fine-tuning horizon",
    "",
    "Full AdamW's validation accuracy on seed 0 over twice the horizon",
    "(every grid rate). Gain: new-task validation accuracy at 2x the",
    "horizon minus at the horizon, at the rate AdamW's tuning chose"
    + (
      " (the\nmean of old and new accuracy) and at the grid's rate with the"
      " best\nnew-task validation accuracy at the horizon."
      if best_cols
      else "."
    ),
    f"Plateau: a gain under {100 * PLATEAU_GAIN:g} points at the chosen rate.",
    "",
    "| setting | horizon (steps) | chosen rate | new val at horizon/2 | at horizon | at 2x | gain horizon -> 2x | plateau |"
    + (
      " best new-task rate | its new val at horizon | its gain -> 2x |"
      if best_cols
      else ""
    ),
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    + (" ---: | ---: | ---: |" if best_cols else ""),
  ]
  fig, axes = plt.subplots(
    1,
    max(1, len(settings)),
    figsize=(4 * max(1, len(settings)), 3.5),
    squeeze=False,
  )
  for ax, (arch, shift) in zip(axes[0], settings):
    lr_star = chosen_runs(records, arch, shift).get("full-adamw", {}).get("lr")
    horizon = max(
      (
        r["calls"]
        for r in rep.select(
          records, arch=arch, shift=shift, method="full-adamw", stage="chosen"
        )
      ),
      default=None,
    )
    curves = {}
    rates = {
      r["lr"]
      for r in rep.select(
        records, arch=arch, shift=shift, metric="curve_acc_new_val"
      )
    }
    for lr in sorted(rates):
      curve = sorted(
        (r["step"], r["value"])
        for r in rep.select(
          records, arch=arch, shift=shift, lr=lr, metric="curve_acc_new_val"
        )
      )
      if not curve:
        continue
      curves[lr] = dict(curve)
      ax.plot(
        *zip(*curve), "-", lw=2 if lr == lr_star else 1, label=f"lr {lr:g}"
      )
    at = curves.get(lr_star, {})
    h2, h, hh = (
      (at.get(k) for k in (horizon // 2, horizon, 2 * horizon))
      if horizon
      else (None, None, None)
    )
    full = {
      lr: (c[horizon], c[2 * horizon])
      for lr, c in curves.items()
      if horizon and horizon in c and 2 * horizon in c
    }
    if horizon and None not in (h2, h, hh) and full:
      best = max(full, key=lambda lr: full[lr][0])
      bh, bhh = full[best]
      row = (
        f"| {arch} {shift} | {horizon} | {lr_star:g} | {_pct(h2)} |"
        f" {_pct(h)} | {_pct(hh)} | {100 * (hh - h):+.2f} |"
        f" {'yes' if hh - h < PLATEAU_GAIN else 'no'} |"
      )
      if best_cols:
        row += f" {best:g} | {_pct(bh)} | {100 * (bhh - bh):+.2f} |"
      lines.append(row)
    if horizon:
      ax.axvline(horizon, color="k", lw=0.8, ls=":")
    ax.set_title(f"{arch}, {shift}", fontsize=9)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("new-task validation accuracy")
    ax.legend(fontsize=7)
  plots.save(fig, out / f"{name}_curves.png")
  return lines + ["", f"![AdamW validation curves]({name}_curves.png)", ""]


def _setting(records, arch, shift, score) -> list[str]:
  at = {"arch": arch, "shift": shift}
  chosen = chosen_runs(records, arch, shift)
  lines = [
    f"## {arch}, {shift}",
    "",
    "### Validation-based choice (seed 0)",
    "",
    "| method | rate: old val / new val"
    + (" (score)" if score != "new" else "")
    + " ... | chosen |",
    "| --- | --- | --- |",
  ]
  methods = [
    m
    for m in run.METHODS
    if rep.select(records, **at, method=m, stage="chosen")
  ]
  for method in methods:
    cells = []
    tuned = sorted(
      rep.select(
        records, **at, method=method, stage="tune", metric="acc_new_val"
      ),
      key=lambda r: r["lr"],
    )
    for r in tuned:
      (old,) = [
        x["value"]
        for x in rep.select(
          records,
          **at,
          method=method,
          stage="tune",
          lr=r["lr"],
          metric="acc_old_val",
        )
      ]
      cells.append(_cell(r["lr"], old, r["value"], score))
    c = chosen.get(method, {})
    grid = [r["lr"] for r in tuned]  # the grid this run tuned over
    edge = bool(grid) and c.get("lr") in (min(grid), max(grid))
    lines.append(
      f"| {LABELS[method]} | {'; '.join(cells)} | {c.get('lr', float('nan')):g}"
      f"{' (grid edge)' if edge else ''} |"
    )
  cells = []
  for r in sorted(
    rep.select(records, **at, stage="tune-ratio", metric="acc_new_val"),
    key=lambda r: r["ratio"],
  ):
    (old,) = [
      x["value"]
      for x in rep.select(
        records,
        **at,
        stage="tune-ratio",
        ratio=r["ratio"],
        metric="acc_old_val",
      )
    ]
    cells.append(_cell(r["ratio"], old, r["value"], score))
  lines.append(
    f"| PROFIT's lr_main/lr_ref at its rate | {'; '.join(cells)} |"
    f" {chosen.get('profit', {}).get('ratio', float('nan')):g} |"
  )
  seeds = sorted({r["seed"] for r in rep.select(records, **at, stage="chosen")})
  lines += _test_header(
    seeds,
    "Paired against full AdamW (PROFIT's main optimizer) seed by seed:",
    "difference of the means [95% CI], seeds better, verdict.",
  )
  pre = {
    r["seed"]: r["value"]
    for r in rep.select(
      records, arch=arch, method="pretrained", metric="acc_old"
    )
    if "shift" not in r
  }
  if shift == "rotated":
    pn = rep.select(records, **at, method="pretrained", metric="acc_new")
    lines.append(
      f"| pretrained | {_pct(next(iter(pre.values())))} | {_pct(pn[0]['value'])} | | |"
    )
  else:
    lines.append(f"| pretrained | {_pct(next(iter(pre.values())))} | — | | |")
  lines += _vs_adamw(
    records,
    at,
    [(LABELS[m], {"method": m, "stage": "chosen"}) for m in methods],
  )
  lines += [
    "",
    "### Fronts: is PROFIT beyond its rivals?",
    "",
    "Rivals: full AdamW traced by its rate, and WiSE-FT between the",
    "pretrained and the chosen AdamW weights. Points are means over seeds;",
    "the gap is PROFIT's new-task accuracy minus the rivals'",
    "piecewise-linear front at PROFIT's old-task accuracy (points, positive:",
    "beyond); 95% CI by resampling seeds jointly.",
    "",
    "| PROFIT point | seeds | old | new | gap [CI] | where | verdict |",
    "| --- | ---: | ---: | ---: | ---: | --- | --- |",
  ]
  lines += _front_rows(
    records,
    at,
    ("profit-ratio", "profit-nref"),
    lambda fam, knob_name, knob: f"{knob_name} {knob:g}",
  )
  lines.append("")
  return lines


_BASE = {"method": "full-adamw", "stage": "chosen"}


def _test_header(seeds, *note) -> list[str]:
  """The heading, ``note`` and table head of a test-accuracy section."""
  return [
    "",
    f"### Test accuracy at the chosen values ({len(seeds)} seeds)",
    "",
    *note,
    "",
    "| method | old, mean [CI] | new, mean [CI] | old vs AdamW | new vs AdamW |",
    "| --- | ---: | ---: | --- | --- |",
  ]


def _vs_adamw(records, at, rows) -> list[str]:
  """One table row per ``(label, where)``: the test accuracies of the runs
  selected by ``where`` (one per seed) with their CIs, and each paired
  against full AdamW at its chosen rate: difference of the means [95% CI],
  seeds better, verdict."""
  base = {
    m: rep.by_seed(records, **at, **_BASE, metric=m)
    for m in ("acc_old", "acc_new")
  }
  lines = []
  for label, where in rows:
    vals = {
      m: rep.by_seed(records, **at, **where, metric=m)
      for m in ("acc_old", "acc_new")
    }
    cols = []
    for m in ("acc_old", "acc_new"):
      if where == _BASE:
        cols.append("—")
        continue
      p = stats.paired(
        list(vals[m].values()), [base[m][s] for s in vals[m]], True
      )
      cols.append(
        f"{100 * p['diff']:+.2f} [{100 * p['ci'][0]:+.2f}, {100 * p['ci'][1]:+.2f}],"
        f" {p['wins']}/{p['n']}, {p['verdict']}"
      )
    lines.append(
      f"| {label} | {_ci(list(vals['acc_old'].values()))} |"
      f" {_ci(list(vals['acc_new'].values()))} | {cols[0]} | {cols[1]} |"
    )
  return lines


def _front_rows(records, at, fams, label) -> list[str]:
  """One table row per point of the fronts ``fams``: where it lies against
  the rivals' front (full AdamW by its rate, and WiSE-FT), with its CI.
  ``label(front, knob_name, knob)`` names the point."""
  lines = []
  for fam in fams:
    for knob in sorted(
      {r["knob"] for r in rep.select(records, **at, front=fam)}
    ):
      rs = rep.select(records, **at, front=fam, knob=knob)
      o = rep.by_seed(records, **at, front=fam, knob=knob, metric="acc_old")
      n = rep.by_seed(records, **at, front=fam, knob=knob, metric="acc_new")
      rivals = _rivals(records, at, list(o))
      v = stats.front_verdict(
        (np.array(list(o.values())), np.array(list(n.values()))), rivals, True
      )
      lines.append(
        f"| {label(fam, rs[0]['knob_name'], knob)} | {len(o)} | {_pct(np.mean(list(o.values())))} |"
        f" {_pct(np.mean(list(n.values())))} | {100 * v['gap']:+.2f}"
        f" [{100 * v['ci'][0]:+.2f}, {100 * v['ci'][1]:+.2f}] | {v['where']} | {v['verdict']} |"
      )
  return lines


def _rivals(records, at, seeds):
  out = []
  for fam in ("full-adamw", "wise-ft"):
    for knob in sorted(
      {r["knob"] for r in rep.select(records, **at, front=fam)}
    ):
      o = rep.by_seed(records, **at, front=fam, knob=knob, metric="acc_old")
      n = rep.by_seed(records, **at, front=fam, knob=knob, metric="acc_new")
      if all(s in o for s in seeds):
        out.append(
          (np.array([o[s] for s in seeds]), np.array([n[s] for s in seeds]))
        )
  return out


FRONTS = ("full-adamw", "wise-ft", "profit-ratio", "profit-nref")
SINGLE = (
  "full-sgd",
  "full-lookahead",
  "full-adan",
  "head-adamw",
  "profit-warmup",
)
KNOB_FMT = {
  "full-adamw": "{:g}",
  "wise-ft": "α{:g}",
  "profit-ratio": "/{:g}",
  "profit-nref": "n{:g}",
  **plots.TOOLKIT_KNOB_FMT,
}


def _fronts_figure(records, path, groups=(("", FRONTS, SINGLE),), labels=None):
  """One panel per setting and group ``(title, fronts, single methods)``:
  the fronts as lines, the single methods (at their chosen values) as
  markers."""
  import matplotlib.pyplot as plt

  labels = LABELS if labels is None else labels
  panels = [(st, g) for st in _settings(records) for g in groups]
  cols = max(1, len(panels))
  fig, axes = plt.subplots(1, cols, figsize=(5 * cols, 4.3), squeeze=False)
  for ax, ((arch, shift), (title, group, single)) in zip(axes[0], panels):
    at = {"arch": arch, "shift": shift}
    fronts = {}
    for fam in group:
      by_knob = {}
      for knob in {r["knob"] for r in rep.select(records, **at, front=fam)}:
        o = list(
          rep.by_seed(
            records, **at, front=fam, knob=knob, metric="acc_old"
          ).values()
        )
        n = list(
          rep.by_seed(
            records, **at, front=fam, knob=knob, metric="acc_new"
          ).values()
        )
        by_knob[knob] = (np.array(o) * 100, np.array(n) * 100)
      fronts[fam] = plots.front_points(by_knob)
    points = {}
    for method in single:
      o = (
        np.array(
          list(
            rep.by_seed(
              records, **at, method=method, stage="chosen", metric="acc_old"
            ).values()
          )
        )
        * 100
      )
      n = (
        np.array(
          list(
            rep.by_seed(
              records, **at, method=method, stage="chosen", metric="acc_new"
            ).values()
          )
        )
        * 100
      )
      if len(o):
        points[method] = (
          float(o.mean()),
          stats.bootstrap(o),
          float(n.mean()),
          stats.bootstrap(n),
        )
    fmt = lambda fam, k: KNOB_FMT[fam].format(k)
    plots.draw_fronts(ax, fronts, points, labels, fmt)
    ax.set_title(
      f"{arch}, {shift}{', ' + title if title else ''}: upper-right is better",
      fontsize=9,
    )
    ax.set_xlabel("old task (MNIST) test accuracy, % (mean, 95% CI)")
    ax.set_ylabel("new task test accuracy, %")
    ax.legend(fontsize=6)
  plots.save(fig, path)


# -- toolkit report -----------------------------------------------------------

TOOLKIT_LABELS = {
  "profit-trust": "PROFIT lr/10, by ref_trust_radius",
  "profit-precond": "PROFIT, preconditioned reference, by ratio",
  "profit-leaf": "PROFIT per layer, by ratio",
  "profit-warmup": "PROFIT (warmup) at AdamW's rate, by ratio",
  "l2sp": "L2-SP + AdamW, by alpha",
  "ftp": "FTP(AdamW), by k",
  "spd": "SPD(AdamW), by weight_decay",
}
PROFIT_VARIANTS = ("profit-trust", "profit-precond", "profit-leaf")
REGULARISERS = ("l2sp", "ftp", "spd")


def _score_cells(rs_new, olds, key, score) -> list[str]:
  """``knob: old val / new val`` cells (and the score where it is not the
  new-task accuracy), ``olds`` keyed like ``key(record)``."""
  return [
    _cell(key(r), olds[key(r)], r["value"], score)
    for r in sorted(rs_new, key=key)
  ]


def toolkit_report(records, meta, out, name) -> str:
  """The toolkit's report (``--toolkit``): per setting, each toolkit knob's
  validation choice, every method at its chosen values paired against full
  AdamW, and where each new front lies against the full-AdamW + WiSE-FT
  front."""
  settings, score = _settings(records), score_of(meta)
  lines = [
    "# Image classification (Sec. 4.2 protocol): the fine-tuning-without-"
    "forgetting toolkit",
    "",
    *rep.header(meta),
    *_accuracies(score),
    "",
    "The rivals are tuned as in `image.md` (each its rate from its grid,",
    "PROFIT also its ratio). Each toolkit method wraps AdamW at the rate",
    "AdamW's own tuning chose for the setting and tunes one knob on its grid",
    "(the same validation score, seed 0), then runs every seed at every",
    "knob value (its front); PROFIT's reference step is plain SGD at",
    "lr_main / ratio, n_ref 1.",
    "",
    "- `profit-trust`: PROFIT at lr_ref = lr/10 with `ref_trust_radius` r"
    " (‖Δ‖ ≤ r ‖anchor‖).",
    "- `profit-precond`: PROFIT with `ref_preconditioner='main'` (the"
    " reference step divided by AdamW's root mean square), lr_ref ="
    " lr/ratio.",
    "- `profit-leaf`: PROFIT with `projection_groups='leaf'` (one projection"
    " per weight and bias), lr_ref = lr/ratio.",
    "- `profit-warmup`: `profit_warmup`: AdamW for the first"
    f" {meta.get('warmup_calls', '?')} update calls, then a fresh PROFIT at"
    " lr_ref = lr/ratio (the rivals' PROFIT (warmup) is the same schedule at"
    " its own tuned rate and PROFIT's chosen ratio).",
    "- `l2sp`: `l2sp(alpha)` chained before AdamW (coupled); `ftp`:"
    " `ftp(AdamW, k)` (rows: output channels, Flax's last axis; the ViT's"
    " query/key/value kernels by their (heads, head_dim) axes); `spd`:"
    " `spd(AdamW, weight_decay)`. All three pull the pretrained leaves: on"
    " `new-labels` the trunk (the new head is left free: L2-SP's head mask,"
    " FTP's and SPD's mask), on `rotated` the trunk and the pretrained head,"
    " which the old task is read through.",
    "",
  ]
  for arch, shift in settings:
    lines += _toolkit_setting(records, arch, shift, score)
  groups = (
    (
      "PROFIT's options",
      ("full-adamw", "wise-ft", "profit-ratio", *PROFIT_VARIANTS),
      (),
    ),
    ("PROFIT (warmup)", ("full-adamw", "wise-ft", "profit-warmup"), ()),
    ("regularisers", ("full-adamw", "wise-ft", *REGULARISERS), ()),
  )
  _fronts_figure(
    records,
    out / f"{name}_fronts.png",
    groups,
    {**LABELS, **TOOLKIT_LABELS},
  )
  lines += [f"![fronts]({name}_fronts.png)", ""]
  return "\n".join(lines)


def _toolkit_setting(records, arch, shift, score) -> list[str]:
  at = {"arch": arch, "shift": shift}
  chosen = chosen_runs(records, arch, shift)
  lr = chosen.get("full-adamw", {}).get("lr", float("nan"))
  fronts = [f for f in run.TOOLKIT_FRONTS if rep.select(records, **at, front=f)]
  lines = [
    f"## {arch}, {shift}",
    "",
    f"AdamW's chosen rate: {lr:g} (every toolkit method runs at it).",
    "",
    "### Validation-based choice of each toolkit knob (seed 0)",
    "",
    "| method | knob: old val / new val"
    + (" (score)" if score != "new" else "")
    + " ... | chosen |",
    "| --- | --- | --- |",
  ]
  picked = {}
  for fam in fronts:
    tune = {
      m: rep.select(records, **at, method=fam, stage="toolkit-tune", metric=m)
      for m in ("acc_old_val", "acc_new_val")
    }
    olds = {r["knob"]: r["value"] for r in tune["acc_old_val"]}
    (c,) = {
      r["knob"]
      for r in rep.select(records, **at, method=fam, stage="toolkit-chosen")
    }
    picked[fam] = c
    grid = sorted(olds)
    knob_name = tune["acc_new_val"][0]["knob_name"]
    edge = " (grid edge)" if c in (grid[0], grid[-1]) else ""
    cells = _score_cells(tune["acc_new_val"], olds, lambda r: r["knob"], score)
    lines.append(
      f"| {TOOLKIT_LABELS[fam]} | {'; '.join(cells)} |"
      f" {knob_name} {c:g}{edge} |"
    )
  seeds = sorted({r["seed"] for r in rep.select(records, **at, stage="chosen")})
  lines += _test_header(
    seeds,
    "Paired against full AdamW (every toolkit method's main optimizer) seed",
    "by seed: difference of the means [95% CI], seeds better, verdict (from",
    "the CI: wins or loses when it excludes 0, else ties).",
  )
  rows = [
    (LABELS[m], {"method": m, "stage": "chosen"})
    for m in run.METHODS
    if rep.select(records, **at, method=m, stage="chosen")
  ]
  for fam in fronts:
    rs = rep.select(records, **at, method=fam, stage="toolkit-chosen")
    rows.append(
      (
        f"{TOOLKIT_LABELS[fam].split(', by')[0]}, {rs[0]['knob_name']}"
        f" {picked[fam]:g}",
        {"method": fam, "stage": "toolkit-chosen"},
      )
    )
  lines += _vs_adamw(records, at, rows)
  lines += [
    "",
    "### Fronts: the new methods against full AdamW and WiSE-FT",
    "",
    "Rivals: full AdamW traced by its rate, and WiSE-FT between the",
    "pretrained and the chosen AdamW weights. Points are means over seeds;",
    "the gap is the point's new-task accuracy minus the rivals'",
    "piecewise-linear front at its old-task accuracy (points, positive:",
    "beyond); 95% CI by resampling seeds jointly. PROFIT's ratio front",
    "(at PROFIT's own rate) for reference first.",
    "",
    "| point | seeds | old | new | gap [CI] | where | verdict |",
    "| --- | ---: | ---: | ---: | ---: | --- | --- |",
  ]
  lines += _front_rows(
    records,
    at,
    ("profit-ratio", *fronts),
    lambda fam, knob_name, knob: f"{fam}, {knob_name} {knob:g}",
  )
  lines.append("")
  return lines
