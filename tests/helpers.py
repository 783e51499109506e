"""Helpers shared by the test modules.

Jitted drivers of a transformation, the assertions the toolkit's tests make
on its runs, and the small PROFIT problem on which the drives are compared
with the NumPy reference (tests/reference.py).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import profit_optax
from tests import reference

N_DEV = 8  # the devices tests/multidevice needs (8 virtual CPU devices)

# --------------------------------------------------------------------------
# Running a transformation
# --------------------------------------------------------------------------


def make_grad_call(tx, **extra):
  """A jitted ``(params, state, grads) -> (params, state)``: one update."""

  @jax.jit
  def call(params, state, grads):
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  return call


def make_loss_call(loss, tx, **extra):
  """A jitted ``(params, state, batch) -> (params, state)``: one update with
  the gradient of ``loss(params, batch)`` (a batch, or a random key)."""

  @jax.jit
  def call(params, state, batch):
    grads = jax.grad(loss)(params, batch)
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  return call


def run_keys(call, params, state, calls, seed=0):
  """``calls`` calls of ``call``, one random key each."""
  for key in jax.random.split(jax.random.PRNGKey(seed), calls):
    params, state = call(params, state, key)
  return params, state


def run_batches(loss, tx, params, data, shard_batch=lambda b: b):
  """A jitted run of ``tx`` from ``jax.jit(tx.init)(params)``, one call per
  batch of ``data`` (each placed by ``shard_batch``)."""
  call = make_loss_call(loss, tx)
  state = jax.jit(tx.init)(params)
  for batch in data:
    params, state = call(params, state, shard_batch(batch))
  return params, state


def fsdp_sharding(mesh, params):
  """Shards every leaf along its first axis (FSDP-style)."""
  return jax.tree.map(lambda _: NamedSharding(mesh, P("data")), params)


def layouts(mesh, params, mixed):
  """Two layouts of ``params`` on ``mesh``'s "data" axis: ``"fsdp"``
  (:func:`fsdp_sharding`) and ``"mixed"``, the partition specs ``mixed``
  gives per top-level key."""
  return {
    "fsdp": fsdp_sharding(mesh, params),
    "mixed": {k: NamedSharding(mesh, spec) for k, spec in mixed.items()},
  }


def assert_sharded_like(tree, shardings):
  """Every leaf of ``tree`` is placed as the matching leaf of ``shardings``
  (a tree of the same structure, or of one sharding per leaf)."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  want = jax.tree.leaves(shardings)
  assert len(leaves) == len(want), (len(leaves), len(want))
  for (path, leaf), sharding in zip(leaves, want):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (
      jax.tree_util.keystr(path),
      leaf.sharding,
      sharding,
    )


def assert_sharded_run_matches_single_device(
  mesh, loss, tx, params, data, shardings, rtol=1e-9, atol=1e-11
):
  """A run of ``tx`` over ``data`` from ``params`` placed by ``shardings``
  (the batches split along ``"data"``) follows the single-device run; call
  it under ``jax.enable_x64`` for a tight comparison."""
  want, _ = run_batches(loss, tx, params, data)
  got, _ = run_batches(
    loss,
    tx,
    jax.device_put(params, shardings),
    data,
    lambda b: jax.device_put(b, NamedSharding(mesh, P("data"))),
  )
  chex.assert_trees_all_close(got, want, rtol=rtol, atol=atol)


# PROFIT's toolkit options and the warmup recipe, at n_ref 2, around Adam.
PROFIT_OPTIONS = ("trust", "precondition", "per-layer", "warmup")


def profit_option_tx(kind):
  """PROFIT with one of :data:`PROFIT_OPTIONS`; ``"warmup"`` is
  ``profit_warmup`` with 3 warmup calls before plain PROFIT."""
  adam = optax.adam(1e-2)
  if kind == "trust":
    return profit_optax.profit(adam, 1e-3, n_ref=2, ref_trust_radius=1e-3)
  if kind == "precondition":
    return profit_optax.profit(adam, 1e-3, n_ref=2, ref_preconditioner="main")
  if kind == "per-layer":
    return profit_optax.profit(adam, 1e-3, n_ref=2, projection_groups="leaf")
  assert kind == "warmup", kind
  return profit_optax.profit_warmup(
    optax.adam(1e-2), profit_optax.profit(optax.adam(1e-2), 1e-3, n_ref=2), 3
  )


def init_abstract_like_concrete(tx, params, shardings):
  """``tx.init`` of the parameters as jax.ShapeDtypeStructs placed by
  ``shardings``, directly and under ``jax.eval_shape``: both must have the
  shapes and dtypes of ``tx.init(params)``. Returns the two."""
  abstract = jax.tree.map(
    lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s),
    params,
    shardings,
  )
  direct = tx.init(abstract)
  shapes = jax.eval_shape(tx.init, abstract)
  concrete = tx.init(params)
  chex.assert_trees_all_equal_shapes_and_dtypes(direct, concrete)
  chex.assert_trees_all_equal_shapes_and_dtypes(shapes, concrete)
  return direct, shapes


def noisy_loss(leaves, key):
  """A noisy least-squares loss of ``leaves``, in their order: a fresh random
  target for every key."""
  flat = jnp.concatenate([x.ravel() for x in leaves])
  noise = jax.random.normal(key, flat.shape)
  return jnp.sum((flat.astype(jnp.float32) - 0.5 - 0.3 * noise) ** 2)


def jax_run(tx, params, grads_seq, state=None, **extra):
  """The parameters after each of the gradients ``grads_seq``, and the final
  state."""
  call = make_grad_call(tx, **extra)
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params) if state is None else state
  trajectory = []
  for g in grads_seq:
    params, state = call(params, state, jax.tree.map(jnp.asarray, g))
    trajectory.append(params)
  return trajectory, state


# --------------------------------------------------------------------------
# Assertions
# --------------------------------------------------------------------------


def assert_trajectories_close(got, want, tol=1e-12):
  assert len(got) == len(want)
  for t, (a, b) in enumerate(zip(got, want)):
    for k in b:
      np.testing.assert_allclose(
        np.asarray(a[k]), b[k], rtol=tol, atol=tol, err_msg=f"step {t} {k}"
      )


def assert_bit_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_params_and_updates_checked(tx, params):
  """``init`` and ``update`` refuse to run without ``params``, and ``update``
  refuses updates that lack a leaf (``params`` has a leaf "w1" and more).
  Returns ``tx.init(params)``."""
  with pytest.raises(ValueError, match="not passing `params`"):
    tx.init(None)
  state = tx.init(params)
  with pytest.raises(ValueError, match="not passing `params`"):
    tx.update(params, state)
  with pytest.raises(ValueError, match="`updates` must have the same tree"):
    tx.update({"w1": params["w1"]}, state, params)
  return state


def assert_update_compiles_once(tx, params, grads, **extra):
  """A jitted ``update`` (with ``extra`` keyword arguments) compiles once
  over five calls from a jitted ``init``."""
  call = make_grad_call(tx, **extra)
  p = jax.tree.map(jnp.asarray, params)
  state = jax.jit(tx.init)(p)
  p, state = call(p, state, grads[0])
  before = call._cache_size()
  for g in grads[1:5]:
    p, state = call(p, state, g)
  assert call._cache_size() == before == 1


def assert_orbax_resume_is_bit_identical(
  tx, params, grads, stop, path, index, state_type
):
  """Runs ``tx`` (an ``optax.chain``) over ``grads``, and again with an Orbax
  save and restore after ``stop`` of them: the restored state holds a
  ``state_type`` at ``index`` whose count is ``stop``, and the restored
  checkpoint and the resumed run are bit-identical to the uninterrupted run.
  """
  import orbax.checkpoint as ocp

  call = make_grad_call(tx)

  def run(p, s, gs):
    for g in gs:
      p, s = call(p, s, g)
    return p, s

  want_params, want_state = run(params, tx.init(params), grads)
  mid_params, mid_state = run(params, tx.init(params), grads[:stop])
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, {"params": mid_params, "opt_state": mid_state})
    checkpointer.wait_until_finished()
    target = jax.eval_shape(
      lambda: {"params": params, "opt_state": tx.init(params)}
    )
    restored = checkpointer.restore(path, target)
  assert isinstance(restored["opt_state"][index], state_type)
  assert int(restored["opt_state"][index].count) == stop
  assert_bit_identical(restored, {"params": mid_params, "opt_state": mid_state})
  got_params, got_state = run(
    restored["params"], restored["opt_state"], grads[stop:]
  )
  assert_bit_identical(got_params, want_params)
  assert_bit_identical(got_state, want_state)


# --------------------------------------------------------------------------
# PROFIT's drives on the NumPy reference's problem
# --------------------------------------------------------------------------

D_IN, D_HIDDEN, BATCH = 3, 8, 16
STEPS = 50  # PROFIT steps


def jax_loss(params, batch):
  x, y = batch
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  out = h @ params["w2"] + params["b2"]
  return jnp.mean((out[:, 0] - y) ** 2)


def problem(n_ref, seed=0):
  """The reference's pretrained MLP and batches for ``STEPS`` steps."""
  rng = np.random.default_rng(seed)
  params = reference.pretrained_mlp(rng, D_IN, D_HIDDEN)
  batches = reference.make_batches(rng, STEPS * (n_ref + 1), BATCH, D_IN)
  return params, batches


def to_jax(tree):
  return jax.tree.map(jnp.asarray, tree)


def assert_close(actual, expected, tol=1e-10):
  for k in expected:
    np.testing.assert_allclose(
      np.asarray(actual[k]), expected[k], rtol=tol, atol=tol, err_msg=k
    )


def run_per_call(tx, params, batches):
  """The per-call drive: one gradient per call; the diagnostics after each
  PROFIT step."""
  grad = jax.grad(jax_loss)

  @jax.jit
  def call(params, state, batch):
    updates, state = tx.update(grad(params, batch), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  records = []
  n = int(state.n_ref.value) + 1
  for i, batch in enumerate(batches):
    params, state = call(params, state, to_jax(batch))
    if (i + 1) % n == 0:
      records.append(profit_optax.get_diagnostics(state))
  return params, records


def run_whole_step(tx, params, batches, n):
  """The whole-step drive (``opaque_mode=True``): ``n`` batches a call."""
  grad = jax.grad(jax_loss)

  @jax.jit
  def step(params, state, stacked):
    first = jax.tree.map(lambda x: x[0], stacked)
    grad_fn = lambda p, i: grad(p, jax.tree.map(lambda x: x[i + 1], stacked))
    updates, state = tx.update(
      grad(params, first), state, params, grad_fn=grad_fn
    )
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  records = []
  for s in range(STEPS):
    chunk = batches[s * n : (s + 1) * n]
    stacked = to_jax(jax.tree.map(lambda *xs: np.stack(xs), *chunk))
    params, state = step(params, state, stacked)
    records.append(profit_optax.get_diagnostics(state))
  return params, records


def run_profit_step(tx, params, batches, n):
  """``profit_step``: its metrics and losses after each PROFIT step."""
  state = tx.init(params)
  it = iter([to_jax(b) for b in batches])
  records, losses = [], []
  for _ in range(STEPS):
    out = profit_optax.profit_step(jax_loss, tx, params, state, it)
    params, state = out.params, out.opt_state
    records.append(out.metrics)
    losses.append(np.asarray(out.metrics["loss"]))
  return params, records, losses
