"""FTP on a mesh of 8 devices: θ0 and the previous displacement keep the
parameters' sharding, the sharded run matches one device, and the update
gathers no parameter."""

import chex
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import profit_optax
from tests import helpers

STEPS = 6


def init_params(key, dtype=jnp.float32):
  k1, k2, k3 = jax.random.split(key, 3)
  params = {
    # Flax layout: the output channel is the last axis.
    "conv": {
      "kernel": jax.random.normal(k1, (3, 3, 8, 16)) / 8.0,
      "bias": jnp.zeros((16,)),
    },
    "dense": {
      "kernel": jax.random.normal(k2, (16, 32)) / 4.0,
      "bias": jnp.zeros((32,)),
    },
    "head": {"kernel": jax.random.normal(k3, (32, 8)) / 6.0},
  }
  return jax.tree.map(lambda x: x.astype(dtype), params)


def shardings(mesh):
  """Output channels sharded for the conv, the input axis (a reduced axis of
  the row norms) for the dense kernel and the head."""
  s = lambda *spec: NamedSharding(mesh, P(*spec))
  return {
    "conv": {"kernel": s(None, None, None, "data"), "bias": s("data")},
    "dense": {"kernel": s("data"), "bias": s("data")},
    "head": {"kernel": s("data")},
  }


def mask(params):
  return {name: name != "head" for name in params}


def loss_fn(params, batch):
  patches, y = batch  # patches: (batch, 3, 3, 8)
  h = jnp.einsum("bhwi,hwio->bo", patches, params["conv"]["kernel"])
  h = jnp.tanh(h + params["conv"]["bias"])
  h = jnp.tanh(h @ params["dense"]["kernel"] + params["dense"]["bias"])
  return jnp.mean((h @ params["head"]["kernel"] - y) ** 2)


def batches(n, dtype=jnp.float32, seed=1):
  out = []
  for k in jax.random.split(jax.random.PRNGKey(seed), n):
    kx, ky = jax.random.split(k)
    x = jax.random.normal(kx, (32, 3, 3, 8), dtype)
    y = jax.random.normal(ky, (32, 8), dtype)
    out.append((x, y))
  return out


def make_tx():
  return profit_optax.ftp(
    optax.sgd(0.05, momentum=0.9), gamma_learning_rate=0.05, mask=mask
  )


def run(tx, params, data, shard_batch=lambda b: b):
  return helpers.run_batches(loss_fn, tx, params, data, shard_batch)


def projected(tree):
  """The conv and dense leaves (the head is not projected)."""
  return {"conv": tree["conv"], "dense": tree["dense"]}


def test_pretrained_takes_the_parameter_sharding(mesh):
  tx = make_tx()
  params = init_params(jax.random.PRNGKey(0))
  shards = shardings(mesh)
  sharded = jax.device_put(params, shards)
  for state in (jax.jit(tx.init)(sharded), tx.init(sharded)):
    helpers.assert_sharded_like(projected(state.pretrained), projected(shards))
    helpers.assert_sharded_like(
      projected(state.prev_displacement), projected(shards)
    )
  assert state.pretrained["head"] == {"kernel": optax.MaskedNode()}
  chex.assert_trees_all_equal(projected(state.pretrained), projected(params))
  # Still so after steps; the parameters keep their sharding too.
  got, state = run(tx, sharded, batches(2))
  helpers.assert_sharded_like(projected(state.pretrained), projected(shards))
  helpers.assert_sharded_like(
    projected(state.prev_displacement), projected(shards)
  )
  helpers.assert_sharded_like(got, shards)
  chex.assert_trees_all_equal(projected(state.pretrained), projected(params))


def test_sharded_matches_single_device(mesh):
  # float64, so that the comparison is tight despite the different order of
  # the cross-device reductions.
  with jax.enable_x64(True):
    tx = make_tx()
    params = init_params(jax.random.PRNGKey(0), jnp.float64)
    data = batches(STEPS, jnp.float64)
    shards = shardings(mesh)
    batch_sharding = NamedSharding(mesh, P("data"))
    want, want_state = run(tx, params, data)
    got, state = run(
      tx,
      jax.device_put(params, shards),
      data,
      lambda b: jax.device_put(b, batch_sharding),
    )
    chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_close(
      state.gamma, want_state.gamma, rtol=1e-10, atol=1e-14
    )
    assert float(want_state.gamma["dense"]["kernel"]) > 1e-3  # γ has moved
    helpers.assert_sharded_like(got, shards)


def test_init_from_shape_dtype_struct(mesh):
  tx = make_tx()
  params = init_params(jax.random.PRNGKey(0))
  shards = shardings(mesh)
  direct, _ = helpers.init_abstract_like_concrete(tx, params, shards)
  helpers.assert_sharded_like(projected(direct.pretrained), projected(shards))


def test_update_gathers_no_parameters(mesh):
  """The row norms reduce over a sharded axis with an all-reduce of per-row
  partial sums; no parameter is ever all-gathered."""
  tx = profit_optax.ftp(optax.adam(1e-2))
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  big = {  # large enough that a whole parameter dwarfs fixed temporaries
    "w1": jax.random.normal(k1, (512, 256)),
    "w2": jax.random.normal(k2, (256, 512)),
  }
  fsdp = jax.tree.map(lambda _: NamedSharding(mesh, P("data")), big)
  params = jax.device_put(big, fsdp)
  state = jax.jit(tx.init)(params)
  compiled = jax.jit(tx.update).lower(params, state, params).compile()
  hlo = compiled.as_text()
  assert "all-gather" not in hlo
  assert "all-reduce" in hlo
  stats = compiled.memory_analysis()
  if stats is not None:
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    assert stats.temp_size_in_bytes < param_bytes
