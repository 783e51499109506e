"""``profit_step`` starts each step at a cycle boundary: it neither reads nor
writes the state's ``Δ``, so the compiled step makes no pass over it, and a
state taken in the middle of a per-call cycle starts a new cycle."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import profit_optax
from profit_optax._src.step import _core_call


def loss_fn(params, batch):
  x, y = batch
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


PARAMS = {"w": jnp.array([0.5, -1.0, 0.25]), "b": jnp.array(0.1)}


def batches(count):
  x = jnp.sin(jnp.arange(count * 16 * 3, dtype=jnp.float32)).reshape(
    count, 16, 3
  )
  y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.1 * jnp.cos(x[..., 0])
  return x, y


def same_step(tx, params, state, twin, stacked, n, num_steps):
  """``profit_step`` from ``state`` and from ``twin`` (``n`` batches a step,
  stacked ``[num_steps, n, ...]`` unless ``num_steps`` is None): the same
  parameters and state, ``Δ`` aside, which comes back as ``state`` gave it.
  Returns the output from ``state``."""
  if num_steps is not None:
    stacked = jax.tree.map(
      lambda a: a.reshape(num_steps, n, *a.shape[1:]), stacked
    )
  got = profit_optax.profit_step(
    loss_fn, tx, params, state, stacked, num_steps=num_steps
  )
  want = profit_optax.profit_step(
    loss_fn, tx, params, twin, stacked, num_steps=num_steps
  )
  assert got.opt_state.delta is state.delta
  for a, b in zip(
    jax.tree.leaves((got.params, got.opt_state._replace(delta=None))),
    jax.tree.leaves((want.params, want.opt_state._replace(delta=None))),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)
  return got


@pytest.mark.parametrize("num_steps", [None, 3])
@pytest.mark.parametrize("n_ref", [1, 2])
def test_a_stale_delta_is_neither_read_nor_written(n_ref, num_steps):
  # At a cycle boundary Δ is stale: a NaN Δ must not reach the step, and
  # the state comes back with the very Δ it was given.
  tx = profit_optax.profit(optax.adam(1e-2), 1e-3, n_ref)
  clean = tx.init(PARAMS)
  stale = clean._replace(
    delta=jax.tree.map(lambda d: jnp.full_like(d, jnp.nan), clean.delta)
  )
  n = n_ref + 1
  got = same_step(
    tx, PARAMS, stale, clean, batches(n * (num_steps or 1)), n, num_steps
  )
  assert int(got.opt_state.step) == (num_steps or 1)
  assert int(got.opt_state.skipped) == 0


@pytest.mark.parametrize("donate", [False, True])
def test_the_compiled_step_has_no_delta_input_or_output(donate):
  # Δ is neither a parameter of the compiled program (profit_step keeps it
  # out of the core) nor one of its results: no parameter-sized read or
  # write. Nor is the count (jit drops an unused argument): each step starts
  # its cycle at zero.
  tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    profit_optax.profit(optax.adam(1e-2), 1e-3),
  )
  params = jax.tree.map(jnp.copy, PARAMS)
  state = tx.init(params)
  core, args, _ = _core_call(
    loss_fn,
    tx,
    params,
    state,
    batches(2),
    has_aux=False,
    model_state=None,
    donate=donate,
    num_steps=None,
  )
  text = core.lower(*args).as_text()
  main = next(ln for ln in text.splitlines() if "func public @main" in ln)
  inputs, results = main.split(") -> (", 1)
  n_delta = len(jax.tree.leaves(profit_optax.find_profit_state(state).delta))
  assert n_delta == 2
  assert len(re.findall(r"%arg\d+:", inputs)) == (
    len(jax.tree.leaves((params, state, batches(2)))) - n_delta - 1
  )
  assert "opt_state[1].delta" not in results
  assert "opt_state[1].inner_state" in results


@pytest.mark.parametrize("num_steps", [None, 2])
def test_a_state_taken_mid_cycle_starts_a_new_cycle_at_params(num_steps):
  # One per-call reference update into a cycle (n_ref = 2, a reference
  # optimizer with momentum): profit_step anchors a new cycle at the
  # displaced parameters, as from a boundary state that holds the same main
  # optimizer's state, step count and diagnostics.
  tx = profit_optax.profit(
    optax.adam(1e-2), None, 2, ref_optimizer=optax.sgd(1e-2, momentum=0.9)
  )
  x, y = batches(1 + 3 * (num_steps or 1))
  state = tx.init(PARAMS)
  grads = jax.grad(loss_fn)(PARAMS, (x[0], y[0]))
  updates, mid = tx.update(grads, state, PARAMS)
  params = optax.apply_updates(PARAMS, updates)
  assert int(mid.count) == 1
  assert not all(
    np.array_equal(a, b)
    for a, b in zip(
      jax.tree.leaves(mid.ref_state), jax.tree.leaves(state.ref_state)
    )
  )
  boundary = mid._replace(
    count=state.count, ref_state=state.ref_state, delta=state.delta
  )
  got = same_step(tx, params, mid, boundary, (x[1:], y[1:]), 3, num_steps)
  assert int(got.opt_state.count) == 0
  assert int(got.opt_state.step) == (num_steps or 1)
