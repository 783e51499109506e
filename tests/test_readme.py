"""Every Python code block in README.md runs."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
  assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys):
  exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})
  assert capsys.readouterr().out.strip()  # every block prints its result
