"""The pretrained-weights cache: ``.cache/benchmarks/<name>-<digest>.npz``.

The digest hashes every setting that changes the weights, so a changed
protocol never loads stale weights. The cache directory is ignored by git.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = pathlib.Path(
  os.environ.get("PROFIT_OPTAX_CACHE", ROOT / ".cache" / "benchmarks")
)


def path_for(name: str, fields: dict) -> pathlib.Path:
  digest = hashlib.sha256(
    json.dumps(fields, sort_keys=True, default=str).encode()
  ).hexdigest()[:16]
  return CACHE / f"{name}-{digest}.npz"


def load(name: str, fields: dict, template: Any) -> Any | None:
  """The stored pytree of ``(name, fields)``, or None if there is none (or
  its leaves' shapes differ from ``template``'s)."""
  path = path_for(name, fields)
  leaves, treedef = jax.tree.flatten(template)
  if not path.exists():
    return None
  with np.load(path) as f:
    if len(f.files) != len(leaves):
      return None
    stored = [jnp.asarray(f[f"leaf{i}"]) for i in range(len(leaves))]
  if [x.shape for x in stored] != [jnp.shape(x) for x in leaves]:
    return None
  return jax.tree.unflatten(treedef, stored)


def cached(
  name: str,
  fields: dict,
  template: Any,
  build: Callable[[], Any],
  use_cache: bool = True,
) -> Any:
  """The pytree ``build()`` returns, stored under ``(name, fields)``.

  ``template`` is any pytree of the same structure (e.g. freshly initialised
  weights); loading checks every leaf's shape against it.
  """
  if use_cache and (tree := load(name, fields, template)) is not None:
    return tree
  tree = build()
  if use_cache:
    path = path_for(name, fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
      tmp,
      **{
        f"leaf{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(tree))
      },
    )
    os.replace(tmp, path)
  return tree
