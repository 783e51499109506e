"""``profit_warmup``: the paper's PROFIT (warmup) recipe, as one optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import profit_optax
from tests import helpers

LR = 0.005


def _drive(tx, params, batches, state=None):
  update = jax.jit(tx.update)
  grad = jax.jit(jax.grad(helpers.jax_loss))
  state = tx.init(params) if state is None else state
  for batch in batches:
    updates, state = update(grad(params, helpers.to_jax(batch)), state, params)
    params = optax.apply_updates(params, updates)
  return params, state, update


def _assert_trees_close(a, b, tol=1e-12):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("n_ref", [1, 2])
def test_equals_warmup_then_profit_by_hand(n_ref, share):
  params0, batches = helpers.problem(n_ref)
  p0 = helpers.to_jax(params0)
  warmup_steps = 4 * (n_ref + 1)
  batches = batches[: warmup_steps + 8 * (n_ref + 1)]
  make_profit = lambda: profit_optax.profit(
    optax.adamw(LR, weight_decay=0.1), LR / 10, n_ref
  )
  tx = profit_optax.profit_warmup(
    optax.adamw(LR, weight_decay=0.1),
    make_profit(),
    warmup_steps,
    share_moments=share,
  )
  got, state, update = _drive(tx, p0, batches)
  assert update._cache_size() == 1  # one compilation across the switch
  # By hand: AdamW for warmup_steps batches, then a PROFIT started there.
  adamw = optax.adamw(LR, weight_decay=0.1)
  p, adam_state, _ = _drive(adamw, p0, batches[:warmup_steps])
  profit = make_profit()
  start = profit.init(p)
  if share:
    start = start._replace(inner_state=adam_state)
  want, want_state, _ = _drive(profit, p, batches[warmup_steps:], start)
  _assert_trees_close(got, want)
  ps = profit_optax.find_profit_state(state)
  assert int(ps.step) == 8 and int(state.count) == len(batches)
  _assert_trees_close(ps.inner_state, want_state.inner_state)
  if share:  # the main optimizer's count continues from the warmup's
    assert int(ps.inner_state[0].count) == warmup_steps + 8
  else:
    assert int(ps.inner_state[0].count) == 8
    assert int(state.warmup_state[0].count) == warmup_steps


@pytest.mark.usefixtures("x64")
def test_profit_step_warms_up_then_drives_profit():
  n_ref = 1
  params0, batches = helpers.problem(n_ref)
  p0 = helpers.to_jax(params0)
  batches = batches[:20]
  tx = profit_optax.profit_warmup(
    optax.adamw(LR), profit_optax.profit(optax.adamw(LR), LR / 10), 6
  )
  want, want_state, _ = _drive(tx, p0, batches)
  state, p = tx.init(p0), p0
  it = iter([helpers.to_jax(b) for b in batches])
  omegas = []
  for _ in range(10):  # two batches a call: 3 warmup calls, 7 PROFIT steps
    out = profit_optax.profit_step(helpers.jax_loss, tx, p, state, it)
    p, state = out.params, out.opt_state
    omegas.append(float(out.metrics["omega"]))
    assert int(profit_optax.find_profit_state(state).count) == 0
  _assert_trees_close(p, want)
  assert omegas[:3] == [0.0, 0.0, 0.0]  # no PROFIT step yet
  assert all(o != 0.0 for o in omegas[3:])
  assert int(profit_optax.find_profit_state(state).step) == 7


def test_inside_a_chain():
  tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    profit_optax.profit_warmup(
      optax.adam(0.1), profit_optax.profit(optax.adam(0.1), 0.01), 2
    ),
  )
  params = {"w": jnp.array([1.0, -2.0])}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(6):
    grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert int(profit_optax.find_profit_state(state).step) == 2
  assert update._cache_size() == 1


def test_opaque_profit_after_warmup():
  # A warmup call is one step on `grads`; each later call a whole PROFIT step.
  make = lambda: profit_optax.profit(
    optax.sgd(0.1), 0.01, n_ref=2, opaque_mode=True
  )
  tx = profit_optax.profit_warmup(optax.sgd(0.1), make(), 3)
  grad = jax.grad(lambda p, i: jnp.sum((p - i) ** 2))
  grad_fn = lambda p, i: grad(p, i + 1.0)
  params = jnp.array([1.0, 2.0])

  def run(tx, params, calls, state=None):
    state = tx.init(params) if state is None else state
    for _ in range(calls):
      updates, state = tx.update(
        grad(params, 0.0), state, params, grad_fn=grad_fn
      )
      params = optax.apply_updates(params, updates)
    return params, state

  got, state = run(tx, params, 5)
  assert int(profit_optax.find_profit_state(state).step) == 2
  p, _ = run(optax.with_extra_args_support(optax.sgd(0.1)), params, 3)
  want, _ = run(make(), p, 2)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_zero_warmup_is_profit():
  params0, batches = helpers.problem(1)
  p0 = helpers.to_jax(params0)
  make = lambda: profit_optax.profit(optax.adam(LR), LR / 10)
  got, _, _ = _drive(
    profit_optax.profit_warmup(optax.sgd(1.0), make(), 0), p0, batches[:8]
  )
  want, _, _ = _drive(make(), p0, batches[:8])
  _assert_trees_close(got, want, 1e-6)


def test_keeps_dtypes():
  params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2)}
  tx = profit_optax.profit_warmup(
    optax.adamw(0.1),
    profit_optax.profit(optax.adamw(0.1), 0.01),
    2,
    share_moments=True,
  )
  state = tx.init(params)
  for _ in range(4):
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    assert jax.tree.map(lambda u: u.dtype, updates) == {
      "a": jnp.bfloat16,
      "b": jnp.float32,
    }


def test_errors():
  profit = profit_optax.profit(optax.adam(0.1), 0.01)
  with pytest.raises(ValueError, match="warmup_steps"):
    profit_optax.profit_warmup(optax.adam(0.1), profit, -1)
  with pytest.raises(TypeError, match="warmup_steps"):
    profit_optax.profit_warmup(optax.adam(0.1), profit, 2.5)
  with pytest.raises(TypeError, match="profit_tx"):
    profit_optax.profit_warmup(optax.adam(0.1), "profit", 2)
  with pytest.raises(ValueError, match="multiple of n_ref \\+ 1 = 2"):
    profit_optax.profit_warmup(optax.adam(0.1), profit, 3).init(jnp.ones(2))
  with pytest.raises(ValueError, match="no PROFIT state"):
    profit_optax.profit_warmup(optax.adam(0.1), optax.sgd(0.1), 2).init(
      jnp.ones(2)
    )
  with pytest.raises(ValueError, match="share_moments"):
    profit_optax.profit_warmup(
      optax.sgd(0.1), profit, 2, share_moments=True
    ).init(jnp.ones(2))
