"""FTP (Fast Trainable Projection) against a NumPy float64 transliteration of
the reference code (``util/FTP.py`` of github.com/GT-RIPL/FTP, MIT), plus the
optax contract, errors, checkpointing and the layout choices.

The NumPy reference below follows the PyTorch classes ``FTP``, ``SGDP`` and
``AdamP`` line by line, on weights in PyTorch layout (output channel first).
The JAX side gets the same weights in Flax layout (output channel last), so
the comparison also checks which axis FTP reads as the output channel.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import profit_optax
from tests import helpers

# --------------------------------------------------------------------------
# The reference, transliterated into NumPy (float64)
# --------------------------------------------------------------------------


def torch_sum(x, dim, keepdim=False):
  """``torch.sum(x, dim=dim, keepdim=keepdim)``.

  PyTorch (1.7, the reference's environment) reads an empty ``dim`` as every
  dimension; NumPy's ``axis=()`` reduces none. The reference's
  ``dim=tuple(range(1, x.dim()))`` is empty for 1-D (and 0-D) tensors.
  """
  if dim == ():
    dim = tuple(range(x.ndim))
  return np.sum(x, axis=dim, keepdims=keepdim)


def hardtanh(x, min_val, max_val):
  return np.minimum(np.maximum(x, min_val), max_val)


class NumpyFTP:
  """``class FTP`` of the reference; ``mu`` may be a function of ``t - 1``.

  ``events`` records which branches the run went through, so that a test can
  check that it exercised them.
  """

  def __init__(self, k=1.0, exclude_set=(), mu=1e-2):
    self.exclude_set = set(exclude_set)
    self.k = k
    self.j = 0
    self.mu = mu
    self.beta1 = 0.9
    self.beta2 = 0.999
    self.t = 1
    self.gamma_buff = []
    self.first_m_gamma = []
    self.second_m_gamma = []
    self.prev_c = []
    self.prev_scale = []
    self.names = []
    self.events = set()

  def step(self, name, curr, grad, pre, d_p):
    if name in self.exclude_set:
      return None
    c_t = (curr - d_p) - pre
    norms = self._mars_norm(c_t)
    if self.t == 1:
      gamma = np.float64(1e-8)
      self._update_buffers(gamma)
      self.names.append(name)
    else:
      gamma_prev = self.gamma_buff[self.j]
      c_prev = self.prev_c[self.j]
      scale_prev = self.prev_scale[self.j]
      gamma_grad = np.sum(self._dot(grad, c_prev, scale=scale_prev))
      if gamma_grad > 0:
        gamma_grad = gamma_grad * self.k
        self.events.add("h>0")
      else:
        self.events.add("h<=0")
      gamma = self._adam_util(gamma_prev, gamma_grad)
      if gamma > norms.max():
        self.events.add("clip_high")
      if gamma < 1e-8:
        self.events.add("clip_low")
      gamma = self._clip(gamma, norms)
    denom = 1 / norms
    ratio = gamma * denom
    if np.any(ratio >= 1):
      self.events.add("row_inside")
    if np.any(ratio < 1):
      self.events.add("row_projected")
    new_p = pre + hardtanh(ratio, 0, 1) * c_t
    self._update_buffers(gamma, c_t, denom)
    self.j += 1
    return new_p

  def incre_counters(self):
    self.t += 1
    self.j = 0

  def _mars_norm(self, tensor):
    return (
      torch_sum(np.abs(tensor), tuple(range(1, tensor.ndim)), keepdim=True)
      + 1e-8
    )

  def _clip(self, constraint, norms):
    return hardtanh(constraint, 1e-8, norms.max())

  def _dot(self, tensor1, tensor2, scale=1):
    return (
      torch_sum(tensor1 * tensor2, tuple(range(1, tensor1.ndim)), keepdim=True)
      * scale
    )

  def _adam_util(self, prev, grad):
    first_moment = (
      self.beta1 * self.first_m_gamma[self.j] + (1 - self.beta1) * grad
    )
    second_moment = (
      self.beta2 * self.second_m_gamma[self.j] + (1 - self.beta2) * grad**2
    )
    self.first_m_gamma[self.j] = first_moment
    self.second_m_gamma[self.j] = second_moment
    first_moment = first_moment / (1 - self.beta1**self.t)
    second_moment = second_moment / (1 - self.beta2**self.t)
    mu = self.mu(self.t - 1) if callable(self.mu) else self.mu
    return prev - mu * first_moment / (np.sqrt(second_moment) + 1e-8)

  def _update_buffers(self, gamma, c_t=None, denom=None):
    if c_t is None:
      self.first_m_gamma.append(0.0)
      self.second_m_gamma.append(0.0)
      self.gamma_buff.append(gamma)
      self.prev_c.append(0.0)
      self.prev_scale.append(0.0)
    else:
      self.gamma_buff[self.j] = gamma
      self.prev_c[self.j] = c_t
      self.prev_scale[self.j] = denom

  def gamma_of(self, name):
    return self.gamma_buff[self.names.index(name)]


class NumpySGDP:
  """``class SGDP`` of the reference (dampening 0, no nesterov)."""

  def __init__(
    self, params, lr, momentum=0.0, weight_decay=0.0, k=1.0, exclude=(), mu=1e-2
  ):
    self.params = {n: p.copy() for n, p in params.items()}
    self.pre = {n: p.copy() for n, p in params.items()}
    self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
    self.buf = {}
    self.ftp = NumpyFTP(k, exclude_set=exclude, mu=mu)

  def step(self, grads):
    for name, p in self.params.items():
      grad = grads[name]
      d_p = grad
      if self.weight_decay != 0:
        d_p = d_p + self.weight_decay * p
      if self.momentum != 0:
        if name not in self.buf:
          self.buf[name] = d_p.copy()
        else:
          self.buf[name] = self.momentum * self.buf[name] + d_p
        d_p = self.buf[name]
      d_p = self.lr * d_p
      new_p = self.ftp.step(name, p, grad, self.pre[name], d_p)
      self.params[name] = new_p if new_p is not None else p - d_p
    self.ftp.incre_counters()


class NumpyAdamP:
  """``class AdamP`` of the reference (no amsgrad)."""

  def __init__(
    self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, k=1.0,
    exclude=(),
  ):  # fmt: skip
    self.params = {n: p.copy() for n, p in params.items()}
    self.pre = {n: p.copy() for n, p in params.items()}
    self.lr, self.betas, self.eps, self.wd = lr, betas, eps, weight_decay
    self.exp_avg = {n: np.zeros_like(p) for n, p in params.items()}
    self.exp_avg_sq = {n: np.zeros_like(p) for n, p in params.items()}
    self.steps = 0
    self.ftp = NumpyFTP(k, exclude_set=exclude)

  def step(self, grads):
    self.steps += 1
    beta1, beta2 = self.betas
    for name, param in self.params.items():
      grad = grads[name]
      bias_correction1 = 1 - beta1**self.steps
      bias_correction2 = 1 - beta2**self.steps
      self.exp_avg[name] = beta1 * self.exp_avg[name] + (1 - beta1) * grad
      self.exp_avg_sq[name] = (
        beta2 * self.exp_avg_sq[name] + (1 - beta2) * grad * grad
      )
      denom = (
        np.sqrt(self.exp_avg_sq[name]) / np.sqrt(bias_correction2)
      ) + self.eps
      step_size = self.lr / bias_correction1
      d_p = step_size * self.exp_avg[name] / denom + self.lr * self.wd * param
      new_p = self.ftp.step(name, param, grad, self.pre[name], d_p)
      if new_p is None:
        new_p = param - d_p
      self.params[name] = new_p
    self.ftp.incre_counters()


# --------------------------------------------------------------------------
# A realistic tree: Flax layout on the JAX side, PyTorch layout in NumPy
# --------------------------------------------------------------------------

# Flax keeps the output channel last: Dense (in, out), Conv HWIO (kh, kw,
# in, out). PyTorch keeps it first: Linear (out, in), Conv2d OIHW.
TO_TORCH = {
  "conv/kernel": lambda x: np.transpose(x, (3, 2, 0, 1)),  # HWIO -> OIHW
  "dense/kernel": lambda x: x.T,
  "head/kernel": lambda x: x.T,
}
HEAD = ("head/kernel", "head/bias")


def flax_tree(rng):
  return {
    "conv": {
      "kernel": rng.normal(size=(3, 3, 4, 6)) / 6.0,
      "bias": 0.1 * rng.normal(size=(6,)),
    },
    "dense": {
      "kernel": rng.normal(size=(5, 7)) / 3.0,
      "bias": 0.1 * rng.normal(size=(7,)),
    },
    "temperature": np.asarray(1.5),  # a 0-D leaf
    "head": {
      "kernel": rng.normal(size=(7, 3)) / 3.0,
      "bias": np.zeros((3,)),
    },
  }


def head_mask(params):
  return {name: name != "head" for name in params}


def flat_torch(tree):
  """{'conv/kernel': torch-layout array, ...} from a Flax-layout tree."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    leaf = np.asarray(leaf, np.float64)
    out[name] = TO_TORCH.get(name, lambda x: x)(leaf)
  return out


def random_grads(rng, like):
  """Per-leaf gradient scales that make some rows move little (so that
  the radius overtakes them) and a 0-D leaf whose radius hits its clip."""
  g = jax.tree.map(lambda x: rng.normal(size=np.shape(x)), like)
  g["conv"]["kernel"][..., 0] *= 1e-4  # output channel 0 barely moves
  g["dense"]["kernel"][:, 2] *= 1e-3  # output channel 2 barely moves
  g["conv"]["bias"] *= 0.01
  g["temperature"] = g["temperature"] * 1e-3
  return g


STEPS = 10


def run_both(tx, reference, params, rng, preprocess=lambda g: g):
  """Runs ``tx`` (jitted, in float64) and the NumPy reference on the same
  gradients; returns the per-step JAX params, states and reference params."""
  call = helpers.make_grad_call(tx)
  jparams = jax.tree.map(jnp.asarray, params)
  state = tx.init(jparams)
  got, want = [], []
  for _ in range(STEPS):
    grads = random_grads(rng, params)
    jparams, state = call(jparams, state, jax.tree.map(jnp.asarray, grads))
    reference.step(flat_torch(preprocess(grads)))
    got.append((flat_torch(jparams), state))
    want.append({n: p.copy() for n, p in reference.params.items()})
  return got, want


def assert_matches(got, want, reference, tol=1e-12):
  for step, ((jparams, _), ref) in enumerate(zip(got, want)):
    for name in ref:
      np.testing.assert_allclose(
        jparams[name],
        ref[name],
        rtol=tol,
        atol=tol,
        err_msg=f"step {step + 1}, {name}",
      )
  # The learned radii after the last step, leaf by leaf.
  _, state = got[-1]
  gammas = {
    "/".join(str(getattr(k, "key", k)) for k in path): leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.gamma)
  }
  assert sorted(gammas) == sorted(reference.ftp.names)
  for name, gamma in gammas.items():
    np.testing.assert_allclose(
      gamma, reference.ftp.gamma_of(name), rtol=tol, atol=1e-300
    )


ALL_EVENTS = {
  "h>0",
  "h<=0",
  "clip_high",
  "clip_low",
  "row_inside",
  "row_projected",
}


@pytest.mark.parametrize(
  "k, mu, momentum, wd",
  [(1.0, 1e-2, 0.9, 0.0), (0.3, 5e-2, 0.0, 1e-2), (0.0, 1e-2, 0.5, 1e-3)],
)
def test_sgdp_matches_reference(x64, k, mu, momentum, wd):
  rng = np.random.default_rng(0)
  params = flax_tree(rng)
  inner = optax.chain(
    optax.add_decayed_weights(wd), optax.sgd(0.05, momentum=momentum)
  )
  tx = profit_optax.ftp(inner, k=k, gamma_learning_rate=mu, mask=head_mask)
  ref = NumpySGDP(
    flat_torch(params), 0.05, momentum, wd, k=k, exclude=HEAD, mu=mu
  )
  got, want = run_both(tx, ref, params, rng)
  assert_matches(got, want, ref)
  if k == 1.0:
    # The run went through every branch of the reference.
    assert ref.ftp.events == ALL_EVENTS


def test_adamp_matches_reference(x64):
  rng = np.random.default_rng(1)
  params = flax_tree(rng)
  inner = optax.adamw(1e-2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05)
  tx = profit_optax.ftp(inner, k=0.5, mask=head_mask)
  ref = NumpyAdamP(flat_torch(params), 1e-2, weight_decay=0.05, k=0.5)
  ref.ftp.exclude_set = set(HEAD)
  got, want = run_both(tx, ref, params, rng)
  assert_matches(got, want, ref)


def test_inject_hyperparams_with_a_schedule_matches_reference(x64):
  rng = np.random.default_rng(2)
  params = flax_tree(rng)
  # Written in plain arithmetic so that it is float64 on both sides.
  schedule = lambda count: 0.05 * 0.7**count
  tx = optax.inject_hyperparams(profit_optax.ftp, static_args=("mask",))(
    optax.sgd(0.05, momentum=0.9),
    k=0.7,
    gamma_learning_rate=schedule,
    mask=head_mask,
  )
  ref = NumpySGDP(
    flat_torch(params), 0.05, 0.9, k=0.7, exclude=HEAD, mu=schedule
  )

  call = helpers.make_grad_call(tx)
  jparams = jax.tree.map(jnp.asarray, params)
  state = tx.init(jparams)
  for _ in range(STEPS):
    grads = random_grads(rng, params)
    jparams, state = call(jparams, state, jax.tree.map(jnp.asarray, grads))
    ref.step(flat_torch(grads))
    for name, want in ref.params.items():
      np.testing.assert_allclose(
        flat_torch(jparams)[name], want, rtol=1e-12, atol=1e-12, err_msg=name
      )
  assert float(state.hyperparams["k"]) == 0.7
  np.testing.assert_allclose(
    state.inner_state.gamma["dense"]["kernel"],
    ref.ftp.gamma_of("dense/kernel"),
    rtol=1e-12,
  )


def test_inside_chain_after_clipping_matches_reference(x64):
  rng = np.random.default_rng(3)
  params = flax_tree(rng)
  max_norm = 2.0

  def clip(grads):
    norm = np.sqrt(sum(np.sum(g**2) for g in jax.tree.leaves(grads)))
    if norm < max_norm:
      return grads
    return jax.tree.map(lambda g: g / norm * max_norm, grads)

  tx = optax.chain(
    optax.clip_by_global_norm(max_norm),
    profit_optax.ftp(optax.sgd(0.1, momentum=0.9), mask=head_mask),
  )

  ref = NumpySGDP(flat_torch(params), 0.1, 0.9, exclude=HEAD)
  got, want = run_both(tx, ref, params, rng, preprocess=clip)
  for (jparams, _), ref_params in zip(got, want):
    for name in ref_params:
      np.testing.assert_allclose(
        jparams[name], ref_params[name], rtol=1e-12, atol=1e-12
      )
  assert isinstance(got[-1][1][1], profit_optax.FTPState)


# --------------------------------------------------------------------------
# Behaviour
# --------------------------------------------------------------------------


def small_tree(dtype=jnp.float32):
  return {
    "w": jnp.linspace(-1.0, 1.0, 12, dtype=dtype).reshape(4, 3),
    "b": jnp.array([0.1, -0.2, 0.3], dtype),
  }


def loss(params, key):
  return helpers.noisy_loss([params["w"], params["b"]], key)


def make_call(tx, **extra):
  return helpers.make_loss_call(loss, tx, **extra)


def test_first_step_stays_at_the_pretrained_weights():
  params = small_tree()
  tx = profit_optax.ftp(optax.sgd(0.5))
  got, state = helpers.run_keys(make_call(tx), params, tx.init(params), 1)
  for p, p0 in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
    assert float(jnp.abs(p - p0).max()) <= 1e-8
  assert float(state.gamma["w"]) == pytest.approx(1e-8)
  assert int(state.count) == 1


def test_fully_excluded_is_the_inner_optimizer_bit_for_bit():
  params = small_tree()
  inner = optax.adam(0.05)
  tx = profit_optax.ftp(inner, mask=False)
  got, state = helpers.run_keys(make_call(tx), params, tx.init(params), 5)
  want, inner_state = helpers.run_keys(
    make_call(inner), params, inner.init(params), 5
  )
  chex.assert_trees_all_equal(got, want)
  chex.assert_trees_all_equal(state.inner_state, inner_state)
  assert state.pretrained == {"w": optax.MaskedNode(), "b": optax.MaskedNode()}


def test_a_radius_above_every_row_norm_is_the_inner_optimizer():
  params = small_tree()
  inner = optax.sgd(0.1, momentum=0.9)
  tx = profit_optax.ftp(inner, gamma_init=1e6, gamma_min=1e6)
  got, _ = helpers.run_keys(make_call(tx), params, tx.init(params), 8)
  want, _ = helpers.run_keys(make_call(inner), params, inner.init(params), 8)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)
  # A radius of 0 instead pins every projected leaf to θ0.
  tx = profit_optax.ftp(inner, gamma_init=0.0, gamma_min=0.0)
  got, _ = helpers.run_keys(make_call(tx), params, tx.init(params), 1)
  chex.assert_trees_all_equal(got, params)


def test_a_vector_is_one_row_and_a_kernel_has_one_row_per_output_channel():
  params = small_tree()
  tx = profit_optax.ftp(optax.sgd(0.1), gamma_learning_rate=0.05)
  got, state = helpers.run_keys(make_call(tx), params, tx.init(params), 6)
  c = state.prev_displacement
  gamma = state.gamma
  # The bias: one ratio min(1, γ / (‖c‖₁ + eps)) for the whole vector.
  ratio_b = min(1.0, float(gamma["b"]) / (float(jnp.abs(c["b"]).sum()) + 1e-8))
  np.testing.assert_allclose(
    got["b"], params["b"] + ratio_b * c["b"], rtol=1e-6, atol=1e-7
  )
  assert ratio_b < 1  # the test means something only if it projects
  assert state.prev_scale["b"].shape == (1,)
  # The kernel (in=4, out=3): one ratio per column, L1 over the inputs.
  norms = jnp.abs(c["w"]).sum(axis=0, keepdims=True) + 1e-8
  ratio_w = jnp.minimum(1.0, gamma["w"] / norms)
  np.testing.assert_allclose(
    got["w"], params["w"] + ratio_w * c["w"], rtol=1e-6, atol=1e-7
  )
  assert state.prev_scale["w"].shape == (1, 3)
  assert float(jnp.max(jnp.abs(got["w"] - params["w"]).sum(axis=0))) <= (
    float(gamma["w"]) * (1 + 1e-5)
  )


def test_channel_axis_callable_chooses_per_leaf():
  params = small_tree()

  def rows(path, leaf):
    return 0 if leaf.ndim == 1 else None  # per-element bias, default kernel

  tx = profit_optax.ftp(
    optax.sgd(0.1), gamma_learning_rate=0.05, channel_axis=rows
  )
  got, state = helpers.run_keys(make_call(tx), params, tx.init(params), 6)
  c, gamma = state.prev_displacement["b"], state.gamma["b"]
  ratio = jnp.minimum(1.0, gamma / (jnp.abs(c) + 1e-8))
  np.testing.assert_allclose(
    got["b"], params["b"] + ratio * c, rtol=1e-6, atol=1e-7
  )
  assert state.prev_scale["b"].shape == (3,)
  assert state.prev_scale["w"].shape == (1, 3)
  # The whole kernel as one row.
  tx = profit_optax.ftp(optax.sgd(0.1), channel_axis=lambda path, leaf: ())
  assert tx.init(params).prev_scale["w"].shape == (1, 1)


def test_channel_axis_zero_is_the_pytorch_layout():
  params = small_tree()
  transposed = {"w": params["w"].T, "b": params["b"]}
  loss_t = lambda p, key: loss({"w": p["w"].T, "b": p["b"]}, key)
  tx = profit_optax.ftp(optax.sgd(0.1), gamma_learning_rate=0.05)
  tx0 = profit_optax.ftp(
    optax.sgd(0.1), gamma_learning_rate=0.05, channel_axis=0
  )

  @jax.jit
  def call_t(p, state, key):
    updates, state = tx0.update(jax.grad(loss_t)(p, key), state, p)
    return optax.apply_updates(p, updates), state

  want, _ = helpers.run_keys(make_call(tx), params, tx.init(params), 6)
  got, state = helpers.run_keys(call_t, transposed, tx0.init(transposed), 6)
  np.testing.assert_allclose(got["w"].T, want["w"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got["b"], want["b"], rtol=1e-6, atol=1e-7)
  assert state.prev_scale["w"].shape == (3, 1)


def test_tuple_channel_axis_for_dense_general_kernels():
  kernel = jnp.ones((4, 2, 3))  # (in, heads, head_dim)
  tx = profit_optax.ftp(optax.sgd(0.1), channel_axis=(-2, -1))
  state = tx.init({"qkv": kernel, "bias": jnp.zeros(3)})
  assert state.prev_scale["qkv"].shape == (1, 2, 3)
  assert state.prev_scale["bias"].shape == (1,)  # vectors stay one row


def test_pretrained_copy_and_masked_state():
  params = {"backbone": small_tree(), "head": jnp.ones((3, 2))}
  tx = profit_optax.ftp(optax.sgd(0.1), mask={"backbone": True, "head": False})
  state = tx.init(params)
  chex.assert_trees_all_equal(state.pretrained["backbone"], params["backbone"])
  assert state.pretrained["backbone"]["w"] is not params["backbone"]["w"]
  for field in state[2:]:
    assert field["head"] == optax.MaskedNode()
  # The head takes plain SGD steps; the backbone is projected.
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  chex.assert_trees_all_close(updates["head"], -0.1 * jnp.ones((3, 2)))
  assert float(jnp.abs(updates["backbone"]["w"]).max()) < 1e-7


# --------------------------------------------------------------------------
# The optax contract (optax/contrib/_common_test.py)
# --------------------------------------------------------------------------


def test_extra_args_and_no_recompile():
  tx = profit_optax.ftp(optax.adam(0.01))
  params = small_tree()
  traces = []

  @jax.jit
  def call(params, state, key):
    traces.append(None)
    grads = jax.grad(loss)(params, key)
    updates, state = tx.update(grads, state, params, unexpected_extra_arg=1)
    return optax.apply_updates(params, updates), state

  helpers.run_keys(call, params, tx.init(params), 3)
  assert len(traces) == 1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dtypes_preserved_and_state_stable(dtype):
  tx = profit_optax.ftp(optax.adam(0.01))
  params = small_tree(dtype)
  state0 = tx.init(params)
  params1, state1 = helpers.run_keys(make_call(tx), params, state0, 2)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state1, params1)
  for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
    assert u.dtype == p.dtype == dtype
  chex.assert_trees_all_equal_shapes_and_dtypes(state0, state1)
  assert state1.gamma["w"].dtype == jnp.float32
  assert state1.prev_displacement["w"].dtype == dtype


def test_map_params_maps_the_pretrained_copy():
  tx = profit_optax.ftp(optax.sgd(0.1), mask={"w": True, "b": False})
  params = small_tree()
  state = tx.init(params)
  mapped = optax.tree.map_params(tx, lambda v: v + 1.0, state)
  chex.assert_trees_all_close(mapped.pretrained["w"], params["w"] + 1.0)
  assert mapped.pretrained["b"] == optax.MaskedNode()
  assert int(mapped.count) == int(state.count)


def test_lax_scan_matches_the_python_loop():
  tx = profit_optax.ftp(optax.sgd(0.1, momentum=0.9), gamma_learning_rate=0.05)
  params = small_tree()
  keys = jax.random.split(jax.random.PRNGKey(0), 6)

  def body(carry, key):
    params, state = carry
    updates, state = tx.update(jax.grad(loss)(params, key), state, params)
    return (optax.apply_updates(params, updates), state), None

  (got, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, keys))(
    (params, tx.init(params))
  )
  want, _ = helpers.run_keys(make_call(tx), params, tx.init(params), 6)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


def test_multisteps_is_ftp_on_the_averaged_gradients():
  ftp = profit_optax.ftp(optax.sgd(0.1), gamma_learning_rate=0.05)
  tx = optax.MultiSteps(ftp, every_k_schedule=2)
  params = small_tree()
  keys = jax.random.split(jax.random.PRNGKey(0), 8)
  got, state = helpers.run_keys(make_call(tx), params, tx.init(params), 8)
  want, ftp_state = params, ftp.init(params)
  for pair in keys.reshape(4, 2, -1):
    grads = [jax.grad(loss)(want, key) for key in pair]
    mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    updates, ftp_state = ftp.update(mean, ftp_state, want)
    want = optax.apply_updates(want, updates)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
  assert int(state.inner_opt_state.count) == 4


def test_apply_if_finite_skips_a_nan_step():
  tx = optax.apply_if_finite(profit_optax.ftp(optax.sgd(0.1)), 3)
  params = small_tree()
  state = tx.init(params)
  params, state = helpers.run_keys(make_call(tx), params, state, 2)
  nan = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
  updates, new_state = tx.update(nan, state, params)
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
  chex.assert_trees_all_equal(new_state.inner_state, state.inner_state)


def test_inject_hyperparams_static_channel_axis():
  params = small_tree()
  factory = optax.inject_hyperparams(
    profit_optax.ftp, static_args=("channel_axis",)
  )
  tx = factory(optax.sgd(0.1), k=0.5, channel_axis=0)
  _, state = helpers.run_keys(make_call(tx), params, tx.init(params), 2)
  assert state.inner_state.prev_scale["w"].shape == (4, 1)
  # Without static_args an int channel_axis is injected and traced under jit.
  tx = optax.inject_hyperparams(profit_optax.ftp)(
    optax.sgd(0.1), channel_axis=0
  )
  with pytest.raises(TypeError, match="static_args=\\('channel_axis',\\)"):
    helpers.run_keys(make_call(tx), params, tx.init(params), 1)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs, error, match",
  [
    ({"k": -0.1}, ValueError, "`k` must be finite and in \\[0, 1\\]"),
    ({"k": 2.0}, ValueError, "`k`"),
    ({"k": "1"}, TypeError, "`k` must be a float"),
    ({"k": True}, TypeError, "`k`"),
    ({"gamma_learning_rate": -1.0}, ValueError, "`gamma_learning_rate`"),
    ({"b1": 1.0}, ValueError, "`b1` must be finite and in \\[0, 1\\)"),
    ({"b2": float("nan")}, ValueError, "`b2`"),
    ({"eps": -1e-8}, ValueError, "`eps`"),
    ({"gamma_init": -1.0}, ValueError, "`gamma_init`"),
    ({"gamma_min": float("inf")}, ValueError, "`gamma_min`"),
    ({"norm_eps": 0.0}, ValueError, "`norm_eps` must be finite and in \\(0"),
    ({"mask": jnp.array([True])}, TypeError, "`mask` must be a pytree"),
    ({"channel_axis": 1.5}, TypeError, "`channel_axis` must be None"),
    ({"channel_axis": (0, "a")}, TypeError, "`channel_axis`"),
  ],
)
def test_bad_hyperparameters(kwargs, error, match):
  with pytest.raises(error, match=match):
    profit_optax.ftp(optax.sgd(0.1), **kwargs)


def test_not_a_transformation():
  with pytest.raises(TypeError, match="`optimizer` must be an optax"):
    profit_optax.ftp(0.1)
  with pytest.raises(TypeError, match="`optimizer` must be an optax"):
    profit_optax.ftp(optax.sgd)


def test_missing_params():
  tx = profit_optax.ftp(optax.sgd(0.1))
  with pytest.raises(ValueError, match="not passing `params`"):
    tx.init(None)
  state = tx.init(small_tree())
  with pytest.raises(ValueError, match="not passing `params`"):
    tx.update(small_tree(), state)


@pytest.mark.parametrize(
  "mask, error, match",
  [
    ({"w": True}, ValueError, "`mask` must be a pytree of bools"),
    ({"w": True, "b": True, "c": False}, ValueError, "structure of `params`"),
    (lambda p: {"w": True}, ValueError, "`mask`"),
    ({"w": 1, "b": True}, TypeError, "`mask` leaf for \\['w'\\]"),
  ],
)
def test_bad_mask(mask, error, match):
  tx = profit_optax.ftp(optax.sgd(0.1), mask=mask)
  with pytest.raises(error, match=match):
    tx.init(small_tree())


def test_bad_channel_axis_for_a_leaf():
  tx = profit_optax.ftp(optax.sgd(0.1), channel_axis=2)
  with pytest.raises(ValueError, match="`channel_axis` 2 is out of range"):
    tx.init(small_tree())
  tx = profit_optax.ftp(optax.sgd(0.1), channel_axis=(0, -2))
  with pytest.raises(ValueError, match="names an axis of leaf \\['w'\\] twice"):
    tx.init(small_tree())
  tx = profit_optax.ftp(optax.sgd(0.1), channel_axis=lambda path, leaf: "x")
  with pytest.raises(TypeError, match="`channel_axis` for leaf"):
    tx.init(small_tree())


def test_bad_inputs_to_update():
  tx = profit_optax.ftp(optax.sgd(0.1))
  params = small_tree()
  state = tx.init(params)
  with pytest.raises(TypeError, match="`state` must be the FTPState"):
    tx.update(params, optax.EmptyState(), params)
  with pytest.raises(ValueError, match="`updates` must have the tree"):
    tx.update({"w": params["w"]}, state, params)
  other = {"w": params["w"]}
  with pytest.raises(ValueError, match="`state.pretrained` must have the tree"):
    tx.update(other, state, other)


def test_integer_parameters_must_be_excluded():
  params = {"w": jnp.ones(3), "step": jnp.zeros((), jnp.int32)}
  tx = profit_optax.ftp(optax.sgd(0.1))
  with pytest.raises(TypeError, match="leaf \\['step'\\] has dtype int32"):
    tx.init(params)
  tx = profit_optax.ftp(
    optax.masked(optax.sgd(0.1), {"w": True, "step": False}),
    mask={"w": True, "step": False},
  )
  assert tx.init(params).pretrained["step"] == optax.MaskedNode()


# --------------------------------------------------------------------------
# Checkpointing
# --------------------------------------------------------------------------


def test_orbax_resume_mid_run_is_bit_identical(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  params0 = {"backbone": small_tree(), "head": jnp.ones((3, 2))}
  mask = {"backbone": True, "head": False}
  tx = profit_optax.ftp(optax.adamw(0.01, weight_decay=0.1), k=0.5, mask=mask)

  @jax.jit
  def call(params, state, key):
    grads = jax.grad(lambda p, key: loss(p["backbone"], key))(params, key)
    grads["head"] = jnp.full((3, 2), 0.5)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  keys = jax.random.split(jax.random.PRNGKey(0), 8)
  want = (params0, tx.init(params0))
  for key in keys:
    want = call(*want, key)
  params, state = params0, tx.init(params0)
  for key in keys[:4]:  # stop after step 4
    params, state = call(params, state, key)
  assert float(state.gamma["backbone"]["w"]) > 1e-8  # γ has moved

  checkpointer = ocp.StandardCheckpointer()
  path = tmp_path / "ftp"
  checkpointer.save(path, {"params": params, "opt_state": state})
  checkpointer.wait_until_finished()
  target = jax.eval_shape(
    lambda: {"params": params0, "opt_state": tx.init(params0)}
  )
  restored = checkpointer.restore(path, target)
  checkpointer.close()
  assert isinstance(restored["opt_state"], profit_optax.FTPState)
  assert restored["opt_state"].pretrained["head"] == optax.MaskedNode()
  chex.assert_trees_all_equal(
    restored, {"params": params, "opt_state": state}, strict=True
  )

  # Resume with the keys the uninterrupted run used for steps 5..8.
  got = (restored["params"], restored["opt_state"])
  for key in keys[4:]:
    got = call(*got, key)
  chex.assert_trees_all_equal(got, want, strict=True)
