"""``profit_step(..., num_steps=K)``: K PROFIT steps in one jitted call."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import profit_optax


def loss_fn(params, batch):
  x, y = batch
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def make_batches(count):
  keys = jax.random.split(jax.random.PRNGKey(0), count)
  out = []
  for key in keys:
    kx, kn = jax.random.split(key)
    x = jax.random.normal(kx, (16, 3))
    y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.3 * jax.random.normal(kn, (16,))
    out.append((x, y))
  return out


@pytest.mark.parametrize("n_ref", [1, 2])
def test_k_steps_match_k_single_steps(n_ref):
  k, n = 3, n_ref + 1
  tx = profit_optax.profit(optax.adam(1e-2), 1e-3, n_ref)
  params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
  batches = make_batches(k * n)

  p1, s1 = params, tx.init(params)
  single = []
  it = iter(batches)
  for _ in range(k):
    out = profit_optax.profit_step(loss_fn, tx, p1, s1, it)
    p1, s1 = out.params, out.opt_state
    single.append(out.metrics)

  # From an iterator, and from batches stacked [K, n_ref + 1, ...].
  stacked = jax.tree.map(
    lambda *xs: jnp.stack(xs).reshape(k, n, *xs[0].shape), *batches
  )
  for source in (iter(batches), stacked):
    out = profit_optax.profit_step(
      loss_fn, tx, params, tx.init(params), source, num_steps=k
    )
    for a, b in zip(jax.tree.leaves(out.params), jax.tree.leaves(p1)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(out.opt_state.step) == k == int(s1.step)
    assert out.metrics["loss"].shape == (k, n)
    for name in ("omega", "cos", "projected", "delta_norm"):
      assert out.metrics[name].shape == (k,)
      np.testing.assert_allclose(
        np.asarray(out.metrics[name], np.float64),
        [float(m[name]) for m in single],
        rtol=1e-5,
        atol=1e-7,
      )
    np.testing.assert_allclose(
      out.metrics["loss"], np.stack([m["loss"] for m in single]), rtol=1e-6
    )


def test_k_steps_aux_is_stacked_per_step_and_sub_step():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  params = {"w": jnp.zeros(3), "b": jnp.zeros(())}

  def with_aux(params, batch):
    loss = loss_fn(params, batch)
    return loss, {"twice": 2 * loss}

  out = profit_optax.profit_step(
    with_aux,
    tx,
    params,
    tx.init(params),
    iter(make_batches(8)),
    has_aux=True,
    num_steps=4,
  )
  assert out.aux["twice"].shape == (4, 2)
  np.testing.assert_allclose(out.aux["twice"], 2 * out.metrics["loss"])


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_num_steps_must_be_a_positive_int(bad):
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
  with pytest.raises(ValueError, match=r"`num_steps` must be None"):
    profit_optax.profit_step(
      loss_fn,
      tx,
      params,
      tx.init(params),
      iter(make_batches(4)),
      num_steps=bad,
    )


def test_k_steps_wrong_stacking_and_dry_iterator():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"ran out after 5 of the 6 batches"):
    profit_optax.profit_step(
      loss_fn, tx, params, state, iter(make_batches(5)), num_steps=3
    )
  wrong = (jnp.ones((2, 3, 16, 3)), jnp.ones((2, 3, 16)))  # n_ref + 1 is 2
  with pytest.raises(ValueError, match=r"\(num_steps, n_ref \+ 1\) = \(2, 2\)"):
    profit_optax.profit_step(loss_fn, tx, params, state, wrong, num_steps=2)


def test_opaque_mode_is_refused_with_the_fix():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01, opaque_mode=True)
  params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
  with pytest.raises(TypeError, match=r"opaque_mode=False"):
    profit_optax.profit_step(
      loss_fn, tx, params, tx.init(params), iter(make_batches(2))
    )
