"""Donating the state straight from ``init``.

A Flax or optax training loop jits its step with the parameters and the
optimizer state donated (``donate_argnums``), and the first call gets the
state ``init`` just returned. XLA refuses to donate one buffer twice, so
``init`` must never put one array in two leaves of the state (nor a
parameter itself into it): the first call would fail with "Attempt to
donate the same buffer twice".
"""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import profit_optax

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.ones(3)}
GRADS = jax.tree.map(lambda p: 0.1 * jnp.cos(p), PARAMS)

TRANSFORMATIONS = {
  "profit": lambda: profit_optax.profit(optax.adam(1e-2), 1e-3),
  "profit_n_ref_2_options": lambda: profit_optax.profit(
    optax.adam(1e-2),
    1e-3,
    2,
    projection_groups="leaf",
    ref_trust_radius=0.1,
    ref_preconditioner="main",
  ),
  "profit_delta_dtype": lambda: profit_optax.profit(
    optax.sgd(1e-2), 1e-3, delta_dtype=jnp.float32
  ),
  "ftp": lambda: profit_optax.ftp(optax.adam(1e-2)),
  "l2sp": lambda: profit_optax.l2sp(
    1e-2, 1e-3, head_mask={"w": False, "b": True}
  ),
  "spd": lambda: profit_optax.spd(optax.adam(1e-2), 1e-2),
  "profit_warmup": lambda: profit_optax.profit_warmup(
    optax.adam(1e-2), profit_optax.profit(optax.adam(1e-2), 1e-3), 2
  ),
  "profit_warmup_shared": lambda: profit_optax.profit_warmup(
    optax.adam(1e-2),
    profit_optax.profit(optax.adam(1e-2), 1e-3),
    2,
    share_moments=True,
  ),
}


def train_step(tx):
  def step(params, state):
    updates, state = tx.update(GRADS, state, params)
    return optax.apply_updates(params, updates), state

  return step


@pytest.mark.parametrize("name", sorted(TRANSFORMATIONS))
def test_state_from_init_can_be_donated(name):
  tx = TRANSFORMATIONS[name]()
  plain = jax.jit(train_step(tx))
  donated = jax.jit(train_step(tx), donate_argnums=(0, 1))
  expected = (PARAMS, tx.init(PARAMS))
  for _ in range(4):
    expected = plain(*expected)
  params = jax.tree.map(jnp.copy, PARAMS)
  got = (params, tx.init(params))
  for _ in range(4):
    got = donated(*got)
  chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-7)


def loss_fn(params, batch):
  x, y = batch
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def test_profit_step_donates_a_fresh_state():
  tx = profit_optax.profit(optax.adam(1e-2), 1e-3)
  x = jnp.linspace(0.0, 1.0, 2 * 5 * 4).reshape(2, 5, 4)
  batches = (x, jnp.sin(x[..., :3]))
  expected = profit_optax.profit_step(
    loss_fn, tx, PARAMS, tx.init(PARAMS), batches
  )
  params = jax.tree.map(jnp.copy, PARAMS)
  got = profit_optax.profit_step(
    loss_fn, tx, params, tx.init(params), batches, donate=True
  )
  chex.assert_trees_all_close(
    (got.params, got.opt_state, got.metrics),
    (expected.params, expected.opt_state, expected.metrics),
  )
