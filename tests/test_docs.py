"""Every public name has an optax-style docstring with a runnable example.

The examples themselves run as doctests (pytest's ``--doctest-modules`` over
the package, see pyproject.toml); these tests check that every function and
class exported in ``profit_optax.__all__`` has one, with its Args, Returns and
References sections. PROFIT's names cite the PROFIT paper; the other methods of
the toolkit cite their own (``OWN_PAPER``).
"""

import doctest
import inspect

import pytest

import profit_optax

ARXIV = "https://arxiv.org/abs/2412.01930"
# Toolkit names that implement another paper's method: the arXiv link that
# their References must give instead of PROFIT's.
OWN_PAPER = {
  "l2sp": "https://arxiv.org/abs/1802.01483",
  "L2SPState": "https://arxiv.org/abs/1802.01483",
  "ftp": "https://arxiv.org/abs/2310.19182",
  "FTPState": "https://arxiv.org/abs/2310.19182",
  "spd": "https://arxiv.org/abs/2411.01713",
  "SPDState": "https://arxiv.org/abs/2411.01713",
}
# Dunder names (``__version__``) are data, not API with docstrings of their own.
PUBLIC = [name for name in profit_optax.__all__ if not name.startswith("__")]
FUNCTIONS = [n for n in PUBLIC if inspect.isfunction(getattr(profit_optax, n))]
CLASSES = [n for n in PUBLIC if inspect.isclass(getattr(profit_optax, n))]


def doc_of(name):
  return inspect.getdoc(getattr(profit_optax, name)) or ""


def test_every_public_name_is_a_function_or_a_class():
  assert sorted(FUNCTIONS + CLASSES) == sorted(PUBLIC)
  assert isinstance(profit_optax.__version__, str)


@pytest.mark.parametrize("name", PUBLIC)
def test_docstring_has_an_example(name):
  doc = doc_of(name)
  assert doc, f"{name} has no docstring"
  assert "\nExamples:\n" in doc, f"{name} has no Examples section"
  assert ">>>" in doc.split("\nExamples:\n", 1)[1], f"{name}: no doctest"


@pytest.mark.parametrize("name", PUBLIC)
def test_docstring_cites_the_paper(name):
  doc = doc_of(name)
  assert "\nReferences:\n" in doc
  assert OWN_PAPER.get(name, ARXIV) in doc.split("\nReferences:\n", 1)[1]


@pytest.mark.parametrize("name", PUBLIC)
def test_docstring_starts_with_a_one_line_summary(name):
  first, *rest = doc_of(name).split("\n")
  assert first.strip() and first.rstrip().endswith(".")
  assert not rest or not rest[0].strip()


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_docstring_has_args_and_returns(name):
  doc = doc_of(name)
  assert "\nArgs:\n" in doc and "\nReturns:\n" in doc
  for param in inspect.signature(getattr(profit_optax, name)).parameters:
    assert f"\n  {param}:" in doc, f"{name}: argument {param} undocumented"


@pytest.mark.parametrize("name", CLASSES)
def test_class_docstring_documents_every_field(name):
  cls = getattr(profit_optax, name)
  doc = doc_of(name)
  assert "\nAttributes:\n" in doc
  for field in cls._fields:
    assert f"\n  {field}:" in doc, f"{name}: field {field} undocumented"


@pytest.mark.parametrize("name", PUBLIC)
def test_examples_are_found_as_doctests(name):
  obj = getattr(profit_optax, name)
  tests = doctest.DocTestFinder(recurse=False).find(obj, name)
  assert sum(len(t.examples) for t in tests) >= 3
