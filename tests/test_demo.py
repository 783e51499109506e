"""The demo (README's main job) runs end to end in its quick mode."""

import math

from examples import toy_demo


def test_demo_quick_prints_all_methods(capsys):
  results = toy_demo.main(["--quick", "--no-cache", "--no-progress"])
  assert list(results) == [
    "pretrained",
    "full",
    "head",
    "profit",
    "profit-ratio10000",
  ]
  for r in results.values():
    assert math.isfinite(r["mse_old"]) and math.isfinite(r["mse_new"])
  out = capsys.readouterr().out
  for label in toy_demo.LABELS.values():
    assert label in out
  assert "paper old" in out


def test_demo_cache_roundtrip(tmp_path):
  cfg = toy_demo.toy.ToyConfig().quick()
  first = toy_demo.toy.pretrain(cfg, tmp_path)
  assert len(list(tmp_path.glob("toy_pretrained_*.npz"))) == 1
  second = toy_demo.toy.pretrain(cfg, tmp_path)
  for k in first:
    assert (first[k] == second[k]).all()
