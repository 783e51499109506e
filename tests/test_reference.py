"""Both drives of `profit` and `profit_step` against the NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import profit_optax
from tests import reference

D_IN, D_HIDDEN, BATCH = 3, 8, 16
STEPS = 50
LR_MAIN = 0.05
LR_REF = 0.01

OPTIMIZERS = {
  "sgd": (
    lambda: optax.sgd(LR_MAIN),
    lambda: reference.NumpySGD(LR_MAIN),
  ),
  "sgd_momentum": (
    lambda: optax.sgd(LR_MAIN, momentum=0.9),
    lambda: reference.NumpySGD(LR_MAIN, momentum=0.9),
  ),
  "rmsprop": (
    lambda: optax.rmsprop(LR_MAIN / 10),
    lambda: reference.NumpyRMSProp(LR_MAIN / 10),
  ),
  "adam": (
    lambda: optax.adam(LR_MAIN / 10),
    lambda: reference.NumpyAdam(LR_MAIN / 10),
  ),
  "adamw": (
    lambda: optax.adamw(LR_MAIN / 10, weight_decay=0.1),
    lambda: reference.NumpyAdam(LR_MAIN / 10, weight_decay=0.1),
  ),
}


def jax_loss(params, batch):
  x, y = batch
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  out = h @ params["w2"] + params["b2"]
  return jnp.mean((out[:, 0] - y) ** 2)


def _problem(n_ref, seed=0):
  rng = np.random.default_rng(seed)
  params = reference.pretrained_mlp(rng, D_IN, D_HIDDEN)
  batches = reference.make_batches(rng, STEPS * (n_ref + 1), BATCH, D_IN)
  return params, batches


def _to_jax(tree):
  return jax.tree.map(jnp.asarray, tree)


def _assert_close(actual, expected, tol=1e-10):
  for k in expected:
    np.testing.assert_allclose(
      np.asarray(actual[k]), expected[k], rtol=tol, atol=tol, err_msg=k
    )


def _run_per_call(tx, params, batches):
  grad = jax.grad(jax_loss)

  @jax.jit
  def call(params, state, batch):
    updates, state = tx.update(grad(params, batch), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  records = []
  n = int(state.n_ref.value) + 1
  for i, batch in enumerate(batches):
    params, state = call(params, state, _to_jax(batch))
    if (i + 1) % n == 0:
      records.append(profit_optax.get_diagnostics(state))
  return params, records


def _run_whole_step(tx, params, batches, n):
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
    stacked = _to_jax(jax.tree.map(lambda *xs: np.stack(xs), *chunk))
    params, state = step(params, state, stacked)
    records.append(profit_optax.get_diagnostics(state))
  return params, records


def _run_profit_step(tx, params, batches, n):
  state = tx.init(params)
  it = iter([_to_jax(b) for b in batches])
  records, losses = [], []
  for _ in range(STEPS):
    out = profit_optax.profit_step(jax_loss, tx, params, state, it)
    params, state = out.params, out.opt_state
    records.append(out.metrics)
    losses.append(np.asarray(out.metrics["loss"]))
  return params, records, losses


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("n_ref", [1, 2, 3])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_matches_numpy_reference(opt_name, n_ref):
  make_tx, make_ref = OPTIMIZERS[opt_name]
  params0, batches = _problem(n_ref)
  n = n_ref + 1

  expected, ref_records = reference.profit_reference(
    params0, make_ref(), LR_REF, n_ref, iter(batches), STEPS
  )
  fired = [r.projected for r in ref_records]
  # The trajectory must exercise both branches of the omega test.
  assert any(fired) and not all(fired), fired

  tx = profit_optax.profit(make_tx(), LR_REF, n_ref)
  p0 = _to_jax(params0)
  assert jax.tree.leaves(p0)[0].dtype == jnp.float64

  got, records = _run_per_call(tx, p0, batches)
  _assert_close(got, expected)
  np.testing.assert_array_equal([bool(r.projected) for r in records], fired)
  np.testing.assert_allclose(
    [float(r.omega) for r in records],
    [r.omega for r in ref_records],
    rtol=1e-9,
    atol=1e-12,
  )

  opaque = profit_optax.profit(make_tx(), LR_REF, n_ref, opaque_mode=True)
  got, records = _run_whole_step(opaque, p0, batches, n)
  _assert_close(got, expected)
  np.testing.assert_array_equal([bool(r.projected) for r in records], fired)

  got, metrics, losses = _run_profit_step(tx, p0, batches, n)
  _assert_close(got, expected)
  np.testing.assert_array_equal([bool(m["projected"]) for m in metrics], fired)
  np.testing.assert_allclose(
    [float(m["delta_norm"]) for m in metrics],
    [r.delta_norm for r in ref_records],
    rtol=1e-9,
  )
  np.testing.assert_allclose(
    [float(m["cos"]) for m in metrics],
    [r.cos for r in ref_records],
    rtol=1e-8,
    atol=1e-12,
  )
  np.testing.assert_allclose(
    np.stack(losses), [r.losses for r in ref_records], rtol=1e-10
  )


@pytest.mark.usefixtures("x64")
def test_reference_differs_from_plain_optimizer():
  """The reference really is PROFIT: it differs from the main optimizer alone,
  and from the variant that keeps only g's component along Δ."""
  params0, batches = _problem(1)
  profit_params, _ = reference.profit_reference(
    params0, reference.NumpySGD(LR_MAIN), LR_REF, 1, iter(batches), STEPS
  )
  tx = profit_optax.profit(optax.sgd(LR_MAIN), LR_REF, 1)
  got, _ = _run_per_call(tx, _to_jax(params0), batches)
  _assert_close(got, profit_params)

  plain = optax.sgd(LR_MAIN)
  p = _to_jax(params0)
  state = plain.init(p)
  for batch in batches[1::2]:
    updates, state = plain.update(
      jax.grad(jax_loss)(p, _to_jax(batch)), state, p
    )
    p = optax.apply_updates(p, updates)
  diff = max(
    float(np.max(np.abs(np.asarray(p[k]) - profit_params[k])))
    for k in profit_params
  )
  assert diff > 1e-4
