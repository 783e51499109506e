"""A stable reference step: ``ref_trust_radius`` and ``ref_preconditioner``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import profit_optax
from tests import helpers, reference

LR_MAIN = 0.005

MAINS = {
  "adam": (lambda: optax.adam(LR_MAIN), lambda: reference.NumpyAdam(LR_MAIN)),
  "adamw": (
    lambda: optax.adamw(LR_MAIN, weight_decay=0.1),
    lambda: reference.NumpyAdam(LR_MAIN, weight_decay=0.1),
  ),
  "rmsprop": (
    lambda: optax.rmsprop(LR_MAIN),
    lambda: reference.NumpyRMSProp(LR_MAIN),
  ),
}
OPTIONS = {
  "trust": (
    dict(ref_trust_radius=4e-4),
    dict(trust_radius=4e-4),
    0.01,
  ),
  "precondition": (
    dict(ref_preconditioner="main"),
    dict(precondition=True),
    LR_MAIN / 10,
  ),
  "both": (
    dict(ref_preconditioner="main", ref_trust_radius=1e-4),
    dict(precondition=True, trust_radius=1e-4),
    LR_MAIN / 10,
  ),
}


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("n_ref", [1, 2])
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("main", list(MAINS))
def test_matches_numpy_reference(main, option, n_ref):
  make_tx, make_ref = MAINS[main]
  kw, ref_kw, lr_ref = OPTIONS[option]
  params0, batches = helpers.problem(n_ref)
  expected, records = reference.profit_reference(
    params0, make_ref(), lr_ref, n_ref, iter(batches), helpers.STEPS, **ref_kw
  )
  plain, _ = reference.profit_reference(
    params0, make_ref(), lr_ref, n_ref, iter(batches), helpers.STEPS
  )
  # The option changes the trajectory, and both branches of ω are taken.
  assert max(np.max(np.abs(expected[k] - plain[k])) for k in plain) > 1e-8
  fired = [r.projected for r in records]
  assert any(fired) and not all(fired)
  p0 = helpers.to_jax(params0)
  tx = profit_optax.profit(make_tx(), lr_ref, n_ref, **kw)
  got, diags = helpers.run_per_call(tx, p0, batches)
  helpers.assert_close(got, expected)
  np.testing.assert_array_equal([bool(d.projected) for d in diags], fired)
  np.testing.assert_allclose(
    [float(d.delta_norm) for d in diags],
    [r.delta_norm for r in records],
    rtol=1e-9,
  )
  opaque = profit_optax.profit(make_tx(), lr_ref, n_ref, opaque_mode=True, **kw)
  got, _ = helpers.run_whole_step(opaque, p0, batches, n_ref + 1)
  helpers.assert_close(got, expected)
  got, metrics, losses = helpers.run_profit_step(tx, p0, batches, n_ref + 1)
  helpers.assert_close(got, expected)
  np.testing.assert_allclose(
    np.stack(losses), [r.losses for r in records], rtol=1e-10
  )


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("n_ref", [1, 3])
def test_delta_stays_in_the_ball(n_ref):
  r = 1e-3
  params0, batches = helpers.problem(n_ref)
  p = helpers.to_jax(params0)
  tx = profit_optax.profit(optax.adam(LR_MAIN), 0.05, n_ref, ref_trust_radius=r)
  state = tx.init(p)
  grad = jax.jit(jax.grad(helpers.jax_loss))
  update = jax.jit(tx.update)
  bound = []
  for i, batch in enumerate(batches[: 10 * (n_ref + 1)]):
    if i % (n_ref + 1) == 0:
      anchor_norm = float(optax.tree.norm(p))
    updates, state = update(grad(p, helpers.to_jax(batch)), state, p)
    p = optax.apply_updates(p, updates)
    if int(state.count) > 0:
      norm = float(optax.tree.norm(state.delta))
      assert norm <= r * anchor_norm * (1 + 1e-12)
      bound.append(np.isclose(norm, r * anchor_norm, rtol=1e-9))
  assert any(bound)  # the radius was reached


def test_large_radius_is_algorithm_1():
  params = {"a": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}
  rng = np.random.default_rng(1)
  grads = [
    jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
    for _ in range(6)
  ]
  out = []
  for kw in ({}, {"ref_trust_radius": 1e6}):
    tx = profit_optax.profit(optax.adam(0.1), 0.05, **kw)
    state, p = tx.init(params), params
    for g in grads:
      updates, state = jax.jit(tx.update)(g, state, p)
      p = optax.apply_updates(p, updates)
    out.append(p)
  for k in params:
    np.testing.assert_array_equal(out[0][k], out[1][k])


def test_first_preconditioned_step_is_a_sign_step():
  # Before the main optimizer's first step ν = 0: g**2 stands in for it, so
  # the reference step is -lr g / (|g| + eps), about -lr sign(g).
  tx = profit_optax.profit(optax.adam(0.1), 0.01, ref_preconditioner="main")
  params = jnp.array([1.0, 1.0, 1.0])
  state = tx.init(params)
  updates, state = tx.update(jnp.array([4.0, -0.5, 0.0]), state, params)
  np.testing.assert_allclose(updates, [-0.01, 0.01, 0.0], rtol=1e-6)


def test_high_curvature_overshoot_is_tamed():
  # loss = Σ λ_i/2 (p_i - x_i - noise)², λ_max = 3000; lr_ref = lr_main / 10
  # = 1e-3 gives lr_ref λ_max = 3 > 2: every plain reference step overshoots
  # (it raises its own batch's loss), the gradient at the displaced point
  # points away from x, and PROFIT diverges. Either option keeps every
  # reference step a descent step, and PROFIT bounded.
  lam, x = jnp.array([3000.0, 1.0]), jnp.array([0.3, -0.2])
  loss = lambda p, n: 0.5 * jnp.sum(lam * (p - x - n) ** 2)
  noise = 0.01 * jax.random.normal(jax.random.PRNGKey(0), (400, 2))
  final, overshoots = {}, {}
  for name, kw in {
    "plain": {},
    "trust": {"ref_trust_radius": 1e-3},
    "precondition": {"ref_preconditioner": "main"},
  }.items():
    tx = profit_optax.profit(optax.adam(1e-2), 1e-3, **kw)
    p = jnp.array([1.0, 1.0])
    state = tx.init(p)
    update = jax.jit(tx.update)
    overshoots[name] = 0
    for i, n in enumerate(noise):
      updates, state = update(jax.grad(loss)(p, n), state, p)
      q = optax.apply_updates(p, updates)
      if i % 2 == 0:  # a reference call
        overshoots[name] += int(float(loss(q, n)) > float(loss(p, n)))
      p = q
    final[name] = float(loss(p, 0.0))
  start = float(loss(jnp.array([1.0, 1.0]), 0.0))
  assert overshoots == {"plain": 200, "trust": 0, "precondition": 0}
  assert final["plain"] > 10 * start
  assert final["trust"] < 2 * start and final["precondition"] < start


@pytest.mark.parametrize(
  "kw", [{"ref_trust_radius": 1e-3}, {"ref_preconditioner": "main"}]
)
def test_keeps_dtypes_and_holds_non_finite(kw):
  params = {"a": jnp.ones(4, jnp.bfloat16), "b": jnp.ones(3, jnp.float32)}
  tx = profit_optax.profit(optax.adam(0.1), 0.01, **kw)
  state = tx.init(params)
  update = jax.jit(tx.update)
  good = jax.tree.map(jnp.ones_like, params)
  bad = {"a": jnp.full(4, jnp.nan, jnp.bfloat16), "b": jnp.ones(3)}
  for g in (good, good, bad, good):
    updates, state = update(g, state, params)
    for k in params:
      assert updates[k].dtype == params[k].dtype
      assert bool(jnp.all(jnp.isfinite(updates[k])))
    params = optax.apply_updates(params, updates)
  assert int(state.step) == 1 and int(state.skipped) == 1


def test_preconditioner_needs_a_second_moment():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01, ref_preconditioner="main")
  with pytest.raises(ValueError, match="`nu`.*optax.adam"):
    tx.init(jnp.ones(3))
  tx = profit_optax.profit(
    optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(0.1)),
    0.01,
    ref_preconditioner="main",
  )
  tx.init(jnp.ones(3))  # found inside a chain


@pytest.mark.parametrize(
  "kw, err, match",
  [
    ({"ref_trust_radius": 0.0}, ValueError, "ref_trust_radius"),
    ({"ref_trust_radius": "big"}, TypeError, "ref_trust_radius"),
    ({"ref_preconditioner": "adam"}, ValueError, "'main'"),
    (
      {"ref_preconditioner": "main", "ref_preconditioner_b2": 1.0},
      ValueError,
      "b2",
    ),
    (
      {"ref_preconditioner": "main", "ref_preconditioner_eps": 0.0},
      ValueError,
      "eps",
    ),
  ],
)
def test_bad_options(kw, err, match):
  with pytest.raises(err, match=match):
    profit_optax.profit(optax.adam(0.1), 0.01, **kw)


def test_preconditioner_needs_the_default_reference():
  with pytest.raises(ValueError, match="ref_optimizer"):
    profit_optax.profit(
      optax.adam(0.1),
      None,
      ref_optimizer=optax.sgd(0.01),
      ref_preconditioner="main",
    )
