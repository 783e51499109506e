"""Both drives of `profit` and `profit_step` against the NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import profit_optax
from tests import helpers, reference

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


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("n_ref", [1, 2, 3])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_matches_numpy_reference(opt_name, n_ref):
  make_tx, make_ref = OPTIMIZERS[opt_name]
  params0, batches = helpers.problem(n_ref)
  n = n_ref + 1

  expected, ref_records = reference.profit_reference(
    params0, make_ref(), LR_REF, n_ref, iter(batches), helpers.STEPS
  )
  fired = [r.projected for r in ref_records]
  # The trajectory must exercise both branches of the omega test.
  assert any(fired) and not all(fired), fired

  tx = profit_optax.profit(make_tx(), LR_REF, n_ref)
  p0 = helpers.to_jax(params0)
  assert jax.tree.leaves(p0)[0].dtype == jnp.float64

  got, records = helpers.run_per_call(tx, p0, batches)
  helpers.assert_close(got, expected)
  np.testing.assert_array_equal([bool(r.projected) for r in records], fired)
  np.testing.assert_allclose(
    [float(r.omega) for r in records],
    [r.omega for r in ref_records],
    rtol=1e-9,
    atol=1e-12,
  )

  opaque = profit_optax.profit(make_tx(), LR_REF, n_ref, opaque_mode=True)
  got, records = helpers.run_whole_step(opaque, p0, batches, n)
  helpers.assert_close(got, expected)
  np.testing.assert_array_equal([bool(r.projected) for r in records], fired)

  got, metrics, losses = helpers.run_profit_step(tx, p0, batches, n)
  helpers.assert_close(got, expected)
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
  params0, batches = helpers.problem(1)
  profit_params, _ = reference.profit_reference(
    params0,
    reference.NumpySGD(LR_MAIN),
    LR_REF,
    1,
    iter(batches),
    helpers.STEPS,
  )
  tx = profit_optax.profit(optax.sgd(LR_MAIN), LR_REF, 1)
  got, _ = helpers.run_per_call(tx, helpers.to_jax(params0), batches)
  helpers.assert_close(got, profit_params)

  plain = optax.sgd(LR_MAIN)
  p = helpers.to_jax(params0)
  state = plain.init(p)
  for batch in batches[1::2]:
    updates, state = plain.update(
      jax.grad(helpers.jax_loss)(p, helpers.to_jax(batch)), state, p
    )
    p = optax.apply_updates(p, updates)
  diff = max(
    float(np.max(np.abs(np.asarray(p[k]) - profit_params[k])))
    for k in profit_params
  )
  assert diff > 1e-4
