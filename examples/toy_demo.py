"""Demo: fine-tune a converged MLP with PROFIT vs. standard fine-tuning.

The paper's toy experiment (Chakravarthy et al., arXiv 2412.01930, Sec. 4.1):
pretrain on ``sin(10 ‖x‖)`` + noise over ``[-1, 1]²``, fine-tune on
``[0.8, 1.5]²`` with full-model RMSProp, head-only RMSProp and PROFIT
(``n_ref = 1``, ``lr_ref = lr_main / 10`` and, the other end of the paper's
recommended range, ``lr_main / 10000``), and print each model's MSE against
the noiseless function on the old and the new domain beside the paper's
Table 1.

Run it with ``bash scripts/demo.sh`` (or ``python -m examples.toy_demo``).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
from tqdm.auto import tqdm

from examples import toy

LABELS = {
  "pretrained": "Pretrained on the old domain",
  "full": "Fine-tune, full model (RMSProp)",
  "head": "Fine-tune, head only (RMSProp)",
  "profit": "PROFIT, lr_ref = lr/10 (RMSProp)",
  "profit-ratio10000": "PROFIT, lr_ref = lr/10000 (RMSProp)",
}
RATIOS = (10.0, 10000.0)
DEFAULT_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache"


def format_table(results: dict[str, dict[str, float]]) -> str:
  """A Markdown table of measured and paper MSEs."""
  lines = [
    "| method | old-domain MSE | new-domain MSE | paper old | paper new |",
    "| --- | ---: | ---: | ---: | ---: |",
  ]
  for name, r in results.items():
    paper = toy.PAPER_TABLE1.get(name)
    paper_cols = f"{paper[0]:.4f} | {paper[1]:.3f}" if paper else "— | —"
    lines.append(
      f"| {LABELS[name]} | {r['mse_old']:.4f} | {r['mse_new']:.4f} |"
      f" {paper_cols} |"
    )
  return "\n".join(lines)


def verdicts(results: dict[str, dict[str, float]]) -> list[str]:
  """Plain-language notes on what the measured numbers say."""
  notes = []
  base, full = results["pretrained"], results["full"]
  for name, r in results.items():
    if not name.startswith("profit"):
      continue
    label = LABELS[name]
    if r["mse_new"] > base["mse_new"]:
      notes.append(
        f"{label} did worse on the new domain than no fine-tuning at all:"
        " the SGD reference step overshoots along this model's sharpest"
        " direction (see README, 'The toy experiment')."
      )
      continue
    old = "better" if r["mse_old"] < full["mse_old"] else "worse"
    new = "better" if r["mse_new"] < full["mse_new"] else "worse"
    notes.append(
      f"{label} vs full fine-tuning: old domain {old}, new domain {new}."
    )
  return notes


def run(
  cfg: toy.ToyConfig, cache_dir: pathlib.Path | None, show_progress: bool
):
  """Pretrains (or loads) the baseline and fine-tunes it three ways."""
  bar = lambda desc: (
    lambda it: tqdm(it, desc=desc, leave=False, disable=not show_progress)
  )
  key = jax.random.PRNGKey(cfg.seed)
  eval_key = jax.random.fold_in(key, 99)
  params = toy.pretrain(cfg, cache_dir, progress=bar("pretrain (RMSProp)"))
  results = {"pretrained": toy.evaluate(params, eval_key, cfg)}
  for name, (tx, calls) in toy.methods(cfg, ratios=RATIOS).items():
    tuned = toy.train(
      params,
      tx,
      calls,
      jax.random.fold_in(key, 1000 + len(results)),
      cfg,
      toy.NEW_DOMAIN,
      bar(f"fine-tune: {name}"),
    )
    results[name] = toy.evaluate(tuned, eval_key, cfg)
  return results


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--batch-size",
    type=int,
    default=toy.ToyConfig.batch_size,
    help="samples per gradient evaluation (default: %(default)s)",
  )
  parser.add_argument(
    "--quick",
    action="store_true",
    help="a tiny smoke run (200 pretraining / 100 fine-tuning steps)",
  )
  parser.add_argument(
    "--no-cache",
    action="store_true",
    help="always pretrain; by default the pretrained model is cached in"
    " .cache/",
  )
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)

  cfg = toy.ToyConfig(seed=args.seed, batch_size=args.batch_size)
  if args.quick:
    cfg = cfg.quick()
  cache_dir = None if args.no_cache else DEFAULT_CACHE
  print(
    f"Toy experiment (arXiv 2412.01930, Sec. 4.1), seed {cfg.seed}:"
    f" pretrain {cfg.pretrain_steps} steps RMSProp lr {cfg.pretrain_lr},"
    f" fine-tune {cfg.finetune_steps} steps lr {cfg.finetune_lr},"
    f" batch {cfg.batch_size}, PROFIT n_ref=1, lr_ref=lr/10 and lr/10000"
    f"{' [quick]' if args.quick else ''}"
  )
  start = time.perf_counter()
  results = run(cfg, cache_dir, show_progress=not args.no_progress)
  print()
  print(format_table(results))
  print()
  for note in verdicts(results):
    print("- " + note)
  print(
    "\nMSE against the noiseless f on 20k random points per domain (lower is"
    " better); the paper's Table 1 for reference."
    f"\nWall time {time.perf_counter() - start:.1f} s on"
    f" {jax.devices()[0].platform.upper()}."
  )
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
