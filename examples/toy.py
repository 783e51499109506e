"""The toy experiment of the PROFIT paper (arXiv 2412.01930, Sec. 4.1).

An MLP with weights [2, 500], [500, 500], [500, 1] learns
``f(x) = sin(10 ‖x‖)`` from noisy samples (``N(0, 1)`` noise) on the old domain
``x ~ U[-1, 1]²``, then is fine-tuned on the new domain ``x ~ U[0.8, 1.5]²``.
Errors are measured against the noiseless ``f``.

Everything a run needs is here, so the demo, the benchmarks and the notebooks
share one implementation: sampling, the model, pretraining, the fine-tuning
methods (full model, head only, PROFIT) and evaluation. Training loops are
jitted ``lax.scan`` chunks with batches drawn inside, so a whole run is a few
compiled programs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import profit_optax

Params = dict[str, jax.Array]

OLD_DOMAIN = (-1.0, 1.0)
NEW_DOMAIN = (0.8, 1.5)
HIDDEN = 500
# The paper does not name the activation; ReLU is the common default.
ACT = jax.nn.relu

# Table 1 of the paper: (original-domain MSE, new-domain MSE).
PAPER_TABLE1 = {
  "pretrained": (0.0054, 1.907),
  "full": (0.705, 0.504),
  "head": (0.110, 0.572),
  "profit": (0.046, 0.501),
}


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  """Settings of one run; the defaults are the paper's (Sec. 4.1).

  The paper does not state the batch size: we use 32 fresh samples per
  gradient evaluation, which keeps the problem stochastic, as PROFIT requires.
  With larger batches (64, 256) the pretrained ReLU network extrapolates far
  worse onto the new domain (new-domain MSE above 20 on some seeds), its
  gradients there are nearly deterministic and very large, the SGD reference
  step overshoots along the sharpest direction (ω > 0 with cos ≈ 1), and
  PROFIT with lr_ref = lr_main / 10 diverges. Try ``--batch-size 256``.
  """

  pretrain_steps: int = 10_000
  pretrain_lr: float = 1e-2
  finetune_steps: int = 1_500
  finetune_lr: float = 5e-4
  batch_size: int = 32
  noise_std: float = 1.0
  eval_points: int = 20_000
  chunk: int = 250
  seed: int = 0

  def quick(self) -> ToyConfig:
    """A tiny configuration for smoke tests."""
    return dataclasses.replace(
      self, pretrain_steps=200, finetune_steps=100, eval_points=2_000, chunk=50
    )


def target(x: jax.Array) -> jax.Array:
  """The noiseless function ``sin(10 ‖x‖)``."""
  return jnp.sin(10.0 * jnp.linalg.norm(x, axis=-1))


def sample(
  key: jax.Array,
  n: int,
  domain: tuple[float, float],
  noise_std: float,
) -> tuple[jax.Array, jax.Array]:
  """``n`` noisy samples with inputs uniform on ``domain``²."""
  kx, kn = jax.random.split(key)
  x = jax.random.uniform(kx, (n, 2), minval=domain[0], maxval=domain[1])
  return x, target(x) + noise_std * jax.random.normal(kn, (n,))


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


HEAD_KEYS = ("w3", "b3")


def apply_mlp(params: Params, x: jax.Array) -> jax.Array:
  h = ACT(x @ params["w1"] + params["b1"])
  h = ACT(h @ params["w2"] + params["b2"])
  return (h @ params["w3"] + params["b3"])[..., 0]


def mse_loss(params: Params, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
  x, y = batch
  return jnp.mean((apply_mlp(params, x) - y) ** 2)


def head_only(optimizer: optax.GradientTransformation):
  """``optimizer`` on the last layer, everything else frozen."""
  labels = {
    k: ("head" if k in HEAD_KEYS else "frozen") for k in init_mlp_keys()
  }
  return optax.multi_transform(
    {"head": optimizer, "frozen": optax.set_to_zero()}, labels
  )


def init_mlp_keys() -> tuple[str, ...]:
  return ("w1", "b1", "w2", "b2", "w3", "b3")


def make_trainer(
  tx: optax.GradientTransformation,
  domain: tuple[float, float],
  batch_size: int,
  noise_std: float,
  chunk: int,
) -> Callable:
  """A jitted ``(params, state, key) -> (params, state, mean_loss)`` that takes
  ``chunk`` optimizer calls, each on a fresh batch from ``domain``.

  With PROFIT each call is one sub-step (one gradient per ``update`` call), so
  ``n_ref + 1`` calls make one PROFIT step.
  """
  grad_fn = jax.value_and_grad(mse_loss)

  @jax.jit
  def run(params, state, key):
    def body(carry, k):
      params, state = carry
      loss, grads = grad_fn(params, sample(k, batch_size, domain, noise_std))
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss

    (params, state), losses = jax.lax.scan(
      body, (params, state), jax.random.split(key, chunk)
    )
    return params, state, jnp.mean(losses)

  return run


def train(
  params: Params,
  tx: optax.GradientTransformation,
  calls: int,
  key: jax.Array,
  cfg: ToyConfig,
  domain: tuple[float, float],
  progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
  on_chunk: Callable[[Params, optax.OptState, float], None] | None = None,
) -> Params:
  """Runs ``calls`` optimizer calls of ``tx`` in jitted chunks."""
  if calls % cfg.chunk:
    raise ValueError(
      f"calls ({calls}) must be a multiple of cfg.chunk ({cfg.chunk})."
    )
  run = make_trainer(tx, domain, cfg.batch_size, cfg.noise_std, cfg.chunk)
  state = tx.init(params)
  chunks = range(calls // cfg.chunk)
  for k in progress(chunks) if progress else chunks:
    params, state, loss = run(params, state, jax.random.fold_in(key, k))
    if on_chunk is not None:
      on_chunk(params, state, float(loss))
  return params


def evaluate(
  params: Params, key: jax.Array, cfg: ToyConfig
) -> dict[str, float]:
  """MSE against the noiseless ``f`` on each domain."""
  out = {}
  for name, domain, k in (
    ("mse_old", OLD_DOMAIN, jax.random.fold_in(key, 0)),
    ("mse_new", NEW_DOMAIN, jax.random.fold_in(key, 1)),
  ):
    x, _ = sample(k, cfg.eval_points, domain, 0.0)
    out[name] = float(jnp.mean((apply_mlp(params, x) - target(x)) ** 2))
  return out


def _cache_path(cfg: ToyConfig, cache_dir: pathlib.Path) -> pathlib.Path:
  fields = {
    k: getattr(cfg, k)
    for k in (
      "pretrain_steps",
      "pretrain_lr",
      "batch_size",
      "noise_std",
      "seed",
    )
  }
  digest = hashlib.sha256(
    json.dumps(fields, sort_keys=True).encode()
  ).hexdigest()
  return cache_dir / f"toy_pretrained_{digest[:16]}.npz"


def pretrain(
  cfg: ToyConfig,
  cache_dir: pathlib.Path | None = None,
  progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> Params:
  """The baseline: RMSProp on the old domain (cached in ``cache_dir``)."""
  path = _cache_path(cfg, cache_dir) if cache_dir is not None else None
  if path is not None and path.exists():
    with np.load(path) as data:
      return {k: jnp.asarray(data[k]) for k in data.files}
  key = jax.random.PRNGKey(cfg.seed)
  params = init_mlp(jax.random.fold_in(key, 0))
  params = train(
    params,
    optax.rmsprop(cfg.pretrain_lr),
    cfg.pretrain_steps,
    jax.random.fold_in(key, 1),
    cfg,
    OLD_DOMAIN,
    progress,
  )
  if path is not None:
    os.makedirs(path.parent, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in params.items()})
    os.replace(tmp, path)
  return params


def methods(
  cfg: ToyConfig, n_ref: int = 1, ratios: tuple[float, ...] = (10.0,)
) -> dict[str, tuple[optax.GradientTransformation, int]]:
  """The fine-tuning methods of Table 1: name -> (transformation, calls).

  Every method takes ``cfg.finetune_steps`` optimizer steps; a PROFIT step is
  ``n_ref + 1`` calls (one gradient each), so PROFIT uses ``n_ref + 1`` times
  the gradient evaluations, as in the paper. PROFIT runs once per
  ``lr_main / lr_ref`` ratio in ``ratios``: the first is named ``profit``, the
  others ``profit-ratio<r>``.
  """
  lr = cfg.finetune_lr
  out = {
    "full": (optax.rmsprop(lr), cfg.finetune_steps),
    "head": (head_only(optax.rmsprop(lr)), cfg.finetune_steps),
  }
  for i, ratio in enumerate(ratios):
    name = "profit" if i == 0 else f"profit-ratio{ratio:g}"
    out[name] = (
      profit_optax.profit(optax.rmsprop(lr), lr / ratio, n_ref=n_ref),
      cfg.finetune_steps * (n_ref + 1),
    )
  return out
