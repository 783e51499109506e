"""Private helpers shared by the package's transformations.

Argument checks, dtype rules, mask expansion and the stored copy of the
pretrained weights, used by :mod:`profit_optax._src.profit`,
:mod:`~profit_optax._src.ftp`, :mod:`~profit_optax._src.l2sp`,
:mod:`~profit_optax._src.spd` and :mod:`~profit_optax._src.warmup`. Pure
functions; nothing here is exported. Where callers phrase an error their own
way, the helper takes the words that differ as arguments.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

MaskOrFn = Any | Callable[[optax.Params], Any]


# --------------------------------------------------------------------------
# Dtypes and names
# --------------------------------------------------------------------------


def _dtype_of(x: Any) -> Any:
  """The dtype of an array, scalar or jax.ShapeDtypeStruct."""
  dtype = getattr(x, "dtype", None)
  return jnp.dtype(dtype) if dtype is not None else jnp.result_type(x)


def _acc_dtype(dtype: Any) -> Any:
  """The dtype in which leaves of ``dtype`` are computed and inner products
  accumulated: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def _leaf_name(path: Any) -> str:
  """A leaf's key path as error messages print it: ``['w']``, or ``(root)``."""
  return jax.tree_util.keystr(path) or "(root)"


def _has_leaves(tree: Any) -> bool:
  # ``optax.tree.map_params`` calls ``init`` with a leafless placeholder: there
  # is nothing to check or copy then.
  return bool(jax.tree_util.tree_leaves(tree))


# --------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------


def _is_concrete_number(x: Any, *, bool_arrays: bool = False) -> bool:
  """Whether ``x`` is a concrete real scalar: a Python or NumPy number or a
  0-d array, not a tracer. Python and NumPy bools are not numbers; neither
  are 0-d boolean arrays, unless ``bool_arrays``."""
  if isinstance(x, (bool, np.bool_)):
    return False
  if isinstance(x, numbers.Real):
    return True
  if isinstance(x, (np.ndarray, jax.Array)) and not isinstance(
    x, jax.core.Tracer
  ):
    return np.ndim(x) == 0 and (
      bool_arrays or not jnp.issubdtype(x.dtype, jnp.bool_)
    )
  return False


def _check_hyperparameter(name: str, value: Any, hint: str) -> None:
  """Checks a non-negative scalar hyperparameter or an optax schedule.

  Traced values (injected by ``optax.inject_hyperparams`` under ``jit``) are
  accepted unchecked; concrete ones must be finite and >= 0.
  """
  if callable(value) or isinstance(value, jax.core.Tracer):
    return
  if not _is_concrete_number(value):
    raise TypeError(
      f"`{name}` must be a non-negative float or an optax schedule (a"
      f" callable of the step count); got {value!r} of type"
      f" {type(value).__name__}. {hint}"
    )
  v = float(value)
  if not np.isfinite(v) or v < 0:
    raise ValueError(f"`{name}` must be finite and >= 0; got {v!r}. {hint}")


def _check_transformation(
  name: str, tx: Any, example: str = "optax.adam(1e-3)"
) -> None:
  """``tx`` must be an optax transformation; ``example`` is the one the
  error suggests."""
  if not (
    hasattr(tx, "init")
    and hasattr(tx, "update")
    and callable(tx.init)
    and callable(tx.update)
  ):
    raise TypeError(
      f"`{name}` must be an optax GradientTransformation (an object with"
      f" `init` and `update`), e.g. {example}; got {tx!r}."
    )


def _check_params(
  params: Any,
  who: str,
  *,
  why: str = (
    "it stores the pretrained weights at init and uses the parameters in"
    " every update"
  ),
  grads: str = "updates",
) -> None:
  """``params`` must be given: ``who`` needs them (``why``); ``grads`` is
  the name of the first argument of ``update`` in the error."""
  if params is None:
    raise ValueError(
      f"You are not passing `params`: {who} needs the current parameters"
      f" ({why}); call `init(params)` and `update({grads}, state, params)`."
    )


def _check_state(state: Any, state_type: type) -> None:
  """``state`` must be the ``state_type`` that the transformation's ``init``
  returned."""
  if not isinstance(state, state_type):
    raise TypeError(
      f"`state` must be the {state_type.__name__} returned by this"
      f" transformation's `init`; got {type(state).__name__}."
    )


def _check_float_params(
  params: Any,
  who: str,
  *,
  verb: str = "acts on",
  dtype_of: Callable[[Any], Any] = jnp.result_type,
) -> None:
  """Every leaf of ``params`` must be floating-point (or complex): ``who``
  ``verb`` them. ``dtype_of`` gives the dtype the error names."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    dtype = dtype_of(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
        f"{who} {verb} floating-point parameters, but `params` leaf"
        f" {_leaf_name(path)} has dtype {dtype}."
        " Convert it to a float dtype, or keep it out of the optimizer with"
        " optax.masked / optax.multi_transform (e.g. optax.set_to_zero())."
      )


def _check_tree_like(name: str, tree: Any, params: Any) -> None:
  """``tree`` must have the structure and leaf shapes of ``params``."""
  t1 = jax.tree_util.tree_structure(tree)
  t2 = jax.tree_util.tree_structure(params)
  if t1 != t2:
    raise ValueError(
      f"`{name}` must have the same tree structure as `params`, one leaf per"
      f" parameter leaf. Got {name}: {t1}; params: {t2}."
    )
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(tree), jax.tree_util.tree_leaves(params)
  ):
    if jnp.shape(a) != jnp.shape(b):
      raise ValueError(
        f"`{name}` leaf {_leaf_name(path)} has shape"
        f" {jnp.shape(a)} but the matching `params` leaf has shape"
        f" {jnp.shape(b)}; pass values of the same shapes as the parameters."
      )


def _check_updates(updates: Any, params: Any) -> None:
  """``updates`` must have the tree structure of ``params``."""
  t1 = jax.tree_util.tree_structure(updates)
  t2 = jax.tree_util.tree_structure(params)
  if t1 != t2:
    raise ValueError(
      "`updates` must have the same tree structure as `params` (one"
      f" gradient leaf per parameter leaf). Got updates: {t1}; params: {t2}."
    )


def _check_init_args(params: Any, who: str, mask_tree: Callable) -> None:
  """The checks of ``init`` of a transformation that stores the pretrained
  weights (``who``): ``params`` given and floating-point, and its mask
  (``mask_tree`` expands it) fitting them."""
  _check_params(params, who)
  if _has_leaves(params):
    _check_float_params(params, who)
    mask_tree(params)  # validates the mask against the parameters


def _check_update_args(
  updates: Any, state: Any, params: Any, who: str, state_type: type
) -> None:
  """The checks of ``update`` of such a transformation: ``params`` given, the
  state its own, and ``updates`` shaped like ``params``."""
  _check_params(params, who)
  _check_state(state, state_type)
  _check_updates(updates, params)


# --------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------


def _check_mask_arg(name: str, mask: Any) -> None:
  """A mask is a pytree of Python bools (or a callable), never an array."""
  if isinstance(mask, (jax.Array, np.ndarray)):
    raise TypeError(
      f"`{name}` must be a pytree of Python bools (one per parameter leaf,"
      " or per subtree) or a callable of the params returning one, as in"
      f" optax.masked; got an array of shape {np.shape(mask)}. Masks are"
      " static: use True/False, not arrays."
    )


def _broadcast_mask(tree: Any, params: Any) -> Any:
  """A mask that is a prefix of ``params``, with each of its leaves repeated
  over the leaves of the subtree of ``params`` below it (as ``optax.masked``
  reads a mask). Raises ValueError or TypeError if ``tree`` is no prefix."""
  return jax.tree.map(
    lambda m, sub: jax.tree.map(lambda _: m, sub), tree, params
  )


def _expand_mask(
  name: str, mask: MaskOrFn | None, params: Any, *, default: bool
) -> Any:
  """A mask (or a callable of params returning one) as a tree of bools with
  the structure of ``params``; ``default`` on every leaf if ``mask`` is None.

  Like ``optax.masked``, the mask may be a prefix of ``params``: a bool at a
  subtree applies to all its leaves. Masks are static: their leaves must be
  Python (or NumPy) bools, never traced arrays.
  """
  if mask is None:
    return jax.tree.map(lambda _: default, params)
  tree = mask(params) if callable(mask) else mask
  try:
    full = _broadcast_mask(tree, params)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"`{name}` must be a pytree of bools with the structure of `params`"
      " (or a prefix of it: a bool at a subtree applies to all its leaves),"
      f" or a callable of the params returning one. Got {name}:"
      f" {jax.tree_util.tree_structure(tree)}; params:"
      f" {jax.tree_util.tree_structure(params)}."
    ) from e
  for path, m in jax.tree_util.tree_leaves_with_path(full):
    if not isinstance(m, (bool, np.bool_)):
      raise TypeError(
        f"`{name}` leaf {_leaf_name(path)} must be a"
        f" Python bool, got {m!r} of type {type(m).__name__}. Masks are"
        " static (they choose which computation each leaf gets): compute"
        " them from the tree structure or names, not from array values."
      )
  return jax.tree.map(bool, full)


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------


def _copy_like(source: Any, params: Any) -> Any:
  """A fresh copy of ``source`` with the dtypes (and placement) of ``params``.

  A copy, never an alias: donating the parameters to a jitted step must not
  delete the stored pretrained weights. Under ``jit`` the copy inherits the
  parameters' sharding by propagation; outside ``jit``, a given ``source`` is
  put where the matching parameter lives.
  """

  def copy(s, p):
    dtype = jnp.result_type(p)
    if isinstance(s, jax.ShapeDtypeStruct):
      # Abstract parameters (planning a layout): a placeholder of the right
      # shape, dtype and sharding, as optax's own states get.
      return jnp.zeros_like(s, dtype=dtype)
    out = jnp.array(s, dtype=dtype, copy=True)
    if (
      isinstance(p, jax.Array)
      and not isinstance(p, jax.core.Tracer)
      and not isinstance(out, jax.core.Tracer)
    ):
      out = jax.device_put(out, p.sharding)
    return out

  return jax.tree.map(copy, source, params)


def _init_pretrained(pretrained: Any, params: Any) -> Any:
  """The stored copy of the pretrained weights (``params`` when None)."""
  if pretrained is None or not _has_leaves(params):
    return _copy_like(params, params)
  _check_tree_like("pretrained", pretrained, params)
  return _copy_like(pretrained, params)


def _zeros_like_sharded(p: Any, dtype: Any = None) -> Any:
  """Zeros shaped like ``p``, in ``dtype`` (default: ``p``'s), that keep its
  sharding under jit.

  ``jnp.zeros_like`` inside ``jit`` is a constant that the compiler may lay
  out on one device; a select that never takes ``p`` (so no NaN of it can
  pass) derives from ``p`` and inherits its sharding. Abstract parameters
  (jax.ShapeDtypeStruct) get zeros of their shape.
  """
  if isinstance(p, jax.ShapeDtypeStruct):
    return jnp.zeros_like(p) if dtype is None else jnp.zeros(p.shape, dtype)
  p = jnp.asarray(p)
  zeros = jnp.where(jnp.zeros(p.shape, jnp.bool_), p, jnp.zeros((), p.dtype))
  return zeros if dtype is None else zeros.astype(dtype)


def _value_at(value: Any, count: jax.Array) -> Any:
  """A hyperparameter at step ``count``: a schedule's value, or itself."""
  return value(count) if callable(value) else value
