"""The rounding report, from records only."""

from __future__ import annotations

from benchmarks._common import report as rep
from benchmarks.rounding.run import LR_MAIN


def to_markdown(records, meta, batch: int) -> str:
  lines = [
    "# Float32 rounding of PROFIT's displacement Δ",
    "",
    *rep.header(meta),
    "One PROFIT reference call (SGD at `lr_ref = lr_main / ratio`, lr_main ="
    f" {LR_MAIN:g}, AdamW's rate) from the image benchmark's pretrained"
    f" weights, on the first {batch} training images of each new task, in"
    " float32. Relative error against the exact `-lr_ref·g` (float64), and"
    " the cosine, of two definitions of Δ from the same call: *θ' − anchor*,"
    " the difference of the moved and the anchor parameters (Algorithm 1's"
    " line, and what the package computed before 0.2), and *kept Δ*, the sum"
    " of the reference updates that the package keeps in its state since"
    " 0.2. Gain: the first error over the second.",
    "",
    "| arch | shift | ratio | lr_ref | error, θ' − anchor | cosine |"
    " error, kept Δ | cosine | gain |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in rep.select(records, metric="delta_rel_error"):

    def value(metric, r=r):
      (v,) = rep.by_seed(
        records,
        metric=metric,
        arch=r["arch"],
        shift=r["shift"],
        ratio=r["ratio"],
      ).values()
      return v

    kept = value("kept_delta_rel_error")
    gain = f"{r['value'] / kept:.1e}×" if kept > 0 else "exact"
    lines.append(
      f"| {r['arch']} | {r['shift']} | {r['ratio']} | {r['lr_ref']:.0e} |"
      f" {100 * r['value']:.1f}% | {value('delta_cos'):.4f} |"
      f" {100 * kept:.2g}% | {value('kept_delta_cos'):.6f} | {gain} |"
    )
  return "\n".join(lines) + "\n"
