"""PROFIT's toolkit options and ``profit_warmup`` on a mesh of 8 devices: the
stored displacement Δ keeps the parameters' sharding through the steps
(across the warmup's switch too), and a sharded run follows the
single-device trajectory."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import profit_optax
from tests import helpers
from tests.multidevice.test_sharding import batches, init_params, loss_fn

CALLS = 9  # three cycles at n_ref 2; the warmup switches after 3 calls


def layouts(mesh, params):
  return helpers.layouts(
    mesh,
    params,
    {"w1": P(None, "data"), "b1": P(), "w2": P("data", None), "b2": P("data")},
  )


@pytest.mark.parametrize("layout", ["fsdp", "mixed"])
@pytest.mark.parametrize("kind", helpers.PROFIT_OPTIONS)
def test_delta_keeps_the_params_sharding(mesh, kind, layout):
  tx = helpers.profit_option_tx(kind)
  params = init_params(jax.random.PRNGKey(0))
  shardings = layouts(mesh, params)[layout]
  p = jax.device_put(params, shardings)
  step = helpers.make_loss_call(loss_fn, tx)
  state = jax.jit(tx.init)(p)
  helpers.assert_sharded_like(
    profit_optax.find_profit_state(state).delta, shardings
  )
  batch_sharding = NamedSharding(mesh, P("data"))
  for batch in batches(CALLS):
    p, state = step(p, state, jax.device_put(batch, batch_sharding))
    helpers.assert_sharded_like(
      profit_optax.find_profit_state(state).delta, shardings
    )
    helpers.assert_sharded_like(p, shardings)
  assert int(profit_optax.find_profit_state(state).step) >= 1


@pytest.mark.parametrize("kind", helpers.PROFIT_OPTIONS)
def test_sharded_run_matches_single_device(mesh, kind):
  with jax.enable_x64(True):
    params = jax.tree.map(
      lambda x: x.astype(jnp.float64), init_params(jax.random.PRNGKey(0))
    )
    helpers.assert_sharded_run_matches_single_device(
      mesh,
      loss_fn,
      helpers.profit_option_tx(kind),
      params,
      jax.tree.map(lambda x: x.astype(jnp.float64), batches(CALLS)),
      layouts(mesh, params)["fsdp"],
    )
