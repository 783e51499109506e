"""How much of PROFIT's displacement Δ survives float32 rounding.

With ``n_ref = 1`` and the default SGD reference, Δ is exactly
``-lr_ref * g`` in exact arithmetic; in float32 it is
``fl(θ - lr_ref * g) - θ``, and once ``lr_ref * |g|`` nears the spacing of
float32 numbers around the weights, Δ is mostly rounding. This measures the
relative error ``‖Δ - (-lr_ref g)‖ / ‖lr_ref g‖`` and the cosine between the
two, for the image benchmark's pretrained CNN and ViT on a batch of each
shift's new task, at the reference rates of the ablations
(``lr_main / lr_ref`` = 10 ... 10000 with AdamW at 1e-4).

Usage::

  python -m benchmarks.rounding           # seconds, after benchmarks.image
  python -m benchmarks.rounding --quick   # on scikit-learn's digits
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _report, image


def measure(params, grads, lr_ref: float) -> tuple[float, float]:
  """(relative error, cosine) of the float32 Δ against ``-lr_ref * g``."""
  exact = [-lr_ref * np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
  moved = jax.tree.map(lambda p, g: p - lr_ref * g, params, grads)
  delta = [
    np.asarray(m, np.float64) - np.asarray(p, np.float64)
    for m, p in zip(jax.tree.leaves(moved), jax.tree.leaves(params))
  ]
  err = sum(np.sum((d - e) ** 2) for d, e in zip(delta, exact))
  norm = sum(np.sum(e**2) for e in exact)
  dot = sum(np.sum(d * e) for d, e in zip(delta, exact))
  dnorm = sum(np.sum(d**2) for d in delta)
  return float(np.sqrt(err / norm)), float(dot / np.sqrt(norm * dnorm))


def run(cfg, archs, use_cache=True, progress=False):
  old, tasks = image.load_tasks(cfg)
  runners, records = image.Runners(cfg), []
  for arch in archs:
    pretrained = image.pretrain(arch, old, cfg, runners, use_cache, progress)
    loss = image.make_loss(arch)
    for shift, task in tasks.items():
      params = pretrained
      if shift != "rotated":  # a new head, as the benchmark's seed 0
        key = jax.random.fold_in(jax.random.PRNGKey(0), 1)
        params = {**pretrained, "head": image.init_head(task.num_classes, key)}
      n = cfg.batch_size
      x = jnp.asarray(task.train.images[:n])
      y = jnp.asarray(task.train.labels[:n])
      grads = jax.grad(loss)(params, x, y)
      for ratio in image.RATIOS:
        lr_ref = cfg.finetune_lr / ratio
        err, cos = measure(params, grads, lr_ref)
        common = {"method": f"profit-ratio{ratio}", "seed": 0, "arch": arch}
        common.update(shift=shift, ratio=ratio, lr_ref=lr_ref)
        records.append({**common, "metric": "delta_rel_error", "value": err})
        records.append({**common, "metric": "delta_cos", "value": cos})
  return records


def to_markdown(records, cfg, command) -> str:
  lines = [
    "# Float32 rounding of PROFIT's displacement Δ",
    "",
    f"Command: `{command}`",
    "",
    "One SGD reference step at `lr_ref = lr_main / ratio` (lr_main ="
    f" {cfg.finetune_lr:g}, AdamW in the image benchmark) from the pretrained"
    f" weights, on the first {cfg.batch_size} training images of each new"
    " task: relative error of the float32 Δ against the exact `-lr_ref·g`,"
    " and the cosine between them.",
    "",
    "| arch | shift | ratio | lr_ref | relative error | cosine |",
    "| --- | --- | ---: | ---: | ---: | ---: |",
  ]
  for r in _report.select(records, metric="delta_rel_error"):
    (cos,) = _report.values(
      records,
      metric="delta_cos",
      arch=r["arch"],
      shift=r["shift"],
      ratio=r["ratio"],
    )
    lines.append(
      f"| {r['arch']} | {r['shift']} | {r['ratio']} | {r['lr_ref']:.0e} |"
      f" {100 * r['value']:.1f}% | {cos:.4f} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="on digits")
  parser.add_argument("--out", type=pathlib.Path, default=None)
  parser.add_argument("--no-cache", action="store_true")
  args = parser.parse_args(argv)
  cfg = image.ImageConfig().quick() if args.quick else image.ImageConfig()
  argv = sys.argv[1:] if argv is None else list(argv)
  command = ("python -m benchmarks.rounding " + shlex.join(argv)).strip()
  out = args.out or (_report.OUT if args.quick else _report.RESULTS)
  records = run(cfg, image.ARCHS, use_cache=not args.no_cache)
  name = "rounding_quick" if args.quick else "rounding"
  report = to_markdown(records, cfg, command)
  _report.write(out, name, records, report)
  print(report)
  return records


if __name__ == "__main__":
  main()
