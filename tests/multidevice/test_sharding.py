"""PROFIT on a mesh of 8 devices: same trajectory as one device, the stored
displacement Δ keeps the parameters' sharding, and the update gathers no
parameters."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import profit_optax
from tests import helpers

STEPS = 10  # PROFIT steps


def init_params(key):
  k1, k2 = jax.random.split(key)
  return {
    "w1": jax.random.normal(k1, (16, 32)) / 4.0,
    "b1": jnp.zeros((32,)),
    "w2": jax.random.normal(k2, (32, 8)) / 6.0,
    "b2": jnp.zeros((8,)),
  }


def loss_fn(params, batch):
  x, y = batch
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def batches(n, seed=1):
  out = []
  for k in jax.random.split(jax.random.PRNGKey(seed), n):
    kx, kn = jax.random.split(k)
    x = jax.random.normal(kx, (64, 16))
    y = jnp.sin(x[:, :8]) + 0.3 * jax.random.normal(kn, (64, 8))
    out.append((x, y))
  return out


def replicated(mesh, tree):
  return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def run_per_call(tx, params, data, shard_batch=lambda b: b):
  return helpers.run_batches(loss_fn, tx, params, data, shard_batch)


def run_whole_step(tx, params, data, n, shard_batch=lambda b: b):
  grad = jax.grad(loss_fn)

  @jax.jit
  def step(params, state, stacked):
    pick = lambda i: jax.tree.map(lambda x: x[i], stacked)
    updates, state = tx.update(
      grad(params, pick(0)),
      state,
      params,
      grad_fn=lambda p, i: grad(p, pick(i + 1)),
    )
    return optax.apply_updates(params, updates), state

  state = jax.jit(tx.init)(params)
  for s in range(len(data) // n):
    chunk = data[s * n : (s + 1) * n]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *chunk)
    params, state = step(params, state, shard_batch(stacked))
  return params, state


def run_profit_step(tx, params, data, shard_batch=lambda b: b):
  state = jax.jit(tx.init)(params)
  it = iter([shard_batch(b) for b in data])
  for _ in range(STEPS):
    out = profit_optax.profit_step(loss_fn, tx, params, state, it)
    params, state = out.params, out.opt_state
  return params, state


@pytest.mark.parametrize("n_ref", [1, 2])
@pytest.mark.parametrize("layout", ["data_parallel", "fsdp"])
def test_sharded_matches_single_device(mesh, layout, n_ref):
  # float64, so that the comparison is tight despite the different order of
  # the cross-device reductions.
  with jax.enable_x64(True):
    _check_sharded_matches_single_device(mesh, layout, n_ref)


def _check_sharded_matches_single_device(mesh, layout, n_ref):
  tx = profit_optax.profit(optax.adam(1e-2), 1e-3, n_ref=n_ref)
  opaque = profit_optax.profit(optax.adam(1e-2), 1e-3, n_ref, opaque_mode=True)
  n = n_ref + 1
  data = jax.tree.map(lambda x: x.astype(jnp.float64), batches(STEPS * n))
  params = jax.tree.map(
    lambda x: x.astype(jnp.float64), init_params(jax.random.PRNGKey(0))
  )
  if layout == "fsdp":
    param_sharding = helpers.fsdp_sharding(mesh, params)
  else:
    param_sharding = replicated(mesh, params)
  sharded = jax.device_put(params, param_sharding)
  batch_sharding = NamedSharding(mesh, P("data"))
  stacked_sharding = NamedSharding(mesh, P(None, "data"))
  per_batch = lambda b: jax.device_put(b, batch_sharding)
  per_stack = lambda b: jax.device_put(b, stacked_sharding)

  want, want_state = run_per_call(tx, params, data)
  for got, state in (
    run_per_call(tx, sharded, data, per_batch),
    run_whole_step(opaque, sharded, data, n, per_stack),
    run_profit_step(tx, sharded, data, per_batch),
  ):
    chex.assert_trees_all_close(got, want, rtol=1e-9, atol=1e-11)
    assert int(state.step) == STEPS == int(want_state.step)
    helpers.assert_sharded_like(got, param_sharding)


def test_delta_takes_the_parameter_sharding(mesh):
  tx = profit_optax.profit(optax.adam(1e-2), 1e-3)
  params = init_params(jax.random.PRNGKey(0))
  shardings = helpers.fsdp_sharding(mesh, params)
  sharded = jax.device_put(params, shardings)
  state = jax.jit(tx.init)(sharded)
  helpers.assert_sharded_like(state.delta, shardings)
  # After a reference call Δ holds the displacement, still sharded.
  moved, state = run_per_call(tx, sharded, batches(1))
  assert int(state.count) == 1
  helpers.assert_sharded_like(state.delta, shardings)
  chex.assert_trees_all_close(
    state.delta, jax.tree.map(jnp.subtract, moved, params), atol=1e-6
  )


def test_init_from_shape_dtype_struct(mesh):
  tx = profit_optax.profit(optax.adam(1e-2), 1e-3)
  params = init_params(jax.random.PRNGKey(0))
  shardings = helpers.fsdp_sharding(mesh, params)
  direct, shapes = helpers.init_abstract_like_concrete(tx, params, shardings)
  # A state laid out from the abstract one, as a sharded restore would be.
  out_shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), shapes)
  out_shardings = out_shardings._replace(delta=shardings)
  state = jax.jit(tx.init, out_shardings=out_shardings)(params)
  helpers.assert_sharded_like(state.delta, shardings)


@pytest.mark.parametrize("explicit", [False, True])
def test_sharding_in_types_preserved(explicit):
  """optax's own sharding contract (optax/_src/sharding_test.py)."""
  axis_types = (
    (jax.sharding.AxisType.Explicit,)
    if explicit
    else (jax.sharding.AxisType.Auto,)
  )
  mesh = jax.make_mesh((helpers.N_DEV,), ("x",), axis_types=axis_types)
  sharding = NamedSharding(mesh, P(None, "x"))
  tx = profit_optax.profit(optax.adam(1.0), 0.1)
  with jax.set_mesh(mesh):
    params = jax.device_put(jnp.zeros((2, 8, 4), jnp.float32), sharding)
    state0 = jax.jit(tx.init)(params)
    _, state1 = jax.jit(tx.update)(params, state0, params)
    _, state2 = jax.jit(tx.update)(params, state1, params)
  for s in (state1, state2):
    chex.assert_trees_all_equal(
      jax.tree.map(jax.typeof, state0), jax.tree.map(jax.typeof, s)
    )


@pytest.mark.parametrize("n_ref", [1, 2])
def test_update_gathers_no_parameters(mesh, n_ref):
  """On FSDP-sharded params and grads the compiled update only all-reduces
  the scalar inner products; it never all-gathers a parameter."""
  tx = profit_optax.profit(optax.adam(1e-2), 1e-3, n_ref=n_ref)
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  big = {  # large enough that a whole parameter dwarfs fixed temporaries
    "w1": jax.random.normal(k1, (512, 256)),
    "w2": jax.random.normal(k2, (256, 512)),
  }
  params = jax.device_put(big, helpers.fsdp_sharding(mesh, big))
  state = jax.jit(tx.init)(params)
  hlo = jax.jit(tx.update).lower(params, state, params).compile().as_text()
  assert "all-gather" not in hlo
  assert "all-reduce" in hlo
  # The per-device memory of the step holds shards, not whole parameters.
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  stats = (
    jax.jit(tx.update).lower(params, state, params).compile().memory_analysis()
  )
  if stats is not None:
    assert stats.temp_size_in_bytes < param_bytes
