"""Non-finite gradients, the dtype of Δ and parameter dtypes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import profit_optax

NAN = jnp.array([jnp.nan, 1.0])
INF = jnp.array([1.0, jnp.inf])
# Finite in float32, but its squared norm (1e40) is not: the guard reads
# <g, g>, so this step is skipped too (Adam's second moment would overflow).
HUGE = jnp.array([1e20, 1.0])


def _driver(tx):
  @jax.jit
  def call(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return call


def _finite(tree):
  return all(
    np.isfinite(np.asarray(x, np.float64)).all() for x in jax.tree.leaves(tree)
  )


@pytest.mark.parametrize("bad", [NAN, INF, HUGE])
@pytest.mark.parametrize("where", ["reference", "main"])
@pytest.mark.parametrize("n_ref", [1, 2])
def test_non_finite_gradient_skips_the_step(bad, where, n_ref):
  tx = profit_optax.profit(optax.adam(0.1), 0.01, n_ref=n_ref)
  call = _driver(tx)
  anchor = jnp.array([1.0, 2.0])
  good = jnp.array([0.5, -0.5])
  params, state = anchor, tx.init(anchor)
  grads = [good] * (n_ref + 1)
  grads[0 if where == "reference" else n_ref] = bad
  for g in grads:
    params, state = call(params, state, g)
    assert _finite(params)
    assert _finite(state.inner_state) and _finite(state.delta)
  # Back at the anchor (params - Δ: up to one rounding), main optimizer
  # untouched, one step skipped.
  np.testing.assert_array_max_ulp(params, anchor, maxulp=1)
  assert int(state.skipped) == 1 and int(state.step) == 0
  assert int(state.count) == 0 and bool(state.finite)
  assert int(state.inner_state[0].count) == 0
  # The next cycle runs as on a fresh state.
  fresh_params, fresh_state = anchor, tx.init(anchor)
  for _ in range(n_ref + 1):
    params, state = call(params, state, good)
    fresh_params, fresh_state = call(fresh_params, fresh_state, good)
  np.testing.assert_allclose(params, fresh_params, rtol=1e-6)
  chex.assert_trees_all_close(state.inner_state, fresh_state.inner_state)
  assert int(state.step) == 1


@pytest.mark.parametrize("bad", [NAN, HUGE])
@pytest.mark.parametrize("where", [0, 1])
def test_non_finite_in_whole_step_drive(where, bad):
  tx = profit_optax.profit(optax.adam(0.1), 0.01, n_ref=1, opaque_mode=True)
  params = jnp.array([1.0, 2.0])
  state = tx.init(params)
  grads = [jnp.array([0.5, -0.5]), jnp.array([0.5, -0.5])]
  grads[where] = bad
  updates, state = jax.jit(
    lambda g0, s, p, g1: tx.update(g0, s, p, grad_fn=lambda q, i: g1)
  )(grads[0], state, params, grads[1])
  np.testing.assert_array_equal(updates, jnp.zeros(2))
  assert int(state.skipped) == 1 and int(state.step) == 0
  assert _finite(state.inner_state)


@pytest.mark.parametrize("bad", [NAN, INF, HUGE])
@pytest.mark.parametrize("where", [0, 1])
def test_non_finite_in_profit_step(where, bad):
  # The static phase: the guard is a select, no conditional.
  tx = profit_optax.profit(optax.adam(0.1), 0.01, n_ref=1)
  anchor = jnp.array([1.0, 2.0])
  batches = jnp.stack([jnp.array([0.5, -0.5])] * 2).at[where].set(bad)
  out = profit_optax.profit_step(
    lambda p, b: jnp.vdot(p, b), tx, anchor, tx.init(anchor), batches
  )
  np.testing.assert_array_max_ulp(out.params, anchor, maxulp=1)
  state = out.opt_state
  assert int(state.skipped) == 1 and int(state.step) == 0
  assert _finite(state.inner_state) and int(state.inner_state[0].count) == 0


def test_inside_apply_if_finite_the_bad_call_is_dropped():
  tx = optax.apply_if_finite(
    profit_optax.profit(optax.sgd(0.1), 0.01), max_consecutive_errors=5
  )
  call = _driver(tx)
  anchor = jnp.array([1.0, 2.0])
  good = jnp.array([0.5, -0.5])
  params, state = anchor, tx.init(anchor)
  params, state = call(params, state, good)  # reference call
  displaced = params
  params, state = call(params, state, NAN)  # dropped by apply_if_finite
  np.testing.assert_array_equal(params, displaced)
  inner = profit_optax.find_profit_state(state)
  assert int(inner.count) == 1  # the cycle waits for its main call
  params, state = call(params, state, -good)  # the main call; omega > 0
  assert int(profit_optax.find_profit_state(state).step) == 1
  np.testing.assert_allclose(params, anchor + 0.1 * good, rtol=1e-6)


def test_delta_dtype_is_stored_and_restored():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01, delta_dtype=jnp.bfloat16)
  params = jnp.array([1.0, 2.0], jnp.float32)
  state = tx.init(params)
  assert state.delta.dtype == jnp.bfloat16
  call = _driver(tx)
  params, state = call(params, state, jnp.array([0.5, -0.5]))
  assert state.delta.dtype == jnp.bfloat16
  params, state = call(params, state, jnp.array([0.5, -0.5]))
  assert params.dtype == jnp.float32


def test_delta_dtype_must_be_floating():
  with pytest.raises(TypeError, match=r"`delta_dtype` must be a floating"):
    profit_optax.profit(optax.sgd(0.1), 0.01, delta_dtype=jnp.int32)
  with pytest.raises(TypeError, match=r"`delta_dtype` must be a floating"):
    profit_optax.profit(optax.sgd(0.1), 0.01, delta_dtype="not a dtype")


def test_anchor_dtype_is_a_deprecated_alias_of_delta_dtype():
  with pytest.warns(DeprecationWarning, match=r"pass `delta_dtype` instead"):
    tx = profit_optax.profit(optax.sgd(0.1), 0.01, anchor_dtype=jnp.bfloat16)
  assert tx.init(jnp.ones(2)).delta.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match=r"Pass `delta_dtype` only"):
    profit_optax.profit(
      optax.sgd(0.1), 0.01, anchor_dtype=jnp.float32, delta_dtype=jnp.float32
    )


def test_integer_params_rejected_with_a_fix():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  with pytest.raises(TypeError, match=r"leaf \['n'\] has dtype int32"):
    tx.init({"w": jnp.ones(2), "n": jnp.ones(2, jnp.int32)})


def test_integer_params_can_be_masked_out():
  tx = optax.multi_transform(
    {
      "train": profit_optax.profit(optax.sgd(0.1), 0.01),
      "frozen": optax.set_to_zero(),
    },
    {"w": "train", "n": "frozen"},
  )
  params = {"w": jnp.ones(2), "n": jnp.ones(2, jnp.int32)}
  state = tx.init(params)
  grads = {"w": jnp.ones(2), "n": jnp.zeros(2, jnp.int32)}
  updates, state = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["w"], -0.01 * jnp.ones(2))


def test_empty_params():
  tx = profit_optax.profit(optax.adam(0.1), 0.01)
  state = tx.init({})
  for _ in range(2):
    updates, state = tx.update({}, state, {})
  assert updates == {} and int(state.step) == 1
