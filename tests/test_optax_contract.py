"""The contract optax's contrib optimizers meet (optax/contrib/_common_test.py),
applied to PROFIT in both drives, plus composition with optax wrappers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import profit_optax
from tests import helpers

MAIN = {
  "sgd": lambda: optax.sgd(0.1),
  "momentum": lambda: optax.sgd(0.1, momentum=0.9),
  "adam": lambda: optax.adam(0.01),
  "adamw": lambda: optax.adamw(0.01, weight_decay=0.1),
  "rmsprop": lambda: optax.rmsprop(0.01),
}


def params0(dtype=jnp.float32):
  return {
    "a": jnp.array([1.0, -2.0, 0.5], dtype),
    "b": jnp.array([[0.3, -0.1], [0.2, 0.4]], dtype),
  }


def loss(params, key):
  """A noisy least-squares loss: a fresh random target for every key."""
  return helpers.noisy_loss([params["a"], params["b"]], key)


def make_call(tx, **extra):
  return helpers.make_loss_call(loss, tx, **extra)


def make_whole_step(tx, n_ref, **extra):
  @jax.jit
  def step(params, state, key):
    keys = jax.random.split(key, n_ref + 1)
    grad = jax.grad(loss)
    updates, state = tx.update(
      grad(params, keys[0]),
      state,
      params,
      grad_fn=lambda p, i: grad(p, keys[i + 1]),
      **extra,
    )
    return optax.apply_updates(params, updates), state

  return step


@pytest.mark.parametrize("n_ref", [1, 2])
@pytest.mark.parametrize("name", list(MAIN))
def test_extra_args_and_no_recompile(name, n_ref):
  per_call = profit_optax.profit(MAIN[name](), 0.01, n_ref=n_ref)
  opaque = profit_optax.profit(MAIN[name](), 0.01, n_ref, opaque_mode=True)
  for tx, driver in (
    (per_call, make_call(per_call, unexpected_extra_arg=1)),
    (opaque, make_whole_step(opaque, n_ref, unexpected_extra_arg=1)),
  ):
    params = params0()
    state = tx.init(params)
    params, state = driver(params, state, jax.random.PRNGKey(0))
    with jax.log_compiles():
      before = driver._cache_size()
      helpers.run_keys(driver, params, state, 2 * (n_ref + 1))
      assert driver._cache_size() == before == 1


@pytest.mark.parametrize("name", list(MAIN))
def test_map_params_on_state(name):
  tx = profit_optax.profit(MAIN[name](), 0.01)
  state = tx.init(params0())
  mapped = optax.tree.map_params(tx, lambda v: v + 1.0, state)
  # Δ, the one parameter-shaped buffer of the state, follows map_params.
  expected = jax.tree.map(lambda v: jnp.zeros_like(v) + 1.0, params0())
  chex.assert_trees_all_close(mapped.delta, expected)
  assert int(mapped.count) == int(state.count)


@pytest.mark.parametrize("n_ref", [1, 2])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dtype_preserved(dtype, n_ref):
  tx = profit_optax.profit(optax.adam(0.01), 0.001, n_ref=n_ref)
  params = params0(dtype)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(n_ref + 1):
    updates, state = jax.jit(tx.update)(grads, state, params)
    for u in jax.tree.leaves(updates):
      assert u.dtype == dtype
    params = optax.apply_updates(params, updates)
  opaque = profit_optax.profit(optax.adam(0.01), 0.001, n_ref, opaque_mode=True)
  updates, _ = jax.jit(
    lambda g, s, p: opaque.update(g, s, p, grad_fn=lambda q, i: grads)
  )(grads, opaque.init(params), params)
  for u in jax.tree.leaves(updates):
    assert u.dtype == dtype


@pytest.mark.parametrize("name", list(MAIN))
def test_state_types_stable_through_cond_and_scan(name):
  tx = profit_optax.profit(MAIN[name](), 0.01, n_ref=2)
  params = params0()
  state = tx.init(params)
  call = make_call(tx)
  new_params, new_state = call(params, state, jax.random.PRNGKey(0))
  chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)

  @jax.jit
  def in_cond(pred, params, state, key):
    return jax.lax.cond(
      pred,
      lambda: call(params, state, key),
      lambda: (params, state),
    )

  out_params, out_state = in_cond(True, params, state, jax.random.PRNGKey(0))
  chex.assert_trees_all_close(out_params, new_params)
  chex.assert_trees_all_equal_shapes_and_dtypes(out_state, state)

  @jax.jit
  def scanned(params, state):
    def body(carry, key):
      return call(*carry, key), None

    (params, state), _ = jax.lax.scan(
      body, (params, state), jax.random.split(jax.random.PRNGKey(1), 20)
    )
    return params, state

  p_scan, s_scan = scanned(params, state)
  p_loop, s_loop = helpers.run_keys(call, params, state, 20, seed=1)
  chex.assert_trees_all_equal_shapes_and_dtypes(s_scan, state)
  chex.assert_trees_all_close(p_scan, p_loop, rtol=1e-5, atol=1e-6)
  assert int(s_scan.step) == 6 and int(s_scan.count) == 2


def test_inside_chain_after_clipping():
  """Clipping before PROFIT clips every gradient, reference calls included."""
  inner = profit_optax.profit(optax.sgd(0.1), 0.01)
  tx = optax.chain(optax.clip_by_global_norm(0.5), inner)
  clip = optax.clip_by_global_norm(0.5)
  params = params0()
  got, _ = helpers.run_keys(make_call(tx), params, tx.init(params), 6)

  # The same by hand: clip each gradient, then feed PROFIT.
  @jax.jit
  def by_hand(params, state, key):
    grads, _ = clip.update(jax.grad(loss)(params, key), clip.init(params))
    updates, state = inner.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  want, _ = helpers.run_keys(by_hand, params, inner.init(params), 6)
  chex.assert_trees_all_close(got, want, rtol=1e-6)


def test_inside_multisteps():
  """MultiSteps(k=2) averages two gradients per PROFIT call."""
  inner = profit_optax.profit(optax.sgd(0.1), 0.01)
  tx = optax.MultiSteps(inner, every_k_schedule=2)
  params = params0()
  got, state = helpers.run_keys(make_call(tx), params, tx.init(params), 8)
  assert int(profit_optax.find_profit_state(state).step) == 2

  @jax.jit
  def by_hand(params, state, k1, k2):
    grads = jax.tree.map(
      lambda a, b: (a + b) / 2,
      jax.grad(loss)(params, k1),
      jax.grad(loss)(params, k2),
    )
    updates, state = inner.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  keys = jax.random.split(jax.random.PRNGKey(0), 8)
  want, inner_state = params, inner.init(params)
  for i in range(0, 8, 2):
    want, inner_state = by_hand(want, inner_state, keys[i], keys[i + 1])
  chex.assert_trees_all_close(got, want, rtol=1e-6)


def test_inside_apply_if_finite():
  tx = optax.apply_if_finite(profit_optax.profit(optax.adam(0.01), 0.001), 3)
  params = params0()
  got, state = helpers.run_keys(make_call(tx), params, tx.init(params), 4)
  assert int(profit_optax.find_profit_state(state).step) == 2
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(got))


def test_masked_equals_profit_on_the_subset():
  profit = profit_optax.profit(optax.adam(0.01), 0.001)
  masked = optax.masked(profit, {"a": True, "b": False})
  params = params0()
  got, _ = helpers.run_keys(make_call(masked), params, masked.init(params), 6)
  # Masked-out leaves receive the raw gradient as their update (optax.masked
  # passes them through), masked-in ones follow PROFIT on "a" alone.
  sub = {"a": params["a"]}
  sub_tx = profit

  @jax.jit
  def sub_call(p, s, key):
    grads = jax.grad(loss)({"a": p["a"], "b": params["b"]}, key)
    updates, s = sub_tx.update({"a": grads["a"]}, s, p)
    return optax.apply_updates(p, updates), s

  want, _ = helpers.run_keys(sub_call, sub, sub_tx.init(sub), 6)
  # "b" moves by the raw gradients, which depend on "a": compare "a" only.
  chex.assert_trees_all_close(got["a"], want["a"], rtol=1e-6)


def test_multi_transform_head_only_profit():
  tx = optax.multi_transform(
    {
      "profit": profit_optax.profit(optax.sgd(0.1), 0.01),
      "frozen": optax.set_to_zero(),
    },
    {"a": "profit", "b": "frozen"},
  )
  params = params0()
  got, state = helpers.run_keys(make_call(tx), params, tx.init(params), 4)
  chex.assert_trees_all_equal(got["b"], params["b"])
  assert not np.allclose(got["a"], params["a"])
  assert int(profit_optax.find_profit_state(state).step) == 2


@pytest.mark.parametrize("n_ref", [1, 2])
def test_inject_hyperparams_ref_rate_and_main_rate(n_ref):
  plain = profit_optax.profit(optax.adam(0.01), 0.001, n_ref=n_ref)
  injected_ref = optax.inject_hyperparams(
    profit_optax.profit, static_args=("n_ref",)
  )(optimizer=optax.adam(0.01), ref_learning_rate=0.001, n_ref=n_ref)
  injected_main = profit_optax.profit(
    optax.inject_hyperparams(optax.adam)(learning_rate=0.01),
    0.001,
    n_ref=n_ref,
  )
  params = params0()
  calls = 4 * (n_ref + 1)
  want, _ = helpers.run_keys(
    make_call(plain), params, plain.init(params), calls
  )
  for tx in (injected_ref, injected_main):
    got, _ = helpers.run_keys(make_call(tx), params, tx.init(params), calls)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)

  # Changing the injected reference rate scales the displacement (on this
  # quadratic the projected gradient itself does not depend on its size).
  call = make_call(injected_ref)
  small = injected_ref.init(params)
  large = injected_ref.init(params)
  large.hyperparams["ref_learning_rate"] = jnp.asarray(0.1)
  norms = []
  for state in (small, large):
    _, state = helpers.run_keys(call, params, state, n_ref + 1)
    norms.append(float(profit_optax.get_diagnostics(state).delta_norm))
  if n_ref == 1:  # one SGD step: the displacement is exactly proportional
    np.testing.assert_allclose(norms[1] / norms[0], 100.0, rtol=1e-4)
  else:  # later reference gradients feel the curvature
    assert 50.0 < norms[1] / norms[0] < 100.0


def test_schedules_for_both_rates():
  ref_schedule = optax.linear_schedule(0.01, 0.0, 10)
  main_schedule = optax.linear_schedule(0.1, 0.01, 10)
  tx = profit_optax.profit(optax.sgd(main_schedule), ref_schedule)
  params = params0()
  state = tx.init(params)
  call = make_call(tx)
  params, state = helpers.run_keys(call, params, state, 6)
  assert int(state.step) == 3
  # The reference step of PROFIT step 3 uses ref_schedule(3).
  g = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(g, state, params)
  np.testing.assert_allclose(
    updates["a"], -float(ref_schedule(3)) * np.ones(3), rtol=1e-6
  )


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_fine_tunes_a_noisy_problem_under_scan(name):
  """Starting converged on a nearby task, PROFIT fits the new one.

  A stochastic problem: PROFIT stalls on deterministic quadratics by design.
  """
  w_old = jnp.array([1.0, -1.0, 0.5, 2.0])
  w_new = jnp.array([1.3, -0.8, 0.5, 1.7])
  opt = {"sgd": optax.sgd(0.05), "adam": optax.adam(0.01)}[name]
  tx = profit_optax.profit(opt, 0.005)

  def new_loss(w, key):
    kx, kn = jax.random.split(key)
    x = jax.random.normal(kx, (16, 4))
    y = x @ w_new + 0.5 * jax.random.normal(kn, (16,))
    return jnp.mean((x @ w - y) ** 2)

  @jax.jit
  def train(w, state, key):
    def body(carry, k):
      w, state = carry
      updates, state = tx.update(jax.grad(new_loss)(w, k), state, w)
      return (optax.apply_updates(w, updates), state), None

    (w, state), _ = jax.lax.scan(body, (w, state), jax.random.split(key, 1000))
    return w, state

  w, state = train(w_old, tx.init(w_old), jax.random.PRNGKey(0))
  start = float(jnp.linalg.norm(w_old - w_new))
  assert float(jnp.linalg.norm(w - w_new)) < 0.35 * start
  assert int(state.step) == 500
