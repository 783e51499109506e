"""L2-SP and SPD on a mesh of 8 devices: the stored pretrained copy keeps the
parameters' sharding (at init, in and out of jit, and through steps), and a
sharded run follows the single-device trajectory."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import profit_optax
from tests import helpers

STEPS = 5


def init_params(key, dtype=jnp.float32):
  k1, k2 = jax.random.split(key)
  return {
    "w1": (jax.random.normal(k1, (16, 32)) / 4.0).astype(dtype),
    "b1": jnp.zeros((32,), dtype),
    "head": (jax.random.normal(k2, (32, 8)) / 6.0).astype(dtype),
  }


def loss_fn(params, x):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((h @ params["head"] - jnp.sin(x[:, :8])) ** 2)


def layouts(mesh, params):
  return helpers.layouts(
    mesh, params, {"w1": P(None, "data"), "b1": P(), "head": P("data", None)}
  )


TRANSFORMS = {
  "l2sp": lambda: optax.chain(
    profit_optax.l2sp(
      0.1, 0.01, head_mask={"w1": False, "b1": False, "head": True}
    ),
    optax.adam(1e-2),
  ),
  "l2sp_decoupled": lambda: optax.chain(
    optax.adam(1e-2),
    profit_optax.l2sp(0.1, decoupled=True, learning_rate=1e-2),
  ),
  "spd": lambda: profit_optax.spd(optax.adam(1e-2), 0.5),
}


def find_pretrained(state):
  found = [
    s.pretrained
    for s in jax.tree.leaves(
      state,
      is_leaf=lambda x: isinstance(
        x, (profit_optax.L2SPState, profit_optax.SPDState)
      ),
    )
    if isinstance(s, (profit_optax.L2SPState, profit_optax.SPDState))
  ]
  assert len(found) == 1
  return found[0]


def make_step(tx):
  return helpers.make_loss_call(loss_fn, tx)


@pytest.mark.parametrize("layout", ["fsdp", "mixed"])
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_pretrained_copy_keeps_the_params_sharding(mesh, name, layout):
  tx = TRANSFORMS[name]()
  params = init_params(jax.random.PRNGKey(0))
  shardings = layouts(mesh, params)[layout]
  sharded = jax.device_put(params, shardings)
  step = make_step(tx)
  x = jax.device_put(
    jax.random.normal(jax.random.PRNGKey(1), (64, 16)),
    NamedSharding(mesh, P("data")),
  )
  for init in (tx.init, jax.jit(tx.init)):
    state = init(sharded)
    pretrained = find_pretrained(state)
    helpers.assert_sharded_like(pretrained, shardings)
    chex.assert_trees_all_equal(pretrained, params)
    p = sharded
    for _ in range(2):
      p, state = step(p, state, x)
    helpers.assert_sharded_like(find_pretrained(state), shardings)
    helpers.assert_sharded_like(p, shardings)


@pytest.mark.parametrize("name", ["l2sp", "spd"])
def test_explicit_host_pretrained_is_placed_like_the_params(mesh, name):
  params = init_params(jax.random.PRNGKey(0))
  shardings = layouts(mesh, params)["mixed"]
  sharded = jax.device_put(params, shardings)
  host = jax.tree.map(lambda p: np.asarray(p, np.float64) + 1.0, params)
  if name == "l2sp":
    tx = profit_optax.l2sp(0.1, pretrained=host)
  else:
    tx = profit_optax.spd(optax.adam(1e-2), 0.5, pretrained=host)
  pretrained = find_pretrained(tx.init(sharded))
  helpers.assert_sharded_like(pretrained, shardings)
  for leaf, want in zip(jax.tree.leaves(pretrained), jax.tree.leaves(host)):
    assert leaf.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(leaf), want.astype(np.float32))


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_sharded_run_matches_single_device(mesh, name):
  with jax.enable_x64(True):
    params = init_params(jax.random.PRNGKey(0), jnp.float64)
    xs = [
      jax.random.normal(k, (64, 16), jnp.float64)
      for k in jax.random.split(jax.random.PRNGKey(2), STEPS)
    ]
    helpers.assert_sharded_run_matches_single_device(
      mesh,
      loss_fn,
      TRANSFORMS[name](),
      params,
      xs,
      layouts(mesh, params)["fsdp"],
      rtol=1e-10,
      atol=1e-12,
    )


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_init_from_shape_dtype_struct(mesh, name):
  tx = TRANSFORMS[name]()
  params = init_params(jax.random.PRNGKey(0))
  shardings = layouts(mesh, params)["fsdp"]
  abstract = jax.tree.map(
    lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s),
    params,
    shardings,
  )
  concrete = tx.init(params)
  for state in (tx.init(abstract), jax.eval_shape(tx.init, abstract)):
    chex.assert_trees_all_equal_shapes_and_dtypes(state, concrete)
  helpers.assert_sharded_like(find_pretrained(tx.init(abstract)), shardings)


@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_sharding_in_types_preserved(name, explicit):
  """optax's sharding contract (optax/_src/sharding_test.py): the state's
  types, shardings included, are the same after init and after update."""
  axis_type = (
    jax.sharding.AxisType.Explicit if explicit else jax.sharding.AxisType.Auto
  )
  mesh = jax.make_mesh((helpers.N_DEV,), ("x",), axis_types=(axis_type,))
  sharding = NamedSharding(mesh, P(None, "x"))
  tx = TRANSFORMS[name]()
  with jax.set_mesh(mesh):
    params = {
      k: jax.device_put(jnp.ones((2, 8), jnp.float32), sharding)
      for k in ("w1", "b1", "head")
    }
    state0 = tx.init(params)
    _, state1 = tx.update(params, state0, params)
    chex.assert_trees_all_equal(
      jax.tree.map(jax.typeof, state0), jax.tree.map(jax.typeof, state1)
    )
    _, state2 = jax.jit(tx.update)(params, state0, params)
    chex.assert_trees_all_equal(
      jax.tree.map(jax.typeof, state0), jax.tree.map(jax.typeof, state2)
    )
    assert find_pretrained(state0)["w1"].sharding == sharding


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_update_gathers_no_parameters(mesh, name):
  """On FSDP-sharded params the compiled step never all-gathers a parameter
  or the pretrained copy: L2-SP is elementwise, and SPD's per-leaf inner
  product and norms are scalar all-reduces."""
  tx = TRANSFORMS[name]()
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  big = {
    "w1": jax.random.normal(k1, (512, 256)),
    "b1": jnp.zeros((256,)),
    "head": jax.random.normal(k2, (256, 64)),
  }
  params = jax.device_put(big, layouts(mesh, big)["fsdp"])
  state = jax.jit(tx.init)(params)
  hlo = jax.jit(tx.update).lower(params, state, params).compile().as_text()
  assert "all-gather" not in hlo
  if name == "spd":
    assert "all-reduce" in hlo
