"""The paper's toy experiment (Sec. 4.1, Table 1) over seeds, with ablations.

Pretrain the MLP of ``examples/toy.py`` on ``sin(10 ‖x‖)`` + noise over the
old domain ``[-1, 1]²`` (10000 RMSProp steps at 1e-2), then fine-tune it on the
new domain ``[0.8, 1.5]²`` for 1500 steps at 5e-4 with:

* full-model fine-tuning with RMSProp (the paper's baseline), SGD (momentum
  0.9), Adam, AdamW, Lookahead(Adam) and Adan;
* head-only fine-tuning (RMSProp on the last layer);
* PROFIT with RMSProp as the main optimizer, ``n_ref = 1`` and
  ``lr_ref = lr / 10``;
* ablations as in the paper's Tables 3-4: ``n_ref`` in {1, 2, 5} and
  ``lr_main / lr_ref`` in {10, 100, 1000, 10000}.

Every method takes 1500 optimizer steps from the same pretrained weights;
PROFIT's step costs ``n_ref + 1`` gradient evaluations, as in the paper. All
methods of a seed see the same stream of new-domain batches, and the seeds
run side by side (``jax.vmap``). Errors are MSEs against the noiseless
function on 20000 random points per domain. Writes ``toy.json`` (records),
``toy.md`` (tables), ``toy.png`` (the paper's Figure 2 for the first seed)
and ``toy_tradeoff.png`` (every seed's old/new errors).

Usage::

  python -m benchmarks.toy            # 5 seeds, ~6 min on 2 CPU cores (+5 to pretrain)
  python -m benchmarks.toy --quick    # a smoke run, under a minute

The pretrained models are cached in ``.cache/`` (shared with the demo).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import profit_optax
from benchmarks import _optimizers, _report
from examples import toy

CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache"
FULL_OPTIMIZERS = ("rmsprop", "sgd", "adam", "adamw", "lookahead", "adan")
N_REFS = (1, 2, 5)
RATIOS = (10, 100, 1000, 10000)
# The configuration named `profit`; the ablations vary one of the two.
DEFAULT_N_REF, DEFAULT_RATIO = 1, 10


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  steps: int  # optimizer steps (PROFIT steps for PROFIT)
  calls: int  # update calls = gradient evaluations
  info: dict


@dataclasses.dataclass(frozen=True)
class Program:
  """Methods that differ in one float only, run as one compiled program.

  ``make_tx(value)`` builds each method's optimizer from its entry of
  ``values``; the program is vmapped over (value, seed) pairs, so a sweep of
  reference rates compiles once.
  """

  methods: tuple[Method, ...]
  make_tx: Callable[[jax.Array], optax.GradientTransformation]
  values: tuple[float, ...]


def programs(cfg: toy.ToyConfig) -> list[Program]:
  """Every fine-tuning run of the benchmark."""
  lr, steps = cfg.finetune_lr, cfg.finetune_steps
  out = [
    Program(
      (Method(f"full-{o}", steps, steps, {"optimizer": o, "lr": lr}),),
      lambda _, o=o: (
        optax.rmsprop(lr)
        if o == "rmsprop"
        else _optimizers.full_optimizers(lr)[o]
      ),
      (0.0,),
    )
    for o in FULL_OPTIMIZERS
  ]
  out.append(
    Program(
      (
        Method(
          "head-rmsprop", steps, steps, {"optimizer": "rmsprop", "lr": lr}
        ),
      ),
      lambda _: toy.head_only(optax.rmsprop(lr)),
      (0.0,),
    )
  )

  def info(n_ref, ratio):
    return {
      "optimizer": "rmsprop",
      "lr": lr,
      "lr_ref": lr / ratio,
      "ratio": ratio,
      "n_ref": n_ref,
    }

  for k in N_REFS:
    if k != DEFAULT_N_REF:
      out.append(
        Program(
          (
            Method(
              f"profit-nref{k}",
              steps,
              steps * (k + 1),
              info(k, DEFAULT_RATIO),
            ),
          ),
          lambda _, k=k: profit_optax.profit(
            optax.rmsprop(lr), lr / DEFAULT_RATIO, n_ref=k
          ),
          (0.0,),
        )
      )
  n = DEFAULT_N_REF
  out.append(
    Program(
      tuple(
        Method(f"profit-ratio{r}", steps, steps * (n + 1), info(n, r))
        for r in RATIOS
      ),
      lambda ratio: profit_optax.profit(optax.rmsprop(lr), lr / ratio, n_ref=n),
      tuple(float(r) for r in RATIOS),
    )
  )
  return out


# The default configuration, under its own name and as each ablation's
# default entry: the same run, reported under three names.
ALIASES = {
  "profit": f"profit-ratio{DEFAULT_RATIO}",
  f"profit-nref{DEFAULT_N_REF}": f"profit-ratio{DEFAULT_RATIO}",
}
# Report order of the method names.
ORDER = (
  [f"full-{o}" for o in FULL_OPTIMIZERS]
  + ["head-rmsprop", "profit"]
  + [f"profit-nref{k}" for k in N_REFS]
  + [f"profit-ratio{r}" for r in RATIOS]
)


def pretrain_all(cfg, seeds, use_cache, progress):
  """The pretrained weights of every seed, stacked on a leading axis."""
  per_seed = []
  for seed in tqdm(seeds, desc="pretrain", disable=not progress):
    c = dataclasses.replace(cfg, seed=seed)
    per_seed.append(toy.pretrain(c, CACHE if use_cache else None))
  return jax.tree.map(lambda *xs: jnp.stack(xs), *per_seed)


def finetune(program, pretrained, keys, cfg, progress):
  """Fine-tunes every (value, seed) pair at once.

  Returns the weights with leading axes (value, seed).
  """
  nv, ns = len(program.values), keys.shape[0]
  calls = program.methods[0].calls

  def chunk(params, state, key, value):
    tx = program.make_tx(value)
    run = toy.make_trainer(
      tx, toy.NEW_DOMAIN, cfg.batch_size, cfg.noise_std, cfg.chunk
    )
    return run(params, state, key)

  def init(params, value):
    return program.make_tx(value).init(params)

  flat = lambda x: x.reshape(nv * ns, *x.shape[2:])
  tile = lambda x: flat(jnp.broadcast_to(x, (nv, *x.shape)))
  params = jax.tree.map(tile, pretrained)
  values = jnp.repeat(jnp.asarray(program.values, jnp.float32), ns)
  keys = tile(keys)  # every value sees its seed's batches
  state = jax.jit(jax.vmap(init))(params, values)
  run = jax.jit(jax.vmap(chunk))
  desc = program.methods[0].name + (f" (+{nv - 1} more)" if nv > 1 else "")
  for k in tqdm(range(calls // cfg.chunk), desc=desc, disable=not progress):
    chunk_keys = jax.vmap(lambda key, k=k: jax.random.fold_in(key, k))(keys)
    params, state, _ = run(params, state, chunk_keys, values)
  params = jax.block_until_ready(params)
  return jax.tree.map(lambda x: x.reshape(nv, ns, *x.shape[1:]), params)


def evaluate_all(params, seeds, cfg) -> list[dict]:
  """MSE records of every seed's model on both domains."""
  out = []
  for i, seed in enumerate(seeds):
    p = jax.tree.map(lambda x, i=i: x[i], params)
    eval_key = jax.random.fold_in(jax.random.PRNGKey(seed), 99)
    for metric, value in toy.evaluate(p, eval_key, cfg).items():
      out.append({"seed": seed, "metric": metric, "value": value})
  return out


def run(cfg: toy.ToyConfig, seeds, use_cache=True, progress=True):
  """All methods on all seeds: (records, {method: first seed's weights})."""
  pretrained = pretrain_all(cfg, seeds, use_cache, progress)
  first = lambda tree: jax.tree.map(lambda x: x[0], tree)
  records, figure_params = [], {"pretrained": first(pretrained)}
  common = {"steps": 0, "calls": 0, "seconds": 0.0}
  for r in evaluate_all(pretrained, seeds, cfg):
    records.append({"method": "pretrained", **r, **common})
  # One batch stream per seed, shared by every method.
  keys = jnp.stack(
    [jax.random.fold_in(jax.random.PRNGKey(s), 2000) for s in seeds]
  )
  by_name = {}  # name -> (method, tuned weights, seconds per seed)
  for program in programs(cfg):
    start = time.perf_counter()
    tuned = finetune(program, pretrained, keys, cfg, progress)
    seconds = (time.perf_counter() - start) / len(seeds) / len(program.values)
    for i, method in enumerate(program.methods):
      by_name[method.name] = (
        method,
        jax.tree.map(lambda x, i=i: x[i], tuned),
        seconds,
      )
  for alias, name in ALIASES.items():
    method, tuned, seconds = by_name[name]
    info = {**method.info, "same_run_as": name}
    by_name[alias] = (
      dataclasses.replace(method, name=alias, info=info),
      tuned,
      seconds,
    )
  for name in ORDER:
    method, tuned, seconds = by_name[name]
    figure_params[name] = first(tuned)
    for r in evaluate_all(tuned, seeds, cfg):
      records.append(
        {
          "method": name,
          **r,
          "steps": method.steps,
          "calls": method.calls,
          "seconds": seconds,
          **method.info,
        }
      )
  return records, figure_params


# --------------------------------------------------------------------------
# Report


def _row(records, name, label, paper=None):
  old = _report.values(records, method=name, metric="mse_old")
  new = _report.values(records, method=name, metric="mse_new")
  med = lambda xs: f"{statistics.median(xs):.3f}" if xs else "n/a"
  paper_cols = f" {paper[0]:g} | {paper[1]:g} |" if paper else " — | — |"
  return (
    f"| {label} | {_report.fmt(old)} | {_report.fmt(new)} | {med(old)} |"
    f" {med(new)} |{paper_cols}"
  )


def _wins(records, a, b, metric):
  """Seeds on which method ``a`` has a lower ``metric`` than ``b``."""
  xa = _report.values(records, method=a, metric=metric)
  xb = _report.values(records, method=b, metric=metric)
  return sum(x < y for x, y in zip(xa, xb)), len(xa)


def verdicts(records) -> list[str]:
  """Plain statements of where PROFIT wins, ties and loses, per seed."""
  lines = []
  base_new = _report.values(records, method="pretrained", metric="mse_new")
  for name in ("profit", "profit-ratio10000"):
    new = _report.values(records, method=name, metric="mse_new")
    worse = sum(not math.isfinite(n) or n > b for n, b in zip(new, base_new))
    if worse:
      lines.append(
        f"`{name}` ended with a higher new-domain error than the pretrained"
        f" model itself on {worse} of {len(new)} seeds (it diverged)."
      )
  for name in ("profit", "profit-ratio10000"):
    for other in ("full-rmsprop", "head-rmsprop"):
      w_old, n = _wins(records, name, other, "mse_old")
      w_new, _ = _wins(records, name, other, "mse_new")
      both, _ = (
        sum(
          a < c and b < d
          for a, b, c, d in zip(
            _report.values(records, method=name, metric="mse_old"),
            _report.values(records, method=name, metric="mse_new"),
            _report.values(records, method=other, metric="mse_old"),
            _report.values(records, method=other, metric="mse_new"),
          )
        ),
        n,
      )
      lines.append(
        f"`{name}` vs `{other}`: lower old-domain error on {w_old}/{n} seeds,"
        f" lower new-domain error on {w_new}/{n}, both on {both}/{n}."
      )
  return lines


LABELS = {
  "pretrained": "pretrained on the old domain",
  "full-rmsprop": "full, RMSProp",
  "full-sgd": "full, SGD (momentum 0.9)",
  "full-adam": "full, Adam",
  "full-adamw": "full, AdamW",
  "full-lookahead": "full, Lookahead(Adam)",
  "full-adan": "full, Adan",
  "head-rmsprop": "head only, RMSProp",
  "profit": "PROFIT (RMSProp, n_ref 1, lr/10)",
}
PAPER = {
  "pretrained": toy.PAPER_TABLE1["pretrained"],
  "full-rmsprop": toy.PAPER_TABLE1["full"],
  "head-rmsprop": toy.PAPER_TABLE1["head"],
  "profit": toy.PAPER_TABLE1["profit"],
}


def to_markdown(records, cfg, seeds, command, wall_s, mach) -> str:
  head = (
    "| method | old-domain MSE | new-domain MSE | median old | median new"
    " | paper old | paper new |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  )
  lines = [
    "# Toy benchmark: the paper's Sec. 4.1 over seeds",
    "",
    f"Command: `{command}`",
    "",
    f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); pretraining"
    f" {cfg.pretrain_steps} RMSProp steps at {cfg.pretrain_lr:g}; fine-tuning"
    f" {cfg.finetune_steps} optimizer steps at {cfg.finetune_lr:g}, batch"
    f" {cfg.batch_size}, N(0, {cfg.noise_std:g}) label noise; MSE against the"
    f" noiseless function on {cfg.eval_points} random points per domain"
    " (lower is better), mean ± sample std over seeds, and the median."
    f" Wall time {wall_s / 60:.1f} min (pretrained weights found in .cache/"
    " are reused; computing them adds about a minute per seed) on"
    f" {mach['device']}"
    f" ({mach['backend']}, {mach['cpu_count']} cores), jax {mach['jax']},"
    f" optax {mach['optax']}.",
    "",
    "## Table 1, with the optimizers users would pick instead",
    "",
    head,
  ]
  for name, label in LABELS.items():
    lines.append(_row(records, name, label, PAPER.get(name)))
  lines += [
    "",
    f"PROFIT takes the same {cfg.finetune_steps} optimizer steps as the"
    " others, each of"
    " `n_ref + 1` gradient evaluations. The paper reports one run per method"
    " (standard error ≤ 0.01).",
    "",
    "## Ablations (RMSProp main optimizer), as in the paper's Tables 3-4",
    "",
    head,
  ]
  for k in N_REFS:
    lines.append(
      _row(records, f"profit-nref{k}", f"PROFIT, n_ref {k}, lr/{DEFAULT_RATIO}")
    )
  for r in RATIOS:
    lines.append(
      _row(
        records,
        f"profit-ratio{r}",
        f"PROFIT, n_ref {DEFAULT_N_REF}, lr_main/lr_ref = {r}",
      )
    )
  lines += [
    "",
    "## Per seed: PROFIT against full and head-only fine-tuning",
    "",
  ]
  lines += ["- " + v for v in verdicts(records)]
  return "\n".join(lines) + "\n"


def figure(figure_params, path: pathlib.Path, cfg, n: int = 200) -> None:
  """The paper's Figure 2: ground truth and predictions on [-1.5, 1.5]².

  ``n`` is the grid's resolution per axis.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.patches import Rectangle

  axis = np.linspace(-1.5, 1.5, n)
  grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
  truth = np.asarray(toy.target(jnp.asarray(grid))).reshape(n, n)
  inside = lambda d: ((grid >= d[0]).all(-1) & (grid <= d[1]).all(-1)).reshape(
    n, n
  )
  old, new = inside(toy.OLD_DOMAIN), inside(toy.NEW_DOMAIN)
  top = {
    "original data (old domain)": np.where(old, truth, np.nan),
    "new data (new domain)": np.where(new, truth, np.nan),
    "combined": np.where(old | new, truth, np.nan),
    "f over the whole square": truth,
  }
  # The paper's four panels first, then every other method of Table 1.
  bottom = {
    "pretrained (old domain only)": "pretrained",
    "head-only fine-tuning (RMSProp)": "head-rmsprop",
    "full-model fine-tuning (RMSProp)": "full-rmsprop",
    f"PROFIT (lr/{DEFAULT_RATIO})": "profit",
    "PROFIT (lr/10000)": "profit-ratio10000",
    **{
      f"full, {LABELS[f'full-{o}'].split(', ', 1)[1]}": f"full-{o}"
      for o in FULL_OPTIMIZERS[1:]
    },
  }
  cols = 5
  rows = 1 + -(-len(bottom) // cols)
  fig, axes = plt.subplots(
    rows,
    cols,
    figsize=(3.4 * cols, 3.3 * rows),
    sharex=True,
    sharey=True,
    layout="constrained",
  )
  style = dict(
    extent=(-1.5, 1.5, -1.5, 1.5),
    origin="lower",
    cmap="RdBu_r",
    vmin=-1.5,
    vmax=1.5,
  )
  for ax, (title, img) in zip(axes[0], top.items()):
    ax.imshow(img, **style)
    ax.set_title(title, fontsize=9)
  eval_key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 99)
  for ax, (title, name) in zip(axes[1:].flat, bottom.items()):
    p = figure_params[name]
    pred = np.asarray(toy.apply_mlp(p, jnp.asarray(grid))).reshape(n, n)
    image = ax.imshow(pred, **style)
    e = toy.evaluate(p, eval_key, cfg)
    ax.set_title(
      f"{title}\nMSE old {e['mse_old']:.3f}, new {e['mse_new']:.3g}",
      fontsize=9,
    )
  for ax in [*axes[0][len(top) :], *axes[1:].flat[len(bottom) :]]:
    ax.set_visible(False)
  for ax in axes.flat:
    for (lo, hi), ls in ((toy.OLD_DOMAIN, "--"), (toy.NEW_DOMAIN, "-")):
      ax.add_patch(
        Rectangle((lo, lo), hi - lo, hi - lo, fill=False, ls=ls, lw=1.5)
      )
  fig.colorbar(image, ax=axes, shrink=0.7, label="f(x) (clipped to ±1.5)")
  fig.suptitle(
    f"Toy experiment, seed {cfg.seed}: ground truth (top row) and each"
    " method's prediction; dashed: old domain, solid: new domain"
  )
  fig.savefig(path, dpi=110)
  plt.close(fig)


def tradeoff_figure(records, path: pathlib.Path) -> None:
  """Old- against new-domain MSE for every method and seed (log-log)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  groups = {
    "baselines": [
      "pretrained",
      *[f"full-{o}" for o in FULL_OPTIMIZERS],
      "head-rmsprop",
      "profit",
    ],
    "ablations": [f"profit-nref{k}" for k in N_REFS[1:]]
    + [f"profit-ratio{r}" for r in RATIOS[1:]]
    + ["profit"],
  }
  fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), layout="constrained")
  markers = "o*sD^v<>pPhX"
  for ax, (title, names) in zip(axes, groups.items()):
    for i, name in enumerate(names):
      old = np.array(_report.values(records, method=name, metric="mse_old"))
      new = np.array(_report.values(records, method=name, metric="mse_new"))
      color = f"C{i % 10}"
      ax.scatter(
        new,
        old,
        marker=markers[i % len(markers)],
        s=40,
        color=color,
        alpha=0.6,
        label=name,
      )
      ax.scatter(
        np.median(new),
        np.median(old),
        marker=markers[i % len(markers)],
        s=160,
        color=color,
        edgecolor="k",
      )
    ax.set(
      xscale="log",
      yscale="log",
      xlabel="new-domain MSE",
      ylabel="old-domain MSE",
      title=f"{title}: each seed (small), median (large); lower left is better",
    )
    ax.legend(fontsize=8)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog="The default configuration (5 seeds) takes about 6 minutes on 2"
    " CPU cores, plus about 1 minute per seed to pretrain on the first run.",
  )
  _report.add_arguments(parser, seeds=5)
  args = _report.parse_args(parser, argv)
  cfg = toy.ToyConfig()
  if args.quick:
    cfg = dataclasses.replace(
      cfg, pretrain_steps=100, finetune_steps=50, eval_points=1000, chunk=50
    )
  seeds = list(range(2 if args.quick else args.seeds))
  out = args.out or (_report.OUT if args.quick else _report.RESULTS)
  argv = sys.argv[1:] if argv is None else list(argv)
  command = "python -m benchmarks.toy " + shlex.join(argv)
  start = time.perf_counter()
  records, figure_params = run(
    cfg, seeds, use_cache=not args.no_cache, progress=not args.no_progress
  )
  wall = time.perf_counter() - start
  name = "toy_quick" if args.quick else "toy"
  report = to_markdown(
    records, cfg, seeds, command.strip(), wall, _report.machine()
  )
  _report.write(out, name, records, report)
  figure(
    figure_params,
    out / f"{name}.png",
    dataclasses.replace(cfg, seed=seeds[0]),
    n=50 if args.quick else 200,
  )
  tradeoff_figure(records, out / f"{name}_tradeoff.png")
  print(report)
  return records


if __name__ == "__main__":
  main()
