"""`spd` against a NumPy float64 transcription of the authors' AdamSPD.

The reference below follows ``AdamSPD.step`` of GT-RIPL/Selective-Projection-
Decay (``adamSPD.py``) line by line, per parameter tensor, in NumPy: the Adam
moments with PyTorch's bias corrections, the sign test ``condition = -sum(grad
* (param - pre))``, and, when ``condition < 0``, ``new_p -= weight_decay *
ratio * (new_p - pre)`` with ``ratio = hardtanh((‖new_p - pre‖ - ‖param -
pre‖) / ‖new_p - pre‖, 0, 1)``.
"""

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import profit_optax
from tests import helpers

pytest.importorskip("orbax.checkpoint")

SHAPES = {"w1": (4, 3), "b1": (3,), "w2": (3, 2)}
STEPS = 30
LR, WD = 0.05, 0.7


# --------------------------------------------------------------------------
# The NumPy reference
# --------------------------------------------------------------------------


def np_ratio(new_p, param, pre):
  curr_norm = np.linalg.norm(new_p - pre)
  prev_norm = np.linalg.norm(param - pre)
  return float(np.clip((curr_norm - prev_norm) / curr_norm, 0.0, 1.0))


def np_spd_projection(grad, param, new_p, pre, weight_decay, stats=None):
  """The SPD lines of AdamSPD.adam for one tensor: returns the new param."""
  condition = -np.sum(grad * (param - pre))
  if condition < 0.0:
    ratio = np_ratio(new_p, param, pre)
    if stats is not None:
      stats["decayed"] += 1
      stats["ratio_positive"] += ratio > 0
    new_p = new_p - weight_decay * ratio * (new_p - pre)
  elif stats is not None:
    stats["kept"] += 1
  return new_p


class NpAdamSPD:
  """AdamSPD (amsgrad=False) for a dict of tensors, as in adamSPD.py."""

  def __init__(self, lr, weight_decay, pre, betas=(0.9, 0.999), eps=1e-8):
    self.lr, self.weight_decay, self.pre = lr, weight_decay, pre
    self.beta1, self.beta2 = betas
    self.eps = eps
    self.exp_avg = {k: np.zeros_like(v) for k, v in pre.items()}
    self.exp_avg_sq = {k: np.zeros_like(v) for k, v in pre.items()}
    self.step_count = 0
    self.stats = {"decayed": 0, "kept": 0, "ratio_positive": 0}

  def step(self, params, grads, lr=None, weight_decay=None):
    lr = self.lr if lr is None else lr
    wd = self.weight_decay if weight_decay is None else weight_decay
    self.step_count += 1
    step = self.step_count
    out = {}
    for k, param in params.items():
      grad = grads[k]
      bias_correction1 = 1 - self.beta1**step
      bias_correction2 = 1 - self.beta2**step
      self.exp_avg[k] = self.beta1 * self.exp_avg[k] + (1 - self.beta1) * grad
      self.exp_avg_sq[k] = (
        self.beta2 * self.exp_avg_sq[k] + (1 - self.beta2) * grad * grad
      )
      denom = np.sqrt(self.exp_avg_sq[k]) / np.sqrt(bias_correction2) + self.eps
      step_size = lr / bias_correction1
      d_p = step_size * self.exp_avg[k] / denom
      new_p = param - d_p
      out[k] = np_spd_projection(
        grad, param, new_p, self.pre[k], wd, self.stats
      )
    return out


class NpMomentumSPD:
  """SPD around heavy-ball SGD (optax.sgd(lr, momentum)): same SPD lines."""

  def __init__(self, lr, weight_decay, pre, momentum=0.9):
    self.lr, self.weight_decay, self.pre = lr, weight_decay, pre
    self.momentum = momentum
    self.trace = {k: np.zeros_like(v) for k, v in pre.items()}

  def step(self, params, grads):
    out = {}
    for k, param in params.items():
      self.trace[k] = grads[k] + self.momentum * self.trace[k]
      new_p = param - self.lr * self.trace[k]
      out[k] = np_spd_projection(
        grads[k], param, new_p, self.pre[k], self.weight_decay
      )
    return out


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def random_problem(seed=0, steps=STEPS, dtype=np.float64):
  """Pretrained weights and random gradients with a persistent drift, so that
  the parameters leave θ0 and the sign test goes both ways."""
  rng = np.random.default_rng(seed)
  params = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
  drift = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  grads = [
    {
      k: (0.7 * drift[k] + rng.normal(size=s)).astype(dtype)
      for k, s in SHAPES.items()
    }
    for _ in range(steps)
  ]
  return params, grads


def np_run(optimizer, params, grads_seq, **step_kwargs):
  trajectory = []
  for g in grads_seq:
    params = optimizer.step(params, g, **step_kwargs)
    trajectory.append(params)
  return trajectory


# --------------------------------------------------------------------------
# Against the reference
# --------------------------------------------------------------------------


@pytest.mark.usefixtures("x64")
def test_adam_spd_matches_reference_adamspd():
  params, grads = random_problem()
  ref = NpAdamSPD(LR, WD, pre=dict(params))
  want = np_run(ref, dict(params), grads)
  got, state = helpers.jax_run(
    profit_optax.spd(optax.adam(LR), WD), params, grads
  )
  helpers.assert_trajectories_close(got, want)
  assert int(state.count) == STEPS
  # The test exercised both sides of the sign test and a positive ratio.
  assert ref.stats["decayed"] > 10 and ref.stats["kept"] > 10
  assert ref.stats["ratio_positive"] > 5
  # θ0 never moves.
  for k in params:
    np.testing.assert_array_equal(np.asarray(state.pretrained[k]), params[k])


@pytest.mark.usefixtures("x64")
def test_momentum_spd_matches_reference():
  params, grads = random_problem(seed=1)
  want = np_run(NpMomentumSPD(LR, WD, dict(params)), dict(params), grads)
  tx = profit_optax.spd(optax.sgd(LR, momentum=0.9), WD)
  got, _ = helpers.jax_run(tx, params, grads)
  helpers.assert_trajectories_close(got, want)


@pytest.mark.usefixtures("x64")
def test_explicit_pretrained_zeros_is_the_reference_pre_none():
  # AdamSPD with `pre=None` decays toward zero (the PEFT mode of its README).
  params, grads = random_problem(seed=2)
  zeros = {k: np.zeros(s) for k, s in SHAPES.items()}
  want = np_run(NpAdamSPD(LR, WD, pre=zeros), dict(params), grads)
  tx = profit_optax.spd(optax.adam(LR), WD, pretrained=zeros)
  got, _ = helpers.jax_run(tx, params, grads)
  helpers.assert_trajectories_close(got, want)


@pytest.mark.usefixtures("x64")
def test_mask_leaves_plain_inner_updates_elsewhere():
  params, grads = random_problem(seed=3)
  mask = {"w1": True, "b1": False, "w2": True}
  tx = profit_optax.spd(optax.adam(LR), WD, mask=mask)
  got, _ = helpers.jax_run(tx, params, grads)
  # The masked-in leaves follow AdamSPD; the others plain Adam (λ = 0).
  spd_ref = NpAdamSPD(LR, WD, pre=dict(params))
  adam_ref = NpAdamSPD(LR, 0.0, pre=dict(params))
  want_spd = np_run(spd_ref, dict(params), grads)
  want_adam = np_run(adam_ref, dict(params), grads)
  want = [
    {k: (s if mask[k] else a)[k] for k in SHAPES}
    for s, a in zip(want_spd, want_adam)
  ]
  helpers.assert_trajectories_close(got, want)
  # The exempt leaf really differs from what SPD would have done.
  assert not np.allclose(want_spd[-1]["b1"], want_adam[-1]["b1"])


@pytest.mark.usefixtures("x64")
def test_weight_decay_schedule():
  params, grads = random_problem(seed=4)
  schedule = lambda count: 0.1 + 0.03 * count  # float64 under x64
  tx = profit_optax.spd(optax.adam(LR), schedule)
  got, _ = helpers.jax_run(tx, params, grads)
  ref = NpAdamSPD(LR, None, pre=dict(params))
  want, p = [], dict(params)
  for t, g in enumerate(grads):
    p = ref.step(p, g, weight_decay=0.1 + 0.03 * t)
    want.append(p)
  helpers.assert_trajectories_close(got, want)


@pytest.mark.usefixtures("x64")
def test_inside_chain_after_clipping():
  params, grads = random_problem(seed=5)
  max_norm = 1.0
  tx = optax.chain(
    optax.clip_by_global_norm(max_norm), profit_optax.spd(optax.adam(LR), WD)
  )
  got, _ = helpers.jax_run(tx, params, grads)

  def clip(g):
    norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
    return (
      g if norm < max_norm else {k: x * max_norm / norm for k, x in g.items()}
    )

  assert all(np.sqrt(sum(np.sum(x**2) for x in g.values())) > 1 for g in grads)
  want = np_run(
    NpAdamSPD(LR, WD, pre=dict(params)), dict(params), map(clip, grads)
  )
  helpers.assert_trajectories_close(got, list(want))


def test_zero_weight_decay_is_the_inner_optimizer_bit_for_bit():
  # Eager updates, so that both sides run the same operations (a jitted step
  # may fuse the two programs differently).
  params, grads = random_problem(seed=6, steps=5, dtype=np.float32)
  params = jax.tree.map(jnp.asarray, params)
  spd, adam = profit_optax.spd(optax.adam(LR), 0.0), optax.adam(LR)
  s1, s2 = spd.init(params), adam.init(params)
  for g in grads:
    g = jax.tree.map(jnp.asarray, g)
    u1, s1 = spd.update(g, s1, params)
    u2, s2 = adam.update(g, s2, params)
    helpers.assert_bit_identical(u1, u2)
    helpers.assert_bit_identical(s1.inner_state, s2)
    params = optax.apply_updates(params, u1)


def test_landing_on_theta0_gives_ratio_zero_without_division():
  # θ0 = 0, θ = 1, g = 1: c = -2 < 0, and SGD(1) lands exactly on θ0, where
  # the reference ratio is -‖θ - θ0‖ / 0 = -inf, clipped to 0.
  tx = profit_optax.spd(optax.sgd(1.0), 0.5, pretrained=jnp.zeros(2))
  params = jnp.ones(2)
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(jnp.ones(2), state, params)
  np.testing.assert_array_equal(np.asarray(params + updates), [0.0, 0.0])
  with np.errstate(divide="ignore"):
    assert np_ratio(np.zeros(2), np.ones(2), np.zeros(2)) == 0.0


def test_non_finite_inner_update_does_not_leak_into_kept_leaves():
  # c >= 0 (no decay) with an infinite step: the update stays the inner one
  # (an inf), not NaN from 0 * inf.
  tx = profit_optax.spd(optax.sgd(1.0), 0.5)
  params = jnp.array([0.0])
  state = tx.init(params)
  updates, _ = tx.update(jnp.array([-jnp.inf]), state, params)
  assert np.isposinf(np.asarray(updates)).all()


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
  seed=st.integers(0, 2**31 - 1),
  weight_decay=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
  lr=st.sampled_from([0.01, 0.3, 2.0]),
)
def test_one_step_is_a_contraction_toward_theta0(seed, weight_decay, lr):
  """Property: after one SGD-SPD step from any θ, θ0 and g, θ − θ0 is
  (1 − λr)(θ̃ − θ0) with r ∈ [0, 1]: never farther than θ̃, and decayed only
  where the sign test fires; it matches the reference per leaf."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(seed)
    theta0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    theta = {k: theta0[k] + rng.normal(size=s) for k, s in SHAPES.items()}
    g = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    tx = profit_optax.spd(optax.sgd(lr), weight_decay, pretrained=theta0)
    to_jax = lambda t: jax.tree.map(jnp.asarray, t)
    state = tx.init(to_jax(theta))
    updates, _ = tx.update(to_jax(g), state, to_jax(theta))
    for k in SHAPES:
      tilde = theta[k] - lr * g[k]
      new = theta[k] + np.asarray(updates[k])
      want = np_spd_projection(g[k], theta[k], tilde, theta0[k], weight_decay)
      np.testing.assert_allclose(new, want, rtol=1e-12, atol=1e-12)
      dist_new = np.linalg.norm(new - theta0[k])
      dist_tilde = np.linalg.norm(tilde - theta0[k])
      assert dist_new <= dist_tilde * (1 + 1e-12)
      assert dist_new >= (1 - weight_decay) * dist_tilde * (1 - 1e-12)
      if -np.sum(g[k] * (theta[k] - theta0[k])) >= 0:
        np.testing.assert_array_equal(np.asarray(updates[k]), -lr * g[k])


# --------------------------------------------------------------------------
# optax composition: inject_hyperparams, jit, extra args, map_params, dtypes
# --------------------------------------------------------------------------


@pytest.mark.usefixtures("x64")
def test_inject_hyperparams_weight_decay_and_inner_rate():
  params, grads = random_problem(seed=7)
  inner = optax.inject_hyperparams(optax.adam)(learning_rate=LR)
  tx = optax.inject_hyperparams(profit_optax.spd)(inner, weight_decay=WD)
  half = STEPS // 2
  first, state = helpers.jax_run(tx, params, grads[:half])
  assert set(state.hyperparams) == {"weight_decay"}
  state.hyperparams["weight_decay"] = jnp.asarray(0.2, jnp.float64)
  state.inner_state.inner_state.hyperparams["learning_rate"] = jnp.asarray(
    LR / 2, jnp.float64
  )
  second, _ = helpers.jax_run(
    tx, jax.tree.map(np.asarray, first[-1]), grads[half:], state
  )
  ref = NpAdamSPD(LR, WD, pre=dict(params))
  want = np_run(ref, dict(params), grads[:half])
  want += np_run(ref, want[-1], grads[half:], lr=LR / 2, weight_decay=0.2)
  helpers.assert_trajectories_close(first + second, want)


def test_inject_hyperparams_with_a_callable_mask():
  params, grads = random_problem(seed=8, dtype=np.float32)
  mask_fn = lambda p: {k: k != "b1" for k in p}
  plain = profit_optax.spd(optax.adam(LR), WD, mask=mask_fn)
  injected = optax.inject_hyperparams(profit_optax.spd, static_args=("mask",))(
    optax.adam(LR), WD, mask=mask_fn
  )
  a, _ = helpers.jax_run(plain, params, grads[:5])
  b, _ = helpers.jax_run(injected, params, grads[:5])
  chex.assert_trees_all_close(a[-1], b[-1], rtol=1e-6)


def test_extra_args_are_forwarded_to_the_inner_optimizer():
  def scale_by_extra():
    def init_fn(params):
      del params
      return optax.EmptyState()

    def update_fn(updates, state, params=None, *, scale=1.0, **extra):
      del params, extra
      return jax.tree.map(lambda u: -scale * u, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

  tx = profit_optax.spd(scale_by_extra(), 0.5)
  params = {"w": jnp.array([1.0, 2.0])}
  state = tx.init(params)
  grads = {"w": jnp.array([1.0, -1.0])}
  updates, _ = tx.update(grads, state, params, scale=3.0, unknown=True)
  # θ = θ0, so c = 0: the inner update, with the forwarded scale.
  np.testing.assert_allclose(updates["w"], [-3.0, 3.0])


def test_jit_no_recompile():
  params, grads = random_problem(seed=9, dtype=np.float32)
  tx = profit_optax.spd(optax.adamw(LR, weight_decay=1e-2), WD)
  helpers.assert_update_compiles_once(tx, params, grads)


def test_map_params_on_state():
  params = {"w": jnp.array([1.0, 2.0]), "b": jnp.zeros(3)}
  tx = profit_optax.spd(optax.adam(0.1), 0.5)
  state = tx.init(params)
  mapped = optax.tree.map_params(tx, lambda v: v + 1.0, state)
  chex.assert_trees_all_close(
    mapped.pretrained, jax.tree.map(lambda v: v + 1.0, params)
  )
  # Adam's moments are parameter-shaped too: map_params reaches them.
  chex.assert_trees_all_close(
    mapped.inner_state[0].mu,
    jax.tree.map(lambda v: v + 1.0, state.inner_state[0].mu),
  )
  assert int(mapped.inner_state[0].count) == 0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dtype_preserved(dtype):
  params, grads = random_problem(seed=10, steps=6)
  params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
  grads = [jax.tree.map(lambda x: jnp.asarray(x, dtype), g) for g in grads]
  tx = profit_optax.spd(optax.adam(LR), WD)
  got, state = helpers.jax_run(tx, params, grads)
  for tree in (got[-1], state.pretrained):
    assert all(x.dtype == dtype for x in jax.tree.leaves(tree))


def test_converges_under_scan():
  tx = profit_optax.spd(optax.sgd(0.1, momentum=0.5), 0.5)
  params = jnp.zeros(3)
  target = jnp.array([1.0, -2.0, 0.5])
  grad = jax.grad(lambda p: jnp.sum((p - target) ** 2))

  def body(carry, _):
    p, s = carry
    u, s = tx.update(grad(p), s, p)
    return (optax.apply_updates(p, u), s), None

  (params, state), _ = jax.lax.scan(body, (params, tx.init(params)), None, 300)
  # A deterministic gradient never points back toward θ0 before the optimum,
  # so SPD lets the run reach it.
  np.testing.assert_allclose(params, target, atol=1e-4)
  assert int(state.count) == 300


# --------------------------------------------------------------------------
# Checkpointing
# --------------------------------------------------------------------------


def test_orbax_resume_mid_run_is_bit_identical(tmp_path):
  params, grads = random_problem(seed=11, steps=8, dtype=np.float32)
  params = jax.tree.map(jnp.asarray, params)
  tx = optax.chain(
    optax.clip_by_global_norm(1.0), profit_optax.spd(optax.adam(LR), WD)
  )
  helpers.assert_orbax_resume_is_bit_identical(
    tx, params, grads, 4, tmp_path / "ckpt", 1, profit_optax.SPDState
  )


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
  "args, kwargs, error, match",
  [
    ((None, 0.5), {}, TypeError, "`optimizer` must be an optax"),
    ((optax.adam, 0.5), {}, TypeError, "`optimizer` must be an optax"),
    ((optax.adam(0.1), -0.5), {}, ValueError, "`weight_decay` must be finite"),
    (
      (optax.adam(0.1), float("nan")),
      {},
      ValueError,
      "`weight_decay` must be finite",
    ),
    ((optax.adam(0.1), "0.5"), {}, TypeError, "`weight_decay` must be a"),
    ((optax.adam(0.1), False), {}, TypeError, "`weight_decay` must be a"),
    (
      (optax.adam(0.1), 0.5),
      {"mask": np.array([True])},
      TypeError,
      "`mask` must be a pytree of Python bools",
    ),
  ],
)
def test_construction_errors(args, kwargs, error, match):
  with pytest.raises(error, match=match):
    profit_optax.spd(*args, **kwargs)


def test_init_and_update_errors():
  params = {"w1": jnp.ones((4, 3)), "b1": jnp.ones(3)}
  tx = profit_optax.spd(optax.adam(0.1), 0.5)
  state = helpers.assert_params_and_updates_checked(tx, params)
  with pytest.raises(TypeError, match="must be the SPDState"):
    tx.update(params, state.inner_state, params)
  with pytest.raises(ValueError, match="`mask` must be a pytree of bools"):
    profit_optax.spd(optax.adam(0.1), 0.5, mask={"w1": True}).init(params)
  with pytest.raises(TypeError, match=r"`mask` leaf \['w1'\] must be a"):
    profit_optax.spd(
      optax.adam(0.1), 0.5, mask={"w1": jnp.array(True), "b1": True}
    ).init(params)
  bad = {"w1": jnp.ones((3, 4)), "b1": jnp.ones(3)}
  with pytest.raises(ValueError, match=r"`pretrained` leaf \['w1'\] has shape"):
    profit_optax.spd(optax.adam(0.1), 0.5, pretrained=bad).init(params)
  with pytest.raises(TypeError, match=r"leaf \['n'\] has dtype int32"):
    tx.init({"n": jnp.ones(3, jnp.int32)})
