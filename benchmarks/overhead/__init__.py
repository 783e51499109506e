"""PROFIT's cost against its floor: ``python -m benchmarks.overhead``.

``main`` runs the benchmark (the command line of ``__main__``), ``memory``
measures one model's peak memory, and ``MODELS`` are the models it runs on.
"""

from benchmarks.overhead.models import MODELS
from benchmarks.overhead.run import memory


def main(argv=None):
  """``python -m benchmarks.overhead`` with arguments ``argv``."""
  # Imported here, not at the top: importing ``__main__`` with the package
  # would make ``python -m benchmarks.overhead`` warn that it is already
  # loaded.
  from benchmarks.overhead import __main__ as cli

  return cli.main(argv)


__all__ = ["MODELS", "main", "memory"]
