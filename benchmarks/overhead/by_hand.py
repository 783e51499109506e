"""Algorithm 1 written by hand, for comparison only: one PROFIT step as one
jitted function of the anchor, Adam's state and the step's ``n_ref + 1``
batches, with no state of its own. It tells apart what the algorithm costs
(against Adam's ``n_ref + 1`` steps) from what ``profit_step`` adds to it.
It is not part of the package.

Bare, it is Algorithm 1 and nothing else: ``n_ref`` SGD steps, ``Δ`` as the
sum of their updates (as the package keeps it: exact, where the difference
of the displaced parameters and the anchor would round small steps away),
the gradient at the displaced parameters, ``ω`` and the projection when
``ω < 0``, and Adam's step from the anchor.
``checked`` adds PROFIT's handling of non-finite gradients as the package
does it: each gradient's squared norm before its step, a reference step held
where its gradient is not finite, and, when any gradient of the step was
not, the anchor and Adam's state kept (selects).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _finite(tree) -> jax.Array:
  return jnp.isfinite(sum(jnp.sum(x * x) for x in jax.tree.leaves(tree)))


def _project(g, delta):
  """``g`` without its component along ``Δ`` when ``ω = ⟨Δ, g⟩ < 0``."""
  omega = optax.tree.vdot(delta, g)
  dd = optax.tree.vdot(delta, delta)
  coef = jnp.where(omega < 0, omega / jnp.where(dd > 0, dd, 1.0), 0.0)
  return jax.tree.map(lambda x, d: x - coef * d, g, delta)


def by_hand_step(loss, optimizer, ref_learning_rate, n_ref, checked=False):
  """``step(anchor, opt_state, batches) -> (params, opt_state)``, jitted."""
  grad = jax.grad(loss)

  def step(anchor, opt_state, batches):
    pick = lambda i: jax.tree.map(lambda x: x[i], batches)
    theta, ok = anchor, jnp.ones((), jnp.bool_)
    delta = jax.tree.map(jnp.zeros_like, anchor)
    for i in range(n_ref):  # written out, as profit_step's sub-steps
      g = grad(theta, pick(i))
      if checked:
        ok = jnp.logical_and(ok, _finite(g))
        g = jax.tree.map(lambda x, ok=ok: jnp.where(ok, x, 0), g)
      u = jax.tree.map(lambda x: -ref_learning_rate * x, g)
      theta = optax.apply_updates(theta, u)
      delta = jax.tree.map(jnp.add, delta, u)
    g = grad(theta, pick(n_ref))
    if checked:
      ok = jnp.logical_and(ok, _finite(g))
    updates, new_state = optimizer.update(_project(g, delta), opt_state, anchor)
    if checked:
      updates = jax.tree.map(lambda u: jnp.where(ok, u, 0), updates)
      new_state = optax.tree.where(ok, new_state, opt_state)
    return optax.apply_updates(anchor, updates), new_state

  return jax.jit(step)


def by_hand_main_call(optimizer):
  """PROFIT's main call written by hand, as an optax transformation whose
  state is ``(optimizer's state, Δ)``: the anchor ``params - Δ``, ``ω`` and
  the projection, the optimizer's step from the anchor, returned relative to
  ``params``. No non-finite handling, no diagnostics; ``Δ`` stays as it is
  (what PROFIT's main call reads, without its bookkeeping)."""

  def init(params):
    return optimizer.init(params), jax.tree.map(jnp.zeros_like, params)

  def update(grads, state, params):
    inner, delta = state
    anchor = jax.tree.map(jnp.subtract, params, delta)
    updates, inner = optimizer.update(_project(grads, delta), inner, anchor)
    updates = jax.tree.map(jnp.subtract, updates, delta)
    return updates, (inner, delta)

  return optax.GradientTransformation(init, update)
