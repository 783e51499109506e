"""The one training loop of the benchmarks: jitted ``lax.scan`` chunks.

A run is ``calls`` optimizer calls, ``length`` per compiled chunk, each on a
batch drawn inside the chunk from ``sample(key, data)``. With PROFIT each call
is one sub-step (one gradient per ``update`` call), so ``n_ref + 1`` calls
make one PROFIT step. The optimizer is built inside the chunk from a traced
``hyper`` (a float or a pytree of floats), so a sweep over learning rates or
reference rates compiles once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def make_runner(
  loss_fn: Callable[[Any, Any], jax.Array],
  make_tx: Callable[[Any], optax.GradientTransformation],
  sample: Callable[[jax.Array, Any], Any],
  length: int,
) -> Callable:
  """A jitted ``run(params, state, key, hyper, data)``.

  Returns ``(params, state, mean_loss)`` after ``length`` calls of
  ``make_tx(hyper)``, each on ``sample(key_i, data)``.
  """
  grad_fn = jax.value_and_grad(loss_fn)

  @jax.jit
  def run(params, state, key, hyper, data):
    tx = make_tx(hyper)

    def body(carry, k):
      params, state = carry
      loss, grads = grad_fn(params, sample(k, data))
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss

    (params, state), losses = jax.lax.scan(
      body, (params, state), jax.random.split(key, length)
    )
    return params, state, jnp.mean(losses)

  return run


def init_state(make_tx, params, hyper):
  """``make_tx(hyper).init(params)``, jitted like the runner."""
  return jax.jit(lambda p, h: make_tx(h).init(p))(params, hyper)


def train(
  run: Callable,
  params,
  state,
  key: jax.Array,
  hyper,
  data,
  chunks: int,
  on_chunk: Callable[[int, Any], None] | None = None,
):
  """``chunks`` calls of ``run``; ``on_chunk(k, params)`` after each."""
  for k in range(chunks):
    params, state, _ = run(
      params, state, jax.random.fold_in(key, k), hyper, data
    )
    if on_chunk is not None:
      on_chunk(k, params)
  return params, state
