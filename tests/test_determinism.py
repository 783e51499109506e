"""The same seed and inputs give bit-identical results on the same machine."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import profit_optax


def loss_fn(params, batch):
  x, y = batch
  return jnp.mean((jnp.tanh(x @ params["w1"]) @ params["w2"] - y) ** 2)


def data(n):
  out = []
  for k in jax.random.split(jax.random.PRNGKey(7), n):
    kx, kn = jax.random.split(k)
    x = jax.random.normal(kx, (32, 4))
    out.append((x, jnp.sin(x[:, 0]) + 0.3 * jax.random.normal(kn, (32,))))
  return out


def init():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  return {
    "w1": jax.random.normal(k1, (4, 16)),
    "w2": jax.random.normal(k2, (16,)),
  }


def run_all_drives(make_tx):
  tx, opaque = make_tx(), make_tx(opaque_mode=True)
  grad = jax.grad(loss_fn)
  batches = data(12)

  @jax.jit
  def call(p, s, b):
    u, s = tx.update(grad(p, b), s, p)
    return optax.apply_updates(p, u), s

  @jax.jit
  def whole(p, s, b0, b1):
    u, s = opaque.update(grad(p, b0), s, p, grad_fn=lambda q, i: grad(q, b1))
    return optax.apply_updates(p, u), s

  results = []
  p, s = init(), tx.init(init())
  for b in batches:
    p, s = call(p, s, b)
  results.append((p, s))
  p, s = init(), opaque.init(init())
  for i in range(0, 12, 2):
    p, s = whole(p, s, batches[i], batches[i + 1])
  results.append((p, s))
  p, s = init(), tx.init(init())
  it = iter(batches)
  for _ in range(6):
    out = profit_optax.profit_step(loss_fn, tx, p, s, it)
    p, s = out.params, out.opt_state
  results.append((p, s))
  return results


def test_bit_identical_across_runs():
  make = lambda **kw: profit_optax.profit(optax.adam(1e-2), 1e-3, **kw)
  first = run_all_drives(make)
  second = run_all_drives(make)
  for a, b in zip(first, second, strict=True):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
