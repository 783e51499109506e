"""PROFIT's cost against its floor: time, optimizer-only cost, memory, compiles.

A PROFIT step needs ``n_ref + 1`` gradient evaluations; this measures how
close each way of running it comes to ``n_ref + 1`` steps of the base
optimizer alone on the same model and batches, side by side in one run
(warm-up, compilation timed separately, ``block_until_ready``; the variants
are timed in interleaved rounds and each ratio is the median over rounds of
the ratio within a round), together with three peers: Algorithm 1 written
by hand as one jitted function (``by_hand``: bare, and with PROFIT's
non-finite checks), the same algorithm written naively (both branches every
call, blended with 0/1 arithmetic) and a straightforward PyTorch
implementation of Algorithm 1 on the toy MLP (skipped when torch is not
installed: ``pip install torch``).

Usage::

  python -m benchmarks.overhead                # full run, writes results/
  python -m benchmarks.overhead --quick        # a smoke run (seconds)
  python -m benchmarks.overhead --from-json benchmarks/results/overhead.json
                                               # re-render its report

The full run takes about 33 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

import jax
from tqdm.auto import tqdm

from benchmarks._common import report as rep
from benchmarks.overhead.models import MODELS, n_params
from benchmarks.overhead.report import to_markdown
from benchmarks.overhead.run import (
  compile_count,
  machine,
  memory,
  optimizer_only,
  step_passes,
  step_times,
  torch_peer,
)


def main(argv=None):
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.overhead",
    description=__doc__.split("\n\n")[0],
  )
  rep.add_output_arguments(parser)
  parser.add_argument("--models", nargs="+", default=list(MODELS))
  parser.add_argument(
    "--from-json",
    type=pathlib.Path,
    default=None,
    help="re-render the report of a committed JSON file and exit",
  )
  args = parser.parse_args(argv)
  rep.resolve_out(parser, args)
  if args.from_json:
    res = json.loads(args.from_json.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    report = to_markdown(res, "python -m benchmarks.overhead")
    (args.out / f"{args.from_json.stem}.md").write_text(report)
    return res

  quick = args.quick
  # Calls per timed loop (divisible by 2, 3 and 4) and rounds, per model.
  # The MLP's loops are short (0.1-0.5 s) and its ratios the noisiest: with
  # 9 rounds its profit_step(num_steps=k) ratio at n_ref 1 read 1.02 in one
  # quiet run and 1.08 in the next; more rounds cost it seconds. The CNN's
  # calls once per step take about 4 ms a step (its scan loops about 40):
  # 96 calls keep those rounds above 0.15 s.
  calls = {"mlp": 96, "cnn": 96, "transformer": 24}
  rounds = {"mlp": 27, "cnn": 9, "transformer": 15}
  repeats = 1 if quick else 9
  n_refs = (1,) if quick else (1, 2, 3)
  models = ["mlp"] if quick else args.models
  leaves, leaf = (10, 1000) if quick else (100, 100_000)
  res = {"machine": machine(), "steps": [], "memory": {}, "compiles": {}}
  jobs = [(m, k) for m in models for k in n_refs]
  for name, n_ref in tqdm(jobs, desc="step times"):
    model = MODELS[name]
    res["steps"].append(
      {
        "model": name,
        "description": model.description,
        "params": n_params(model.init(jax.random.PRNGKey(0))),
        "n_ref": n_ref,
        "passes": step_passes(model, n_ref),
        "times": step_times(
          model,
          n_ref,
          6 if quick else calls[name],
          1 if quick else rounds[name],
        ),
      }
    )
  res["optimizer_only"] = optimizer_only(leaves, leaf, max(repeats, 3))
  res["optimizer_only_leaves"] = leaves
  res["compile_steps"] = 4 if quick else 100
  for name in tqdm(models, desc="memory, compiles"):
    res["memory"][name] = memory(MODELS[name])
    res["compiles"][name] = compile_count(MODELS[name], res["compile_steps"])
  if "mlp" in models:
    res["torch"] = torch_peer(6 if quick else calls["mlp"], repeats)
  res["load_average_end_1m"] = os.getloadavg()[0]
  command = "python -m benchmarks.overhead" + (" --quick" if quick else "")
  report = to_markdown(res, command)
  args.out.mkdir(parents=True, exist_ok=True)
  suffix = "_quick" if quick else ""
  (args.out / f"overhead{suffix}.json").write_text(json.dumps(res, indent=2))
  (args.out / f"overhead{suffix}.md").write_text(report)
  print(report)
  return res


if __name__ == "__main__":
  main()
