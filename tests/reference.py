"""An independent NumPy float64 reference of PROFIT.

Algorithm 1 of arXiv 2412.01930, line by line.

Nothing here imports JAX or profit_optax: the model's gradient is derived by
hand, and each main optimizer is written from its textbook update rule (in the
form optax uses), so the tests compare two separate implementations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

Params = dict[str, np.ndarray]


# --------------------------------------------------------------------------
# A small tanh MLP with a hand-written gradient.
# --------------------------------------------------------------------------


def mlp_init(rng: np.random.Generator, d_in: int, d_hidden: int) -> Params:
  return {
    "w1": rng.normal(size=(d_in, d_hidden)) / np.sqrt(d_in),
    "b1": 0.1 * rng.normal(size=(d_hidden,)),
    "w2": rng.normal(size=(d_hidden, 1)) / np.sqrt(d_hidden),
    "b2": np.zeros((1,)),
  }


def mlp_loss_and_grad(
  params: Params, x: np.ndarray, y: np.ndarray
) -> tuple[float, Params]:
  """Mean squared error of the MLP and its gradient, by backpropagation."""
  z = x @ params["w1"] + params["b1"]
  h = np.tanh(z)
  out = h @ params["w2"] + params["b2"]
  err = out[:, 0] - y
  loss = float(np.mean(err**2))
  d_out = (2.0 / len(y)) * err[:, None]
  d_h = d_out @ params["w2"].T
  d_z = d_h * (1.0 - h**2)
  grads = {
    "w1": x.T @ d_z,
    "b1": d_z.sum(axis=0),
    "w2": h.T @ d_out,
    "b2": d_out.sum(axis=0),
  }
  return loss, grads


def pretrained_mlp(
  rng: np.random.Generator, d_in: int, d_hidden: int, steps: int = 3000
) -> Params:
  """An MLP trained with plain SGD until near convergence on the task.

  PROFIT is meant for converged models: there the mini-batch noise makes
  ``ω = <Δ, g>`` change sign from step to step, so both branches run.
  """
  params = mlp_init(rng, d_in, d_hidden)
  for x, y in make_batches(rng, steps, 32, d_in):
    _, grads = mlp_loss_and_grad(params, x, y)
    params = _tree(lambda p, g: p - 0.1 * g, params, grads)
  return params


def make_batches(
  rng: np.random.Generator, count: int, batch_size: int, d_in: int
) -> list[tuple[np.ndarray, np.ndarray]]:
  """Batches of a nearby regression task: a different batch for every call."""
  batches = []
  for _ in range(count):
    x = rng.uniform(0.3, 1.3, size=(batch_size, d_in))
    y = np.sin(2.0 * x.sum(axis=1)) + 0.3 * rng.normal(size=batch_size)
    batches.append((x, y))
  return batches


# --------------------------------------------------------------------------
# Main optimizers, each a (params, grads) -> params step with its own state.
# --------------------------------------------------------------------------


def _tree(fn: Callable[..., np.ndarray], *trees: Params) -> Params:
  return {k: fn(*(t[k] for t in trees)) for k in trees[0]}


@dataclass
class NumpySGD:
  lr: float
  momentum: float = 0.0
  trace: Params | None = None

  def step(self, params: Params, grads: Params) -> Params:
    if self.momentum:
      if self.trace is None:
        self.trace = _tree(np.zeros_like, grads)
      self.trace = _tree(lambda g, t: g + self.momentum * t, grads, self.trace)
      direction = self.trace
    else:
      direction = grads
    return _tree(lambda p, d: p - self.lr * d, params, direction)


@dataclass
class NumpyRMSProp:
  lr: float
  decay: float = 0.9
  eps: float = 1e-8
  nu: Params | None = None

  def step(self, params: Params, grads: Params) -> Params:
    if self.nu is None:
      self.nu = _tree(np.zeros_like, grads)
    self.nu = _tree(
      lambda n, g: self.decay * n + (1 - self.decay) * g**2, self.nu, grads
    )
    # eps inside the square root, optax's default (eps_in_sqrt=True).
    return _tree(
      lambda p, g, n: p - self.lr * g / np.sqrt(n + self.eps),
      params,
      grads,
      self.nu,
    )


@dataclass
class NumpyAdam:
  lr: float
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  mu: Params | None = None
  nu: Params | None = None
  count: int = 0

  def step(self, params: Params, grads: Params) -> Params:
    if self.mu is None:
      self.mu = _tree(np.zeros_like, grads)
      self.nu = _tree(np.zeros_like, grads)
    self.count += 1
    self.mu = _tree(
      lambda m, g: self.b1 * m + (1 - self.b1) * g, self.mu, grads
    )
    self.nu = _tree(
      lambda n, g: self.b2 * n + (1 - self.b2) * g**2, self.nu, grads
    )
    c1 = 1 - self.b1**self.count
    c2 = 1 - self.b2**self.count

    def new_param(p, m, n):
      direction = (m / c1) / (np.sqrt(n / c2) + self.eps)
      # Decoupled weight decay acts on the parameters the optimizer is given:
      # in PROFIT those are the anchor.
      direction = direction + self.weight_decay * p
      return p - self.lr * direction

    return _tree(new_param, params, self.mu, self.nu)


# --------------------------------------------------------------------------
# Algorithm 1
# --------------------------------------------------------------------------


@dataclass
class StepRecord:
  omega: float
  projected: bool
  delta_norm: float
  cos: float
  losses: list[float] = field(default_factory=list)


def _vdot(a: Params, b: Params) -> float:
  return float(sum(np.vdot(a[k], b[k]) for k in a))


def _second_moment(main, grads: Params) -> Params:
  """The main optimizer's bias-corrected second moment, g**2 where it is 0."""
  nu = getattr(main, "nu", None)
  count = getattr(main, "count", None)
  out = {}
  for k, g in grads.items():
    if nu is None:
      v = np.zeros_like(g)
    elif count is None:
      v = nu[k]
    else:
      v = nu[k] / (1 - main.b2**count) if count > 0 else nu[k]
    out[k] = np.where(v > 0, v, g**2)
  return out


def _trust_scale(delta: Params, step: Params, radius: float) -> float:
  """The largest s in [0, 1] with ||delta + s step|| <= radius."""
  moved = _tree(np.add, delta, step)
  if np.sqrt(_vdot(moved, moved)) <= radius:
    return 1.0
  a, b, c = _vdot(step, step), _vdot(delta, step), _vdot(delta, delta)
  c -= radius**2
  return float((-b + np.sqrt(b * b - a * c)) / a)


def profit_reference(
  params: Params,
  main: NumpySGD | NumpyRMSProp | NumpyAdam,
  lr_ref: float,
  n_ref: int,
  batches: Iterator[tuple[np.ndarray, np.ndarray]],
  steps: int,
  *,
  groups: list[list[str]] | None = None,
  trust_radius: float | None = None,
  precondition: bool = False,
  eps: float = 1e-8,
) -> tuple[Params, list[StepRecord]]:
  """Runs ``steps`` PROFIT steps as Algorithm 1 states them.

  The options change Algorithm 1 as profit_optax documents them:
  ``groups`` (lists of parameter names) computes omega and the projection
  per group; ``trust_radius`` scales each reference step so that
  ``||delta|| <= trust_radius * ||anchor||``; ``precondition`` divides the
  reference gradient by ``sqrt(nu_hat) + eps``, ``nu_hat`` the main
  optimizer's bias-corrected second moment (``g**2`` where it is zero).
  """
  groups = groups or [list(params)]
  theta = {k: v.copy() for k, v in params.items()}
  records = []
  for _ in range(steps):
    losses = []
    anchor = {k: v.copy() for k, v in theta.items()}  # line 2
    delta = {k: np.zeros_like(v) for k, v in theta.items()}
    radius = None
    if trust_radius is not None:
      radius = trust_radius * np.sqrt(_vdot(anchor, anchor))
    for _ in range(n_ref):  # lines 3-6: reference steps, plain SGD
      loss, g = mlp_loss_and_grad(theta, *next(batches))
      losses.append(loss)
      if precondition:
        v = _second_moment(main, g)
        g = {k: g[k] / (np.sqrt(v[k]) + eps) for k in g}
      step = {k: -lr_ref * gi for k, gi in g.items()}
      if radius is not None:
        s = _trust_scale(delta, step, radius)
        step = {k: s * u for k, u in step.items()}
      theta = _tree(np.add, theta, step)
      delta = _tree(np.add, delta, step)
    # Line 7, Δ = θ - anchor, taken as the sum of the reference steps, which
    # it equals in exact arithmetic: the definition the package implements
    # (its Δ keeps small steps exact, where θ - anchor rounds them to the
    # parameters' resolution). In float64 the two agree far below the tests'
    # tolerances.
    for k in delta:
      np.testing.assert_allclose(
        delta[k], theta[k] - anchor[k], rtol=1e-9, atol=1e-15
      )
    loss, g = mlp_loss_and_grad(theta, *next(batches))  # line 8
    losses.append(loss)
    omega = _vdot(delta, g)  # line 9
    dd = _vdot(delta, delta)
    gg = _vdot(g, g)
    cos = omega / np.sqrt(dd * gg) if dd > 0 and gg > 0 else 0.0
    projected = False
    g = dict(g)
    for keys in groups:  # lines 10-12, per group: remove g's part along Δ
      dg = {k: delta[k] for k in keys}
      gk = {k: g[k] for k in keys}
      omega_k, dd_k = _vdot(dg, gk), _vdot(dg, dg)
      if omega_k < 0 and dd_k > 0:
        projected = True
        for k in keys:
          g[k] = g[k] - (omega_k / dd_k) * delta[k]
    theta = anchor  # line 13
    theta = main.step(theta, g)  # line 14
    records.append(
      StepRecord(omega, projected, float(np.sqrt(dd)), cos, losses)
    )
  return theta, records
