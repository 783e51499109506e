"""PROFIT as an optax gradient transformation.

PROFIT (Chakravarthy et al., arXiv 2412.01930, Algorithm 1) wraps a main
optimizer ``O`` and a reference optimizer ``O_ref``. One PROFIT step:

1. remember the current parameters as the anchor;
2. take ``n_ref`` steps of ``O_ref``, each on a new batch;
3. ``Δ = θ - anchor``; ``g`` is the gradient of a new batch at the displaced θ;
4. if ``ω = <Δ, g> < 0``, remove from ``g`` its component along ``Δ``;
5. restore θ to the anchor and let ``O`` take one step from there with ``g``.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

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
  or from the ``metrics`` of :func:`profit_step`.

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
    anchor: the parameters at the start of the current cycle (same tree,
      shapes and dtypes as the parameters). Meaningful only while
      ``count > 0``.
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
    >>> state.n_ref.value, state.anchor['w'].shape
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
  anchor: optax.Params
  ref_state: optax.OptState
  inner_state: optax.OptState
  diagnostics: ProfitDiagnostics
  finite: jax.Array
  skipped: jax.Array
  n_ref: _Static


def _zero_diagnostics(dtype: Any) -> ProfitDiagnostics:
  zero = jnp.zeros((), dtype)
  return ProfitDiagnostics(
    omega=zero, cos=zero, projected=jnp.zeros((), jnp.bool_), delta_norm=zero
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


def _is_concrete_number(x: Any) -> bool:
  if isinstance(x, (bool, np.bool_)):
    return False
  if isinstance(x, numbers.Real):
    return True
  if isinstance(x, (np.ndarray, jax.Array)) and not isinstance(
    x, jax.core.Tracer
  ):
    return np.ndim(x) == 0
  return False


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
  if _is_concrete_number(value):
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


def _check_transformation(name: str, tx: Any) -> None:
  if not (
    hasattr(tx, "init")
    and hasattr(tx, "update")
    and callable(tx.init)
    and callable(tx.update)
  ):
    raise TypeError(
      f"`{name}` must be an optax GradientTransformation (an object with"
      f" `init` and `update`), e.g. optax.adam(1e-3); got {tx!r}."
    )


def _check_params(params: Any) -> None:
  if params is None:
    raise ValueError(
      "You are not passing `params`: PROFIT needs the current parameters"
      " (it stores the anchor and steps from it); call `init(params)` and"
      " `update(grads, state, params)`."
    )


def _check_float_params(params: Any) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    dtype = _dtype_of(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
        f"PROFIT moves floating-point parameters, but `params` leaf"
        f" {jax.tree_util.keystr(path) or '(root)'} has dtype {dtype}."
        " Convert it to a float dtype, or keep it out of the optimizer with"
        " optax.masked / optax.multi_transform (e.g. optax.set_to_zero())."
      )


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


# --------------------------------------------------------------------------
# Tree maths
# --------------------------------------------------------------------------


def _dtype_of(x: Any) -> Any:
  """The dtype of an array, scalar or jax.ShapeDtypeStruct."""
  dtype = getattr(x, "dtype", None)
  return jnp.dtype(dtype) if dtype is not None else jnp.result_type(x)


def _acc_dtype(dtype: Any) -> Any:
  """The dtype in which inner products are accumulated: >= float32."""
  return jnp.promote_types(dtype, jnp.float32)


def _tree_acc_dtype(tree: Any) -> Any:
  """Accumulation dtype of a whole tree: float32, or float64 if a leaf is."""
  return functools.reduce(
    jnp.promote_types,
    [_acc_dtype(jnp.result_type(x)) for x in jax.tree_util.tree_leaves(tree)],
    jnp.dtype(jnp.float32),
  )


def _tree_vdot(a: Any, b: Any) -> jax.Array:
  """<a, b> over all leaves, accumulated in at least float32.

  An elementwise product and a sum, not ``jnp.vdot``: no reshape, so it works
  on arrays with explicit (sharding-in-types) shardings; the cross-device
  reduction is a scalar all-reduce.
  """
  parts = []
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    dtype = jnp.promote_types(_acc_dtype(x.dtype), _acc_dtype(y.dtype))
    parts.append(jnp.sum(x.astype(dtype) * y.astype(dtype)))
  if not parts:
    return jnp.zeros((), jnp.float32)
  dtype = jnp.result_type(*parts)
  return sum((p.astype(dtype) for p in parts), jnp.zeros((), dtype))


def _inner_products(delta: Any, grads: Any) -> tuple[jax.Array, ...]:
  """(<Δ, g>, <Δ, Δ>, <g, g>), accumulated in at least float32."""
  return (
    _tree_vdot(delta, grads),
    _tree_vdot(delta, delta),
    _tree_vdot(grads, grads),
  )


def _tree_displacement(params: Any, anchor: Any) -> Any:
  """``params - anchor`` per leaf, in at least float32."""
  return jax.tree.map(
    lambda p, a: p.astype(_acc_dtype(p.dtype)) - a.astype(_acc_dtype(p.dtype)),
    params,
    anchor,
  )


def _tree_all_finite(tree: Any) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    return jnp.ones((), jnp.bool_)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _cast_like(tree: Any, like: Any) -> Any:
  return jax.tree.map(lambda x, y: jnp.asarray(x).astype(y.dtype), tree, like)


# --------------------------------------------------------------------------
# The transformation
# --------------------------------------------------------------------------

_GradFn = Callable[[optax.Params, jax.Array], optax.Updates]


def profit(
  optimizer: optax.GradientTransformation,
  ref_learning_rate: optax.ScalarOrSchedule | None,
  n_ref: int = 1,
  *,
  ref_optimizer: optax.GradientTransformation | None = None,
  anchor_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""PROFIT: proximal fine-tuning around a main optimizer.

  Each PROFIT step anchors the parameters :math:`\theta_a`, takes ``n_ref``
  steps of the reference optimizer (plain SGD with ``ref_learning_rate`` by
  default), measures the displacement :math:`\Delta = \theta - \theta_a` and
  the gradient :math:`g` of a new batch at the displaced point, and, when
  :math:`\omega = \langle \Delta, g \rangle < 0`, projects :math:`g` onto the
  hyperplane orthogonal to :math:`\Delta`:

  .. math::
    g \leftarrow g - \frac{\langle g, \Delta\rangle}{\langle \Delta, \Delta
    \rangle} \Delta .

  The main optimizer then steps from the anchor:
  :math:`\theta \leftarrow \theta_a + O(g; \theta_a)`.

  There are two ways to drive it.

  *One gradient per call* (the default). ``n_ref + 1`` consecutive calls of
  ``update`` make one PROFIT step, each with the gradient of a new batch at the
  current parameters. Calls ``1..n_ref`` are reference calls (the first one
  stores the anchor) and return the reference optimizer's update; call
  ``n_ref + 1`` returns ``(anchor - params) + O(g)`` so that
  ``optax.apply_updates`` lands on ``anchor + O(g)`` (up to one rounding).
  The main optimizer does no work on reference calls (``lax.cond``), its
  state and schedules advance once per PROFIT step, and the reference
  optimizer's state restarts every cycle.

  *Whole step in one call*. ``update(grads, state, params, grad_fn=fn)``
  runs a complete PROFIT step: ``grads`` (the gradient at ``params``) drives
  the first reference step and ``fn(params, i)``, for ``i = 0..n_ref-1``,
  returns the gradient of the ``(i+1)``-th batch of the step at the given
  parameters (``i`` is a traced int32 scalar: index stacked batches with it).
  The returned update is exactly ``O(g)`` relative to ``params``. This mode
  starts a new cycle at ``params``; do not switch to it in the middle of a
  cycle of the default mode. Transformations chained *before* PROFIT see only
  ``grads``, not the gradients ``fn`` returns: put clipping and similar
  preprocessing inside ``optimizer`` instead.

  Non-finite gradients: a reference call whose gradient has a NaN or an inf
  does not move the parameters, and the main call of such a cycle (or a main
  call with a non-finite gradient) returns the parameters to the anchor
  without running the main optimizer; ``state.skipped`` counts these steps.
  The anchor and the main optimizer's state are never corrupted, and the next
  cycle starts cleanly. Inside ``optax.apply_if_finite`` a non-finite call is
  instead dropped altogether and the cycle continues with the next call.

  Numerics: the inner products are accumulated in at least float32, a zero
  displacement never produces NaN (the projection needs ``ω < 0``, which a
  zero ``Δ`` cannot give), and updates keep each parameter leaf's dtype. The
  phase (reference or main call) and the non-finite skip are ``lax.cond``
  branches, so the unchosen side does no work; the projection and the
  anchor store are element-wise selects (``jnp.where``), cheap work that XLA
  fuses. No decision blends its branches arithmetically, so an inf in one
  cannot leak into the other as NaN. Under ``jax.vmap`` with a batched
  state, JAX turns every ``lax.cond`` into a select, so both sides run.

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
    anchor_dtype: dtype in which the anchor is stored (default: each
      parameter's own dtype). A narrower dtype saves memory but rounds the
      point every PROFIT step returns to, so steps smaller than the dtype's
      resolution are lost; prefer the default unless memory forces it.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` whose state is a
    :class:`ProfitState`. Extra keyword arguments of ``update`` are forwarded
    to the main and the reference optimizers; those they do not know are
    ignored.

  Raises:
    TypeError: if ``optimizer`` or ``ref_optimizer`` is not a transformation,
      ``n_ref`` is not an int, or ``ref_learning_rate`` is not a number or a
      schedule.
    ValueError: if ``n_ref < 1``, a rate is negative or not finite, or
      neither/both of ``ref_learning_rate`` and ``ref_optimizer`` are given.

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

  References:
    Chakravarthy et al., `PROFIT: A Specialized Optimizer for Deep Fine
    Tuning <https://arxiv.org/abs/2412.01930>`_, 2024
  """
  _check_transformation("optimizer", optimizer)
  optimizer = optax.with_extra_args_support(optimizer)
  n_ref = _check_n_ref(n_ref)
  if anchor_dtype is not None:
    try:
      anchor_dtype = jnp.dtype(anchor_dtype)
    except TypeError as e:
      raise TypeError(
        f"`anchor_dtype` must be a floating dtype such as jnp.float32 or"
        f" None (the parameters' dtype); got {anchor_dtype!r}."
      ) from e
    if not jnp.issubdtype(anchor_dtype, jnp.floating):
      raise TypeError(
        f"`anchor_dtype` must be a floating dtype such as jnp.float32 or"
        f" None (the parameters' dtype); got {anchor_dtype}."
      )
  if ref_optimizer is None:
    if ref_learning_rate is None:
      raise TypeError(
        "`ref_learning_rate` is required (there is no default): pass a"
        " float such as lr_main / 10 (the paper's range is lr_main/10 to"
        " lr_main/10000), an optax schedule, or pass `ref_optimizer=`."
      )
    _check_rate("ref_learning_rate", ref_learning_rate)
    use_default_ref = True
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
    use_default_ref = False

  def ref_init(params):
    if use_default_ref:
      return optax.EmptyState()
    return ref_optimizer.init(params)

  def ref_update(grads, ref_state, params, step, extra_args):
    """One reference step: returns (descent update, new ref_state)."""
    if use_default_ref:
      if callable(ref_learning_rate):
        lr = ref_learning_rate(step)
      else:
        lr = ref_learning_rate
      updates = jax.tree.map(
        lambda g: (-lr * g.astype(_acc_dtype(g.dtype))).astype(g.dtype),
        grads,
      )
      return updates, ref_state
    updates, ref_state = ref_optimizer.update(
      grads, ref_state, params, **extra_args
    )
    return _cast_like(updates, params), ref_state

  def _initial_anchor(p):
    if isinstance(p, jax.ShapeDtypeStruct):
      return jnp.zeros_like(p, dtype=anchor_dtype or p.dtype)
    return jnp.asarray(p, dtype=anchor_dtype)

  def to_anchor(params):
    if anchor_dtype is None:
      return jax.tree.map(jnp.asarray, params)
    return jax.tree.map(lambda p: jnp.asarray(p).astype(anchor_dtype), params)

  def from_anchor(anchor, params):
    return _cast_like(anchor, params)

  def init_fn(params):
    _check_params(params)
    _check_float_params(params)
    return ProfitState(
      count=jnp.zeros((), jnp.int32),
      step=jnp.zeros((), jnp.int32),
      # Only meaningful once a cycle starts (count > 0). A copy of the
      # parameters keeps their sharding under jit; abstract parameters
      # (jax.ShapeDtypeStruct) get an abstract anchor of the same type.
      anchor=jax.tree.map(_initial_anchor, params),
      ref_state=ref_init(params),
      inner_state=optimizer.init(params),
      diagnostics=_zero_diagnostics(_tree_acc_dtype(params)),
      finite=jnp.ones((), jnp.bool_),
      skipped=jnp.zeros((), jnp.int32),
      n_ref=_Static(n_ref),
    )

  def main_step(grads, displaced, products, inner_state, anchor, extra_args):
    """Projection and main optimizer step from the anchor.

    ``displaced`` are the parameters where ``grads`` was taken and
    ``products`` are ``(<Δ, g>, <Δ, Δ>, <g, g>)``. Returns the main
    optimizer's update (relative to ``anchor``), its new state and the
    diagnostics.
    """
    omega, dd, gg = products
    # Δ is recomputed here rather than passed in: as an operand of the
    # enclosing lax.cond it would be materialised, one more parameter-sized
    # buffer; recomputed, XLA fuses it into the projection.
    delta = _tree_displacement(displaced, anchor)
    projected = jnp.logical_and(omega < 0, dd > 0)

    # The projection is cheap elementwise work: a select (jnp.where, which
    # never lets the unchosen side's values through) rather than a lax.cond,
    # so that XLA fuses `params - anchor` into it instead of materialising
    # the displacement as a cond operand.
    coef = jnp.where(projected, omega / jnp.where(projected, dd, 1.0), 0.0)
    grads = jax.tree.map(
      lambda gi, di: jnp.where(
        projected,
        (gi.astype(di.dtype) - coef.astype(di.dtype) * di).astype(gi.dtype),
        gi,
      ),
      grads,
      delta,
    )
    denom = jnp.sqrt(dd) * jnp.sqrt(gg)
    cos = jnp.where(denom > 0, omega / jnp.where(denom > 0, denom, 1.0), 0.0)
    diag_dtype = _tree_acc_dtype(anchor)
    diagnostics = ProfitDiagnostics(
      omega=omega.astype(diag_dtype),
      cos=cos.astype(diag_dtype),
      projected=projected,
      delta_norm=jnp.sqrt(dd).astype(diag_dtype),
    )
    updates, new_inner = optimizer.update(
      grads, inner_state, anchor, **extra_args
    )
    new_inner = _match_state_types(new_inner, inner_state)
    return _cast_like(updates, anchor), new_inner, diagnostics

  def complete_step(
    grads, displaced, products, state, anchor, params, extra_args
  ):
    """The end of a PROFIT step whose gradients were all finite."""
    main_updates, inner_state, diagnostics = main_step(
      grads, displaced, products, state.inner_state, anchor, extra_args
    )
    new_state = state._replace(
      count=jnp.zeros_like(state.count),
      step=optax.safe_increment(state.step),
      ref_state=_match_state_types(ref_init(params), state.ref_state),
      inner_state=inner_state,
      diagnostics=diagnostics,
      finite=jnp.ones((), jnp.bool_),
    )
    return main_updates, new_state

  def skip_step(state, params):
    """The end of a PROFIT step with a non-finite gradient: back to the
    anchor, the main optimizer untouched."""
    new_state = state._replace(
      count=jnp.zeros_like(state.count),
      ref_state=_match_state_types(ref_init(params), state.ref_state),
      finite=jnp.ones((), jnp.bool_),
      skipped=optax.safe_increment(state.skipped),
    )
    return optax.tree.zeros_like(params), new_state

  def transparent_update(updates, state, params, extra_args):
    grads = updates
    first = state.count == 0
    # The first call of a cycle stores the anchor. An elementwise select
    # outside the branches below: XLA writes it in place into the (donated)
    # anchor buffer, where a lax.cond output would need a copy.
    anchor_store = jax.tree.map(
      lambda p, a: jnp.where(first, p.astype(a.dtype), a), params, state.anchor
    )
    state = state._replace(anchor=anchor_store)

    def reference_call(_):
      finite = jnp.logical_and(
        jnp.logical_or(first, state.finite), _tree_all_finite(grads)
      )

      def step(_):
        ref_updates, ref_state = ref_update(
          grads, state.ref_state, params, state.step, extra_args
        )
        return ref_updates, _match_state_types(ref_state, state.ref_state)

      def hold(_):  # a non-finite gradient must not displace the parameters
        return optax.tree.zeros_like(params), state.ref_state

      ref_updates, ref_state = jax.lax.cond(finite, step, hold, None)
      new_state = state._replace(
        count=state.count + 1, ref_state=ref_state, finite=finite
      )
      return ref_updates, new_state

    def main_call(_):
      anchor = from_anchor(state.anchor, params)
      products = _inner_products(_tree_displacement(params, anchor), grads)
      # n_ref >= 1, so the reference calls of this cycle set `finite`; a NaN
      # or inf anywhere in g makes <g, g> non-finite.
      ok = jnp.logical_and(state.finite, jnp.isfinite(products[2]))

      def main(_):
        return complete_step(
          grads, params, products, state, anchor, params, extra_args
        )

      def skip(_):
        return skip_step(state, params)

      main_updates, new_state = jax.lax.cond(ok, main, skip, None)
      # params + out == anchor + main_updates, up to one rounding.
      out = jax.tree.map(
        lambda a, p, u: (
          (a.astype(_acc_dtype(a.dtype)) - p.astype(_acc_dtype(a.dtype)))
          + u.astype(_acc_dtype(a.dtype))
        ).astype(p.dtype),
        anchor,
        params,
        main_updates,
      )
      return out, new_state

    return jax.lax.cond(state.count >= n_ref, main_call, reference_call, None)

  def whole_step_update(updates, state, params, grad_fn, extra_args):
    ref_state0 = ref_init(params)

    def body(carry, i):
      theta, ref_state, grads, finite = carry
      finite = jnp.logical_and(finite, _tree_all_finite(grads))

      def step(_):
        ref_updates, new_ref_state = ref_update(
          grads, ref_state, theta, state.step, extra_args
        )
        new_ref_state = _match_state_types(new_ref_state, ref_state)
        return optax.apply_updates(theta, ref_updates), new_ref_state

      # Once a gradient of the step is not finite the step will be skipped:
      # stop moving.
      theta, ref_state = jax.lax.cond(
        finite, step, lambda _: (theta, ref_state), None
      )
      new_grads = grad_fn(theta, i)
      _check_same_tree("grad_fn(params, i)", new_grads, params)
      return (theta, ref_state, _cast_like(new_grads, params), finite), None

    carry0 = (
      params,
      ref_state0,
      _cast_like(updates, params),
      jnp.ones((), jnp.bool_),
    )
    (theta, _, grads, finite), _ = jax.lax.scan(
      body, carry0, jnp.arange(n_ref, dtype=jnp.int32)
    )
    products = _inner_products(_tree_displacement(theta, params), grads)
    ok = jnp.logical_and(finite, jnp.isfinite(products[2]))

    def main(_):
      return complete_step(
        grads, theta, products, state, params, params, extra_args
      )

    return jax.lax.cond(ok, main, lambda _: skip_step(state, params), None)

  def update_fn(
    updates: optax.Updates,
    state: ProfitState,
    params: optax.Params | None = None,
    *,
    grad_fn: _GradFn | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, ProfitState]:
    _check_params(params)
    if not isinstance(state, ProfitState):
      raise TypeError(
        "`state` must be the ProfitState returned by this transformation's"
        f" `init`; got {type(state).__name__}."
      )
    _check_same_tree("updates", updates, params)
    if grad_fn is None:
      return transparent_update(updates, state, params, extra_args)
    if not callable(grad_fn):
      raise TypeError(
        "`grad_fn` must be a callable (params, i) -> gradients; got"
        f" {grad_fn!r}."
      )
    return whole_step_update(updates, state, params, grad_fn, extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _match_state_types(new: Any, old: Any) -> Any:
  """Casts ``new`` to the dtypes of ``old`` leaf by leaf.

  Keeps optimizer states type-stable across ``lax.cond`` branches and
  ``lax.scan`` iterations even where an inner optimizer promotes a dtype.
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
