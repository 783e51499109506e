"""Per-layer PROFIT: ``projection_groups`` computes ω and the projection per
leaf or per labelled group of leaves."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import profit_optax
from tests import helpers, reference

LAYERS = {"w1": "layer1", "b1": "layer1", "w2": "layer2", "b2": "layer2"}
GROUPINGS = {
  "leaf": ("leaf", [["w1"], ["b1"], ["w2"], ["b2"]]),
  "labels": (LAYERS, [["w1", "b1"], ["w2", "b2"]]),
  "callable": (
    lambda p: {k: "bias" if v.ndim == 1 else "weight" for k, v in p.items()},
    [["w1", "w2"], ["b1", "b2"]],
  ),
}


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("n_ref", [1, 2])
@pytest.mark.parametrize("grouping", list(GROUPINGS))
def test_matches_numpy_reference(grouping, n_ref):
  groups, ref_groups = GROUPINGS[grouping]
  params0, batches = helpers.problem(n_ref)
  steps = helpers.STEPS
  # Keys in the order jax flattens the dict (sorted), as the NumPy groups sum.
  expected, records = reference.profit_reference(
    params0,
    reference.NumpyAdam(0.005),
    0.01,
    n_ref,
    iter(batches),
    steps,
    groups=ref_groups,
  )
  global_params, _ = reference.profit_reference(
    params0, reference.NumpyAdam(0.005), 0.01, n_ref, iter(batches), steps
  )
  # Per-group projection is a different trajectory from the global one.
  assert max(np.max(np.abs(expected[k] - global_params[k])) for k in expected)
  assert any(r.projected for r in records)
  p0 = helpers.to_jax(params0)
  kw = dict(projection_groups=groups)
  tx = profit_optax.profit(optax.adam(0.005), 0.01, n_ref, **kw)
  got, diags = helpers.run_per_call(tx, p0, batches)
  helpers.assert_close(got, expected)
  np.testing.assert_array_equal(
    [bool(d.projected) for d in diags], [r.projected for r in records]
  )
  np.testing.assert_allclose(
    [float(d.omega) for d in diags],
    [r.omega for r in records],
    rtol=1e-9,
    atol=1e-12,
  )
  np.testing.assert_allclose(
    [float(d.cos) for d in diags],
    [r.cos for r in records],
    rtol=1e-8,
    atol=1e-12,
  )
  opaque = profit_optax.profit(
    optax.adam(0.005), 0.01, n_ref, opaque_mode=True, **kw
  )
  got, _ = helpers.run_whole_step(opaque, p0, batches, n_ref + 1)
  helpers.assert_close(got, expected)
  got, metrics, _ = helpers.run_profit_step(tx, p0, batches, n_ref + 1)
  helpers.assert_close(got, expected)
  np.testing.assert_allclose(
    [float(m["delta_norm"]) for m in metrics],
    [r.delta_norm for r in records],
    rtol=1e-9,
  )


def test_hand_computed_per_leaf_projection():
  # Δ = (-0.25, -0.25) over two leaves; g = (1, -2) at the displaced point.
  # Globally ω = -0.25 + 0.5 = 0.25 >= 0: nothing is projected. Per leaf,
  # leaf a has ω_a = -0.25 < 0: its g loses its part along Δ_a (all of it);
  # leaf b has ω_b = 0.5 >= 0 and keeps g_b.
  params = {"a": jnp.array([1.0]), "b": jnp.array([1.0])}
  ref_grad = {"a": jnp.array([1.0]), "b": jnp.array([1.0])}
  main_grad = {"a": jnp.array([1.0]), "b": jnp.array([-2.0])}
  out = {}
  for groups in (None, "leaf", {"a": 0, "b": 1}):
    tx = profit_optax.profit(optax.sgd(0.5), 0.25, projection_groups=groups)
    state = tx.init(params)
    p = params
    for g in (ref_grad, main_grad):
      updates, state = tx.update(g, state, p)
      p = optax.apply_updates(p, updates)
    out[str(groups)] = (p, state.diagnostics)
  p, d = out["None"]
  np.testing.assert_array_equal(p["a"], [0.5])  # anchor 1 - 0.5 * 1
  assert float(d.omega) == 0.25 and not bool(d.projected)
  for key in ("leaf", str({"a": 0, "b": 1})):
    p, d = out[key]
    np.testing.assert_array_equal(p["a"], [1.0])  # g_a projected to 0
    np.testing.assert_array_equal(p["b"], [2.0])  # 1 - 0.5 * (-2)
    # The diagnostics stay global: ω sums the groups, cos and ‖Δ‖ are global.
    assert float(d.omega) == 0.25 and bool(d.projected)
    assert float(d.delta_norm) == float(jnp.sqrt(0.125))


def test_one_group_is_algorithm_1_exactly():
  params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([-1.0])}
  rng = np.random.default_rng(0)
  grads = [
    jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
    for _ in range(6)
  ]
  results = []
  one = lambda p: jax.tree.map(lambda _: 0, p)
  for groups in (None, {"a": "all", "b": "all"}, one):
    tx = profit_optax.profit(optax.adam(0.1), 0.05, projection_groups=groups)
    state, p = tx.init(params), params
    for g in grads:
      updates, state = jax.jit(tx.update)(g, state, p)
      p = optax.apply_updates(p, updates)
    results.append((p, state.diagnostics))
  for p, d in results[1:]:
    for k in p:
      np.testing.assert_array_equal(p[k], results[0][0][k])
    np.testing.assert_array_equal(d.omega, results[0][1].omega)
    np.testing.assert_array_equal(d.cos, results[0][1].cos)


def test_prefix_labels_as_in_multi_transform():
  params = {
    "enc": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)},
    "head": jnp.ones(3),
  }
  tx = profit_optax.profit(
    optax.sgd(0.1), 0.01, projection_groups={"enc": "enc", "head": "head"}
  )
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert int(state.step) == 1


def test_keeps_dtypes():
  params = {"a": jnp.ones(4, jnp.bfloat16), "b": jnp.ones(3, jnp.float32)}
  tx = profit_optax.profit(optax.sgd(0.1), 0.01, projection_groups="leaf")
  state = tx.init(params)
  for _ in range(2):  # Δ = -0.01 (1, ..., 1); g = (1, ..., 1): ω < 0
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert params["a"].dtype == jnp.bfloat16 and params["b"].dtype == jnp.float32
  assert state.diagnostics.omega.dtype == jnp.float32
  assert bool(state.diagnostics.projected)


def test_wrong_structure_names_the_argument():
  params = {"a": jnp.ones(2), "b": jnp.ones(2)}
  tx = profit_optax.profit(
    optax.sgd(0.1), 0.01, projection_groups={"a": "x", "c": "y"}
  )
  with pytest.raises(ValueError, match="`projection_groups`.*structure"):
    tx.init(params)


def test_unhashable_label_names_the_argument():
  params = {"a": jnp.ones(2), "b": jnp.ones(2)}
  tx = profit_optax.profit(
    optax.sgd(0.1), 0.01, projection_groups={"a": np.zeros(1), "b": "y"}
  )
  with pytest.raises(ValueError, match="`projection_groups`.*hashable"):
    tx.init(params)


def test_unknown_string_is_rejected():
  with pytest.raises(ValueError, match="'leaf'"):
    profit_optax.profit(optax.sgd(0.1), 0.01, projection_groups="layer")
