"""The overhead benchmark runs end to end in its quick mode."""

import json
import math

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import profit_optax
from benchmarks import overhead
from benchmarks._common import report as rep
from benchmarks.overhead.by_hand import by_hand_main_call, by_hand_step
from benchmarks.overhead.run import LR, LR_REF


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
    "by_hand",
    "by_hand_checked",
  ):
    assert math.isfinite(row["times"][drive]["ratio"])
  t = row["times"]
  for drive in (
    "profit_step",
    "profit_step_cond_guard",
    "floor_per_step_scan",
    "floor_per_step_unrolled",
    "by_hand",
    "by_hand_checked",
  ):
    assert math.isfinite(t[drive]["ratio_per_step_floor"])
  assert math.isfinite(t["profit_step_donated"]["ratio_undonated"])
  for name in ("by_hand", "by_hand_checked"):
    assert math.isfinite(t["profit_step"][f"ratio_{name}"])
  # One step's bytes, in passes over the parameters, for each way of
  # running it called once per step.
  passes = row["passes"]
  assert set(passes) == {"floor", "by_hand", "by_hand_checked", "profit_step"}
  assert all(p > 0 for p in passes.values())
  # The checks read each gradient once more: never fewer bytes than bare.
  assert passes["by_hand_checked"] > passes["by_hand"]
  assert "| profit_step ÷ by hand | profit_step ÷ checked |" in report
  # The floor called once per step is the faster of its two forms.
  assert t["floor_per_step"]["step_s"] <= min(
    t["floor_per_step_scan"]["step_s"], t["floor_per_step_unrolled"]["step_s"]
  )
  assert "| one call per step: floor ms | profit_step |" in report
  assert res["compiles"]["mlp"] == {"per_call": 1, "profit_step": 1}
  for call in (
    "guarded_adam",
    "adam_in_cond",
    "profit_main_call_cond_guard",
    "main_call_by_hand",
  ):
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


@pytest.mark.parametrize("checked", [False, True])
def test_by_hand_step_is_profit_step(checked):
  # The benchmark's Algorithm 1 by hand takes the step profit_step takes
  # (on finite gradients), so comparing their times compares like with like.
  # SGD with momentum as the main optimizer: Adam's first step is a sign,
  # which turns rounding in near-zero gradient elements into ±lr. The sums
  # are accumulated in another order: agreement to float32 rounding.
  model = overhead.MODELS["mlp"]
  params = model.init(jax.random.PRNGKey(0))
  batches = model.batches(jax.random.PRNGKey(1), 2)
  main = optax.sgd(LR, momentum=0.9)
  step = by_hand_step(model.loss, main, LR_REF, 1, checked)
  by_hand, state = step(params, main.init(params), batches)
  tx = profit_optax.profit(main, LR_REF)
  out = profit_optax.profit_step(
    model.loss, tx, params, tx.init(params), batches
  )
  # This step projects (ω < 0): the comparison covers the projection.
  assert bool(out.metrics["projected"])
  chex.assert_trees_all_close(by_hand, out.params, rtol=1e-4, atol=1e-7)
  chex.assert_trees_all_close(
    state,
    profit_optax.find_profit_state(out.opt_state).inner_state,
    rtol=1e-4,
    atol=1e-7,
  )


def test_by_hand_main_call_is_profit_main_call():
  # The main call by hand (the optimizer-only table's floor for the main
  # call) returns PROFIT's main update for the same Δ and gradient.
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"a": jax.random.normal(keys[0], (50,)), "b": jnp.ones((3, 4))}
  ref = jax.tree.map(lambda x: 0.3 * x + 0.1, params)
  grads = jax.tree.map(lambda x: -x, params)
  tx = profit_optax.profit(optax.adam(LR), LR_REF)
  state = tx.init(params)
  u, state = tx.update(ref, state, params, profit_phase="reference")
  moved = optax.apply_updates(params, u)
  expected, _ = tx.update(grads, state, moved, profit_phase="main")
  hand = by_hand_main_call(optax.adam(LR))
  delta = profit_optax.find_profit_state(state).delta
  got, _ = hand.update(grads, (optax.adam(LR).init(params), delta), moved)
  chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-8)


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
