"""Cost breakdown of PROFIT's main `update` call on a large pytree: each
stage of the call jitted on its own, for the overhead report."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import optax


def _median_s(fn, args, repeats):
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    runs.append(time.perf_counter() - start)
  return statistics.median(runs)


def main_call_breakdown(n_leaves, leaf_size, repeats, lr=1e-3):
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  tree = lambda k: {
    f"p{i}": jax.random.normal(kk, (leaf_size,))
    for i, kk in enumerate(jax.random.split(k, n_leaves))
  }
  params, anchor, grads = tree(keys[0]), tree(keys[1]), tree(keys[2])
  adam = optax.adam(lr)
  state = adam.init(params)
  tm = jax.tree.map

  def anchor_select(params, anchor):
    return tm(lambda p, a: jnp.where(False, p, a), params, anchor)

  def products(params, anchor, grads):
    d = tm(jnp.subtract, params, anchor)
    vd = lambda x, y: sum(
      jnp.sum(a * b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y))
    )
    return vd(d, grads), vd(d, d), vd(grads, grads)

  def projection(params, anchor, grads):
    return tm(
      lambda p, a, g: jnp.where(True, g - 0.5 * (p - a), g),
      params,
      anchor,
      grads,
    )

  def adam_update(grads, state, anchor):
    return adam.update(grads, state, anchor)

  def restore(anchor, params, updates):
    return tm(lambda a, p, u: (a - p) + u, anchor, params, updates)

  return {
    "anchor_select": _median_s(anchor_select, (params, anchor), repeats),
    "inner_products": _median_s(products, (params, anchor, grads), repeats),
    "projection": _median_s(projection, (params, anchor, grads), repeats),
    "adam_update": _median_s(adam_update, (grads, state, anchor), repeats),
    "restore_to_anchor": _median_s(restore, (anchor, params, grads), repeats),
  }
