"""Demo: fine-tune a converged MLP with PROFIT vs. standard fine-tuning.

The paper's toy experiment (Chakravarthy et al., arXiv 2412.01930, Sec. 4.1)
under the calibrated pretraining protocol (see
``benchmarks/results/toy_calibration.md``), over several seeds: pretrain on
``sin(10 ‖x‖)`` + noise over ``[-1, 1]²``, fine-tune on ``[0.8, 1.5]²`` with
full-model RMSProp, head-only RMSProp and PROFIT (``n_ref = 1``,
``lr_ref = lr_main / 10`` and ``lr_main / 10000``, the ends of the paper's
range), and print each seed's MSE against the noiseless function on the old
and the new domain, then the medians beside the paper's Table 1.

One seed's numbers depend on the machine (10000 training steps amplify
floating-point differences between CPUs); the medians over seeds are what
carries over. ``python -m benchmarks.toy`` runs the full study.

Run it with ``bash scripts/demo.sh`` (or ``python -m examples.toy_demo``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import optax

import profit_optax
from benchmarks.toy import run, task

LABELS = {
  "pretrained": "Pretrained on the old domain",
  "full": "Fine-tune, full model (RMSProp)",
  "head": "Fine-tune, head only (RMSProp)",
  "profit": "PROFIT, lr_ref = lr/10 (RMSProp)",
  "profit-ratio10000": "PROFIT, lr_ref = lr/10000 (RMSProp)",
}
RATIOS = (10.0, 10000.0)


def families(cfg: run.Config) -> list[run.Family]:
  lr = cfg.finetune.lr
  return [
    run.Family("full", "lr", (lr,), lambda x: optax.rmsprop(x)),
    run.Family("head", "lr", (lr,), lambda x: task.head_only(optax.rmsprop(x))),
    run.Family(
      "profit-ratio",
      "ratio",
      RATIOS,
      lambda r: profit_optax.profit(optax.rmsprop(lr), lr / r, n_ref=1),
      2,
    ),
  ]


def run_demo(seeds, cfg: run.Config, use_cache: bool) -> dict:
  """``{method: {seed: (mse_old, mse_new)}}`` under the calibrated protocol."""
  runners, out = run.Runners(cfg), {name: {} for name in LABELS}
  for seed in seeds:
    t0 = time.perf_counter()
    params0 = run.pretrain(task.CALIBRATED, seed, cfg, use_cache)
    records, _ = run.finetune_seed(
      "calibrated", params0, seed, cfg, runners, families(cfg)
    )
    for r in records:
      if r["method"] in LABELS and r["metric"] in ("mse_old", "mse_new"):
        pair = out[r["method"]].setdefault(seed, {})
        pair[r["metric"]] = r["value"]
    print(f"  seed {seed}: {time.perf_counter() - t0:.1f} s", flush=True)
  return out


def format_tables(results: dict) -> str:
  seeds = sorted(results["pretrained"])
  lines = [
    "Per seed, old-domain MSE / new-domain MSE:",
    "",
    "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
    "| --- |" + " ---: |" * len(seeds),
  ]
  for name, by_seed in results.items():
    cells = " | ".join(
      f"{by_seed[s]['mse_old']:.4f} / {by_seed[s]['mse_new']:.4f}"
      for s in seeds
    )
    lines.append(f"| {LABELS[name]} | {cells} |")
  lines += [
    "",
    f"Medians over {len(seeds)} seeds, with the paper's Table 1:",
    "",
    "| method | old-domain MSE | new-domain MSE | paper old | paper new |"
    " worse on new than pretrained |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
  ]
  base = results["pretrained"]
  for name, by_seed in results.items():
    med = {
      m: statistics.median(by_seed[s][m] for s in seeds)
      for m in ("mse_old", "mse_new")
    }
    paper = task.PAPER_TABLE1.get(name)
    paper_cols = f"{paper[0]} | {paper[1]}" if paper else "— | —"
    worse = sum(not by_seed[s]["mse_new"] <= base[s]["mse_new"] for s in seeds)
    worse_col = "—" if name == "pretrained" else f"{worse}/{len(seeds)}"
    lines.append(
      f"| {LABELS[name]} | {med['mse_old']:.4f} | {med['mse_new']:.4f} |"
      f" {paper_cols} | {worse_col} |"
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, default=3, help="number of seeds")
  parser.add_argument(
    "--quick",
    action="store_true",
    help="a tiny smoke run (200 pretraining / 100 fine-tuning steps)",
  )
  parser.add_argument(
    "--no-cache",
    action="store_true",
    help="always pretrain; by default pretrained models are cached in .cache/",
  )
  parser.add_argument(
    "--no-progress",
    action="store_true",
    help="accepted for compatibility; prints per seed only",
  )
  args = parser.parse_args(argv)
  if args.seeds < 1:
    parser.error(f"--seeds must be at least 1; got {args.seeds}.")
  cfg = run.Config().quick() if args.quick else run.Config()
  p = task.CALIBRATED
  print(
    "Toy experiment (arXiv 2412.01930, Sec. 4.1), calibrated protocol:"
    f" pretrain {cfg.pretrain_steps} RMSProp steps, lr {p.lr} ({p.label()}),"
    f" fine-tune {cfg.finetune.steps} steps at lr {cfg.finetune.lr},"
    f" batch {cfg.finetune.batch}; PROFIT n_ref = 1;"
    f" seeds 0-{args.seeds - 1}{' [quick]' if args.quick else ''}",
    flush=True,
  )
  start = time.perf_counter()
  results = run_demo(range(args.seeds), cfg, not args.no_cache)
  print()
  print(format_tables(results))
  print(
    "\nMSE against the noiseless f on 20000 random points per domain (lower"
    " is better). One seed's numbers vary between machines; compare medians,"
    " and see benchmarks/results/toy.md for 10 seeds with confidence"
    f" intervals.\nWall time {time.perf_counter() - start:.1f} s on"
    f" {jax.devices()[0].platform.upper()}."
  )
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
