"""The overhead benchmark runs end to end in its quick mode."""

import json
import math

import pytest

from benchmarks import overhead
from benchmarks._common import report as rep


def test_overhead_quick(tmp_path):
  res = overhead.main(["--quick", "--out", str(tmp_path)])
  report = (tmp_path / "overhead_quick.md").read_text()
  data = json.loads((tmp_path / "overhead_quick.json").read_text())
  assert "Time per PROFIT step" in report and "Peak memory" in report
  (row,) = data["steps"]
  for drive in (
    "floor",
    "per_call",
    "whole_step",
    "profit_step",
    "profit_step_k",
    "naive_blend",
    "floor_per_step",
    "floor_per_step_scan",
    "floor_per_step_unrolled",
    "profit_step_cond_guard",
    "profit_step_donated",
  ):
    assert math.isfinite(row["times"][drive]["ratio"])
  t = row["times"]
  for drive in (
    "profit_step",
    "profit_step_cond_guard",
    "floor_per_step_scan",
    "floor_per_step_unrolled",
  ):
    assert math.isfinite(t[drive]["ratio_per_step_floor"])
  assert math.isfinite(t["profit_step_donated"]["ratio_undonated"])
  # The floor called once per step is the faster of its two forms.
  assert t["floor_per_step"]["step_s"] <= min(
    t["floor_per_step_scan"]["step_s"], t["floor_per_step_unrolled"]["step_s"]
  )
  assert "| one call per step: floor ms | profit_step |" in report
  assert res["compiles"]["mlp"] == {"per_call": 1, "profit_step": 1}
  for call in ("guarded_adam", "adam_in_cond", "profit_main_call_cond_guard"):
    assert call in data["optimizer_only"]
    assert f"| {call} |" in report
  for call in data["optimizer_only"].values():
    if isinstance(call, dict):
      assert call["passes"] > 0 and math.isfinite(call["ratio"])
      pages = call["fresh_pages"]
      assert pages is None or (math.isfinite(pages) and pages >= 0)
  mem = res["memory"]["mlp"]
  if mem["base_peak_bytes"] is not None:
    # Δ is the only parameter-sized extra, where no select of the moments
    # guards the main call.
    assert mem["extra_over_param_bytes"] <= 1.1
    assert mem["extra_main_cond_guard_over_param_bytes"] <= 1.1


@pytest.mark.parametrize("sub", ["", "sub"])
def test_overhead_quick_refuses_results(sub, capsys):
  # A smoke run must never overwrite (or sit beside) the committed results.
  with pytest.raises(SystemExit) as exit_info:
    overhead.main(["--quick", "--out", str(rep.RESULTS / sub)])
  assert exit_info.value.code == 2
  assert "never go into benchmarks/results" in capsys.readouterr().err


def test_transformer_peak_memory_is_one_anchor():
  # Δ passed into the main branch's lax.cond used to be materialised there:
  # +1.76x the parameter bytes on this model instead of +1.0x.
  mem = overhead.memory(overhead.MODELS["transformer"])
  if mem["base_peak_bytes"] is None:
    pytest.skip("this backend reports no memory analysis")
  assert mem["extra_over_param_bytes"] <= 1.1


def test_committed_report_rerenders_from_its_json(tmp_path):
  # The committed report is what its JSON says, under the current renderer.
  overhead.main(
    ["--from-json", str(rep.RESULTS / "overhead.json"), "--out", str(tmp_path)]
  )
  committed = (rep.RESULTS / "overhead.md").read_text()
  assert (tmp_path / "overhead.md").read_text() == committed
