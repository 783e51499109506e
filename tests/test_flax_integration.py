"""PROFIT as a drop-in `tx` for Flax: Linen TrainState, NNX Optimizer, and
`profit_step` with BatchNorm statistics as model state."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import nnx
from flax.training import train_state

import profit_optax


def task_batch(key, shift, n=32):
  """A nearby family of regression tasks indexed by ``shift``."""
  kx, kn = jax.random.split(key)
  x = jax.random.uniform(kx, (n, 2), minval=-1.0 + shift, maxval=1.0 + shift)
  y = jnp.sin(2.0 * x[:, 0]) * jnp.cos(x[:, 1]) + 0.5 * jax.random.normal(
    kn, (n,)
  )
  return x, y


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(32)(x))
    return nn.Dense(1)(x)[:, 0]


def test_linen_train_state_fine_tunes_with_profit():
  model = LinenMLP()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))["params"]

  def loss_fn(params, batch):
    x, y = batch
    return jnp.mean((model.apply({"params": params}, x) - y) ** 2)

  def make_step(state_cls_state):
    @jax.jit
    def step(state, key, shift):
      batch = task_batch(key, shift)
      loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
      return state.apply_gradients(grads=grads), loss

    return step

  # Pretrain on the old task with Adam.
  state = train_state.TrainState.create(
    apply_fn=model.apply, params=params, tx=optax.adam(1e-2)
  )
  step = make_step(state)
  for key in jax.random.split(jax.random.PRNGKey(1), 600):
    state, _ = step(state, key, 0.0)

  # Fine-tune on a nearby task with PROFIT (n_ref = 2: 3 calls per step).
  tx = profit_optax.profit(optax.adam(3e-3), 3e-4, n_ref=2)
  ft = train_state.TrainState.create(
    apply_fn=model.apply, params=state.params, tx=tx
  )
  ft_step = make_step(ft)
  eval_batch = task_batch(jax.random.PRNGKey(99), 1.0, n=2000)
  before = float(loss_fn(ft.params, eval_batch))
  counts = []
  for key in jax.random.split(jax.random.PRNGKey(2), 600):
    ft, _ = ft_step(ft, key, 1.0)
    counts.append(int(ft.opt_state.count))
  after = float(loss_fn(ft.params, eval_batch))
  assert counts[:6] == [1, 2, 0, 1, 2, 0]
  assert int(ft.opt_state.step) == 200
  assert int(ft.step) == 600  # TrainState counts calls
  assert after < 0.7 * before


class NNXMLP(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(2, 16, rngs=rngs)
    self.out = nnx.Linear(16, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))[:, 0]


def test_nnx_optimizer_matches_plain_optax():
  tx = profit_optax.profit(optax.adamw(1e-2, weight_decay=0.1), 1e-3)
  model = NNXMLP(nnx.Rngs(0))
  graphdef, state0 = nnx.split(model, nnx.Param)
  # A pure copy: the split state may share variables with the live model.
  params0 = jax.tree.map(jnp.copy, nnx.as_pure(state0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  def nnx_loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)

  @nnx.jit
  def nnx_step(model, optimizer, x, y):
    grads = nnx.grad(nnx_loss)(model, x, y)
    optimizer.update(model, grads)

  def plain_loss(params, x, y):
    return nnx_loss(nnx.merge(graphdef, params), x, y)

  @jax.jit
  def plain_step(params, state, x, y):
    grads = jax.grad(plain_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = params0, tx.init(params0)
  for key in jax.random.split(jax.random.PRNGKey(3), 10):
    x, y = task_batch(key, 0.3)
    nnx_step(model, optimizer, x, y)
    params, state = plain_step(params, state, x, y)

  nnx_params = nnx.as_pure(nnx.state(model, nnx.Param))
  chex.assert_trees_all_close(
    jax.tree.leaves(nnx_params), jax.tree.leaves(params), rtol=1e-6
  )
  inner = profit_optax.find_profit_state(optimizer.opt_state)
  assert int(inner.step) == 5 and int(inner.count) == 0


class BNModel(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(8)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    return nn.Dense(1)(nn.relu(x))[:, 0]


def test_profit_step_batch_stats_follow_the_main_pass():
  model = BNModel()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((4, 2)), train=False)
  params, stats0 = variables["params"], variables["batch_stats"]

  def loss_fn(params, batch_stats, batch):
    x, y = batch
    pred, updates = model.apply(
      {"params": params, "batch_stats": batch_stats},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return jnp.mean((pred - y) ** 2), updates["batch_stats"]

  lr_ref, lr_main = 0.01, 0.1
  tx = profit_optax.profit(optax.sgd(lr_main), lr_ref)
  batches = [
    task_batch(k, 0.0, n=16) for k in jax.random.split(jax.random.PRNGKey(1), 2)
  ]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
  out = profit_optax.profit_step(
    loss_fn, tx, params, tx.init(params), stacked, model_state=stats0
  )

  # By hand: the reference pass sees stats0 and its update is discarded; the
  # main pass runs at the displaced params, also from stats0.
  grad = jax.grad(loss_fn, has_aux=True)
  g0, _ = grad(params, stats0, batches[0])
  displaced = jax.tree.map(lambda p, g: p - lr_ref * g, params, g0)
  (loss1, stats1), g1 = jax.value_and_grad(loss_fn, has_aux=True)(
    displaced, stats0, batches[1]
  )
  chex.assert_trees_all_close(out.model_state, stats1, rtol=1e-6)
  assert not np.allclose(
    jax.tree.leaves(out.model_state)[0], jax.tree.leaves(stats0)[0]
  )
  delta = jax.tree.map(lambda a, b: a - b, displaced, params)
  omega = optax.tree.vdot(delta, g1)
  if omega < 0:
    coef = omega / optax.tree.vdot(delta, delta)
    g1 = jax.tree.map(lambda g, d: g - coef * d, g1, delta)
  expected = jax.tree.map(lambda p, g: p - lr_main * g, params, g1)
  chex.assert_trees_all_close(out.params, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.metrics["loss"][1], loss1, rtol=1e-6)


def test_profit_step_has_aux_with_model_state():
  model = BNModel()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((4, 2)), train=False)

  def loss_fn(params, batch_stats, batch):
    x, y = batch
    pred, updates = model.apply(
      {"params": params, "batch_stats": batch_stats},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    err = pred - y
    return jnp.mean(err**2), (updates["batch_stats"], jnp.max(jnp.abs(err)))

  tx = profit_optax.profit(optax.adam(1e-2), 1e-3, n_ref=2)
  stream = (
    task_batch(k, 0.0, n=16)
    for k in jax.random.split(jax.random.PRNGKey(4), 30)
  )
  params, state = variables["params"], tx.init(variables["params"])
  stats = variables["batch_stats"]
  for _ in range(10):
    out = profit_optax.profit_step(
      loss_fn, tx, params, state, stream, has_aux=True, model_state=stats
    )
    params, state, stats = out.params, out.opt_state, out.model_state
  assert out.aux.shape == (3,)
  assert out.metrics["loss"].shape == (3,)
  assert int(state.step) == 10
