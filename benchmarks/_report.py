"""Records and summaries shared by the evidence benchmarks (toy, image).

A benchmark writes a flat list of records, one per measured number::

  {"method": "profit", "seed": 0, "metric": "mse_old", "value": 0.05, ...}

with extra fields (``shift``, ``arch``, ``optimizer``, ``lr``, ...) saying
which setting it belongs to. Tables are computed from these records only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
from collections.abc import Iterable

import jax
import optax

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
OUT = pathlib.Path(__file__).resolve().parent / "out"


def machine() -> dict:
  """Where a run happened."""
  return {
    "platform": platform.platform(),
    "processor": platform.processor() or platform.machine(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "optax": optax.__version__,
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0].device_kind),
  }


def add_arguments(parser: argparse.ArgumentParser, seeds: int) -> None:
  """The options every evidence benchmark takes."""
  parser.add_argument(
    "--seeds", type=int, default=seeds, help="number of seeds"
  )
  parser.add_argument("--quick", action="store_true", help="a smoke run")
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help="output directory (default: benchmarks/results, or benchmarks/out"
    " with --quick)",
  )
  parser.add_argument("--no-cache", action="store_true")
  parser.add_argument("--no-progress", action="store_true")


def parse_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
  """Parses ``argv``, rejecting a non-positive ``--seeds``."""
  args = parser.parse_args(argv)
  if args.seeds < 1:
    parser.error(f"--seeds must be at least 1; got {args.seeds}.")
  return args


def select(records: Iterable[dict], **where) -> list[dict]:
  """The records whose fields equal every ``where`` item."""
  return [r for r in records if all(r.get(k) == v for k, v in where.items())]


def values(records: Iterable[dict], **where) -> list[float]:
  """The ``value`` of each selected record, in seed order."""
  chosen = sorted(select(records, **where), key=lambda r: r["seed"])
  return [r["value"] for r in chosen]


def mean_std(xs: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  if not xs:
    return math.nan, math.nan
  return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def fmt(xs: list[float], digits: int = 3, scale: float = 1.0) -> str:
  """``mean ± std`` of ``xs`` (times ``scale``), or ``n/a``."""
  if not xs:
    return "n/a"
  m, s = mean_std([scale * x for x in xs])
  if not (math.isfinite(m) and math.isfinite(s)):
    return "not finite"
  if abs(m) >= 1e4:
    return f"{m:.3g} ± {s:.3g}"
  return f"{m:.{digits}f} ± {s:.{digits}f}"


def write(
  out: pathlib.Path, name: str, records: list[dict], markdown: str
) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes ``name.json`` (the records) and ``name.md`` (the report)."""
  out.mkdir(parents=True, exist_ok=True)
  json_path, md_path = out / f"{name}.json", out / f"{name}.md"
  json_path.write_text(json.dumps(records, indent=1) + "\n")
  md_path.write_text(markdown)
  return json_path, md_path
