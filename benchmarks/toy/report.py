"""Reports of the toy benchmark: tables and figures computed from records.

Nothing here states a number that is not computed from the records it is
given, so a re-rendered report (``--from-json``) says what the data say.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from benchmarks._common import plots, stats
from benchmarks._common import report as rep
from benchmarks.toy import run, task

PROTOCOL_ORDER = ("calibrated", "unconverged")
LABELS = {
  "pretrained": "pretrained on the old domain",
  "full": "full, RMSProp",
  "head": "head only, RMSProp",
  "profit": "PROFIT (RMSProp), n_ref 1, lr/10",
  "full-adamw": "full",
  "wise-ft": "WiSE-FT",
  "profit-ratio": "PROFIT by lr_main/lr_ref",
  "profit-nref": "PROFIT by n_ref",
  "profit-trust": "PROFIT lr/10, by ref_trust_radius",
  "profit-precond": "PROFIT, preconditioned reference, by ratio",
  "profit-leaf": "PROFIT per layer, by ratio",
  "profit-warmup": "PROFIT (warmup), by ratio",
  "l2sp": "L2-SP + RMSProp, by alpha",
  "ftp": "FTP(RMSProp), by k",
  "spd": "SPD(RMSProp), by weight_decay",
}


def _f(x: float, digits: int = 3) -> str:
  if not math.isfinite(x):
    return "not finite"
  if abs(x) >= 1e3:
    return f"{x:.3g}"
  return f"{x:.{digits}f}"


def _ci(s: dict, which: str, digits: int = 3) -> str:
  lo, hi = s[f"{which}_ci"]
  return f"{_f(s[which], digits)} [{_f(lo, digits)}, {_f(hi, digits)}]"


# -- calibration ---------------------------------------------------------------


def calibration(records, meta, out, name) -> str:
  cells = run.cells(records)
  chosen = run.choose(records)
  p_old, p_new = task.PAPER_TABLE1["pretrained"]
  lines = [
    "# Toy experiment: calibrating the pretraining protocol",
    "",
    *rep.header(meta),
    "The paper gives 10000 RMSProp steps at 1e-2 for the baseline; the batch",
    "size, the schedule and RMSProp's decay are unknown. Each cell pretrains",
    "one model per seed and measures its MSE against the noiseless function",
    f"on both domains. The paper's baseline row: old {p_old}, new {p_new}.",
    "The chosen cell minimises |log(median old / paper old)| +",
    "|log(median new / paper new)| over the cells.",
    "",
    "| batch | schedule | RMSProp decay | seeds | old MSE, median [95% CI] | new MSE, median [95% CI] | distance |",
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
  ]
  for (b, s, d), m in sorted(cells.items()):
    so, sn = stats.summary(m["mse_old"]), stats.summary(m["mse_new"])
    dist = float(run.distance_to_paper(so["median"], sn["median"]))
    mark = (
      " **(chosen)**"
      if (b, s, d) == (chosen.batch, chosen.schedule, chosen.decay)
      else ""
    )
    lines.append(
      f"| {b} | {s}{mark} | {d:g} | {so['n']} | {_ci(so, 'median', 4)} |"
      f" {_ci(sn, 'median')} | {dist:.2f} |"
    )
  lines += [
    "",
    "Per seed (old / new MSE):",
    "",
    "| batch | schedule | decay | "
    + " | ".join(f"seed {s}" for s in sorted({r["seed"] for r in records}))
    + " |",
    "| ---: | --- | ---: |" + " ---: |" * len({r["seed"] for r in records}),
  ]
  for (b, s, d), _ in sorted(cells.items()):
    where = {"batch": b, "schedule": s, "decay": d}
    old = rep.by_seed(records, metric="mse_old", **where)
    new = rep.by_seed(records, metric="mse_new", **where)
    lines.append(
      f"| {b} | {s} | {d:g} | "
      + " | ".join(f"{old[k]:.4f} / {new[k]:.3f}" for k in old)
      + " |"
    )
  lines += ["", f"Chosen: {chosen.label()} (`task.CALIBRATED`)."]
  if chosen != task.CALIBRATED:
    lines.append(
      f"**The code's `task.CALIBRATED` ({task.CALIBRATED.label()}) differs"
      " from this choice: update it.**"
    )
  lines += ["", f"![old-domain MSE during pretraining]({name}.png)", ""]
  _calibration_figure(records, out / f"{name}.png")
  return "\n".join(lines)


def _calibration_figure(records, path):
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  curves = {}
  for r in rep.select(records, metric="curve_mse_old"):
    key = (r["batch"], r["schedule"], r["decay"])
    curves.setdefault(key, {}).setdefault(r["step"], []).append(r["value"])
  for (b, s, d), by_step in sorted(curves.items()):
    steps = sorted(by_step)
    med = [statistics.median(by_step[k]) for k in steps]
    lo = [np.percentile(by_step[k], 0) for k in steps]
    hi = [np.percentile(by_step[k], 100) for k in steps]
    (line,) = ax.plot(
      steps,
      med,
      "-" if s == "cosine" else "--",
      label=f"batch {b}, {s}, decay {d:g}",
    )
    ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.12)
  ax.axhline(
    task.PAPER_TABLE1["pretrained"][0],
    color="k",
    lw=0.8,
    ls=":",
    label="paper's baseline (0.0054)",
  )
  ax.set_yscale("log")
  ax.set_xlabel("pretraining step")
  ax.set_ylabel("old-domain MSE (median over seeds, band: min-max)")
  ax.legend(fontsize=7)
  plots.save(fig, path)


# -- main report -----------------------------------------------------------------


def _pairs(records, protocol, method, metric):
  return rep.by_seed(
    records,
    protocol=protocol,
    method=method,
    metric=metric,
    **({"front": _front_of(method)} if _front_of(method) else {}),
  )


def _front_of(method):
  return None


def _vals(records, **where):
  return list(rep.by_seed(records, **where).values())


def failed(records, protocol, method) -> dict[int, bool]:
  """Seeds on which ``method`` ends worse on the new domain than the
  pretrained model (or not finite): fine-tuning failed."""
  base = rep.by_seed(
    records, protocol=protocol, method="pretrained", metric="mse_new"
  )
  new = rep.by_seed(records, protocol=protocol, method=method, metric="mse_new")
  return {s: not (math.isfinite(v) and v <= base[s]) for s, v in new.items()}


def main_report(records, meta, out, name) -> str:
  protocols = [p for p in PROTOCOL_ORDER if rep.select(records, protocol=p)]
  lines = [
    "# Toy experiment (Sec. 4.1): Table 1, ablations and fronts over seeds",
    "",
    *rep.header(meta),
    "Protocols: "
    + "; ".join(f"`{k}` = {v}" for k, v in meta.get("protocols", {}).items())
    + ".",
    "Fine-tuning: RMSProp rate 5e-4, 1500 optimizer steps, batch 32 (PROFIT:",
    "n_ref + 1 gradients per step). A seed varies both the pretraining and the",
    "fine-tuning. MSE against the noiseless function on 20000 points per domain.",
    "Intervals: 95% bootstrap over seeds. `failed`: worse on the new domain than",
    "the pretrained model, or not finite.",
    "",
  ]
  for proto in protocols:
    lines += _protocol_section(records, proto)
  _fronts_figure(records, protocols, out / f"{name}_fronts.png")
  _divergence_figure(records, protocols, out / f"{name}_divergence.png")
  lines += [
    f"![fronts]({name}_fronts.png)",
    "",
    f"![divergence]({name}_divergence.png)",
    "",
    f"![Figure 2, first seed of the calibrated protocol]({name}.png)",
    "",
  ]
  return "\n".join(lines)


METHODS_T1 = ("pretrained", "full", "head", "profit")


def _protocol_section(records, proto) -> list[str]:
  seeds = sorted({r["seed"] for r in rep.select(records, protocol=proto)})
  lines = [
    f"## Protocol `{proto}` ({len(seeds)} seeds)",
    "",
    "### Table 1",
    "",
    "| method | old MSE, mean [CI] | old, median [CI] | new MSE, mean [CI] | new, median [CI] | paper old | paper new | failed |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for m in METHODS_T1:
    so = stats.summary(
      _vals(records, protocol=proto, method=m, metric="mse_old", front=_fr(m))
    )
    sn = stats.summary(
      _vals(records, protocol=proto, method=m, metric="mse_new", front=_fr(m))
    )
    paper = task.PAPER_TABLE1[m]
    fails = failed(records, proto, m) if m != "pretrained" else {}
    lines.append(
      f"| {LABELS[m]} | {_ci(so, 'mean')} | {_ci(so, 'median')} | {_ci(sn, 'mean')} |"
      f" {_ci(sn, 'median')} | {paper[0]} | {paper[1]} |"
      f" {sum(fails.values())}/{len(fails)} |"
      if fails
      else f"| {LABELS[m]} | {_ci(so, 'mean')} | {_ci(so, 'median')} | {_ci(sn, 'mean')} |"
      f" {_ci(sn, 'median')} | {paper[0]} | {paper[1]} | — |"
    )
  lines += [
    "",
    "### Every run against full fine-tuning (RMSProp, rate 5e-4), paired by seed",
    "",
    "Difference = method − full (negative: lower error). Median of the",
    "per-seed differences with its 95% CI; `better`: seeds with lower error.",
    "",
    "| method | knob | old: median diff [CI] | better | verdict | new: median diff [CI] | better | verdict | failed | lr_ref < 2/λ_max |",
    "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: |",
  ]
  full = {
    m: rep.by_seed(
      records, protocol=proto, method="full", metric=m, front="full"
    )
    for m in ("mse_old", "mse_new")
  }
  for fam in ("head", "profit-ratio", "profit-nref", "wise-ft", "full"):
    for knob in sorted(
      {r["knob"] for r in rep.select(records, protocol=proto, front=fam)}
    ):
      where = {"protocol": proto, "front": fam, "knob": knob}
      methods = {r["method"] for r in rep.select(records, **where)}
      (method,) = methods
      if method == "full":
        continue
      cells = []
      for metric in ("mse_old", "mse_new"):
        x = rep.by_seed(records, metric=metric, **where)
        p = stats.paired(
          list(x.values()), [full[metric][s] for s in x], False, np.median
        )
        cells.append(
          f"{_f(p['diff'], 4)} [{_f(p['ci'][0], 4)}, {_f(p['ci'][1], 4)}] | {p['wins']}/{p['n']} | {p['verdict']}"
        )
      fails = failed(records, proto, method) if fam != "wise-ft" else {}
      stable = rep.select(records, metric="mse_new", **where)
      stab = [r["ref_stable"] for r in stable if "ref_stable" in r]
      lines.append(
        f"| {method} | {knob:g} | {cells[0]} | {cells[1]} |"
        f" {sum(fails.values()) if fails else 0}/{len(fails) or len(stable)} |"
        f" {(str(sum(stab)) + '/' + str(len(stab))) if stab else '—'} |"
      )
  lines += [
    "",
    "### Fronts: is PROFIT beyond its rivals?",
    "",
    "Rivals: full RMSProp traced by its rate, and WiSE-FT. Each point is",
    "the median over seeds; the gap is how much lower PROFIT's new-domain",
    "MSE is than the rivals' piecewise-linear front at PROFIT's old-domain",
    "MSE (positive: beyond). 95% CI by resampling seeds jointly.",
    "",
    "| PROFIT point | old MSE | new MSE | gap [CI] | where | verdict |",
    "| --- | ---: | ---: | ---: | --- | --- |",
  ]
  lines += _front_rows(
    records,
    proto,
    ("profit-ratio", "profit-nref"),
    lambda fam, knob: (
      f"ratio {knob:g}" if fam == "profit-ratio" else f"n_ref {knob:g}"
    ),
  )
  lines += [
    "",
    "### Where PROFIT fails: distance and curvature at the pretrained weights",
    "",
    "λ_max: the largest Hessian eigenvalue of the new-domain loss at the",
    "pretrained weights. The SGD reference step is stable only if",
    "lr_ref < 2/λ_max (lr_ref = 5e-5 at ratio 10). A large pretrained",
    "new-domain MSE means the new domain is not *nearby* for that seed.",
    "",
    "| seed | pretrained new MSE | λ_max | 2/λ_max | PROFIT ratio 10 | ratio 100 | ratio 1000 | ratio 10000 |",
    "| ---: | ---: | ---: | ---: | --- | --- | --- | --- |",
  ]
  lam = rep.by_seed(
    records, protocol=proto, method="pretrained", metric="lambda_max"
  )
  base = rep.by_seed(
    records, protocol=proto, method="pretrained", metric="mse_new"
  )
  outcome = {}
  for knob in run.RATIOS:
    method = "profit" if knob == run.DEFAULT_RATIO else f"profit-ratio{knob:g}"
    outcome[knob] = failed(records, proto, method)
  for s in sorted(lam):
    cells = " | ".join(
      "failed" if outcome[k].get(s) else "ok" for k in run.RATIOS
    )
    lines.append(
      f"| {s} | {_f(base[s])} | {lam[s]:.4g} | {2 / lam[s]:.3g} | {cells} |"
    )
  lines.append("")
  for knob in run.RATIOS:
    lines.append(f"- {_failure_summary(knob, outcome[knob], lam, base)}")
  lines.append("")
  return lines


RIVALS = ("full", "wise-ft")


def _knobs(records, proto, fam) -> list[float]:
  return sorted(
    {r["knob"] for r in rep.select(records, protocol=proto, front=fam)}
  )


def _point(records, proto, fam, knob) -> tuple[np.ndarray, np.ndarray]:
  """A front point's ``(old, new)`` errors, one value per seed."""
  return tuple(
    np.array(
      list(
        rep.by_seed(
          records, protocol=proto, front=fam, knob=knob, metric=m
        ).values()
      )
    )
    for m in ("mse_old", "mse_new")
  )


def _front_rows(records, proto, fams, label) -> list[str]:
  """One table row per point of ``fams``: where it lies against the
  rivals' front (full RMSProp by its rate, and WiSE-FT), with its CI.
  ``label(fam, knob)`` names the point."""
  rivals = [
    _point(records, proto, fam, knob)
    for fam in RIVALS
    for knob in _knobs(records, proto, fam)
  ]
  lines = []
  for fam in fams:
    for knob in _knobs(records, proto, fam):
      o, n = _point(records, proto, fam, knob)
      v = stats.front_verdict(
        (o, n), rivals, higher_is_better=False, stat=np.median
      )
      lines.append(
        f"| {label(fam, knob)} | {_f(float(np.median(o)), 4)} | {_f(float(np.median(n)), 4)} |"
        f" {_f(v['gap'], 4)} [{_f(v['ci'][0], 4)}, {_f(v['ci'][1], 4)}] | {v['where']} | {v['verdict']} |"
      )
  return lines


def _failure_summary(knob, outcome, lam, base) -> str:
  """One measured sentence: how many seeds failed at this ratio, whether the
  reference step was unstable there, and whether the failed seeds are the
  ones farthest from the new domain."""
  unstable = {
    s for s in lam if not (run.Config().finetune.lr / knob < 2 / lam[s])
  }
  f = {s for s, v in outcome.items() if v}
  head = (
    f"Ratio {knob:g}: failed on {len(f)}/{len(lam)} seeds; the reference"
    f" step was beyond 2/λ_max on {len(unstable)} seeds, {len(f & unstable)}"
    " of them failed"
  )
  if not f:
    return head + "."
  steepest = set(sorted(lam, key=lam.get)[-len(f) :])
  ok = [base[s] for s in lam if s not in f]
  where = (
    f"the failed seeds are the {len(f)} with the largest λ_max"
    if f == steepest
    else "the failed seeds are not simply those with the largest λ_max"
  )
  spread = (
    f"{head}; {where}; their pretrained new-domain MSE is"
    f" {_f(min(base[s] for s in f))}–{_f(max(base[s] for s in f))}"
  )
  if not ok:
    return spread + " (every seed failed)."
  return (
    f"{spread}, against at most {_f(max(ok))} on the seeds that did not fail."
  )


def _fr(method):
  return {
    "pretrained": "pretrained",
    "full": "full",
    "head": "head",
    "profit": "profit-ratio",
  }[method]


FRONTS = ("full", "wise-ft", "profit-ratio", "profit-nref")
KNOB_FMT = {
  "full": "{:g}",
  "wise-ft": "α{:g}",
  "profit-ratio": "/{:g}",
  "profit-nref": "n{:g}",
  **plots.TOOLKIT_KNOB_FMT,
}


def _fronts_figure(records, protocols, path, groups=(("", FRONTS),)):
  """One panel per protocol and group ``(title, fronts)`` of fronts."""
  import matplotlib.pyplot as plt

  panels = [(p, t, g) for p in protocols for t, g in groups]
  fig, axes = plt.subplots(
    1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False
  )
  for ax, (proto, title, group) in zip(axes[0], panels):
    fronts = {}
    for fam in group:
      by_knob = {}
      for knob in {
        r["knob"] for r in rep.select(records, protocol=proto, front=fam)
      }:
        o = _vals(
          records, protocol=proto, front=fam, knob=knob, metric="mse_old"
        )
        n = _vals(
          records, protocol=proto, front=fam, knob=knob, metric="mse_new"
        )
        by_knob[knob] = (o, n)
      fronts[fam] = plots.front_points(by_knob, np.median)
    points = {}
    for m in ("pretrained", "head"):
      o = _vals(
        records, protocol=proto, method=m, metric="mse_old", front=_fr(m)
      )
      n = _vals(
        records, protocol=proto, method=m, metric="mse_new", front=_fr(m)
      )
      points[m] = (
        float(np.median(o)),
        stats.bootstrap(o, np.median),
        float(np.median(n)),
        stats.bootstrap(n, np.median),
      )
    fmt = lambda fam, k: KNOB_FMT[fam].format(k)
    plots.draw_fronts(ax, fronts, points, LABELS, fmt, log=True)
    ax.set_xlabel("old-domain MSE (median, 95% CI)")
    ax.set_ylabel("new-domain MSE (median, 95% CI)")
    ax.set_title(
      f"{proto}{', ' + title if title else ''}: lower-left is better"
    )
    ax.legend(fontsize=7)
  plots.save(fig, path)


def _divergence_figure(records, protocols, path):
  """PROFIT's outcome per seed against the pretrained model's new-domain
  error and against the reference step's stability ``lr_ref λ_max / 2``."""
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
  markers = {"calibrated": "o", "unconverged": "s"}
  lr_ref = run.Config().finetune.lr / run.DEFAULT_RATIO
  for proto in protocols:
    lam = rep.by_seed(
      records, protocol=proto, method="pretrained", metric="lambda_max"
    )
    base = rep.by_seed(
      records, protocol=proto, method="pretrained", metric="mse_new"
    )
    end = rep.by_seed(
      records, protocol=proto, method="profit", metric="mse_new"
    )
    fail = failed(records, proto, "profit")
    ratio = {s: end[s] / base[s] if math.isfinite(end[s]) else 1e6 for s in lam}
    for ax, x in (
      (axes[0], base),
      (axes[1], {s: lr_ref * lam[s] / 2 for s in lam}),
    ):
      for outcome, color in ((False, "tab:green"), (True, "tab:red")):
        ss = [s for s in lam if fail.get(s) == outcome]
        ax.scatter(
          [x[s] for s in ss],
          [ratio[s] for s in ss],
          c=color,
          marker=markers.get(proto, "o"),
          label=f"{proto}: {'failed' if outcome else 'ok'} ({len(ss)})",
        )
  axes[1].axvline(1.0, color="k", lw=0.8, ls=":")
  for ax, xl in (
    (axes[0], "pretrained model's new-domain MSE"),
    (axes[1], "lr_ref · λ_max / 2 (SGD reference step unstable above 1)"),
  ):
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xl)
    ax.set_ylabel("new MSE: PROFIT / pretrained (failed > 1)")
    ax.legend(fontsize=7)
  fig.suptitle("PROFIT, n_ref 1, lr_ref = lr/10: outcome per seed")
  plots.save(fig, path)


def figure2(params: dict, path):
  """The paper's Figure 2: predictions of each model over both domains."""
  import jax.numpy as jnp
  import matplotlib.pyplot as plt

  g = np.linspace(-1.0, 1.5, 200)
  xx, yy = np.meshgrid(g, g)
  x = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), jnp.float32)
  panels = [("ground truth", np.asarray(task.target(x)))]
  for m in METHODS_T1:
    if m in params:
      panels.append((LABELS[m], np.asarray(task.apply_mlp(params[m], x))))
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2))
  for ax, (title, z) in zip(axes, panels):
    ax.imshow(
      z.reshape(xx.shape),
      origin="lower",
      extent=(-1, 1.5, -1, 1.5),
      vmin=-1.5,
      vmax=1.5,
      cmap="coolwarm",
    )
    for lo, hi, c in ((-1, 1, "k"), (0.8, 1.5, "g")):
      ax.plot([lo, hi, hi, lo, lo], [lo, lo, hi, hi, lo], c, lw=0.8)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
  plots.save(fig, path)


# -- toolkit report --------------------------------------------------------------

PROFIT_VARIANTS = (
  "profit-ratio",
  "profit-trust",
  "profit-precond",
  "profit-leaf",
  "profit-warmup",
)
REGULARISERS = ("l2sp", "ftp", "spd")
TOOLKIT_ORDER = (
  "full",
  "head",
  "wise-ft",
  "profit-ratio",
  "profit-nref",
  *run.TOOLKIT_FRONTS,
)


def not_finite(records, protocol, method) -> dict[int, bool]:
  """Seeds on which ``method``'s run blew up: a weight (``diverged``) or an
  error that is not finite. Such a seed also counts as :func:`failed`."""
  out = {}
  for r in rep.select(records, protocol=protocol, method=method):
    if r["metric"] in ("mse_old", "mse_new"):
      bad = bool(r.get("diverged")) or not math.isfinite(r["value"])
      out[r["seed"]] = out.get(r["seed"], False) or bad
  return dict(sorted(out.items()))


def _outcome(fails: dict, blown: dict, seed: int) -> str:
  if blown.get(seed):
    return "not finite"
  return "failed" if fails.get(seed) else "ok"


def _runs(records, proto, fams):
  """``(front, knob, knob_name, method)`` of every run of ``fams``."""
  out = []
  for fam in fams:
    for knob in _knobs(records, proto, fam):
      rs = rep.select(records, protocol=proto, front=fam, knob=knob)
      (method,) = {r["method"] for r in rs}
      out.append((fam, knob, rs[0]["knob_name"], method))
  return out


def toolkit_report(records, meta, out, name) -> str:
  """The toolkit's report (``--toolkit``): every method's errors, paired
  against full fine-tuning; the stable-reference options seed by seed; and
  where each new front lies against the full-RMSProp + WiSE-FT front."""
  (proto,) = {r["protocol"] for r in records}
  seeds = sorted({r["seed"] for r in records})
  full0 = rep.select(records, method="full", metric="mse_new")[0]
  lr, steps = full0["knob"], full0["steps"]
  calls = rep.select(records, method="profit", metric="mse_new")[0]["calls"]
  warmup = meta.get("warmup_calls")
  lines = [
    "# Toy experiment (Sec. 4.1): the fine-tuning-without-forgetting toolkit",
    "",
    *rep.header(meta),
    "Protocol: "
    + "; ".join(f"`{k}` = {v}" for k, v in meta.get("protocols", {}).items())
    + f"; {len(seeds)} seeds (a seed varies the pretraining and the",
    "fine-tuning). Every method fine-tunes with RMSProp at rate"
    f" {lr:g}: {steps} optimizer steps of batch"
    f" {run.Config().finetune.batch}; a PROFIT step takes n_ref + 1 ="
    f" {run.DEFAULT_N_REF + 1} gradients.",
    "",
    "- `profit-trust`: PROFIT at lr_ref = lr/10 with `ref_trust_radius` r"
    " (‖Δ‖ ≤ r ‖anchor‖).",
    "- `profit-precond`: PROFIT with `ref_preconditioner='main'` (the"
    " reference step divided by RMSProp's root mean square), lr_ref ="
    " lr/ratio.",
    "- `profit-leaf`: PROFIT with `projection_groups='leaf'` (one projection"
    " per weight and bias), lr_ref = lr/ratio.",
    "- `profit-warmup`: `profit_warmup`: RMSProp for the first"
    f" {warmup if warmup is not None else '?'} of the {calls} update"
    " calls, then PROFIT at lr_ref = lr/ratio.",
    "- `l2sp`: `l2sp(alpha)` chained before RMSProp (coupled); the head"
    " (the last layer) is not pulled (beta 0).",
    "- `ftp`: `ftp(RMSProp, k)`; `spd`: `spd(RMSProp, weight_decay)`; both"
    " leave the head out by `mask`.",
    "",
    "MSE against the noiseless function on 20000 points per domain."
    " Intervals: 95% bootstrap over seeds. `failed`: worse on the new domain",
    "than the pretrained model, or not finite (as in `toy.md`); `not"
    " finite`: the run blew up (a weight or an error is inf or NaN).",
    "",
    f"## Every method against full fine-tuning (RMSProp, rate {lr:g}),"
    " paired by seed",
    "",
    "Difference = method − full (negative: lower error): median of the",
    "per-seed differences with its 95% CI.",
    "",
    "| method | front | knob | old MSE, median [CI] | new MSE, median [CI] | old − full [CI] | new − full [CI] | failed | not finite |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  full = {
    m: rep.by_seed(records, protocol=proto, method="full", metric=m)
    for m in ("mse_old", "mse_new")
  }
  for fam, knob, knob_name, method in _runs(records, proto, TOOLKIT_ORDER):
    cells = []
    for metric in ("mse_old", "mse_new"):
      x = rep.by_seed(records, protocol=proto, method=method, metric=metric)
      cells.append(_ci(stats.summary(list(x.values())), "median", 4))
    for metric in ("mse_old", "mse_new"):
      x = rep.by_seed(records, protocol=proto, method=method, metric=metric)
      p = stats.paired(
        list(x.values()), [full[metric][s] for s in x], False, np.median
      )
      cells.append(
        f"{_f(p['diff'], 4)} [{_f(p['ci'][0], 4)}, {_f(p['ci'][1], 4)}]"
      )
    fails = failed(records, proto, method)
    blown = not_finite(records, proto, method)
    lines.append(
      f"| {method} | {fam} | {knob_name} {knob:g} | {' | '.join(cells)} |"
      f" {sum(fails.values())}/{len(fails)} |"
      f" {sum(blown.values())}/{len(blown)} |"
    )
  lines += _stable_reference(records, proto, lr)
  lines += [
    "## Fronts: the new methods against full RMSProp and WiSE-FT",
    "",
    "Rivals: full RMSProp traced by its rate, and WiSE-FT. Each point is",
    "the median over seeds; the gap is how much lower the point's new-domain",
    "MSE is than the rivals' piecewise-linear front at the point's old-domain",
    "MSE (positive: beyond). 95% CI by resampling seeds jointly.",
    "",
    "| point | old MSE | new MSE | gap [CI] | where | verdict |",
    "| --- | ---: | ---: | ---: | --- | --- |",
  ]
  knob_names = {f: n for f, _, n, _ in _runs(records, proto, TOOLKIT_ORDER)}
  lines += _front_rows(
    records,
    proto,
    run.TOOLKIT_FRONTS,
    lambda fam, knob: f"{fam}, {knob_names[fam]} {knob:g}",
  )
  _fronts_figure(
    records,
    [proto],
    out / f"{name}_fronts.png",
    groups=(
      ("PROFIT's options", ("full", "wise-ft", *PROFIT_VARIANTS)),
      ("regularisers", ("full", "wise-ft", *REGULARISERS)),
    ),
  )
  lines += ["", f"![fronts]({name}_fronts.png)", ""]
  return "\n".join(lines)


def _stable_reference(records, proto, lr) -> list[str]:
  """Per seed: plain PROFIT at lr/10 and the two stable-reference options
  at every knob, beside the seed's curvature."""
  cols = [("PROFIT lr/10", "profit")]
  for fam, label in (
    ("profit-trust", "trust r"),
    ("profit-precond", "precond /"),
  ):
    for _, knob, _, method in _runs(records, proto, (fam,)):
      cols.append((f"{label}{knob:g}", method))
  lam = rep.by_seed(
    records, protocol=proto, method="pretrained", metric="lambda_max"
  )
  base = rep.by_seed(
    records, protocol=proto, method="pretrained", metric="mse_new"
  )
  lr_ref = lr / run.DEFAULT_RATIO
  outcomes = {
    m: (failed(records, proto, m), not_finite(records, proto, m))
    for _, m in cols
  }
  values = {
    (m, metric): rep.by_seed(records, protocol=proto, method=m, metric=metric)
    for _, m in cols
    for metric in ("mse_old", "mse_new")
  }
  lines = [
    "",
    "## The stable reference step, seed by seed",
    "",
    "λ_max: the largest Hessian eigenvalue of the new-domain loss at the",
    f"pretrained weights. The plain SGD reference step at lr/10 = {lr_ref:g}",
    "is stable only if lr_ref < 2/λ_max. Each cell: old MSE / new MSE,",
    "then the run's outcome (`ok`, `failed` or `not finite`).",
    "",
    "| seed | pretrained new MSE | λ_max | 2/λ_max | lr/10 < 2/λ_max | "
    + " | ".join(c for c, _ in cols)
    + " |",
    "| ---: | ---: | ---: | ---: | --- |" + " --- |" * len(cols),
  ]
  for s in sorted(lam):
    cells = []
    for _, m in cols:
      old, new = values[(m, "mse_old")], values[(m, "mse_new")]
      fails, blown = outcomes[m]
      cells.append(
        f"{_f(old[s], 4)} / {_f(new[s], 4)} {_outcome(fails, blown, s)}"
      )
    lines.append(
      f"| {s} | {_f(base[s])} | {lam[s]:.4g} | {2 / lam[s]:.3g} |"
      f" {'yes' if lr_ref < 2 / lam[s] else 'no'} | {' | '.join(cells)} |"
    )
  totals = []
  for _, m in cols:
    fails, blown = outcomes[m]
    totals.append(
      f"{sum(fails.values())}/{len(fails)} failed,"
      f" {sum(blown.values())} not finite"
    )
  stable = sum(lr_ref < 2 / v for v in lam.values())
  lines += [
    f"| all | | | | {stable}/{len(lam)} yes | {' | '.join(totals)} |",
    "",
  ]
  return lines
