"""The demo (README's main job) runs end to end in its quick mode."""

import math

from examples import toy_demo


def test_demo_quick_prints_every_method_and_seed(capsys):
  results = toy_demo.main(["--quick", "--no-cache", "--seeds", "2"])
  assert list(results) == list(toy_demo.LABELS)
  for by_seed in results.values():
    assert sorted(by_seed) == [0, 1]
    for r in by_seed.values():
      assert math.isfinite(r["mse_old"]) and math.isfinite(r["mse_new"])
  out = capsys.readouterr().out
  for label in toy_demo.LABELS.values():
    assert out.count(label) == 2  # per-seed table and medians
  assert "seed 1" in out and "Medians over 2 seeds" in out


def test_demo_rejects_no_seeds():
  import pytest

  with pytest.raises(SystemExit):
    toy_demo.main(["--seeds", "0"])
