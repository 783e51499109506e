"""The rounding report, from records only."""

from __future__ import annotations

from benchmarks._common import report as rep
from benchmarks.rounding.run import LR_MAIN


def to_markdown(records, meta, batch: int) -> str:
  lines = [
    "# Float32 rounding of PROFIT's displacement Δ",
    "",
    *rep.header(meta),
    "One SGD reference step at `lr_ref = lr_main / ratio` (lr_main ="
    f" {LR_MAIN:g}, AdamW's rate) from the image benchmark's pretrained"
    f" weights, on the first {batch} training images of each new task:"
    " relative error of the float32 Δ against the exact `-lr_ref·g`, and the"
    " cosine between them.",
    "",
    "| arch | shift | ratio | lr_ref | relative error | cosine |",
    "| --- | --- | ---: | ---: | ---: | ---: |",
  ]
  for r in rep.select(records, metric="delta_rel_error"):
    (cos,) = rep.by_seed(
      records,
      metric="delta_cos",
      arch=r["arch"],
      shift=r["shift"],
      ratio=r["ratio"],
    ).values()
    lines.append(
      f"| {r['arch']} | {r['shift']} | {r['ratio']} | {r['lr_ref']:.0e} |"
      f" {100 * r['value']:.1f}% | {cos:.4f} |"
    )
  return "\n".join(lines) + "\n"
