"""`l2sp` against an independent NumPy float64 reference, and its contract.

The reference below writes the L2-SP penalty's gradient (Li et al., arXiv
1802.01483, Eq. for Ω_{L2-SP}) and the optimizers from their textbook update
rules in NumPy, without JAX, so the tests compare two implementations.
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

SHAPES = {"w1": (4, 3), "b1": (3,), "head": (3, 2)}
HEAD = {"w1": False, "b1": False, "head": True}
STEPS = 25
ALPHA, BETA, LR = 0.3, 0.05, 0.05


# --------------------------------------------------------------------------
# The NumPy reference
# --------------------------------------------------------------------------


def np_penalty_grad(params, w0, head, alpha, beta):
  """∇Ω: α (w − w⁰) on the backbone, β w on the head."""
  return {
    k: beta * params[k] if head[k] else alpha * (params[k] - w0[k])
    for k in params
  }


class NpAdam:
  """Adam in the form optax uses: lr * m̂ / (sqrt(v̂) + eps)."""

  def __init__(self, b1=0.9, b2=0.999, eps=1e-8):
    self.b1, self.b2, self.eps = b1, b2, eps
    self.m = self.v = None
    self.t = 0

  def direction(self, g):
    if self.m is None:
      self.m = {k: np.zeros_like(x) for k, x in g.items()}
      self.v = {k: np.zeros_like(x) for k, x in g.items()}
    self.t += 1
    out = {}
    for k in g:
      self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g[k]
      self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g[k] ** 2
      m_hat = self.m[k] / (1 - self.b1**self.t)
      v_hat = self.v[k] / (1 - self.b2**self.t)
      out[k] = m_hat / (np.sqrt(v_hat) + self.eps)
    return out


class NpMomentum:
  """Heavy-ball SGD as optax.sgd(momentum=...): trace = g + mu * trace."""

  def __init__(self, mu=0.9):
    self.mu, self.trace = mu, None

  def direction(self, g):
    if self.trace is None:
      self.trace = {k: np.zeros_like(x) for k, x in g.items()}
    self.trace = {k: g[k] + self.mu * self.trace[k] for k in g}
    return dict(self.trace)


def np_run(
  params,
  grads_seq,
  optimizer,
  *,
  coupled,
  alpha=lambda t: ALPHA,
  beta=lambda t: BETA,
  lr=lambda t: LR,
  w0=None,
):
  """Trajectory of the parameters under L2-SP and an optimizer."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  w0 = dict(params) if w0 is None else w0
  trajectory = []
  for t, g in enumerate(grads_seq):
    reg = np_penalty_grad(params, w0, HEAD, alpha(t), beta(t))
    if coupled:
      d = optimizer.direction({k: g[k] + reg[k] for k in g})
      params = {k: params[k] - lr(t) * d[k] for k in params}
    else:
      d = optimizer.direction(g)
      params = {k: params[k] - lr(t) * d[k] - lr(t) * reg[k] for k in params}
    trajectory.append(params)
  return trajectory


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def random_problem(seed=0, steps=STEPS, dtype=np.float64):
  rng = np.random.default_rng(seed)
  params = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
  grads = [
    {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
    for _ in range(steps)
  ]
  return params, grads


# --------------------------------------------------------------------------
# Against the reference
# --------------------------------------------------------------------------

OPTIMIZERS = {
  "adam": (lambda lr: optax.adam(lr), NpAdam),
  "momentum": (lambda lr: optax.sgd(lr, momentum=0.9), NpMomentum),
}


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_coupled_matches_reference(name):
  make_tx, make_np = OPTIMIZERS[name]
  params, grads = random_problem()
  tx = optax.chain(profit_optax.l2sp(ALPHA, BETA, head_mask=HEAD), make_tx(LR))
  got, state = helpers.jax_run(tx, params, grads)
  want = np_run(params, grads, make_np(), coupled=True)
  helpers.assert_trajectories_close(got, want)
  assert int(state[0].count) == STEPS
  # The stored w0 never moves.
  for k in params:
    np.testing.assert_array_equal(np.asarray(state[0].pretrained[k]), params[k])


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_decoupled_matches_reference(name):
  make_tx, make_np = OPTIMIZERS[name]
  params, grads = random_problem(seed=1)
  tx = optax.chain(
    make_tx(LR),
    profit_optax.l2sp(
      ALPHA, BETA, head_mask=HEAD, decoupled=True, learning_rate=LR
    ),
  )
  got, _ = helpers.jax_run(tx, params, grads)
  want = np_run(params, grads, make_np(), coupled=False)
  helpers.assert_trajectories_close(got, want)


@pytest.mark.usefixtures("x64")
def test_schedules_for_alpha_beta_and_learning_rate():
  params, grads = random_problem(seed=2)
  # Schedules that keep float64 (optax's linear and exponential schedules
  # return float32 for an int32 count).
  alpha = lambda count: 0.04 * count
  beta = lambda count: 0.2 * 0.9**count
  lr = optax.cosine_decay_schedule(LR, STEPS)
  tx = optax.chain(
    optax.adam(lr),
    profit_optax.l2sp(
      alpha, beta, head_mask=HEAD, decoupled=True, learning_rate=lr
    ),
  )
  got, _ = helpers.jax_run(tx, params, grads)
  want = np_run(
    params,
    grads,
    NpAdam(),
    coupled=False,
    alpha=lambda t: float(alpha(t)),
    beta=lambda t: float(beta(t)),
    lr=lambda t: float(lr(t)),
  )
  helpers.assert_trajectories_close(got, want)


@pytest.mark.usefixtures("x64")
def test_explicit_pretrained_is_the_target():
  params, grads = random_problem(seed=3)
  rng = np.random.default_rng(33)
  w0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  tx = optax.chain(
    profit_optax.l2sp(ALPHA, BETA, head_mask=HEAD, pretrained=w0),
    optax.adam(LR),
  )
  got, state = helpers.jax_run(tx, params, grads)
  want = np_run(params, grads, NpAdam(), coupled=True, w0=w0)
  helpers.assert_trajectories_close(got, want)
  np.testing.assert_array_equal(np.asarray(state[0].pretrained["w1"]), w0["w1"])


@pytest.mark.usefixtures("x64")
def test_coupled_and_decoupled_agree_for_plain_sgd():
  params, grads = random_problem(seed=4)
  reg = dict(alpha=ALPHA, beta=BETA, head_mask=HEAD)
  coupled = optax.chain(profit_optax.l2sp(**reg), optax.sgd(LR))
  decoupled = optax.chain(
    optax.sgd(LR), profit_optax.l2sp(**reg, decoupled=True, learning_rate=LR)
  )
  a, _ = helpers.jax_run(coupled, params, grads)
  b, _ = helpers.jax_run(decoupled, params, grads)
  helpers.assert_trajectories_close(a, [jax.tree.map(np.asarray, p) for p in b])


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
  seed=st.integers(0, 2**31 - 1),
  alpha=st.sampled_from([0.0, 1e-4, 0.1, 3.0]),
  beta=st.sampled_from([0.0, 1e-3, 0.5]),
  head=st.tuples(st.booleans(), st.booleans(), st.booleans()),
  decoupled=st.booleans(),
)
def test_one_update_is_the_penalty_gradient(seed, alpha, beta, head, decoupled):
  """Property: from any w⁰ and any w, one update is exactly g + ∇Ω (coupled)
  or u − η∇Ω (decoupled); with α = β = 0 it is the identity, bit for bit."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(seed)
    mask = dict(zip(SHAPES, head))
    w0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    w = {k: w0[k] + rng.normal(size=s) for k, s in SHAPES.items()}
    g = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    lr = 0.1
    kw = dict(decoupled=True, learning_rate=lr) if decoupled else {}
    tx = profit_optax.l2sp(alpha, beta, head_mask=mask, **kw)
    state = tx.init(jax.tree.map(jnp.asarray, w0))
    updates, _ = tx.update(
      jax.tree.map(jnp.asarray, g), state, jax.tree.map(jnp.asarray, w)
    )
    reg = {
      k: beta * w[k] if mask[k] else alpha * (w[k] - w0[k]) for k in SHAPES
    }
    for k in SHAPES:
      want = g[k] - lr * reg[k] if decoupled else g[k] + reg[k]
      np.testing.assert_allclose(
        np.asarray(updates[k]), want, rtol=1e-13, atol=1e-13
      )
      if alpha == 0 and beta == 0:
        np.testing.assert_array_equal(np.asarray(updates[k]), g[k])


# --------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------


def test_head_mask_prefix_and_callable_agree():
  params = {
    "backbone": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)},
    "head": {"w": 3 * jnp.ones((2, 1)), "b": 3 * jnp.ones(1)},
  }
  moved = jax.tree.map(lambda p: p + 0.5, params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  prefix = {"backbone": False, "head": True}
  by_name = lambda p: {"backbone": False, "head": {"w": True, "b": True}}
  results = []
  for mask in (prefix, by_name):
    tx = profit_optax.l2sp(0.5, 0.1, head_mask=mask)
    updates, _ = tx.update(zeros, tx.init(params), moved)
    results.append(updates)
  chex.assert_trees_all_equal(results[0], results[1])
  # Backbone: 0.5 * (w - w0) = 0.25; head: 0.1 * w = 0.35.
  want = {"backbone": 0.25, "head": 0.35}
  for part, value in want.items():
    for leaf in jax.tree.leaves(results[0][part]):
      np.testing.assert_allclose(leaf, np.full(leaf.shape, value), rtol=1e-6)


def test_inside_optax_masked_exempts_leaves():
  params = {"w": jnp.array([1.0, 2.0]), "b": jnp.array([3.0]), "h": jnp.ones(2)}
  decay = {"w": True, "b": False, "h": True}
  head = lambda p: jax.tree.map(lambda _: False, p) | {"h": True}
  tx = optax.masked(profit_optax.l2sp(1.0, 0.5, head_mask=head), decay)
  state = tx.init(params)
  moved = {"w": jnp.array([2.0, 2.0]), "b": jnp.array([5.0]), "h": jnp.ones(2)}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, state, moved)
  np.testing.assert_allclose(updates["w"], [2.0, 1.0])  # 1 + 1.0 * (w - w0)
  np.testing.assert_allclose(updates["b"], [1.0])  # exempt: the gradient
  np.testing.assert_allclose(updates["h"], [1.5, 1.5])  # 1 + 0.5 * w


# --------------------------------------------------------------------------
# optax composition: inject_hyperparams, jit, map_params, dtypes
# --------------------------------------------------------------------------


@pytest.mark.usefixtures("x64")
def test_inject_hyperparams_equals_plain_and_can_be_changed():
  params, grads = random_problem(seed=5)
  injected = optax.inject_hyperparams(profit_optax.l2sp)(
    alpha=ALPHA, beta=BETA, head_mask=HEAD
  )
  tx = optax.chain(injected, optax.adam(LR))
  half = STEPS // 2
  first, state = helpers.jax_run(tx, params, grads[:half])
  hp = state[0].hyperparams
  assert set(hp) == {"alpha", "beta"}
  hp["alpha"] = jnp.asarray(2.0 * ALPHA, hp["alpha"].dtype)
  hp["beta"] = jnp.asarray(0.0, hp["beta"].dtype)
  second, _ = helpers.jax_run(
    tx, jax.tree.map(np.asarray, first[-1]), grads[half:], state
  )

  # The reference, with the rates switched at step `half`.
  np_opt = NpAdam()
  want = np_run(params, grads[:half], np_opt, coupled=True)
  p0 = {k: np.asarray(v, np.float64) for k, v in params.items()}
  want_w0 = p0
  rest = []
  cur = want[-1]
  for g in grads[half:]:
    reg = np_penalty_grad(cur, want_w0, HEAD, 2.0 * ALPHA, 0.0)
    d = np_opt.direction({k: g[k] + reg[k] for k in g})
    cur = {k: cur[k] - LR * d[k] for k in cur}
    rest.append(cur)
  helpers.assert_trajectories_close(first + second, want + rest)


@pytest.mark.usefixtures("x64")
def test_inject_hyperparams_decoupled_rate_and_callable_mask():
  params, grads = random_problem(seed=6)
  head_fn = lambda p: {k: k == "head" for k in p}
  injected = optax.inject_hyperparams(
    profit_optax.l2sp, static_args=("head_mask",)
  )(ALPHA, BETA, head_mask=head_fn, decoupled=True, learning_rate=LR)
  tx = optax.chain(optax.adam(LR), injected)
  got, state = helpers.jax_run(tx, params, grads)
  assert set(state[1].hyperparams) == {"alpha", "beta", "learning_rate"}
  helpers.assert_trajectories_close(
    got, np_run(params, grads, NpAdam(), coupled=False)
  )


def test_jit_no_recompile_and_extra_args_absorbed():
  params, grads = random_problem(seed=7, dtype=np.float32)
  tx = optax.chain(
    profit_optax.l2sp(ALPHA, BETA, head_mask=HEAD), optax.adam(LR)
  )
  helpers.assert_update_compiles_once(
    tx, params, grads, some_unknown_extra_arg=1
  )


def test_map_params_on_state():
  params = {"w": jnp.array([1.0, 2.0]), "head": jnp.zeros(3)}
  tx = profit_optax.l2sp(0.1, 0.2, head_mask={"w": False, "head": True})
  state = tx.init(params)
  mapped = optax.tree.map_params(tx, lambda v: v + 1.0, state)
  chex.assert_trees_all_close(
    mapped.pretrained, jax.tree.map(lambda v: v + 1.0, params)
  )
  assert int(mapped.count) == 0


def test_pretrained_is_a_copy_not_an_alias():
  params = {"w": jnp.arange(4.0)}
  state = profit_optax.l2sp(0.1).init(params)
  assert (
    state.pretrained["w"].unsafe_buffer_pointer()
    != params["w"].unsafe_buffer_pointer()
  )
  # An explicit pretrained tree is cast to the parameters' dtypes.
  w0 = {"w": np.arange(4.0, dtype=np.float64)}
  state = profit_optax.l2sp(0.1, pretrained=w0).init(params)
  assert state.pretrained["w"].dtype == jnp.float32


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("decoupled", [False, True])
def test_dtype_preserved(dtype, decoupled):
  params = {k: jnp.ones(s, dtype) for k, s in SHAPES.items()}
  kw = dict(decoupled=True, learning_rate=0.1) if decoupled else {}
  tx = profit_optax.l2sp(0.5, 0.1, head_mask=HEAD, **kw)
  state = tx.init(params)
  assert all(x.dtype == dtype for x in jax.tree.leaves(state.pretrained))
  moved = jax.tree.map(lambda p: p * 1.5, params)
  updates, _ = jax.jit(tx.update)(
    jax.tree.map(jnp.ones_like, params), state, moved
  )
  for k, u in updates.items():
    assert u.dtype == dtype
    reg = 0.1 * 1.5 if HEAD[k] else 0.5 * 0.5
    want = 1.0 - 0.1 * reg if decoupled else 1.0 + reg
    np.testing.assert_allclose(np.asarray(u, np.float32), want, rtol=1e-2)


def test_converges_under_scan():
  """Coupled L2-SP with SGD solves min (w - 2)^2 + α/2 (w - w0)^2."""
  tx = optax.chain(profit_optax.l2sp(1.0), optax.sgd(0.1))
  params = jnp.array([0.0, 1.0])
  grad = jax.grad(lambda p: jnp.sum((p - 2.0) ** 2))

  def body(carry, _):
    p, s = carry
    u, s = tx.update(grad(p), s, p)
    return (optax.apply_updates(p, u), s), None

  (params, state), _ = jax.lax.scan(body, (params, tx.init(params)), None, 200)
  # Stationary point: 2 (w - 2) + (w - w0) = 0, w = (4 + w0) / 3.
  np.testing.assert_allclose(params, [4.0 / 3.0, 5.0 / 3.0], rtol=1e-5)
  assert int(state[0].count) == 200


# --------------------------------------------------------------------------
# Checkpointing
# --------------------------------------------------------------------------


def test_orbax_resume_mid_run_is_bit_identical(tmp_path):
  params, grads = random_problem(seed=8, steps=8, dtype=np.float32)
  params = jax.tree.map(jnp.asarray, params)
  tx = optax.chain(
    profit_optax.l2sp(ALPHA, BETA, head_mask=HEAD),
    optax.adam(LR),
    profit_optax.l2sp(0.01, decoupled=True, learning_rate=LR),
  )
  helpers.assert_orbax_resume_is_bit_identical(
    tx, params, grads, 3, tmp_path / "ckpt", 0, profit_optax.L2SPState
  )


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs, error, match",
  [
    (dict(alpha=-0.1), ValueError, "`alpha` must be finite and >= 0"),
    (dict(alpha=float("nan")), ValueError, "`alpha` must be finite"),
    (dict(alpha="0.1"), TypeError, "`alpha` must be a non-negative float"),
    (dict(alpha=True), TypeError, "`alpha` must be a non-negative float"),
    (dict(alpha=jnp.ones(2)), TypeError, "`alpha` must be a non-negative"),
    (
      dict(alpha=0.1, beta=-1.0, head_mask=HEAD),
      ValueError,
      "`beta` must be finite and >= 0",
    ),
    (dict(alpha=0.1, beta=0.01), ValueError, "no `head_mask`"),
    (dict(alpha=0.1, decoupled=True), ValueError, "needs `learning_rate`"),
    (
      dict(alpha=0.1, learning_rate=0.1),
      ValueError,
      "`learning_rate` is used only by the decoupled form",
    ),
    (
      dict(alpha=0.1, decoupled=True, learning_rate=float("inf")),
      ValueError,
      "`learning_rate` must be finite",
    ),
    (dict(alpha=0.1, decoupled="yes"), TypeError, "`decoupled` must be"),
    (
      dict(alpha=0.1, head_mask=jnp.array([True])),
      TypeError,
      "`head_mask` must be a pytree of Python bools",
    ),
  ],
)
def test_construction_errors(kwargs, error, match):
  with pytest.raises(error, match=match):
    profit_optax.l2sp(**kwargs)


def test_init_and_update_errors():
  params = {"w1": jnp.ones((4, 3)), "b1": jnp.ones(3), "head": jnp.ones((3, 2))}
  tx = profit_optax.l2sp(0.1)
  helpers.assert_params_and_updates_checked(tx, params)
  with pytest.raises(TypeError, match="must be the L2SPState"):
    tx.update(params, optax.EmptyState(), params)
  with pytest.raises(ValueError, match="`head_mask` must be a pytree of bools"):
    profit_optax.l2sp(0.1, head_mask={"w1": True, "other": False}).init(params)
  with pytest.raises(TypeError, match=r"`head_mask` leaf \['b1'\] must be a"):
    profit_optax.l2sp(0.1, head_mask=HEAD | {"b1": 1}).init(params)
  with pytest.raises(ValueError, match="`pretrained` must have the same tree"):
    profit_optax.l2sp(0.1, pretrained={"w1": params["w1"]}).init(params)
  bad = params | {"b1": jnp.ones(4)}
  with pytest.raises(ValueError, match=r"`pretrained` leaf \['b1'\] has shape"):
    profit_optax.l2sp(0.1, pretrained=bad).init(params)
  with pytest.raises(TypeError, match=r"leaf \['n'\] has dtype int32"):
    tx.init({"n": jnp.ones(3, jnp.int32)})
