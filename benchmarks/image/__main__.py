"""The paper's image-classification protocol (arXiv 2412.01930, Sec. 4.2,
Table 2) on offline data: MNIST -> Fashion-MNIST (new labels) and MNIST ->
MNIST rotated by 30 degrees, with a small CNN and a small ViT.

Protocol, per (shift, architecture):

1. pretrain on MNIST to a plateau (AdamW, cosine decay; the curve and the
   test accuracy are reported);
2. full AdamW's validation curves over twice the fine-tuning horizon, to show
   that the horizon reaches the plateau;
3. every method's learning rate from a grid of 4, and PROFIT's
   ``lr_main / lr_ref`` from the paper's range {10, 100, 1000, 10000}, chosen
   on one seed by the mean of old-task and new-task accuracy on validation
   splits held out of the training sets (never the test sets);
4. every method at its chosen values on 5 seeds (test accuracy);
5. the fronts: full AdamW traced by its rate, WiSE-FT (interpolation between
   the pretrained and the fine-tuned AdamW weights), PROFIT traced by its
   ratio (5 seeds) and by n_ref (3 seeds).

Methods: full fine-tuning with SGD (momentum 0.9), AdamW, Lookahead(Adam) and
Adan; head-only AdamW; PROFIT with AdamW as its main optimizer; PROFIT
(warmup): AdamW for the first 10 % of the steps, then PROFIT.

The default runs the CNN (about 20 minutes on 2 CPU cores); ``--full`` adds
the ViT. Needs ``bash scripts/fetch_data.sh`` first; ``--quick`` is a smoke
run on scikit-learn's digits. ``--from-json PATH`` re-renders a report.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from benchmarks._common import report as rep
from benchmarks.image import data as _data
from benchmarks.image import report, run

SEEDS = 5


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
    full="both architectures, CNN and ViT (about 60 minutes on 2 CPU cores)",
  )
  parser.add_argument(
    "--data",
    choices=("mnist", "digits"),
    default=None,
    help="data source (default mnist; digits with --quick)",
  )
  parser.add_argument(
    "--archs", nargs="+", choices=("cnn", "vit"), default=None
  )
  parser.add_argument(
    "--shifts", nargs="+", choices=("new-labels", "rotated"), default=None
  )
  parser.add_argument(
    "--pretraining",
    action="store_true",
    help="only redo the pretraining from scratch (both architectures unless"
    " --archs), with its validation curve, and compare the weights with the"
    " cached ones (about 15 minutes on 2 CPU cores)",
  )
  args = rep.parse_args(parser, argv, SEEDS)
  render = report.pretraining_report if args.pretraining else report.main_report
  if args.from_json:
    return rep.rerender(args.from_json, args.out, render)
  cfg = run.Config().quick() if args.quick else run.Config()
  if args.data:
    cfg = dataclasses.replace(cfg, source=args.data)
  if args.pretraining:
    return _pretraining(parser, args, argv, cfg)
  archs = args.archs or (("cnn", "vit") if args.full else ("cnn",))
  cfg = dataclasses.replace(
    cfg,
    archs=tuple(archs),
    seeds=args.seeds,
    nref_seeds=min(cfg.nref_seeds, args.seeds),
  )
  if args.shifts:
    cfg = dataclasses.replace(cfg, shifts=tuple(args.shifts))
  records, meta = _timed(
    parser,
    argv,
    cfg,
    lambda: run.run(cfg, not args.no_cache, not args.no_progress),
  )
  default = ("cnn", "vit") if args.full else ("cnn",)
  tag = "" if tuple(archs) == default else "_" + "_".join(archs)
  if args.shifts:
    tag += "_" + "_".join(args.shifts)
  name = (
    "image"
    + ("_full" if args.full else "")
    + tag
    + ("_quick" if args.quick else "")
  )
  md = report.main_report(records, meta, args.out, name)
  rep.write(args.out, name, records, md, meta)
  print(md)
  return records


def _timed(parser, argv, cfg, job):
  """``job()``'s records and the run's meta; missing data exits 2."""
  try:
    with rep.Timer() as t:
      records = job()
  except _data.DataMissingError as err:
    parser.exit(2, f"{err}\n")
  meta = rep.finish_meta(
    {
      "command": rep.command("benchmarks.image", argv),
      "seconds": t.seconds,
      "config": repr(cfg),
    }
  )
  return records, meta


def _pretraining(parser, args, argv, cfg):
  cfg = dataclasses.replace(cfg, archs=tuple(args.archs or ("cnn", "vit")))
  records, meta = _timed(parser, argv, cfg, lambda: run.pretraining(cfg))
  name = "image_pretraining" + ("_quick" if args.quick else "")
  md = report.pretraining_report(records, meta, args.out, name)
  rep.write(args.out, name, records, md, meta)
  print(md)
  return records


if __name__ == "__main__":
  main()
