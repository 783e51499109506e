"""Records, command-line options, timing and report files.

A benchmark writes a flat list of records, one per measured number::

  {"method": "profit", "seed": 0, "metric": "mse_old", "value": 0.05, ...}

with extra fields (``protocol``, ``shift``, ``arch``, ``front``, ``knob`` ...)
saying which setting it belongs to. Every table and figure is computed from
these records only, and ``<name>.json`` stores them with the exact command,
the package versions and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import shlex
import time
from collections.abc import Iterable

import jax
import numpy as np
import optax

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1]
RESULTS = BENCHMARKS / "results"
OUT = BENCHMARKS / "out"


def machine() -> dict:
  """Where and with what a run happened."""
  import flax

  return {
    "platform": platform.platform(),
    "processor": platform.processor() or platform.machine(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "optax": optax.__version__,
    "flax": flax.__version__,
    "numpy": np.__version__,
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0].device_kind),
  }


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
  """``--quick`` and ``--out``, which every benchmark takes."""
  parser.add_argument(
    "--quick",
    action="store_true",
    help="a smoke run; writes to benchmarks/out, never to benchmarks/results",
  )
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help="output directory (default: benchmarks/results, or benchmarks/out"
    " with --quick)",
  )


def resolve_out(parser: argparse.ArgumentParser, args) -> None:
  """Fills ``args.out`` and creates it; a quick run may not write into the
  results."""
  if args.out is None:
    args.out = OUT if args.quick else RESULTS
  if args.quick and args.out.resolve().is_relative_to(RESULTS.resolve()):
    parser.error(
      "--quick results are smoke runs and never go into benchmarks/results;"
      " pass another --out."
    )
  args.out.mkdir(parents=True, exist_ok=True)


def add_arguments(
  parser: argparse.ArgumentParser, seeds: int, full: str | None = None
) -> None:
  """The options every evidence benchmark takes.

  ``full``, if given, is the help text of ``--full`` (say how long it takes).
  """
  parser.add_argument(
    "--seeds", type=int, default=None, help=f"number of seeds (default {seeds})"
  )
  add_output_arguments(parser)
  if full is not None:
    parser.add_argument("--full", action="store_true", help=full)
  parser.add_argument("--no-cache", action="store_true")
  parser.add_argument("--no-progress", action="store_true")
  parser.add_argument(
    "--from-json",
    type=pathlib.Path,
    default=None,
    help="re-render the report of a committed JSON file and exit",
  )


def parse_args(
  parser: argparse.ArgumentParser, argv, seeds: int, quick_seeds: int = 2
) -> argparse.Namespace:
  """Parses ``argv``; fills ``seeds`` and ``out``; rejects bad values."""
  args = parser.parse_args(argv)
  if args.seeds is None:
    args.seeds = quick_seeds if args.quick else seeds
  if args.seeds < 1:
    parser.error(f"--seeds must be at least 1; got {args.seeds}.")
  resolve_out(parser, args)
  return args


def rerender(path: pathlib.Path, out: pathlib.Path, render) -> list[dict]:
  """Writes ``out/<stem>.md`` (and figures) from committed records:
  ``render(records, meta, out, name) -> markdown``."""
  payload = load(path)
  name = pathlib.Path(path).stem
  out.mkdir(parents=True, exist_ok=True)
  md = render(payload["records"], payload["meta"], out, name)
  (out / f"{name}.md").write_text(md)
  return payload["records"]


def command(module: str, argv) -> str:
  """The command that reproduces a run of ``python -m module``."""
  return shlex.join(["python", "-m", module, *argv])


def finish_meta(meta: dict) -> dict:
  """``meta`` with the machine and the load at the end of the run (a wall
  time measured while other work shared the cores is an upper bound)."""
  load = dict(zip(("1m", "5m", "15m"), os.getloadavg()))
  return {**meta, "machine": machine(), "load_average": load}


def select(records: Iterable[dict], **where) -> list[dict]:
  """The records whose fields equal every ``where`` item."""
  return [r for r in records if all(r.get(k) == v for k, v in where.items())]


def by_seed(records: Iterable[dict], **where) -> dict[int, float]:
  """``{seed: value}`` of the selected records (one per seed)."""
  out = {}
  for r in select(records, **where):
    if r["seed"] in out:
      raise ValueError(f"two records for seed {r['seed']} with {where}")
    out[r["seed"]] = r["value"]
  return dict(sorted(out.items()))


def write(
  out: pathlib.Path,
  name: str,
  records: list[dict],
  markdown: str,
  meta: dict,
) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes ``name.json`` ({"meta", "records"}) and ``name.md``; ``meta``
  comes from :func:`finish_meta`."""
  out.mkdir(parents=True, exist_ok=True)
  json_path, md_path = out / f"{name}.json", out / f"{name}.md"
  payload = {"meta": meta, "records": records}
  json_path.write_text(json.dumps(payload, indent=1) + "\n")
  md_path.write_text(markdown)
  return json_path, md_path


def load(path: pathlib.Path) -> dict:
  return json.loads(pathlib.Path(path).read_text())


class Timer(contextlib.AbstractContextManager):
  """``with Timer() as t: ...``; then ``t.seconds``."""

  def __enter__(self):
    self.start = time.perf_counter()
    self.seconds = float("nan")
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self.start
    return False


def header(meta: dict) -> list[str]:
  """The lines every report starts with: command, time, versions."""
  m = meta.get("machine") or machine()
  return [
    f"Command: `{meta['command']}`",
    "",
    f"Wall time {meta['seconds'] / 60:.1f} min on {m['cpu_count']} CPU cores"
    f" ({m['backend']}); jax {m['jax']}, optax {m['optax']}, flax {m['flax']},"
    f" numpy {m['numpy']}, Python {m['python']}."
    + (
      f" Load average at the end: {meta['load_average']['15m']:.1f} (15 min)."
      if "load_average" in meta
      else ""
    ),
    "",
  ]
