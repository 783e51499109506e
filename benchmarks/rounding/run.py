"""The measurement: one SGD reference step in float32 against the exact one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.image import run as image_run
from benchmarks.image import task as T

LR_MAIN = 1e-4  # AdamW's rate in the reference setting
RATIOS = (10, 100, 1000, 10000)


def measure(params, grads, lr_ref: float) -> tuple[float, float]:
  """(relative error, cosine) of the float32 Δ against ``-lr_ref * g``."""
  exact = [-lr_ref * np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
  moved = jax.tree.map(lambda p, g: p - lr_ref * g, params, grads)
  delta = [
    np.asarray(m, np.float64) - np.asarray(p, np.float64)
    for m, p in zip(jax.tree.leaves(moved), jax.tree.leaves(params))
  ]
  err = sum(np.sum((d - e) ** 2) for d, e in zip(delta, exact))
  norm = sum(np.sum(e**2) for e in exact)
  dot = sum(np.sum(d * e) for d, e in zip(delta, exact))
  dnorm = sum(np.sum(d**2) for d in delta)
  return float(np.sqrt(err / norm)), float(dot / np.sqrt(norm * dnorm))


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
        err, cos = measure(params, grads, lr_ref)
        common = {
          "method": f"profit-ratio{ratio}",
          "seed": 0,
          "arch": arch,
          "shift": shift,
          "ratio": ratio,
          "lr_ref": lr_ref,
        }
        records.append({**common, "metric": "delta_rel_error", "value": err})
        records.append({**common, "metric": "delta_cos", "value": cos})
  return records
