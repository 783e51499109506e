"""Behaviour of Algorithm 1: hand-computed trajectories, the projection, the
stable point of the paper's Sec. 3.3, and numerics."""

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import profit_optax


def half_sq_dist(params, x):
  """0.5 * ||params - x||^2: its gradient is params - x."""
  return 0.5 * jnp.sum((params - x) ** 2)


def _run_calls(tx, params, xs, loss=half_sq_dist):
  @jax.jit
  def call(params, state, x):
    updates, state = tx.update(jax.grad(loss)(params, x), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for x in xs:
    params, state = call(params, state, x)
  return params, state


def test_hand_computed_trajectory():
  # Every number below is exact in binary floating point.
  tx = profit_optax.profit(optax.sgd(0.5), ref_learning_rate=0.25)
  params = jnp.array([1.0, 0.0])
  state = tx.init(params)
  grad = jax.grad(half_sq_dist)

  def call(params, state, x):
    updates, state = tx.update(grad(params, jnp.array(x)), state, params)
    return optax.apply_updates(params, updates), state

  # Step 1, reference call: g = (1, 0); theta = (1, 0) - 0.25 g.
  params, state = call(params, state, [0.0, 0.0])
  np.testing.assert_array_equal(params, [0.75, 0.0])
  np.testing.assert_array_equal(
    state.delta, [-0.25, 0.0]
  )  # the anchor is (1, 0)
  assert int(state.count) == 1 and int(state.step) == 0
  # Main call: delta = (-0.25, 0); g = (0.75, -1); omega = -0.1875 < 0, so
  # g <- g - (omega / |delta|^2) delta = (0, -1); theta = anchor - 0.5 g.
  params, state = call(params, state, [0.0, 1.0])
  np.testing.assert_array_equal(params, [1.0, 0.5])
  d = state.diagnostics
  assert float(d.omega) == -0.1875 and bool(d.projected)
  assert float(d.delta_norm) == 0.25
  np.testing.assert_allclose(float(d.cos), -0.75 / 1.25, rtol=1e-6)
  assert int(state.count) == 0 and int(state.step) == 1
  # Step 2: g = (-1, 0); theta = (1.25, 0.5); delta = (0.25, 0);
  # g = (1.25, 0.5); omega = 0.3125 >= 0: g is kept; theta = anchor - 0.5 g.
  params, state = call(params, state, [2.0, 0.5])
  np.testing.assert_array_equal(params, [1.25, 0.5])
  params, state = call(params, state, [0.0, 0.0])
  np.testing.assert_array_equal(params, [0.375, 0.25])
  assert float(state.diagnostics.omega) == 0.3125
  assert not bool(state.diagnostics.projected)


@pytest.mark.parametrize("n_ref", [1, 2, 3])
def test_positive_omega_leaves_gradient_unchanged(n_ref):
  # The reference steps move away from x_ref; the main gradient points the
  # same way as the displacement, so omega > 0 and O sees g as it is.
  tx = profit_optax.profit(optax.sgd(0.1), 0.01, n_ref=n_ref)
  anchor = jnp.array([1.0, -1.0, 0.5])
  x_ref = jnp.array([2.0, 0.0, 1.0])  # reference gradients: anchor - x_ref
  x_main = jnp.array([-3.0, -4.0, -2.0])
  params, state = _run_calls(tx, anchor, [x_ref] * n_ref + [x_main])
  assert float(state.diagnostics.omega) > 0
  assert not bool(state.diagnostics.projected)
  # Displaced point and its raw gradient:
  theta = anchor
  for _ in range(n_ref):
    theta = theta - 0.01 * (theta - x_ref)
  np.testing.assert_allclose(params, anchor - 0.1 * (theta - x_main), rtol=1e-6)


def test_projection_removes_component_along_delta():
  tx = profit_optax.profit(optax.sgd(1.0), 1.0)
  anchor = jnp.array([0.0, 0.0])
  # Reference: g0 = anchor - x_ref = (-1, 0); delta = (1, 0).
  # Main: g = theta - x_main = (1, 0) - (3, -2) = (-2, 2): omega = -2 < 0.
  params, state = _run_calls(
    tx, anchor, [jnp.array([1.0, 0.0]), jnp.array([3.0, -2.0])]
  )
  assert bool(state.diagnostics.projected)
  # g_perp = (0, 2): the update moves only across delta.
  np.testing.assert_array_equal(params, [0.0, -2.0])


@pytest.mark.parametrize("anchor", [[1.0, 2.0], [0.3, -1.7], [5.0, 0.25]])
def test_stable_point_on_deterministic_isotropic_quadratic(anchor):
  """Paper, Sec. 3.3: with SGD as both optimizers, when the new gradient is
  parallel to the old one (a full-batch isotropic quadratic) the projection
  removes it entirely and the PROFIT step returns to the anchor. Algorithm 1
  therefore stalls here: this is the method, not a bug."""
  with jax.enable_x64(True):
    center = jnp.array([0.0, 0.0], jnp.float64)
    tx = profit_optax.profit(optax.sgd(0.5), ref_learning_rate=0.5)
    params = jnp.array(anchor, jnp.float64)
    start = params
    for _ in range(10):
      params, state = _run_calls(tx, params, [center] * 2)
      assert bool(state.diagnostics.projected)
      np.testing.assert_allclose(params, start, rtol=0, atol=1e-12)
    # Plain SGD on the same problem converges to the centre.
    assert float(jnp.linalg.norm(start - center)) > 1.0


def test_stable_point_is_exact_with_binary_numbers():
  tx = profit_optax.profit(optax.sgd(0.5), ref_learning_rate=0.5)
  start = jnp.array([1.0, 2.0])
  params, state = _run_calls(tx, start, [jnp.zeros(2)] * 2)
  np.testing.assert_array_equal(params, start)
  assert float(state.diagnostics.cos) == -1.0


def test_noisy_problem_makes_progress_where_deterministic_stalls():
  """On the same quadratic with stochastic mini-batch targets PROFIT moves."""
  key = jax.random.PRNGKey(0)
  tx = profit_optax.profit(optax.sgd(0.1), ref_learning_rate=0.01)
  params = jnp.array([3.0, -2.0, 1.0, 4.0])
  state = tx.init(params)
  grad = jax.grad(half_sq_dist)

  @jax.jit
  def call(params, state, key):
    x = jax.random.normal(key, params.shape)  # noisy targets around 0
    updates, state = tx.update(grad(params, x), state, params)
    return optax.apply_updates(params, updates), state

  start_norm = float(jnp.linalg.norm(params))
  for k in jax.random.split(key, 400):
    params, state = call(params, state, k)
  assert float(jnp.linalg.norm(params)) < 0.5 * start_norm


def test_zero_displacement_gives_no_nan():
  # ref_learning_rate = 0: delta = 0, omega = 0, no projection, no NaN.
  tx = profit_optax.profit(optax.sgd(0.1), ref_learning_rate=0.0)
  params, state = _run_calls(
    tx, jnp.array([1.0, 2.0]), [jnp.zeros(2), jnp.zeros(2)]
  )
  d = state.diagnostics
  for v in d:
    assert np.isfinite(np.asarray(v, np.float64)).all()
  assert float(d.delta_norm) == 0.0 and not bool(d.projected)
  assert float(d.cos) == 0.0
  np.testing.assert_allclose(params, [0.9, 1.8], rtol=1e-6)


def test_zero_gradient_gives_no_nan():
  tx = profit_optax.profit(optax.adam(0.1), ref_learning_rate=0.1)
  params = jnp.array([1.0, 2.0])
  params, state = _run_calls(tx, params, [params, params])  # g = 0 everywhere
  assert np.isfinite(np.asarray(params)).all()
  assert float(state.diagnostics.cos) == 0.0


def test_inf_in_skipped_branch_does_not_leak():
  """An inf gradient on a reference call must not become NaN in the main
  optimizer's state: that branch is not run, not blended with 0/1 weights."""
  tx = profit_optax.profit(optax.adam(0.1), ref_learning_rate=0.1)
  params = jnp.array([1.0, 2.0])
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(jnp.array([jnp.inf, 1.0]), state, params)
  inner = state.inner_state
  for leaf in jax.tree.leaves(inner):
    assert np.isfinite(np.asarray(leaf, np.float64)).all()


def test_main_optimizer_steps_once_per_profit_step():
  tx = profit_optax.profit(optax.adam(0.1), 0.01, n_ref=3)
  params = jnp.array([1.0, 2.0])
  _, state = _run_calls(tx, params, [jnp.zeros(2)] * 9)
  # 9 calls = 2 PROFIT steps + 1 reference call.
  assert int(state.step) == 2 and int(state.count) == 1
  assert int(state.inner_state[0].count) == 2


def test_reference_optimizer_state_restarts_every_cycle():
  ref = optax.sgd(0.1, momentum=0.9)
  tx = profit_optax.profit(optax.sgd(0.1), None, n_ref=2, ref_optimizer=ref)
  params = jnp.array([1.0, 2.0])
  state = tx.init(params)
  grads = jnp.array([1.0, 1.0])
  displacements = []
  for _ in range(2):
    anchor = params
    for _ in range(2):
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    displacements.append(np.asarray(state.delta))
    np.testing.assert_allclose(state.delta, params - anchor, rtol=1e-6)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(state.ref_state[0].trace, jnp.zeros(2))
  # The reference displacement of both cycles is the same: momentum restarted.
  np.testing.assert_allclose(displacements[0], displacements[1])


def test_ref_schedule_evaluated_at_profit_step():
  schedule = lambda step: 0.1 * (step + 1)
  tx = profit_optax.profit(optax.sgd(0.0), ref_learning_rate=schedule)
  params = jnp.array([0.0])
  state = tx.init(params)
  g = jnp.array([1.0])
  for step in range(3):
    updates, state = tx.update(g, state, params)
    np.testing.assert_allclose(updates, [-0.1 * (step + 1)], rtol=1e-6)
    updates, state = tx.update(g, state, params + updates)


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------


@st.composite
def delta_and_grad(draw):
  dtype = draw(st.sampled_from([np.float32, np.float64, jnp.bfloat16]))
  n_leaves = draw(st.integers(1, 3))
  shapes = [
    draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=4))
    for _ in range(n_leaves)
  ]
  elems = st.floats(-10, 10, allow_nan=False, width=32)
  delta = [draw(hnp.arrays(np.float64, s, elements=elems)) for s in shapes]
  grad = [draw(hnp.arrays(np.float64, s, elements=elems)) for s in shapes]
  return dtype, delta, grad


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(delta_and_grad())
def test_projected_gradient_is_orthogonal_to_delta(case):
  dtype, delta, grad = case
  with jax.enable_x64(dtype == np.float64):
    delta = {f"p{i}": jnp.asarray(d, dtype) for i, d in enumerate(delta)}
    grad = {f"p{i}": jnp.asarray(g, dtype) for i, g in enumerate(grad)}
    params = jax.tree.map(jnp.zeros_like, delta)
    # With SGD(1) as reference from zero params, the displacement is exactly
    # minus the first gradient; the identity main optimizer returns the
    # (possibly projected) gradient as the update.
    tx = profit_optax.profit(
      optax.identity(), ref_learning_rate=1.0, opaque_mode=True
    )
    state = tx.init(params)
    first = jax.tree.map(jnp.negative, delta)
    updates, state = tx.update(first, state, params, grad_fn=lambda p, i: grad)
    flat = lambda t: np.concatenate(
      [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(t)]
    )
    d, g, u = flat(delta), flat(grad), flat(updates)
    for leaf, ref_leaf in zip(jax.tree.leaves(updates), jax.tree.leaves(grad)):
      assert leaf.dtype == ref_leaf.dtype
    omega = d @ g
    scale = np.linalg.norm(d) * np.linalg.norm(g)
    tol = {np.float64: 1e-12, np.float32: 1e-5}.get(dtype, 2e-2) * scale
    if bool(state.diagnostics.projected):
      assert omega < 0
      assert abs(u @ d) <= tol + 1e-30
    else:
      # Not projected: ω >= 0, or <Δ, Δ> underflows to zero in the
      # accumulation dtype (at least float32), leaving no direction to
      # project on.
      acc = np.float64 if dtype == np.float64 else np.float32
      dd = np.sum(np.square(d.astype(acc)), dtype=acc)
      assert omega >= -tol or dd == 0
      np.testing.assert_array_equal(u, g)
