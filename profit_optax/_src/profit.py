"""PROFIT as an optax gradient transformation.

PROFIT (Chakravarthy et al., arXiv 2412.01930, Algorithm 1) wraps a main
optimizer ``O`` and a reference optimizer ``O_ref``. One PROFIT step:

1. remember the current parameters as the anchor;
2. take ``n_ref`` steps of ``O_ref``, each on a new batch;
3. ``Δ = θ - anchor``; ``g`` is the gradient of a new batch at the displaced θ;
4. if ``ω = <Δ, g> < 0``, remove from ``g`` its component along ``Δ``;
5. restore θ to the anchor and let ``O`` take one step from there with ``g``.

The pieces are pure module-level functions (the reference step, the
projection with its diagnostics, the main step, and the three calls built
from them); :func:`profit` checks its arguments, fixes the drive and returns
the transformation. The state keeps ``Δ`` itself, summed from the reference
updates, rather than the anchor: the main call then reads one
parameter-sized array besides the gradient for ``ω``, and ``Δ`` stays exact
however small the reference steps are.
"""

from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from profit_optax._src import _common
from profit_optax._src._common import (
  _acc_dtype,
  _check_float_params,
  _check_state,
  _check_transformation,
  _dtype_of,
  _is_concrete_number,
  _zeros_like_sharded,
)

__all__ = [
  "ProfitDiagnostics",
  "ProfitState",
  "find_profit_state",
  "get_diagnostics",
  "profit",
]


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------


class _Static:
  """A pytree node with no leaves that carries a Python value as metadata.

  It lets :class:`ProfitState` record ``n_ref`` without adding an array leaf,
  so a Python driver can read it without waiting for the device.
  """

  __slots__ = ("value",)

  def __init__(self, value: Any):
    self.value = value

  def __repr__(self) -> str:
    return f"Static({self.value!r})"

  def __eq__(self, other: object) -> bool:
    return isinstance(other, _Static) and other.value == self.value

  def __hash__(self) -> int:
    return hash(("profit_optax.Static", self.value))


jax.tree_util.register_pytree_node(
  _Static, lambda s: ((), s.value), lambda value, _: _Static(value)
)


class ProfitDiagnostics(NamedTuple):
  """What the last completed PROFIT step measured.

  All values are scalars in the accumulation dtype (float32, or float64 when a
  parameter is float64); before the first PROFIT step completes they are zero
  (``projected`` is ``False``).

  Attributes:
    omega: ``ω = <Δ, g>``, the inner product of the reference displacement and
      the new gradient (before projection), accumulated in at least float32.
    cos: cosine of the angle between ``g`` and ``Δ``; zero when either is zero.
    projected: whether ``ω < 0``, so that ``g`` lost its component along ``Δ``.
    delta_norm: ``‖Δ‖``, the Euclidean norm of the reference displacement.

  Read them with :func:`get_diagnostics` from any state that contains PROFIT,
  or from the ``metrics`` of :func:`profit_step`. With ``projection_groups``
  (per-layer PROFIT) they stay global: ``omega`` is the sum of the groups'
  ``ω_k`` (the global ``ω``), ``cos`` and ``delta_norm`` are global, and
  ``projected`` is whether any group was projected.

  Examples:
    A reference step that overshoots the minimum of ``p**2 / 2``: the gradient
    at the displaced point points back along ``Δ`` (``ω > 0``), so nothing is
    projected and the main optimizer steps from the anchor with it.

    >>> import jax, jax.numpy as jnp, optax, profit_optax
    >>> tx = profit_optax.profit(optax.sgd(0.1), ref_learning_rate=3.0)
    >>> params = jnp.array([1.0])
    >>> state = tx.init(params)
    >>> d = profit_optax.get_diagnostics(state)
    >>> print(float(d.omega), bool(d.projected))  # zero before the first step
    0.0 False
    >>> grad = jax.grad(lambda p: 0.5 * jnp.sum(p**2))
    >>> for _ in range(2):  # the reference call moves 1 -> -2; the main call
    ...   updates, state = tx.update(grad(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> d = profit_optax.get_diagnostics(state)
    >>> print(float(d.omega), float(d.cos), bool(d.projected))
    6.0 1.0 False
    >>> print(float(d.delta_norm), params)  # 1.0 - 0.1 * g, g = -2.0
    3.0 [1.2]

  References:
    Chakravarthy et al., `PROFIT: A Specialized Optimizer for Deep Fine
    Tuning <https://arxiv.org/abs/2412.01930>`_, 2024
  """

  omega: jax.Array
  cos: jax.Array
  projected: jax.Array
  delta_norm: jax.Array


class ProfitState(NamedTuple):
  """State of the transformation returned by :func:`profit`.

  Attributes:
    count: int32 scalar, how many calls of the current cycle have been taken
      (``0`` at a cycle boundary, ``1..n_ref`` after reference calls).
    step: int32 scalar, how many PROFIT steps have completed (saturating). The
      default reference learning rate schedule is evaluated at this count.
    delta: ``Δ``, the sum of the reference updates of the current cycle
      (same tree and shapes as the parameters, in ``delta_dtype`` or each
      parameter's dtype); the anchor is ``params - delta``. Meaningful only
      while ``count > 0``: :func:`profit_step` neither reads nor writes it,
      and returns the state with the ``delta`` it was given.
      ``optax.EmptyState()`` in opaque mode, which keeps no copy of the
      parameters.
    ref_state: state of the reference optimizer; restarted every cycle.
    inner_state: state of the main optimizer; it advances once per PROFIT
      step.
    diagnostics: :class:`ProfitDiagnostics` of the last completed step.
    finite: bool scalar, whether every gradient of the current cycle so far
      was finite.
    skipped: int32 scalar, how many PROFIT steps were skipped because a
      gradient of their cycle was not finite (saturating).
    n_ref: the number of reference calls per cycle, kept as pytree metadata
      (it has no array leaf). Read it as ``int(state.n_ref.value)``.

  Inside a chain or another wrapper, :func:`find_profit_state` finds it.

  Examples:
    With ``n_ref=2``, three calls make one PROFIT step: ``count`` runs through
    the cycle and ``step`` counts completed steps.

    >>> import jax.numpy as jnp, optax, profit_optax
    >>> tx = profit_optax.profit(optax.sgd(0.1), 0.01, n_ref=2)
    >>> params = {'w': jnp.ones(3)}
    >>> state = tx.init(params)
    >>> state.n_ref.value, state.delta['w'].shape
    (2, (3,))
    >>> for _ in range(4):
    ...   updates, state = tx.update({'w': jnp.ones(3)}, state, params)
    ...   print(int(state.count), int(state.step), int(state.skipped))
    1 0 0
    2 0 0
    0 1 0
    1 1 0

  References:
    Chakravarthy et al., `PROFIT: A Specialized Optimizer for Deep Fine
    Tuning <https://arxiv.org/abs/2412.01930>`_, 2024
  """

  count: jax.Array
  step: jax.Array
  delta: optax.Updates
  ref_state: optax.OptState
  inner_state: optax.OptState
  diagnostics: ProfitDiagnostics
  finite: jax.Array
  skipped: jax.Array
  n_ref: _Static


def _zero_diagnostics(dtype: Any) -> ProfitDiagnostics:
  # One array per field: a state whose leaves shared a buffer could not be
  # donated to a jitted step (XLA refuses to donate a buffer twice).
  return ProfitDiagnostics(
    omega=jnp.zeros((), dtype),
    cos=jnp.zeros((), dtype),
    projected=jnp.zeros((), jnp.bool_),
    delta_norm=jnp.zeros((), dtype),
  )


def find_profit_state(state: optax.OptState) -> ProfitState:
  """Returns the :class:`ProfitState` inside an optimizer state.

  The state may be the PROFIT state itself or any state that contains it: an
  ``optax.chain`` tuple, ``optax.inject_hyperparams``, ``optax.MultiSteps``,
  ``optax.apply_if_finite``, ``optax.masked`` and so on.

  Args:
    state: an optimizer state.

  Returns:
    The one :class:`ProfitState` found in ``state``.

  Raises:
    ValueError: if ``state`` holds no PROFIT state, or more than one.

  Examples:
    >>> import jax.numpy as jnp, optax, profit_optax
    >>> tx = optax.chain(optax.clip_by_global_norm(1.0),
    ...                  profit_optax.profit(optax.sgd(0.1), 0.01))
    >>> state = tx.init({'w': jnp.zeros(3)})
    >>> int(profit_optax.find_profit_state(state).n_ref.value)
    1

  References:
    Chakravarthy et al., `PROFIT: A Specialized Optimizer for Deep Fine
    Tuning <https://arxiv.org/abs/2412.01930>`_, 2024
  """
  is_profit = lambda x: isinstance(x, ProfitState)
  found = [
    leaf
    for leaf in jax.tree_util.tree_leaves(state, is_leaf=is_profit)
    if is_profit(leaf)
  ]
  if not found:
    raise ValueError(
      "`state` holds no PROFIT state: pass the state returned by the `init`"
      " of a transformation built with `profit_optax.profit` (possibly inside"
      f" optax.chain or another wrapper); got a {type(state).__name__}."
    )
  if len(found) > 1:
    raise ValueError(
      f"`state` holds {len(found)} PROFIT states; a single PROFIT"
      " transformation per optimizer is supported here."
    )
  return found[0]


def _map_profit(fn: Any, state: optax.OptState) -> optax.OptState:
  """``state`` with ``fn`` applied to each :class:`ProfitState` in it."""
  is_profit = lambda x: isinstance(x, ProfitState)
  return jax.tree.map(
    lambda x: fn(x) if is_profit(x) else x, state, is_leaf=is_profit
  )


def get_diagnostics(state: optax.OptState) -> ProfitDiagnostics:
  """Returns the diagnostics of the last completed PROFIT step.

  Args:
    state: a PROFIT state, or any optimizer state that contains one (see
      :func:`find_profit_state`).

  Returns:
    A :class:`ProfitDiagnostics` with ``omega``, ``cos``, ``projected`` and
    ``delta_norm``. All are zero (``projected`` False) before the first step.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, profit_optax
    >>> tx = profit_optax.profit(optax.sgd(0.1), ref_learning_rate=0.5)
    >>> params = jnp.array([1.0, 2.0])
    >>> state = tx.init(params)
    >>> grad = jax.grad(lambda p: 0.5 * jnp.sum(p**2))
    >>> for _ in range(2):  # one reference call, then the main call
    ...   updates, state = tx.update(grad(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> d = profit_optax.get_diagnostics(state)
    >>> print(f"{float(d.omega):.4f} {float(d.cos):.1f} {bool(d.projected)}")
    -1.2500 -1.0 True

  References:
    Chakravarthy et al., `PROFIT: A Specialized Optimizer for Deep Fine
    Tuning <https://arxiv.org/abs/2412.01930>`_, 2024
  """
  return find_profit_state(state).diagnostics


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _check_rate(name: str, value: Any) -> None:
  """Checks a learning rate given as a number, array or schedule."""
  if callable(value):
    return  # a schedule; it is evaluated inside the computation.
  if isinstance(value, jax.core.Tracer):
    return  # injected by optax.inject_hyperparams: checked by the caller.
  if isinstance(value, (bool, np.bool_)) or not (
    isinstance(value, numbers.Real)
    or (isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0)
  ):
    raise TypeError(
      f"`{name}` must be a non-negative float or an optax schedule (a"
      f" callable of the step count); got {value!r} of type"
      f" {type(value).__name__}."
    )
  if _is_concrete_number(value, bool_arrays=True):
    v = float(value)
    if not np.isfinite(v) or v < 0:
      raise ValueError(
        f"`{name}` must be finite and >= 0; got {v!r}. Pass a rate such as"
        " 1e-4 (the paper uses lr_main/10 to lr_main/10000)."
      )


def _check_n_ref(n_ref: Any) -> int:
  if isinstance(n_ref, jax.core.Tracer) or (
    isinstance(n_ref, jax.Array) and not isinstance(n_ref, numbers.Integral)
  ):
    raise TypeError(
      "`n_ref` must be a static Python int, but it was given as an array."
      " With optax.inject_hyperparams, declare it static:"
      " `optax.inject_hyperparams(profit_optax.profit,"
      " static_args=('n_ref',))`."
    )
  if isinstance(n_ref, (bool, np.bool_)) or not isinstance(
    n_ref, numbers.Integral
  ):
    raise TypeError(
      f"`n_ref` must be an int >= 1 (the number of reference steps per"
      f" PROFIT step; the paper uses 1); got {n_ref!r} of type"
      f" {type(n_ref).__name__}."
    )
  if n_ref < 1:
    raise ValueError(
      f"`n_ref` must be >= 1 (the number of reference steps per PROFIT"
      f" step; the paper uses 1); got {n_ref}."
    )
  return int(n_ref)


def _check_params(params: Any) -> None:
  """``params`` must be given (to ``init`` and ``update`` of PROFIT)."""
  _common._check_params(
    params,
    "PROFIT",
    why="it stores the anchor and steps from it",
    grads="grads",
  )


def _check_dtype(name: str, dtype: Any) -> Any:
  try:
    dtype = jnp.dtype(dtype)
  except TypeError as e:
    raise TypeError(
      f"`{name}` must be a floating dtype such as jnp.float32 or None (the"
      f" parameters' dtype); got {dtype!r}."
    ) from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
      f"`{name}` must be a floating dtype such as jnp.float32 or None (the"
      f" parameters' dtype); got {dtype}."
    )
  return dtype


def _check_same_tree(
  name: str, tree: Any, params: Any, what: str = "params"
) -> None:
  t1 = jax.tree_util.tree_structure(tree)
  t2 = jax.tree_util.tree_structure(params)
  if t1 != t2:
    raise ValueError(
      f"`{name}` must have the same tree structure as `{what}`: pass one"
      f" gradient leaf per parameter leaf. Got {name}: {t1}; {what}: {t2}."
    )
  for i, (a, b) in enumerate(
    zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(params))
  ):
    if jnp.shape(a) != jnp.shape(b):
      raise ValueError(
        f"`{name}` leaf {i} has shape {jnp.shape(a)} but the matching"
        f" `{what}` leaf has shape {jnp.shape(b)}; gradients must match the"
        " parameters leaf by leaf."
      )


def _check_options(
  projection_groups: Any,
  ref_trust_radius: Any,
  ref_preconditioner: Any,
  b2: Any,
  eps: Any,
  ref_optimizer: Any,
) -> None:
  """Checks the options that stabilise and localise PROFIT."""
  if isinstance(projection_groups, str) and projection_groups != "leaf":
    raise ValueError(
      "`projection_groups` must be None (one global projection, Algorithm"
      " 1), 'leaf' (one per parameter leaf), a pytree of labels or a"
      f" callable params -> labels; got the string {projection_groups!r}."
    )
  if ref_trust_radius is not None and not isinstance(
    ref_trust_radius, jax.core.Tracer
  ):
    if not _is_concrete_number(ref_trust_radius, bool_arrays=True):
      raise TypeError(
        "`ref_trust_radius` must be None or a float r > 0 (the bound on"
        " ‖Δ‖ relative to ‖anchor‖, e.g. 1e-3); got"
        f" {ref_trust_radius!r}."
      )
    r = float(ref_trust_radius)
    if not (np.isfinite(r) and r > 0):
      raise ValueError(
        "`ref_trust_radius` must be finite and > 0 (the bound on ‖Δ‖"
        f" relative to ‖anchor‖, e.g. 1e-3); got {r!r}."
      )
  if ref_preconditioner is None:
    return
  if ref_preconditioner != "main":
    raise ValueError(
      "`ref_preconditioner` must be None (plain SGD, Algorithm 1) or 'main'"
      " (precondition by the main optimizer's second moment); got"
      f" {ref_preconditioner!r}."
    )
  if ref_optimizer is not None:
    raise ValueError(
      "`ref_preconditioner='main'` preconditions the default SGD reference"
      " step: pass `ref_learning_rate` instead of `ref_optimizer`, or drop"
      " `ref_preconditioner`."
    )
  for name, v, ok in (
    ("ref_preconditioner_b2", b2, lambda x: 0 <= x < 1),
    ("ref_preconditioner_eps", eps, lambda x: x > 0),
  ):
    if isinstance(v, jax.core.Tracer):
      continue  # injected by optax.inject_hyperparams
    if not _is_concrete_number(v, bool_arrays=True) or not ok(float(v)):
      raise ValueError(
        f"`{name}` must be a float {'in [0, 1)' if 'b2' in name else '> 0'}"
        f" matching the main optimizer's; got {v!r}."
      )


# --------------------------------------------------------------------------
# Tree maths
# --------------------------------------------------------------------------


def _tree_acc_dtype(tree: Any) -> Any:
  """Accumulation dtype of a whole tree: float32, or float64 if a leaf is."""
  return functools.reduce(
    jnp.promote_types,
    [_acc_dtype(_dtype_of(x)) for x in jax.tree_util.tree_leaves(tree)],
    jnp.dtype(jnp.float32),
  )


def _tree_vdot(a: Any, b: Any) -> jax.Array:
  """<a, b> over all leaves, accumulated in at least float32.

  Not ``optax.tree.vdot``, which accumulates in the leaves' own dtype (a
  bfloat16 sum of a million products keeps about three digits) and reshapes
  through ``jnp.vdot`` (which arrays with explicit shardings refuse). An
  elementwise product and a sum: the cross-device reduction is a scalar
  all-reduce.
  """
  parts = []
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    dtype = jnp.promote_types(_acc_dtype(x.dtype), _acc_dtype(y.dtype))
    parts.append(jnp.sum(x.astype(dtype) * y.astype(dtype)))
  if not parts:
    return jnp.zeros((), jnp.float32)
  dtype = jnp.result_type(*parts)
  return sum((p.astype(dtype) for p in parts), jnp.zeros((), dtype))


def _tree_norm(tree: Any) -> jax.Array:
  """The global Euclidean norm, accumulated in at least float32."""
  return jnp.sqrt(_tree_vdot(tree, tree))


def _sq_norms(tree: Any) -> tuple[jax.Array, ...]:
  """``<x, x>`` of each leaf, accumulated in at least float32."""
  return tuple(_tree_vdot(x, x) for x in jax.tree_util.tree_leaves(tree))


def _finite(sq_norms: tuple[jax.Array, ...]) -> jax.Array:
  """Whether a gradient with these per-leaf squared norms is finite.

  A gradient counts as finite when its squared norm is: a NaN or an inf
  element makes it NaN or inf, and so does a norm beyond the accumulation
  dtype's range (1.8e19 in float32), a step no optimizer should take. The
  squared norms are needed anyway (``<g, g>`` for the diagnostics), so the
  check costs no pass of its own over the gradient.
  """
  if not sq_norms:
    return jnp.ones((), jnp.bool_)
  return jnp.isfinite(functools.reduce(jnp.add, sq_norms))


def _match_state_types(new: Any, old: Any) -> Any:
  """Casts ``new`` to the dtypes of ``old`` leaf by leaf.

  Keeps optimizer states type-stable across ``lax.cond`` branches, selects
  and ``lax.scan`` iterations even where an inner optimizer promotes a dtype.
  """
  new_leaves, treedef = jax.tree_util.tree_flatten(new)
  old_leaves, old_treedef = jax.tree_util.tree_flatten(old)
  if treedef != old_treedef:
    raise ValueError(
      "An inner optimizer changed the structure of its state during"
      f" `update` (from {old_treedef} to {treedef}); PROFIT needs"
      " optimizers whose state keeps one structure."
    )
  out = [
    jnp.asarray(n_leaf).astype(o_leaf.dtype)
    if hasattr(o_leaf, "dtype")
    else n_leaf
    for n_leaf, o_leaf in zip(new_leaves, old_leaves)
  ]
  return jax.tree_util.tree_unflatten(treedef, out)


# --------------------------------------------------------------------------
# The pieces of a PROFIT step, as pure functions
# --------------------------------------------------------------------------


class _Config(NamedTuple):
  """What :func:`profit` fixes when the transformation is built."""

  optimizer: optax.GradientTransformationExtraArgs
  ref_optimizer: optax.GradientTransformationExtraArgs | None
  ref_learning_rate: optax.ScalarOrSchedule | None
  n_ref: int
  delta_dtype: Any | None
  projection_groups: Any = None
  ref_trust_radius: float | None = None
  ref_preconditioner: str | None = None
  ref_preconditioner_b2: float = 0.999
  ref_preconditioner_eps: float = 1e-8


def _ref_init(cfg: _Config, params: optax.Params) -> optax.OptState:
  if cfg.ref_optimizer is None:
    return optax.EmptyState()
  return cfg.ref_optimizer.init(params)


def _is_nu_state(x: Any) -> bool:
  return isinstance(x, tuple) and "nu" in getattr(x, "_fields", ())


def _find_nu(inner_state: optax.OptState, params: optax.Params) -> Any:
  """The one state in ``inner_state`` with a ``nu`` field over ``params``.

  Raises a ``ValueError`` naming the fix when there is none, or several.
  """
  found = [
    x
    for x in jax.tree_util.tree_leaves(inner_state, is_leaf=_is_nu_state)
    if _is_nu_state(x)
    and jax.tree_util.tree_structure(x.nu)
    == jax.tree_util.tree_structure(params)
  ]
  if len(found) != 1:
    raise ValueError(
      "`ref_preconditioner='main'` reads the main optimizer's second-moment"
      " estimate `nu` (a state such as optax.ScaleByAdamState with one `nu`"
      " leaf per parameter), but the state of `optimizer` holds"
      f" {len(found) or 'no'} such estimate{'s' if len(found) > 1 else ''}."
      " Use an Adam-like main optimizer (optax.adam, optax.adamw, a chain"
      " with one of them), or `ref_preconditioner=None`."
    )
  return found[0]


def _second_moment(cfg: _Config, state: ProfitState, params: Any) -> Any:
  """``ν̂``, the main optimizer's bias-corrected second moment, per leaf.

  In the accumulation dtype. The bias correction ``1 - b2**count`` applies
  when the state holding ``nu`` has a ``count`` (Adam); at ``count == 0``
  ``nu`` is returned as it is (zero).
  """
  node = _find_nu(state.inner_state, params)
  acc = _tree_acc_dtype(params)
  corr = jnp.ones((), acc)
  if "count" in node._fields:
    b2 = jnp.asarray(cfg.ref_preconditioner_b2, acc)
    corr = jnp.where(node.count > 0, 1 - b2 ** node.count.astype(acc), corr)
  return jax.tree.map(lambda n: n.astype(acc) / corr, node.nu)


def _sgd_update(
  cfg: _Config, grads: Any, lr: Any, nu_hat: Any, finite: jax.Array
) -> Any:
  """``-lr g``, or ``-lr g / (sqrt(ν̂) + eps)`` when preconditioned.

  Where ``ν̂`` is zero (before the main optimizer's first step) ``g²``
  stands in for it. Zero where ``finite`` is False (a select).
  """

  def one(g, n):
    g32 = g.astype(_acc_dtype(g.dtype))
    if n is not None:
      n = n.astype(g32.dtype)
      v = jnp.where(n > 0, n, g32 * g32)
      g32 = g32 / (jnp.sqrt(v) + cfg.ref_preconditioner_eps)
    return jnp.where(finite, -lr * g32, 0.0).astype(g.dtype)

  if nu_hat is None:
    return jax.tree.map(lambda g: one(g, None), grads)
  return jax.tree.map(one, grads, nu_hat)


def _within_radius(delta: Any, updates: Any, radius: jax.Array) -> Any:
  """``updates`` scaled by the largest ``s`` in ``[0, 1]`` such that
  ``‖Δ + s u‖ <= radius`` (global norms; ``Δ`` is inside the ball).

  ``s`` is the root of ``a s² + 2 b s + c = 0`` (``a = ‖u‖²``,
  ``b = <Δ, u>``, ``c = ‖Δ‖² - radius² <= 0``), in the form that avoids
  cancellation for either sign of ``b``.
  """
  a = _tree_vdot(updates, updates)
  b = _tree_vdot(delta, updates)
  dd = _tree_vdot(delta, delta)
  r2 = jnp.square(radius.astype(a.dtype))
  outside = dd + 2 * b + a > r2
  c = jnp.minimum(dd - r2, 0)
  disc = jnp.sqrt(jnp.maximum(b * b - a * c, 0))
  num = jnp.where(b >= 0, -c, disc - b)
  den = jnp.where(b >= 0, b + disc, a)
  s = jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)
  s = jnp.where(outside, jnp.clip(s, 0, 1), 1)
  return jax.tree.map(
    lambda u: (
      s.astype(_acc_dtype(u.dtype)) * u.astype(_acc_dtype(u.dtype))
    ).astype(u.dtype),
    updates,
  )


def _reference_step(
  cfg: _Config,
  grads: optax.Updates,
  ref_state: optax.OptState,
  params: optax.Params,
  state: ProfitState,
  delta: Any,
  radius: jax.Array | None,
  finite: jax.Array,
  extra_args: dict[str, Any],
) -> tuple[optax.Updates, optax.OptState]:
  """One step of the reference optimizer, held where ``finite`` is False.

  Returns the update (in each parameter's dtype) and the new reference
  state. A select, not a ``lax.cond``: the default SGD step is one fused
  elementwise pass, and ``jnp.where`` never lets a NaN of the unchosen side
  through. ``state`` gives the step count (for the rate's schedule) and the
  main optimizer's state (for ``ref_preconditioner``). With a trust radius,
  ``delta`` is the cycle's ``Δ`` so far and ``radius`` the bound on
  ``‖Δ‖``; the update is scaled to keep ``Δ`` inside it.
  """
  if cfg.ref_optimizer is None:
    lr = cfg.ref_learning_rate
    lr = lr(state.step) if callable(lr) else lr
    nu_hat = None
    if cfg.ref_preconditioner is not None:
      nu_hat = _second_moment(cfg, state, params)
    updates = _sgd_update(cfg, grads, lr, nu_hat, finite)
  else:
    updates, new_state = cfg.ref_optimizer.update(
      grads, ref_state, params, **extra_args
    )
    updates = jax.tree.map(
      lambda u, p: jnp.where(finite, u, 0.0).astype(p.dtype), updates, params
    )
    ref_state = optax.tree.where(
      finite, _match_state_types(new_state, ref_state), ref_state
    )
  if radius is not None:
    updates = _within_radius(delta, updates, radius)
  return updates, ref_state


def _group_ids(groups: Any, tree: Any) -> tuple[Any, Any] | None:
  """The static grouping of ``tree``'s leaves for ``projection_groups``.

  Returns ``None`` for one global group, else ``(leaf_group, members)``: the
  group index of each leaf, and the leaf indices of each group (in order of
  first appearance). Raises a ``ValueError`` naming ``projection_groups``
  for labels that do not fit ``tree``, or are not hashable.
  """
  leaves = jax.tree_util.tree_leaves(tree)
  if groups is None or not leaves:
    return None
  if isinstance(groups, str):  # "leaf", checked by profit()
    return tuple(range(len(leaves))), tuple((i,) for i in range(len(leaves)))
  labels = groups(tree) if callable(groups) else groups
  label_def = jax.tree_util.tree_structure(labels)
  try:
    subtrees = label_def.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
      "`projection_groups` must give one label per parameter leaf: a pytree"
      " with the structure of the parameters (or a prefix of it), or a"
      " callable params -> such a pytree, as optax.multi_transform's"
      f" `param_labels`. Got labels {label_def} for parameters"
      f" {jax.tree_util.tree_structure(tree)}. Build the labels with"
      " jax.tree.map over the parameters."
    ) from e
  leaf_labels = [
    label
    for label, sub in zip(jax.tree_util.tree_leaves(labels), subtrees)
    for _ in jax.tree_util.tree_leaves(sub)
  ]
  index: dict[Any, int] = {}
  for x in leaf_labels:
    try:
      index.setdefault(x, len(index))
    except TypeError as e:
      raise ValueError(
        "`projection_groups` labels must be hashable (strings or ints, as"
        " in optax.multi_transform's `param_labels`); got a label of type"
        f" {type(x).__name__}. Use e.g. each layer's name as its label."
      ) from e
  leaf_group = tuple(index[x] for x in leaf_labels)
  members: list[list[int]] = [[] for _ in index]
  for i, k in enumerate(leaf_group):
    members[k].append(i)
  return leaf_group, tuple(tuple(m) for m in members)


def _group_vdot(a: Any, b: Any, members: Any) -> jax.Array:
  """``<a, b>`` per group of leaves, in at least float32: one entry a group.

  ``members is None`` is one global group (:func:`_tree_vdot`).
  """
  if members is None:
    return _tree_vdot(a, b)[None]
  return _group_sum(
    [
      _tree_vdot(x, y)
      for x, y in zip(
        jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
      )
    ],
    members,
  )


def _group_sum(parts: Any, members: Any) -> jax.Array:
  """Per-leaf scalars summed per group (one global group when ``members``
  is None): one entry a group."""
  if members is None:
    return functools.reduce(jnp.add, parts, jnp.zeros((), jnp.float32))[None]
  dtype = jnp.result_type(*parts)
  zero = jnp.zeros((), dtype)
  return jnp.stack(
    [sum((parts[i].astype(dtype) for i in m), zero) for m in members]
  )


def _project(
  cfg: _Config, grads: optax.Updates, delta: Any, sq_norms: Any
) -> tuple[optax.Updates, ProfitDiagnostics]:
  """Step 3 of Algorithm 1: ``ω``, and the projection of ``g`` when ``ω < 0``.

  Returns the (possibly projected) gradient and the diagnostics.
  ``sq_norms`` are ``g``'s per-leaf squared norms (:func:`_sq_norms`),
  already computed for the finiteness check. ``ω`` and ``<Δ, Δ>`` are the
  one pass over ``Δ`` and ``g`` that must end before the projection starts;
  the projection is a select, fused into the main optimizer's pass. With
  ``projection_groups`` the three are vectors with one entry per group, and
  each leaf is projected with its group's coefficient; the diagnostics stay
  global (``omega`` is the sum over the groups, ``projected`` whether any
  group was).
  """
  groups = _group_ids(cfg.projection_groups, grads)
  g_leaves, treedef = jax.tree_util.tree_flatten(grads)
  d_leaves = jax.tree_util.tree_leaves(delta)
  leaf_group, members = groups or ((0,) * len(g_leaves), None)
  omega = _group_vdot(delta, grads, members)
  dd = _group_vdot(delta, delta, members)
  gg = _group_sum(sq_norms, members)
  projected = jnp.logical_and(omega < 0, dd > 0)
  coef = jnp.where(projected, omega / jnp.where(projected, dd, 1.0), 0.0)
  out = [
    jnp.where(
      projected[k],
      g.astype(coef.dtype) - coef[k] * d.astype(coef.dtype),
      g.astype(coef.dtype),
    ).astype(g.dtype)
    for g, d, k in zip(g_leaves, d_leaves, leaf_group)
  ]
  grads = jax.tree_util.tree_unflatten(treedef, out)
  omega, dd, gg = omega.sum(), dd.sum(), gg.sum()
  denom = jnp.sqrt(dd) * jnp.sqrt(gg)
  cos = jnp.where(denom > 0, omega / jnp.where(denom > 0, denom, 1.0), 0.0)
  dtype = jnp.result_type(omega, dd, gg)
  diagnostics = ProfitDiagnostics(
    omega=omega.astype(dtype),
    cos=cos.astype(dtype),
    projected=jnp.any(projected),
    delta_norm=jnp.sqrt(dd).astype(dtype),
  )
  return grads, diagnostics


def _main_step(
  cfg: _Config,
  grads: optax.Updates,
  sq_norms: Any,
  delta: Any,
  state: ProfitState,
  anchor: optax.Params,
  ok: jax.Array | None,
  extra_args: dict[str, Any],
) -> tuple[optax.Updates, ProfitState]:
  """Steps 3-4: projection, then the main optimizer's step from the anchor.

  Returns the main update (relative to ``anchor``) and the state at the cycle
  boundary. ``sq_norms`` as in :func:`_project`. ``ok`` is whether every
  gradient of the cycle was finite: ``None`` when the caller already knows
  it is (the per-call drive decides it before its ``lax.cond``); otherwise a
  traced bool, and a step that is not ok returns a zero update and keeps the
  main optimizer's state, by selects (no data-dependent conditional on this
  path).
  """
  grads, diagnostics = _project(cfg, grads, delta, sq_norms)
  updates, inner_state = cfg.optimizer.update(
    grads, state.inner_state, anchor, **extra_args
  )
  updates = optax.tree.cast_like(updates, anchor)
  inner_state = _match_state_types(inner_state, state.inner_state)
  if ok is None:
    return updates, _end_cycle(cfg, state, anchor, inner_state, diagnostics)
  updates = jax.tree.map(lambda u: jnp.where(ok, u, 0).astype(u.dtype), updates)
  taken = _end_cycle(cfg, state, anchor, inner_state, diagnostics)
  skipped = _end_cycle(cfg, state, anchor)
  return updates, optax.tree.where(ok, taken, skipped)


def _end_cycle(
  cfg: _Config,
  state: ProfitState,
  anchor: optax.Params,
  inner_state: optax.OptState | None = None,
  diagnostics: ProfitDiagnostics | None = None,
) -> ProfitState:
  """The state at a cycle boundary: after a step taken with ``inner_state``
  and ``diagnostics``, or, when they are ``None``, after a skipped step."""
  taken = inner_state is not None
  return state._replace(
    count=jnp.zeros_like(state.count),
    step=optax.safe_increment(state.step) if taken else state.step,
    ref_state=_match_state_types(_ref_init(cfg, anchor), state.ref_state),
    inner_state=inner_state if taken else state.inner_state,
    diagnostics=diagnostics if taken else state.diagnostics,
    finite=jnp.ones((), jnp.bool_),
    skipped=state.skipped if taken else optax.safe_increment(state.skipped),
  )


def _reference_call(
  cfg: _Config,
  extra_args: dict[str, Any],
  grads_finite: jax.Array,
  grads: optax.Updates,
  state: ProfitState,
  params: optax.Params,
) -> tuple[optax.Updates, ProfitState]:
  """A reference call of the per-call drive (calls ``1..n_ref`` of a cycle).

  Returns the reference update and the state with ``Δ`` not yet moved:
  :func:`_accumulate` adds the update to ``Δ`` outside any conditional, so
  that XLA writes ``Δ`` in place. ``grads_finite`` says whether every
  element of ``grads`` is finite.
  """
  first = state.count == 0
  finite = jnp.logical_and(jnp.logical_or(first, state.finite), grads_finite)
  delta, radius = None, None
  if cfg.ref_trust_radius is not None:
    # Δ so far (zero on a cycle's first call) and the radius around the
    # anchor ``params - Δ``.
    delta = jax.tree.map(
      lambda d: jnp.where(first, jnp.zeros_like(d), d), state.delta
    )
    radius = cfg.ref_trust_radius * _tree_norm(_anchor_of(params, delta))
  updates, ref_state = _reference_step(
    cfg,
    grads,
    state.ref_state,
    params,
    state,
    delta,
    radius,
    finite,
    extra_args,
  )
  new_state = state._replace(
    count=state.count + 1, ref_state=ref_state, finite=finite
  )
  return updates, new_state


def _accumulate(
  cfg: _Config, delta: Any, updates: optax.Updates, count: jax.Array
) -> Any:
  """``Δ`` after a call at ``count``: on a reference call, ``Δ + updates``
  (``updates`` alone on the first call of a cycle); else ``Δ`` unchanged.

  ``Δ`` accumulates the updates exactly as returned (what
  ``optax.apply_updates`` adds), in its own dtype: it is the exact sum of
  the reference steps, not the difference of two rounded parameter vectors.
  """
  add, start = count < cfg.n_ref, count == 0
  return jax.tree.map(
    lambda d, u: jnp.where(
      add, jnp.where(start, jnp.zeros_like(d), d) + u.astype(d.dtype), d
    ),
    delta,
    updates,
  )


def _anchor_of(params: optax.Params, delta: Any) -> optax.Params:
  """``params - Δ``, in at least float32, in each parameter's dtype."""
  return jax.tree.map(
    lambda p, d: (
      p.astype(_acc_dtype(p.dtype)) - d.astype(_acc_dtype(p.dtype))
    ).astype(p.dtype),
    params,
    delta,
  )


def _relative_to(
  updates: optax.Updates, delta: Any, params: optax.Params
) -> optax.Updates:
  """``updates - Δ``: an update from the anchor, as one from ``params``."""
  return jax.tree.map(
    lambda u, d, p: (
      u.astype(_acc_dtype(p.dtype)) - d.astype(_acc_dtype(p.dtype))
    ).astype(p.dtype),
    updates,
    delta,
    params,
  )


def _main_call(
  cfg: _Config,
  extra_args: dict[str, Any],
  ok: jax.Array | None,
  grads: optax.Updates,
  sq_norms: Any,
  state: ProfitState,
  params: optax.Params,
) -> tuple[optax.Updates, ProfitState]:
  """The main call of the per-call drive (call ``n_ref + 1`` of a cycle).

  Reads ``Δ`` from the state: the anchor is ``params - Δ`` and the returned
  update is ``O(g) - Δ``, so that ``optax.apply_updates`` lands on
  ``anchor + O(g)`` (or back on the anchor when the step is skipped). ``ok``
  as in :func:`_main_step`, ``sq_norms`` as in :func:`_project`.
  """
  anchor = _anchor_of(params, state.delta)
  updates, new_state = _main_step(
    cfg, grads, sq_norms, state.delta, state, anchor, ok, extra_args
  )
  return _relative_to(updates, state.delta, params), new_state


def _reference_or_skip(
  cfg: _Config,
  extra_args: dict[str, Any],
  grads_finite: jax.Array,
  grads: optax.Updates,
  sq_norms: Any,
  state: ProfitState,
  params: optax.Params,
) -> tuple[optax.Updates, ProfitState]:
  """A reference call, or a main call whose cycle saw a non-finite gradient.

  The latter returns to the anchor (the update is ``-Δ``) and leaves the
  main optimizer untouched. Selects between the two: both are cheap
  elementwise work, and neither steps the main optimizer. ``Δ`` is left for
  :func:`_accumulate`. ``sq_norms`` (the main call's operand) is not used.
  """
  del sq_norms
  skip = state.count >= cfg.n_ref
  updates, new_state = _reference_call(
    cfg, extra_args, grads_finite, grads, state, params
  )
  back = jax.tree.map(
    lambda d, p: (-d.astype(_acc_dtype(p.dtype))).astype(p.dtype),
    state.delta,
    params,
  )
  updates = optax.tree.where(skip, back, updates)
  new_state = optax.tree.where(skip, _end_cycle(cfg, state, params), new_state)
  return updates, new_state


def _whole_step(
  cfg: _Config,
  extra_args: dict[str, Any],
  grad_fn: _GradFn,
  grads: optax.Updates,
  state: ProfitState,
  params: optax.Params,
) -> tuple[optax.Updates, ProfitState]:
  """A whole PROFIT step in one call (``opaque_mode=True``).

  ``params`` is the anchor: ``n_ref`` reference steps written out one
  after the other (no loop in the program: ``grad_fn``'s model compiles as
  in a hand-written step; on XLA:CPU a convolution's gradient inside a loop
  body, even one of a single iteration, runs a slower kernel), ``grad_fn``
  giving each new gradient at the displaced point, then the main
  step, whose update is returned as it is (relative to ``params``). ``Δ``
  is the sum of the reference updates, as in the per-call drive.
  """
  radius = None
  if cfg.ref_trust_radius is not None:
    radius = cfg.ref_trust_radius * _tree_norm(params)
  theta, ref_state = params, _ref_init(cfg, params)
  delta = jax.tree.map(
    lambda p: jnp.zeros(p.shape, cfg.delta_dtype or p.dtype), params
  )
  g = optax.tree.cast_like(grads, params)
  finite = jnp.ones((), jnp.bool_)
  for i in range(cfg.n_ref):
    finite = jnp.logical_and(finite, _finite(_sq_norms(g)))
    u, ref_state = _reference_step(
      cfg, g, ref_state, theta, state, delta, radius, finite, extra_args
    )
    theta = optax.apply_updates(theta, u)
    delta = jax.tree.map(lambda d, ui: d + ui.astype(d.dtype), delta, u)
    g = grad_fn(theta, jnp.asarray(i, jnp.int32))
    _check_same_tree("grad_fn(params, i)", g, params)
    g = optax.tree.cast_like(g, params)
  sq_norms = _sq_norms(g)
  ok = jnp.logical_and(finite, _finite(sq_norms))
  return _main_step(cfg, g, sq_norms, delta, state, params, ok, extra_args)


# --------------------------------------------------------------------------
# The transformation
# --------------------------------------------------------------------------

_GradFn = Callable[[optax.Params, jax.Array], optax.Updates]
_PHASES = ("reference", "main")


def profit(
  optimizer: optax.GradientTransformation,
  ref_learning_rate: optax.ScalarOrSchedule | None,
  n_ref: int = 1,
  *,
  ref_optimizer: optax.GradientTransformation | None = None,
  opaque_mode: bool = False,
  delta_dtype: Any | None = None,
  anchor_dtype: Any | None = None,
  projection_groups: Any = None,
  ref_trust_radius: float | None = None,
  ref_preconditioner: str | None = None,
  ref_preconditioner_b2: float = 0.999,
  ref_preconditioner_eps: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
  r"""PROFIT: proximal fine-tuning around a main optimizer.

  Each PROFIT step anchors the parameters :math:`\theta_a`, takes ``n_ref``
  steps of the reference optimizer (plain SGD with ``ref_learning_rate`` by
  default), whose updates sum to the displacement :math:`\Delta`, takes the
  gradient :math:`g` of a new batch at the displaced point
  :math:`\theta_a + \Delta`, and, when
  :math:`\omega = \langle \Delta, g \rangle < 0`, projects :math:`g` onto the
  hyperplane orthogonal to :math:`\Delta`:

  .. math::
    g \leftarrow g - \frac{\langle g, \Delta\rangle}{\langle \Delta, \Delta
    \rangle} \Delta .

  The main optimizer then steps from the anchor:
  :math:`\theta \leftarrow \theta_a + O(g; \theta_a)`.

  The drive is fixed here, when the transformation is built.

  *One gradient per call* (``opaque_mode=False``, the default). ``n_ref + 1``
  consecutive calls of ``update`` make one PROFIT step, each with the
  gradient of a new batch at the current parameters. Calls ``1..n_ref`` are
  reference calls: they return the reference optimizer's update and add it
  to ``Δ``, kept in the state (the first call of a cycle starts it at zero).
  Call ``n_ref + 1`` is the main call: the anchor is ``params - Δ`` and the
  update returned is ``O(g) - Δ``, so that ``optax.apply_updates`` lands on
  ``anchor + O(g)``. A ``lax.cond`` on the state's count reads the phase, so
  the main optimizer does no work on reference calls; its state and
  schedules advance once per PROFIT step; the reference optimizer's state
  restarts every cycle. A loop that knows the phase in Python (as
  :func:`profit_step` does) passes ``profit_phase="reference"`` or
  ``"main"`` to ``update``: the phase is then static, with no conditional
  at all, which also keeps the main optimizer off the reference calls of a
  sweep under ``jax.vmap`` (where a ``lax.cond`` on a batched count would
  run both branches). The caller must then give the phases in cycle order.

  *Whole step in one call* (``opaque_mode=True``), as in
  ``optax.contrib.sam``'s opaque mode. ``update(grads, state, params,
  grad_fn=fn)`` runs a complete PROFIT step: ``grads`` (the gradient at
  ``params``) drives the first reference step and ``fn(params, i)``, for
  ``i = 0..n_ref-1``, returns the gradient of the ``(i+1)``-th batch of the
  step at the given parameters (``i`` is an int32 scalar array: index
  stacked batches with it). The returned update is ``O(g)`` relative to
  ``params``, and the state holds no copy of the parameters. Transformations
  chained *before* PROFIT see only ``grads``, not the gradients ``fn``
  returns: put clipping and similar preprocessing inside ``optimizer``.

  Non-finite gradients: a reference call whose gradient has a NaN or an inf
  (or a squared norm beyond the accumulation dtype's range, about 1.8e19 in
  float32: the check reads ``<g, g>``, which the diagnostics need anyway)
  does not move the parameters, and the main call of such a cycle (or a main
  call with a non-finite gradient) returns the parameters to the anchor
  without changing the main optimizer's state; ``state.skipped`` counts
  these steps, and the next cycle starts cleanly. Inside
  ``optax.apply_if_finite`` a non-finite call is instead dropped altogether
  and the cycle continues with the next call.

  Numerics: ``Δ`` is the exact sum of the reference updates, not the
  difference of two rounded parameter vectors, so it keeps its precision
  however small the reference steps are next to the parameters (see the
  project's rounding benchmark). The inner products are accumulated in at
  least float32, a zero displacement never produces NaN (the projection
  needs ``ω < 0``, which a zero ``Δ`` cannot give), and updates keep each
  parameter leaf's dtype.

  Control flow: where the phase is read from the state, one ``lax.cond``
  decides whether this call steps the main optimizer (a main call whose
  cycle was finite) or not (a reference call, or the return to the anchor
  after a non-finite gradient). Everything else (the projection, the
  non-finite hold and skip, the accumulation of ``Δ``) is an element-wise
  select (``jnp.where``), fused by XLA into passes that are needed anyway and
  never letting the unchosen side's values (an inf, a NaN) through. With a
  static ``profit_phase``, and in opaque mode, there is no conditional at
  all: nothing waits on the device to decide. The per-call drive's return to
  the anchor costs one rounding more than the whole-step drive's:
  ``params - Δ`` is computed, not stored.

  PROFIT is meant for fine-tuning a converged model on a nearby distribution
  with stochastic mini-batches. Where the new gradient is exactly parallel to
  the displacement (a deterministic isotropic quadratic, full-batch
  gradients), the projection removes it entirely and the step returns to the
  anchor: this is the stable point of the paper's Sec. 3.3, not a bug.

  Args:
    optimizer: the main optimizer ``O``, any optax transformation (it may be
      a chain, e.g. with gradient clipping or weight decay; weight decay then
      acts on the anchor, which is the ``params`` the main optimizer sees).
    ref_learning_rate: learning rate of the default reference optimizer, plain
      SGD; a non-negative float or an optax schedule evaluated at the number
      of completed PROFIT steps. The paper recommends a value between
      ``lr_main / 10`` and ``lr_main / 10000``. Must be ``None`` when
      ``ref_optimizer`` is given.
    n_ref: the number of reference steps per PROFIT step, a static int >= 1
      (the paper uses 1). Not injectable with ``optax.inject_hyperparams``:
      list it in ``static_args``.
    ref_optimizer: replaces the default reference optimizer
      ``optax.sgd(ref_learning_rate)``. Its state restarts every PROFIT step,
      so a schedule inside it sees only the step's ``0..n_ref-1`` counts.
    opaque_mode: ``False`` (default) for one gradient per ``update`` call;
      ``True`` for a whole PROFIT step per call, with ``grad_fn``.
    delta_dtype: dtype in which ``Δ`` is kept (default: each parameter's own
      dtype). ``jnp.float32`` for bfloat16 parameters keeps small reference
      steps exact at twice the memory.
    anchor_dtype: deprecated alias of ``delta_dtype`` (the state keeps ``Δ``,
      not the anchor, since version 0.2).
    projection_groups: ``None`` (default) for one global ``ω`` and projection
      (Algorithm 1); ``"leaf"`` for one per parameter leaf; or labels that
      group the leaves, as ``optax.multi_transform``'s ``param_labels``: a
      pytree of hashable labels with the structure of the parameters (or a
      prefix of it), or a callable ``params -> labels``. Each group's
      gradient is projected with its own ``ω_k = <Δ_k, g_k>``. The
      diagnostics stay global: ``omega`` is the sum of the ``ω_k`` (the
      global ``ω``), ``cos`` and ``delta_norm`` are global, and ``projected``
      is whether any group was projected.
    ref_trust_radius: ``None`` (default), or ``r > 0``: each reference update
      ``u`` is scaled by the largest ``s ≤ 1`` that keeps the cycle's
      displacement within ``‖Δ + s u‖ ≤ r ‖θ_a‖`` (global norms, relative to
      the anchor's norm, so ``r`` is dimensionless; an anchor at zero does
      not move). The update returned, and summed into ``Δ``, is the scaled
      one.
    ref_preconditioner: ``None`` (default, plain SGD) or ``"main"``: the
      reference step is ``-ref_learning_rate * g / (sqrt(ν̂) + eps)``, with
      ``ν̂ = ν / (1 - b2**count)`` the bias-corrected second moment of the
      main optimizer's state (the one state with a ``nu`` field, e.g.
      ``optax.ScaleByAdamState``; ``ν`` as it is when that state has no
      ``count``, as RMSProp's). ``ref_learning_rate`` is then a step size
      per coordinate, like the main Adam's rate. Where ``ν̂`` is zero (before
      the main optimizer's first step) ``g²`` stands in for it, so that the
      first reference step is about ``-ref_learning_rate * sign(g)``, as
      Adam's first step. Only with the default reference optimizer.
    ref_preconditioner_b2: the main optimizer's ``b2``, for the bias
      correction of ``ν`` (``optax.adam``'s default 0.999); in ``[0, 1)``.
    ref_preconditioner_eps: the ``eps`` added to ``sqrt(ν̂)`` (> 0).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` whose state is a
    :class:`ProfitState`. ``update`` takes ``grad_fn`` (opaque mode only)
    and ``profit_phase`` (per-call mode only); its other keyword arguments
    are forwarded to the main and the reference optimizers, which ignore
    those they do not know.

  Raises:
    TypeError: if ``optimizer`` or ``ref_optimizer`` is not a transformation,
      ``n_ref`` is not an int, ``ref_learning_rate`` is not a number or a
      schedule, a dtype is not a floating dtype, or ``ref_trust_radius`` is
      not a number.
    ValueError: if ``n_ref < 1``, a rate is negative or not finite,
      neither/both of ``ref_learning_rate`` and ``ref_optimizer`` are given,
      ``ref_trust_radius <= 0``, ``ref_preconditioner`` is not ``"main"``
      or comes with ``ref_optimizer``, or ``projection_groups`` is a string
      other than ``"leaf"``. At ``init``: if the labels of
      ``projection_groups`` do not fit the parameters or are not hashable,
      or ``ref_preconditioner="main"`` finds no ``nu`` in the main
      optimizer's state.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, profit_optax
    >>> tx = profit_optax.profit(optax.sgd(0.1), ref_learning_rate=0.01)
    >>> params = {'w': jnp.array([1.0, -2.0])}
    >>> state = tx.init(params)
    >>> loss = lambda p, x: jnp.sum((p['w'] - x) ** 2)
    >>> update = jax.jit(tx.update)
    >>> keys = jax.random.split(jax.random.PRNGKey(0), 400)
    >>> for key in keys:  # 200 PROFIT steps of two calls each
    ...   x = jnp.array([0.5, -0.5]) + jax.random.normal(key, (2,))  # a batch
    ...   updates, state = update(jax.grad(loss)(params, x), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(int(state.step), params['w'].round(1))
    200 [ 1.  -1.4]

    The whole step in one call: ``grad_fn(params, i)`` gives the gradient of
    the ``(i + 1)``-th batch of the step.

    >>> tx = profit_optax.profit(optax.sgd(0.1), 0.01, opaque_mode=True)
    >>> state = tx.init(params)
    >>> xs = jnp.array([[0.5, -0.5], [0.6, -0.4]])  # n_ref + 1 batches
    >>> g = lambda p, i: jax.grad(loss)(p, xs[i + 1])
    >>> updates, state = tx.update(g(params, -1), state, params, grad_fn=g)
    >>> int(state.step), state.delta
    (1, EmptyState())

    Per-layer projection, and a reference step kept stable where the new
    task's curvature is high: preconditioned by the main Adam's second
    moment and kept within 0.1 % of the anchor's norm.

    >>> tx = profit_optax.profit(
    ...     optax.adam(1e-3), ref_learning_rate=1e-4,
    ...     projection_groups='leaf', ref_trust_radius=1e-3,
    ...     ref_preconditioner='main')
    >>> params = {'w': jnp.ones((2, 2)), 'b': jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.full((2, 2), 50.0), 'b': jnp.ones(2)}
    >>> updates, state = tx.update(grads, state, params)  # a reference call
    >>> print(updates['w'][0], updates['b'])  # -1e-4 * sign(g)
    [-1.e-04 -1.e-04] [-1.e-04 -1.e-04]

  References:
    Chakravarthy et al., `PROFIT: A Specialized Optimizer for Deep Fine
    Tuning <https://arxiv.org/abs/2412.01930>`_, 2024
  """
  _check_transformation("optimizer", optimizer)
  optimizer = optax.with_extra_args_support(optimizer)
  n_ref = _check_n_ref(n_ref)
  if not isinstance(opaque_mode, (bool, np.bool_)):
    raise TypeError(
      f"`opaque_mode` must be True or False (a whole PROFIT step per call,"
      f" or one gradient per call); got {opaque_mode!r}."
    )
  if anchor_dtype is not None:
    if delta_dtype is not None:
      raise ValueError(
        "Pass `delta_dtype` only: `anchor_dtype` is its deprecated alias."
      )
    warnings.warn(
      "`anchor_dtype` is deprecated: PROFIT keeps the reference displacement"
      " Δ, not the anchor; pass `delta_dtype` instead.",
      DeprecationWarning,
      stacklevel=2,
    )
    delta_dtype = _check_dtype("anchor_dtype", anchor_dtype)
  elif delta_dtype is not None:
    delta_dtype = _check_dtype("delta_dtype", delta_dtype)
  if ref_optimizer is None:
    if ref_learning_rate is None:
      raise TypeError(
        "`ref_learning_rate` is required (there is no default): pass a"
        " float such as lr_main / 10 (the paper's range is lr_main/10 to"
        " lr_main/10000), an optax schedule, or pass `ref_optimizer=`."
      )
    _check_rate("ref_learning_rate", ref_learning_rate)
  else:
    _check_transformation("ref_optimizer", ref_optimizer)
    ref_optimizer = optax.with_extra_args_support(ref_optimizer)
    if ref_learning_rate is not None:
      raise ValueError(
        "Pass either `ref_learning_rate` (for the default SGD reference"
        " optimizer) or `ref_optimizer`, not both: set"
        " `ref_learning_rate=None` when giving `ref_optimizer`, and put the"
        " rate inside it."
      )
  _check_options(
    projection_groups,
    ref_trust_radius,
    ref_preconditioner,
    ref_preconditioner_b2,
    ref_preconditioner_eps,
    ref_optimizer,
  )
  cfg = _Config(
    optimizer,
    ref_optimizer,
    ref_learning_rate,
    n_ref,
    delta_dtype,
    projection_groups,
    # As given: numbers, or tracers injected by optax.inject_hyperparams.
    ref_trust_radius,
    ref_preconditioner,
    ref_preconditioner_b2,
    ref_preconditioner_eps,
  )

  def init_fn(params):
    _check_params(params)
    _check_float_params(params, "PROFIT", verb="moves", dtype_of=_dtype_of)
    if opaque_mode:
      delta = optax.EmptyState()
    else:
      # Meaningful only while count > 0. A zero array built from each
      # parameter keeps its sharding under jit; abstract parameters
      # (jax.ShapeDtypeStruct) get an abstract Δ of the same kind.
      delta = jax.tree.map(
        lambda p: _zeros_like_sharded(p, delta_dtype or p.dtype), params
      )
    inner_state = optimizer.init(params)
    _group_ids(projection_groups, params)  # raises for labels that misfit
    if ref_preconditioner is not None:
      _find_nu(inner_state, params)  # raises if there is no `nu`
    return ProfitState(
      count=jnp.zeros((), jnp.int32),
      step=jnp.zeros((), jnp.int32),
      delta=delta,
      ref_state=_ref_init(cfg, params),
      inner_state=inner_state,
      diagnostics=_zero_diagnostics(_tree_acc_dtype(params)),
      finite=jnp.ones((), jnp.bool_),
      skipped=jnp.zeros((), jnp.int32),
      n_ref=_Static(n_ref),
    )

  def update_fn(
    updates: optax.Updates,
    state: ProfitState,
    params: optax.Params | None = None,
    *,
    grad_fn: _GradFn | None = None,
    profit_phase: str | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, ProfitState]:
    _check_params(params)
    _check_state(state, ProfitState)
    _check_same_tree("updates", updates, params)
    if opaque_mode:
      if grad_fn is None:
        raise TypeError(
          "This PROFIT transformation was built with `opaque_mode=True`: each"
          " `update` runs a whole PROFIT step and needs"
          " `grad_fn=lambda params, i: ...` (the gradient of the (i+1)-th"
          " batch of the step). Build it with `opaque_mode=False` for one"
          " gradient per call."
        )
      if not callable(grad_fn):
        raise TypeError(
          "`grad_fn` must be a callable (params, i) -> gradients; got"
          f" {grad_fn!r}."
        )
      return _whole_step(cfg, extra_args, grad_fn, updates, state, params)
    if grad_fn is not None:
      raise TypeError(
        "`grad_fn` runs a whole PROFIT step per call, which this"
        " transformation was not built for: build it with"
        " `profit_optax.profit(..., opaque_mode=True)`, or drop `grad_fn`"
        " and pass one gradient per call."
      )
    if isinstance(state.delta, optax.EmptyState):
      raise TypeError(
        "`state` was initialised by a PROFIT transformation built with"
        " `opaque_mode=True`; initialise it with this transformation's"
        " `init`."
      )
    # extra_args may hold values that are not arrays: the branches close
    # over them and the configuration; the arrays are the cond's operands.
    sq_norms = _sq_norms(updates)
    grads_finite = _finite(sq_norms)
    if profit_phase is None:
      # Two branches: the main optimizer's step, and everything else (a
      # reference call, or the main call of a cycle that saw a non-finite
      # gradient), which passes the main optimizer's state through. A
      # ``lax.cond`` whose branches pass a buffer through, or update it, lets
      # XLA write it in place; a three-way switch, a select of old and new
      # moments, or a branch that moves Δ each cost a parameter-sized copy.
      step = jnp.logical_and(
        state.count >= n_ref, jnp.logical_and(state.finite, grads_finite)
      )
      out, new_state = jax.lax.cond(
        step,
        functools.partial(_main_call, cfg, extra_args, None),
        functools.partial(_reference_or_skip, cfg, extra_args, grads_finite),
        updates,
        sq_norms,
        state,
        params,
      )
    elif profit_phase == "reference":
      out, new_state = _reference_call(
        cfg, extra_args, grads_finite, updates, state, params
      )
    elif profit_phase == "main":
      ok = jnp.logical_and(state.finite, grads_finite)
      return _main_call(cfg, extra_args, ok, updates, sq_norms, state, params)
    else:
      raise ValueError(
        f"`profit_phase` must be None (read the phase from the state),"
        f" 'reference' or 'main'; got {profit_phase!r}."
      )
    delta = _accumulate(cfg, state.delta, out, state.count)
    return out, new_state._replace(delta=delta)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
