"""Sweeps under ``jax.vmap``: the reference calls do no main-optimizer work.

Checked on the traced program. The main optimizer here is marked by the one
``cosh`` of the whole program (the loss is a quadratic): wherever ``cosh``
appears, the main optimizer's work is in the program. A sweep vmaps over
the reference learning rate with a batched state, so PROFIT's count is
batched too: a ``lax.cond`` on it would become a select that runs both
branches, the main optimizer included. ``profit_step`` and the static
``profit_phase`` keep the phase out of the data.
"""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax

import profit_optax

N_SWEEP = 3


def marked_optimizer():
  """SGD whose update goes through ``cosh``, the marker of its work."""
  return optax.stateless(
    lambda updates, params: jax.tree.map(
      lambda g: -0.1 * g * jnp.cosh(g), updates
    )
  )


def loss_fn(params, batch):
  return jnp.mean((batch - params["w"]) ** 2)


def count(jaxpr, name):
  """How many equations of primitive ``name`` a (closed) jaxpr holds, at
  any depth (scan bodies, cond branches, pjit calls)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    total += eqn.primitive.name == name
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += count(sub, name)
  return total


def sweep_inputs(n_ref=1):
  params = {"w": jnp.zeros(4)}
  lrs = jnp.array([1e-2, 1e-3, 1e-4])
  state = profit_optax.profit(marked_optimizer(), 0.01, n_ref).init(params)
  states = jax.tree.map(lambda x: jnp.stack([x] * N_SWEEP), state)
  return lrs, params, states


def test_static_reference_phase_has_no_main_optimizer_work():
  lrs, params, states = sweep_inputs()
  grads = {"w": jnp.ones(4)}

  def call(lr, state, phase):
    tx = profit_optax.profit(marked_optimizer(), lr)
    return tx.update(grads, state, params, profit_phase=phase)

  reference = jax.make_jaxpr(jax.vmap(lambda lr, s: call(lr, s, "reference")))
  main = jax.make_jaxpr(jax.vmap(lambda lr, s: call(lr, s, "main")))
  dynamic = jax.make_jaxpr(jax.vmap(lambda lr, s: call(lr, s, None)))
  assert count(reference(lrs, states), "cosh") == 0
  assert count(main(lrs, states), "cosh") == 1
  # Reading the phase from a batched count: vmap turns the cond into a
  # select, and the main optimizer is in every call's program.
  assert count(dynamic(lrs, states), "cond") == 0
  assert count(dynamic(lrs, states), "cosh") == 1


def test_profit_step_sweep_keeps_the_main_optimizer_off_reference_calls():
  n_ref = 2
  lrs, params, states = sweep_inputs(n_ref)
  batches = jnp.ones((n_ref + 1, 8, 4))

  def step(lr, state):
    tx = profit_optax.profit(marked_optimizer(), lr, n_ref)
    out = profit_optax.profit_step(loss_fn, tx, params, state, batches)
    return out.params, out.opt_state, out.metrics

  jaxpr = jax.make_jaxpr(jax.vmap(step))(lrs, states)
  # The n_ref + 1 sub-steps are written out (no loop): the main optimizer's
  # marker appears once, for the main sub-step alone, and there is no
  # conditional on the phase anywhere.
  assert count(jaxpr, "scan") == count(jaxpr, "while") == 0
  assert count(jaxpr, "cosh") == 1
  assert count(jaxpr, "cond") == 0
  # And the sweep runs: one trajectory per rate.
  new_params, new_states, metrics = jax.vmap(step)(lrs, states)
  assert new_params["w"].shape == (N_SWEEP, 4)
  assert metrics["loss"].shape == (N_SWEEP, n_ref + 1)
  np.testing.assert_array_equal(new_states.step, [1] * N_SWEEP)
  # Larger reference rates move Δ further.
  norms = np.asarray(metrics["delta_norm"])
  assert norms[0] > norms[1] > norms[2] > 0


def test_profit_step_and_opaque_mode_have_no_conditional_and_no_loop():
  # Without vmap too: the phase schedule is static, so neither the whole-step
  # helper nor the opaque drive holds a lax.cond, whose data-dependent
  # predicate an accelerator would send to the host on every call. Nor a
  # loop: the model's gradients compile as in a hand-written step (on
  # XLA:CPU, a convolution's gradient inside a loop body, even one of a
  # single iteration, ran about 10x slower on the benchmark's CNN).
  params = {"w": jnp.zeros(4)}
  batches = jnp.ones((2, 8, 4))
  tx = profit_optax.profit(optax.adam(1e-2), 1e-3)
  state = tx.init(params)
  step = lambda p, s: profit_optax.profit_step(loss_fn, tx, p, s, batches)
  jaxpr = jax.make_jaxpr(step)(params, state)
  assert count(jaxpr, "cond") == count(jaxpr, "scan") == 0
  assert count(jaxpr, "while") == 0

  opaque = profit_optax.profit(optax.adam(1e-2), 1e-3, opaque_mode=True)
  grad = jax.grad(loss_fn)

  def whole(p, s):
    return opaque.update(
      grad(p, batches[0]), s, p, grad_fn=lambda q, i: grad(q, batches[i + 1])
    )

  jaxpr = jax.make_jaxpr(whole)(params, opaque.init(params))
  assert count(jaxpr, "cond") == count(jaxpr, "scan") == 0
  assert count(jaxpr, "while") == 0
  # The per-call drive reading the phase from the state has exactly one.
  per_call = jax.make_jaxpr(lambda p, s: tx.update(grad(p, batches[0]), s, p))
  assert count(per_call(params, state), "cond") == 1
