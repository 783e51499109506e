"""The toy task of the PROFIT paper (arXiv 2412.01930, Sec. 4.1): data, model,
the pretraining protocols and the measurements taken on a model.

An MLP with weights [2, 500], [500, 500], [500, 1] learns
``f(x) = sin(10 ‖x‖)`` from samples with ``N(0, 1)`` label noise on the old
domain ``x ~ U[-1, 1]²`` and is then fine-tuned on the new domain
``x ~ U[0.8, 1.5]²``. Errors are MSEs against the noiseless ``f``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

Params = dict[str, jax.Array]

OLD_DOMAIN = (-1.0, 1.0)
NEW_DOMAIN = (0.8, 1.5)
HIDDEN = 500
NOISE_STD = 1.0
HEAD_KEYS = ("w3", "b3")
PARAM_KEYS = ("w1", "b1", "w2", "b2", "w3", "b3")

# Table 1 of the paper: (original-domain MSE, new-domain MSE).
PAPER_TABLE1 = {
  "pretrained": (0.0054, 1.907),
  "full": (0.705, 0.504),
  "head": (0.110, 0.572),
  "profit": (0.046, 0.501),
}


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How the baseline is pretrained: RMSProp on the old domain.

  The paper gives the step count (10000) and the rate (1e-2) only; the batch
  size, the schedule and RMSProp's decay are the unknowns the calibration
  grid chooses (``python -m benchmarks.toy --calibrate``).
  """

  batch: int
  schedule: str  # "constant" or "cosine" (decay to 0 over the run)
  decay: float = 0.9  # RMSProp's second-moment decay (optax's default)
  steps: int = 10_000
  lr: float = 1e-2

  def optimizer(self) -> optax.GradientTransformation:
    if self.schedule == "constant":
      lr = self.lr
    elif self.schedule == "cosine":
      lr = optax.cosine_decay_schedule(self.lr, self.steps)
    else:
      raise ValueError(
        f"schedule must be 'constant' or 'cosine'; got {self.schedule!r}."
      )
    return optax.rmsprop(lr, decay=self.decay)

  def label(self) -> str:
    return f"batch {self.batch}, {self.schedule} lr, decay {self.decay:g}"


# What the previous benchmark did: it leaves the old domain underfitted
# (Assumption 2 of the paper broken), kept to show that failure.
UNCONVERGED = Protocol(batch=32, schedule="constant", decay=0.9)
# Chosen by the calibration grid (results/toy_calibration.md): the cell whose
# pretrained errors come closest to the paper's baseline row.
CALIBRATED = Protocol(batch=128, schedule="cosine", decay=0.9)
PROTOCOLS = {"calibrated": CALIBRATED, "unconverged": UNCONVERGED}


@dataclasses.dataclass(frozen=True)
class FineTune:
  """Fine-tuning settings: the paper's rate and step count (Sec. 4.1).

  The paper does not give the batch size. 32 samples per gradient keeps the
  gradient noisy (label noise N(0, 1) against a signal of amplitude 1), which
  is the stochastic regime PROFIT is designed for (Sec. 3.3: with exact
  gradients the reference displacement and the next gradient align and the
  projection removes the step).
  """

  lr: float = 5e-4
  steps: int = 1_500
  batch: int = 32


def target(x: jax.Array) -> jax.Array:
  """The noiseless function ``sin(10 ‖x‖)``."""
  return jnp.sin(10.0 * jnp.linalg.norm(x, axis=-1))


def sample(
  key: jax.Array, n: int, domain: tuple[float, float], noise_std: float
) -> tuple[jax.Array, jax.Array]:
  """``n`` noisy samples with inputs uniform on ``domain``²."""
  kx, kn = jax.random.split(key)
  x = jax.random.uniform(kx, (n, 2), minval=domain[0], maxval=domain[1])
  return x, target(x) + noise_std * jax.random.normal(kn, (n,))


def sampler(batch: int, domain: tuple[float, float]):
  """``(key, data) -> batch`` for the shared training loop (no data array)."""
  return lambda key, _: sample(key, batch, domain, NOISE_STD)


def init_mlp(key: jax.Array, hidden: int = HIDDEN) -> Params:
  """He-initialised weights [2, h], [h, h], [h, 1] with zero biases."""
  k1, k2, k3 = jax.random.split(key, 3)
  he = lambda k, shape: jax.random.normal(k, shape) * jnp.sqrt(2.0 / shape[0])
  return {
    "w1": he(k1, (2, hidden)),
    "b1": jnp.zeros(hidden),
    "w2": he(k2, (hidden, hidden)),
    "b2": jnp.zeros(hidden),
    "w3": he(k3, (hidden, 1)),
    "b3": jnp.zeros(1),
  }


def apply_mlp(params: Params, x: jax.Array) -> jax.Array:
  """The network (ReLU: the paper does not name the activation)."""
  h = jax.nn.relu(x @ params["w1"] + params["b1"])
  h = jax.nn.relu(h @ params["w2"] + params["b2"])
  return (h @ params["w3"] + params["b3"])[..., 0]


def mse_loss(params: Params, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
  x, y = batch
  return jnp.mean((apply_mlp(params, x) - y) ** 2)


def head_only(optimizer: optax.GradientTransformation):
  """``optimizer`` on the last layer, everything else frozen."""
  labels = {k: ("head" if k in HEAD_KEYS else "frozen") for k in PARAM_KEYS}
  return optax.multi_transform(
    {"head": optimizer, "frozen": optax.set_to_zero()}, labels
  )


EVAL_POINTS = 20_000


@jax.jit
def evaluate(params: Params, key: jax.Array) -> dict[str, jax.Array]:
  """MSE against the noiseless ``f`` on each domain (20000 points each)."""
  out = {}
  for i, (name, domain) in enumerate(
    (("mse_old", OLD_DOMAIN), ("mse_new", NEW_DOMAIN))
  ):
    x, _ = sample(jax.random.fold_in(key, i), EVAL_POINTS, domain, 0.0)
    out[name] = jnp.mean((apply_mlp(params, x) - target(x)) ** 2)
  return out


@jax.jit
def lambda_max(params: Params, key: jax.Array) -> jax.Array:
  """The largest Hessian eigenvalue of the new-domain loss at ``params``.

  Power iteration (50 steps) on Hessian-vector products of the MSE over 4096
  fixed noisy new-domain samples, i.e. the curvature the SGD reference step
  meets; it is stable only where ``lr_ref < 2 / lambda_max``.
  """
  batch = sample(key, 4096, NEW_DOMAIN, NOISE_STD)
  grad = jax.grad(lambda p: mse_loss(p, batch))
  hvp = lambda v: jax.jvp(grad, (params,), (v,))[1]
  v = jax.tree.map(
    lambda x, k: jax.random.normal(k, x.shape),
    params,
    dict(
      zip(params, jax.random.split(jax.random.fold_in(key, 1), len(params)))
    ),
  )

  def step(v, _):
    hv = hvp(v)
    return jax.tree.map(lambda x: x / optax.tree.norm(hv), hv), None

  v = jax.tree.map(lambda x: x / optax.tree.norm(v), v)
  v, _ = jax.lax.scan(step, v, None, length=50)
  return optax.tree.vdot(v, hvp(v))
