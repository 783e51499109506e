"""The notebooks in notebooks/: stored clean, Colab-ready, and they all run.

Each notebook is executed top to bottom in a fresh kernel (the Python that
runs the tests) with ``PROFIT_OPTAX_FAST=1``, which shrinks every step count
while still running every cell, and ``JAX_PLATFORMS=cpu``.
"""

import pathlib
import time

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = [path.name for path in NOTEBOOKS]
# A generous bound per notebook: in FAST mode each runs in well under a minute
# on two CPU cores.
CELL_TIMEOUT_S = 600


def read(path):
  return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def test_there_are_notebooks():
  assert {"01_quickstart.ipynb", "02_flax_finetuning.ipynb"} <= set(NAMES)
  assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_is_stored_without_outputs(path):
  nb = read(path)
  assert nb.nbformat == 4
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [], f"cell {i} has stored outputs"
      assert cell.execution_count is None, f"cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_starts_with_the_colab_install_cell(path):
  first = read(path).cells[0]
  assert first.cell_type == "code"
  source = first.source
  assert 'PROFIT_OPTAX_SPEC = "' in source
  assert '"google.colab" in sys.modules' in source
  assert "%pip install" in source and '"{PROFIT_OPTAX_SPEC}"' in source
  # The install runs on Colab only: nothing at the top level but the import,
  # the spec and the guarded block.
  top_level = [
    line
    for line in source.splitlines()
    if line and not line.startswith((" ", "#"))
  ]
  assert len(top_level) == 3, top_level
  assert top_level[0] == "import sys"
  assert top_level[1].startswith("PROFIT_OPTAX_SPEC = ")
  assert top_level[2] == 'if "google.colab" in sys.modules:'


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_has_a_fast_mode(path):
  code = "\n".join(
    cell.source for cell in read(path).cells if cell.cell_type == "code"
  )
  assert 'FAST = os.environ.get("PROFIT_OPTAX_FAST") == "1"' in code


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_runs_in_fast_mode(path, monkeypatch):
  # The kernel inherits this environment.
  monkeypatch.setenv("PROFIT_OPTAX_FAST", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  # Jupyter warns (DeprecationWarning) unless it is told which data paths to
  # use; the standard platform directories are the future default.
  monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
  nb = read(path)
  client = nbclient.NotebookClient(
    nb,
    timeout=CELL_TIMEOUT_S,
    kernel_name="python3",
    resources={"metadata": {"path": str(path.parent)}},
  )
  start = time.perf_counter()
  client.execute()  # raises CellExecutionError on the first failing cell
  elapsed = time.perf_counter() - start
  errors = [
    out
    for cell in nb.cells
    if cell.cell_type == "code"
    for out in cell.outputs
    if out.output_type == "error"
  ]
  assert not errors
  images = sum(
    "image/png" in out.get("data", {})
    for cell in nb.cells
    if cell.cell_type == "code"
    for out in cell.outputs
  )
  assert images >= 2, f"{path.name} drew {images} figures"
  print(f"{path.name}: {elapsed:.1f} s")
