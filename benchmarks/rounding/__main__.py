"""How much of PROFIT's displacement Δ survives float32 rounding.

With ``n_ref = 1`` and the default SGD reference, Δ is exactly
``-lr_ref * g`` in exact arithmetic. Written as Algorithm 1 writes it, the
difference of the moved and the anchor parameters, in float32 it is
``fl(θ - lr_ref * g) - θ``, and once ``lr_ref * |g|`` nears the spacing of
float32 numbers around the weights, Δ is mostly rounding. The package keeps
Δ as the sum of the reference updates instead. This measures, for both, the
relative error ``‖Δ - (-lr_ref g)‖ / ‖lr_ref g‖`` and the cosine between Δ
and the exact step, for the image benchmark's pretrained CNN and ViT on a
batch of each shift's new task, at ``lr_main / lr_ref`` = 10 ... 10000 with
AdamW at 1e-4.

Usage::

  python -m benchmarks.rounding           # seconds once benchmarks.image has
                                          # cached its pretrained models
  python -m benchmarks.rounding --quick   # on scikit-learn's digits
"""

from __future__ import annotations

import argparse
import sys

from benchmarks._common import report as rep
from benchmarks.image import run as image_run
from benchmarks.image import task as T
from benchmarks.rounding import report, run


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  rep.add_arguments(parser, seeds=1)
  args = rep.parse_args(parser, argv, seeds=1, quick_seeds=1)
  cfg = image_run.Config().quick() if args.quick else image_run.Config()
  with rep.Timer() as t:
    records = run.run(cfg, T.ARCHS, use_cache=not args.no_cache)
  meta = rep.finish_meta(
    {"command": rep.command("benchmarks.rounding", argv), "seconds": t.seconds}
  )
  name = "rounding_quick" if args.quick else "rounding"
  md = report.to_markdown(records, meta, cfg.batch)
  rep.write(args.out, name, records, md, meta)
  print(md)
  return records


if __name__ == "__main__":
  main()
