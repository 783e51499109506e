"""A naive PROFIT, for comparison only: the straightforward way to write a
multi-call optax wrapper, as `optax.contrib.sam` does in its transparent mode.
Every call computes both the reference and the main branch (the main optimizer
runs on every call) and blends the results with 0/1 arithmetic, and the
projection is blended the same way. It follows Algorithm 1 where no value is
inf or NaN; it is not part of the package.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class NaiveState(NamedTuple):
  count: jax.Array
  anchor: optax.Params
  inner_state: optax.OptState


def naive_profit(optimizer, ref_learning_rate, n_ref=1):
  def pick(cond, a, b):
    c = cond.astype(jnp.float32)
    return jax.tree.map(
      lambda x, y: (c * x + (1 - c) * y).astype(x.dtype), a, b
    )

  def init(params):
    return NaiveState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

  def update(grads, state, params=None):
    first = state.count == 0
    main = state.count == n_ref
    anchor = pick(first, params, state.anchor)
    # Reference branch, always computed.
    ref_updates = jax.tree.map(lambda g: -ref_learning_rate * g, grads)
    # Main branch, always computed.
    delta = jax.tree.map(lambda p, a: p - a, params, anchor)
    omega = optax.tree.vdot(delta, grads)
    dd = optax.tree.vdot(delta, delta)
    coef = omega / jnp.where(dd > 0, dd, 1.0)
    projected = jax.tree.map(lambda g, d: g - coef * d, grads, delta)
    g = pick(omega < 0, projected, grads)
    main_updates, inner = optimizer.update(g, state.inner_state, anchor)
    main_updates = jax.tree.map(
      lambda a, p, u: a - p + u, anchor, params, main_updates
    )
    updates = pick(main, main_updates, ref_updates)
    inner = pick(main, inner, state.inner_state)
    count = (state.count + 1) % (n_ref + 1)
    return updates, NaiveState(count, anchor, inner)

  return optax.GradientTransformation(init, update)
