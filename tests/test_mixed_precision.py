"""bfloat16 parameters: float32 accumulation, and a trajectory that tracks the
float32 one."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import profit_optax


def test_inner_products_accumulate_in_float32():
  n = 8192
  # Values exact in bfloat16; the exact omega needs far more than bfloat16's
  # 8 bits of mantissa.
  delta = jnp.full((n,), 2.0**-7, jnp.bfloat16).at[::3].set(-(2.0**-9))
  grad = jnp.linspace(-1.0, 3.0, n).astype(jnp.bfloat16)
  params = jnp.zeros((n,), jnp.bfloat16)
  tx = profit_optax.profit(
    optax.identity(), ref_learning_rate=1.0, opaque_mode=True
  )
  state = tx.init(params)
  _, state = tx.update(-delta, state, params, grad_fn=lambda p, i: grad)
  d = profit_optax.get_diagnostics(state)
  assert d.omega.dtype == jnp.float32 and d.delta_norm.dtype == jnp.float32
  d64 = np.asarray(delta, np.float64)
  g64 = np.asarray(grad, np.float64)
  np.testing.assert_allclose(float(d.omega), d64 @ g64, rtol=1e-6)
  np.testing.assert_allclose(
    float(d.delta_norm), np.linalg.norm(d64), rtol=1e-6
  )
  # A bfloat16 accumulation could not get this close.
  naive = float(jnp.sum(delta * grad, dtype=jnp.bfloat16))
  assert abs(naive - d64 @ g64) > 1e-6 * abs(d64 @ g64)


def _fine_tune(dtype, delta_dtype=None, steps=600):
  w_new = jnp.array([1.3, -0.8, 0.5, 1.7])
  tx = profit_optax.profit(optax.adam(1e-2), 1e-3, delta_dtype=delta_dtype)

  def loss(w, key):
    kx, kn = jax.random.split(key)
    x = jax.random.normal(kx, (32, 4))
    y = x @ w_new + 0.5 * jax.random.normal(kn, (32,))
    pred = (x.astype(w.dtype) @ w).astype(jnp.float32)
    return jnp.mean((pred - y) ** 2)

  @jax.jit
  def train(w, state, key):
    def body(carry, k):
      w, state = carry
      updates, state = tx.update(jax.grad(loss)(w, k), state, w)
      return (optax.apply_updates(w, updates), state), None

    (w, state), _ = jax.lax.scan(body, (w, state), jax.random.split(key, steps))
    return w, state

  w0 = jnp.array([1.0, -1.0, 0.5, 2.0], dtype)
  w, state = train(w0, tx.init(w0), jax.random.PRNGKey(0))
  return w, state, w_new


def test_bfloat16_trajectory_tracks_float32():
  w32, _, w_new = _fine_tune(jnp.float32)
  w16, state16, _ = _fine_tune(jnp.bfloat16)
  assert w16.dtype == jnp.bfloat16
  assert state16.diagnostics.omega.dtype == jnp.float32
  np.testing.assert_allclose(
    np.asarray(w16, np.float32), np.asarray(w32), atol=0.1
  )
  start = float(jnp.linalg.norm(jnp.array([1.0, -1.0, 0.5, 2.0]) - w_new))
  assert float(jnp.linalg.norm(w16.astype(jnp.float32) - w_new)) < 0.5 * start


def test_float32_delta_for_bfloat16_params():
  w, state, _ = _fine_tune(jnp.bfloat16, delta_dtype=jnp.float32, steps=100)
  assert w.dtype == jnp.bfloat16 and state.delta.dtype == jnp.float32
  assert np.isfinite(np.asarray(w, np.float32)).all()
