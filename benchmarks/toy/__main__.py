"""The paper's toy experiment (arXiv 2412.01930, Sec. 4.1, Table 1, Tables 3-4).

Default run (under 14 minutes on 2 CPU cores: ``--toolkit``, a superset of
it, took 13.6, pretraining 8 of the 10 seeds included): pretrain the MLP on the old
domain under the ``calibrated`` protocol (chosen by ``--calibrate``) for 10
seeds (a seed varies the pretraining and the fine-tuning), then fine-tune
every seed along each front: full RMSProp traced by its rate, WiSE-FT
(interpolation between the pretrained and the fully fine-tuned weights),
head-only RMSProp, and PROFIT traced by ``lr_main / lr_ref`` and by
``n_ref``. Records each pretrained model's new-domain error and the largest
Hessian eigenvalue of its new-domain loss. Writes ``toy.json``, ``toy.md``,
``toy_fronts.png``, ``toy_divergence.png`` and ``toy.png`` (Figure 2).

``--full`` (12.4 minutes measured on 2 shared CPU cores with the 20
pretrained networks cached; pretraining them adds about a minute each): adds
the ``unconverged`` protocol (batch 32,
constant rate: the old domain stays underfitted), so that the failure of
the paper's Assumption 2 is shown; the committed ``toy.json`` is this run.

``--calibrate`` (about 15 minutes): the pretraining grid, 3 batch sizes x
{constant, cosine} schedules x 5 seeds, then RMSProp's decay at the chosen
cell. Writes ``toy_calibration.{json,md,png}``.

``--toolkit`` (13.6 minutes measured on 2 CPU cores, pretraining 8 of the
10 seeds included; the committed ``toy_toolkit.json`` is this run): the
calibrated protocol only, the default run's fronts plus one front per method
of the fine-tuning-without-forgetting toolkit, each around RMSProp at the
fine-tuning rate: PROFIT with a trust radius on the reference step, with a
preconditioned reference step, per layer, and after a warmup; L2-SP; FTP;
SPD. Writes ``toy_toolkit.{json,md}`` and ``toy_toolkit_fronts.png``.

``--from-json PATH`` re-renders a report from committed records.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks._common import report as rep
from benchmarks.toy import report, run, task

SEEDS, CALIBRATION_SEEDS = 10, 5


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog=__doc__.split("\n\n", 1)[1],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  rep.add_arguments(
    parser,
    SEEDS,
    full="both protocols, calibrated and unconverged (12 minutes on 2 CPU"
    " cores with the pretrained networks cached, up to about 35 without)",
  )
  parser.add_argument(
    "--calibrate",
    action="store_true",
    help="run the pretraining calibration grid instead",
  )
  parser.add_argument(
    "--toolkit",
    action="store_true",
    help="the calibrated protocol with one front per method of the toolkit"
    " (13.6 minutes measured on 2 CPU cores, with most pretraining)",
  )
  args = rep.parse_args(parser, argv, SEEDS)
  if args.toolkit and (args.calibrate or args.full):
    parser.error("--toolkit runs the calibrated protocol only.")
  if args.from_json:
    stem = args.from_json.stem
    render = (
      report.calibration
      if "calibration" in stem
      else report.toolkit_report
      if "toolkit" in stem
      else report.main_report
    )
    return rep.rerender(args.from_json, args.out, render)
  cfg = run.Config().quick() if args.quick else run.Config()
  suffix = "_quick" if args.quick else ""
  progress = not args.no_progress
  with rep.Timer() as t:
    if args.calibrate:
      seeds = list(range(CALIBRATION_SEEDS if not args.quick else args.seeds))
      batches = run.GRID_BATCHES if not args.quick else (32, 64, 128)
      records = run.calibrate(seeds, cfg, not args.no_cache, progress, batches)
      figures, protocols = None, {}
    else:
      seeds = list(range(args.seeds))
      if args.toolkit:
        protocols = {"calibrated": task.PROTOCOLS["calibrated"]}
        options = {"fams": run.families(cfg) + run.toolkit_families(cfg)}
      else:
        protocols = (
          task.PROTOCOLS
          if args.full or args.quick  # --quick smoke-tests both
          else {"calibrated": task.PROTOCOLS["calibrated"]}
        )
        options = {"keep": {"pretrained", "full", "head", "profit"}}
      records, figures = run.run_protocols(
        protocols, seeds, cfg, not args.no_cache, progress, **options
      )
  meta = rep.finish_meta(
    {
      "command": rep.command("benchmarks.toy", argv),
      "seconds": t.seconds,
      "seeds": seeds,
      "config": repr(cfg),
      "protocols": {k: repr(v) for k, v in protocols.items()},
      **({"warmup_calls": run.warmup_calls(cfg)} if args.toolkit else {}),
    }
  )
  stem = (
    "toy_calibration"
    if args.calibrate
    else "toy_toolkit"
    if args.toolkit
    else "toy"
  )
  name = stem + suffix
  if args.calibrate:
    md = report.calibration(records, meta, args.out, name)
  elif args.toolkit:
    md = report.toolkit_report(records, meta, args.out, name)
  else:
    report.figure2(figures["calibrated"], args.out / f"{name}.png")
    md = report.main_report(records, meta, args.out, name)
  rep.write(args.out, name, records, md, meta)
  print(md)
  return records


if __name__ == "__main__":
  main()
