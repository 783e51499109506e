"""The paper's image-classification protocol (arXiv 2412.01930, Sec. 4.2,
Table 2) on offline data: MNIST -> Fashion-MNIST (new labels) and MNIST ->
MNIST rotated by 30 degrees, with a small CNN and a small ViT.

Protocol, per (shift, architecture):

1. pretrain on MNIST to a plateau (AdamW, cosine decay; the curve and the
   test accuracy are reported);
2. full AdamW's validation curves over twice the fine-tuning horizon (1000
   steps at batch 32 on the rotated shift; on the new labels, whose
   accuracy rises longer, 8000 for the CNN and 12000 for the ViT), to show
   whether the horizon reaches the plateau at the chosen rate;
3. every method's learning rate from a grid of 5 or 6 (full AdamW's
   from 1e-5, so that its front reaches down to little forgetting), and PROFIT's
   ``lr_main / lr_ref`` from the paper's range {10, 100, 1000, 10000},
   chosen on one seed by new-task accuracy on a validation split held out
   of the new task's training set (never the test sets); the forgetting is
   measured, not tuned for (step 5);
4. every method at its chosen values on 5 seeds (test accuracy);
5. the fronts: full AdamW traced by its rate, WiSE-FT (interpolation between
   the pretrained and the fine-tuned AdamW weights), PROFIT traced by its
   ratio (5 seeds) and by n_ref (3 seeds).

Methods: full fine-tuning with SGD (momentum 0.9), AdamW, Lookahead(Adam) and
Adan; head-only AdamW; PROFIT with AdamW as its main optimizer; PROFIT
(warmup): AdamW for the first 10 % of the steps, then a fresh PROFIT
(``profit_optax.profit_warmup``).

The default runs the CNN on the rotated shift (14 minutes measured on 2 CPU
cores shared with another job, with the pretrained CNN cached; pretraining
it adds about a minute; writes ``image_rotated.*``). ``--full`` runs both
shifts (54 minutes measured on 2 CPU cores; writes ``image.*``, the
committed run). ``--archs vit --shifts SHIFT`` runs the ViT on one shift
(the committed runs, alone on 2 CPU cores: rotated 12 minutes; new
labels, at 12000 steps, 121 minutes, longer than ``--full``). Needs
``bash scripts/fetch_data.sh`` first;
``--quick`` is a smoke run on scikit-learn's digits. ``--from-json PATH``
re-renders a report.

``--toolkit`` (its estimated run time is in its option's help above): the
same run plus the fine-tuning-without-forgetting toolkit, each method
around AdamW at AdamW's chosen rate with its own knob chosen on the
validation split (seed 0) from a grid of 4, then every seed at every knob
value (a front): PROFIT with a trust radius on the reference step, with a
preconditioned reference step, per layer, and after a warmup
(``profit_warmup``); L2-SP; FTP; SPD. Writes ``image_toolkit[_tags].{json,md}``
and ``image_toolkit[_tags]_fronts.png`` (tags as for the plain run).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from benchmarks._common import report as rep
from benchmarks.image import data as _data
from benchmarks.image import report, run, task

SEEDS = 5
# The default run's shift: one shift keeps it within 30 minutes on 2 cores.
DEFAULT_SHIFT = ("rotated",)
# --toolkit's run time, an estimate (not a measured run): each method's
# compiled 20-call chunk was timed on 2 cores shared with another job (every
# toolkit method costs 0.9-1.1x AdamW's time per call, PROFIT's variants two
# calls a step; an evaluation about 0.9 s), and a count of the distinct runs
# of one setting (92 without the toolkit, 227 with it) gives 2.4x the time
# of the run without --toolkit, for the CNN and the ViT alike; that factor
# scales the measured times in the docstring above (minutes, 2 CPU cores).
TOOLKIT_FACTOR = 2.4
MINUTES = {"default": 14, "full": 54}


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
    full="both shifts, new-labels and rotated (about 54 minutes on 2 CPU"
    " cores for the CNN)",
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
  parser.add_argument(
    "--toolkit",
    action="store_true",
    help="add the fine-tuning-without-forgetting toolkit's methods and"
    f" fronts (about {TOOLKIT_FACTOR:g}x the time of the same run without"
    f" it: about {round(MINUTES['default'] * TOOLKIT_FACTOR / 5) * 5}"
    " minutes for the default CNN on the rotated shift, about"
    f" {MINUTES['full'] * TOOLKIT_FACTOR / 60:.1f} hours with --full, on 2"
    " CPU cores; an estimate scaled from timed chunks of each method, not a"
    " measured run)",
  )
  args = rep.parse_args(parser, argv, SEEDS)
  if args.toolkit and args.pretraining:
    parser.error("--toolkit fine-tunes; --pretraining does not.")
  render = report.pretraining_report if args.pretraining else report.main_report
  if args.from_json:
    if "toolkit" in args.from_json.stem:
      render = report.toolkit_report
    return rep.rerender(args.from_json, args.out, render)
  cfg = run.Config().quick() if args.quick else run.Config()
  if args.data:
    cfg = dataclasses.replace(cfg, source=args.data)
  if args.pretraining:
    return _pretraining(parser, args, argv, cfg)
  archs = args.archs or ("cnn",)
  shifts = args.shifts or (
    task.SHIFTS if args.full or args.quick else DEFAULT_SHIFT
  )
  cfg = dataclasses.replace(
    cfg,
    archs=tuple(archs),
    seeds=args.seeds,
    nref_seeds=min(cfg.nref_seeds, args.seeds),
    toolkit=args.toolkit,
  )
  cfg = dataclasses.replace(cfg, shifts=tuple(shifts))
  extra = (
    {
      "warmup_calls": cfg.warmup_steps,
      "toolkit": {f: [k, list(g)] for f, (k, g) in run.TOOLKIT.items()},
    }
    if args.toolkit
    else {}
  )
  records, meta = _timed(
    parser,
    argv,
    cfg,
    lambda: run.run(cfg, not args.no_cache, not args.no_progress),
    extra,
  )
  # The CNN on both shifts is plain ``image``; anything else is tagged.
  tag = "" if tuple(archs) == ("cnn",) else "_" + "_".join(archs)
  if tuple(shifts) != tuple(task.SHIFTS):
    tag += "_" + "_".join(shifts)
  stem = "image_toolkit" if args.toolkit else "image"
  name = stem + tag + ("_quick" if args.quick else "")
  render = report.toolkit_report if args.toolkit else report.main_report
  md = render(records, meta, args.out, name)
  rep.write(args.out, name, records, md, meta)
  print(md)
  return records


def _timed(parser, argv, cfg, job, extra=None):
  """``job()``'s records and the run's meta (with ``extra``); missing data
  exits 2."""
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
      **(extra or {}),
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
