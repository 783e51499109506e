"""The measurement: one PROFIT reference call in float32 against the exact
step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import profit_optax
from benchmarks.image import run as image_run
from benchmarks.image import task as T

LR_MAIN = 1e-4  # AdamW's rate in the reference setting
RATIOS = (10, 100, 1000, 10000)


def _error_and_cosine(delta, exact) -> tuple[float, float]:
  """(‖Δ - exact‖ / ‖exact‖, cos(Δ, exact)) over all leaves, in float64."""
  delta = [np.asarray(d, np.float64) for d in delta]
  err = sum(np.sum((d - e) ** 2) for d, e in zip(delta, exact))
  norm = sum(np.sum(e**2) for e in exact)
  dot = sum(np.sum(d * e) for d, e in zip(delta, exact))
  dnorm = sum(np.sum(d**2) for d in delta)
  return float(np.sqrt(err / norm)), float(dot / np.sqrt(norm * dnorm))


@jax.jit
def _reference_call(params, grads, lr_ref):
  """The moved parameters and the kept Δ after one reference call.

  One compilation per model: ``lr_ref`` is traced, as under
  ``optax.inject_hyperparams``.
  """
  tx = profit_optax.profit(optax.adamw(LR_MAIN), lr_ref)
  updates, state = tx.update(grads, tx.init(params), params)
  return optax.apply_updates(params, updates), state.delta


def measure(params, grads, lr_ref: float) -> dict[str, float]:
  """The float32 Δ of one PROFIT reference call against ``-lr_ref * g``.

  Two definitions of Δ from the same call of the package's transformation:
  the difference of the moved and the anchor parameters, ``θ' - θ`` (what
  Algorithm 1 writes, and what the package stored before it kept Δ), and
  the Δ the package keeps in its state (the sum of the reference updates).
  """
  exact = [-lr_ref * np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
  moved, kept = _reference_call(params, grads, jnp.float32(lr_ref))
  difference = [
    np.asarray(m, np.float64) - np.asarray(p, np.float64)
    for m, p in zip(jax.tree.leaves(moved), jax.tree.leaves(params))
  ]
  err_diff, cos_diff = _error_and_cosine(difference, exact)
  err_kept, cos_kept = _error_and_cosine(jax.tree.leaves(kept), exact)
  return {
    "delta_rel_error": err_diff,
    "delta_cos": cos_diff,
    "kept_delta_rel_error": err_kept,
    "kept_delta_cos": cos_kept,
  }


def run(cfg: image_run.Config, archs, use_cache=True) -> list[dict]:
  """Records of every (arch, shift, ratio) from the image benchmark's
  pretrained models (computed and cached if missing)."""
  old, tasks = T.load_tasks(cfg.source, cfg.val)
  records = []
  for arch in archs:
    pretrained = image_run.pretrain(arch, old, cfg, use_cache)
    loss = T.make_loss(arch)
    for shift, task in tasks.items():
      params = pretrained
      if shift != "rotated":  # a new head, as the benchmark's seed 0
        key = jax.random.fold_in(jax.random.PRNGKey(0), 1)
        params = {**pretrained, "head": T.init_head(task.num_classes, key)}
      n = cfg.batch
      batch = (
        jnp.asarray(task.train.images[:n]),
        jnp.asarray(task.train.labels[:n]),
      )
      grads = jax.grad(loss)(params, batch)
      for ratio in RATIOS:
        lr_ref = LR_MAIN / ratio
        values = measure(params, grads, lr_ref)
        common = {
          "method": f"profit-ratio{ratio}",
          "seed": 0,
          "arch": arch,
          "shift": shift,
          "ratio": ratio,
          "lr_ref": lr_ref,
        }
        records += [
          {**common, "metric": k, "value": v} for k, v in values.items()
        ]
  return records
