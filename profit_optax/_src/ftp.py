"""FTP, Fast Trainable Projection, as an optax wrapper.

FTP (Tian et al., arXiv 2310.19182; reference implementation ``util/FTP.py``
of github.com/GT-RIPL/FTP) fine-tunes a pretrained model while keeping each
parameter tensor within a learned distance of its pretrained value ``θ0``.
Every step:

1. the inner optimizer takes its ordinary (unconstrained) step, which moves
   the parameters to ``θ0 + c``: ``c`` is the unconstrained displacement;
2. each tensor's projection radius ``γ`` takes one step of a scalar Adam on
   its hypergradient, the alignment of the new gradient with the previous
   step's unconstrained displacement (positive hypergradients scaled by
   ``k``);
3. every row of ``c`` (one per output channel) is shrunk into the L1 ball of
   radius ``γ``: ``θ ← θ0 + min(1, γ / ‖c_row‖₁) c_row``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from profit_optax._src._common import (
  MaskOrFn,
  _acc_dtype,
  _broadcast_mask,
  _check_mask_arg,
  _check_state,
  _check_transformation,
  _dtype_of,
  _leaf_name,
  _zeros_like_sharded,
)

__all__ = ["FTPState", "ftp"]

ChannelAxis = int | tuple[int, ...] | Callable[[tuple, Any], Any] | None


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------


class FTPState(NamedTuple):
  """State of the transformation returned by :func:`ftp`.

  Every per-tensor field has the tree structure of the parameters. Leaves
  that FTP does not project (``mask`` False) hold an ``optax.MaskedNode``
  there (no array, no memory). The scalars of a leaf are in that leaf's
  accumulation dtype: float32, or float64 for float64 parameters.

  Attributes:
    count: int32 scalar, the number of ``update`` calls so far (saturating);
      the reference code's step counter ``t`` is ``count + 1``.
    inner_state: the state of the wrapped optimizer.
    pretrained: ``θ0``, a copy of the ``params`` given to ``init``, with their
      shapes, dtypes and (under ``jit``) sharding. The projection keeps each
      projected leaf near it.
    gamma: ``γ``, the projection radius of each projected leaf, a scalar
      (``gamma_buff`` in the reference code). ``gamma_init`` until the first
      update, then the radius used by the last update.
    gamma_mu: the scalar Adam's first moment of each leaf's hypergradient
      (``first_m_gamma``), not bias-corrected.
    gamma_nu: the scalar Adam's second moment (``second_m_gamma``), not
      bias-corrected.
    prev_displacement: the last update's unconstrained displacement ``c``
      from ``θ0`` (``prev_c``), in the parameter's dtype; zeros before the
      first update.
    prev_scale: ``1 / (‖c_row‖₁ + norm_eps)`` of the last update, one value
      per row, shaped like the parameter with its reduced axes kept as size 1
      (``prev_scale``); zeros before the first update.

  Examples:
    >>> import jax.numpy as jnp, optax, profit_optax
    >>> params = {'w': jnp.ones((4, 3)), 'head': jnp.zeros(3)}
    >>> tx = profit_optax.ftp(optax.sgd(0.1), mask={'w': True, 'head': False})
    >>> state = tx.init(params)
    >>> int(state.count), float(state.gamma['w'])
    (0, 1e-08)
    >>> state.prev_scale['w'].shape  # one row per output channel (last axis)
    (1, 3)
    >>> state.pretrained['head']  # not projected: nothing stored
    MaskedNode()

  References:
    Tian et al., `Fast Trainable Projection for Robust Fine-Tuning
    <https://arxiv.org/abs/2310.19182>`_, 2023
  """

  count: jax.Array
  inner_state: optax.OptState
  pretrained: optax.Params
  gamma: optax.Params
  gamma_mu: optax.Params
  gamma_nu: optax.Params
  prev_displacement: optax.Params
  prev_scale: optax.Params


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _check_number(
  name: str,
  value: Any,
  *,
  low: float,
  high: float = np.inf,
  low_open: bool = False,
  high_open: bool = False,
  hint: str = "",
  schedule: bool = False,
) -> None:
  """Checks a scalar hyperparameter given as a number or a 0-d array.

  Traced values (injected by ``optax.inject_hyperparams`` under ``jit``) are
  accepted unchecked.
  """
  if schedule and callable(value):
    return
  if isinstance(value, jax.core.Tracer):
    return
  is_number = isinstance(value, numbers.Real) or (
    isinstance(value, (np.ndarray, jax.Array, np.generic))
    and np.ndim(value) == 0
    and jnp.issubdtype(jnp.result_type(value), jnp.number)
  )
  if isinstance(value, (bool, np.bool_)) or not is_number:
    what = "a float or an optax schedule" if schedule else "a float"
    raise TypeError(
      f"`{name}` must be {what}; got {value!r} of type"
      f" {type(value).__name__}. {hint}".rstrip()
    )
  v = float(value)
  bad = (
    not np.isfinite(v)
    or (v <= low if low_open else v < low)
    or (v >= high if high_open else v > high)
  )
  if bad:
    lo = f"{'(' if low_open else '['}{low:g}"
    hi = "inf)" if high == np.inf else f"{high:g}{')' if high_open else ']'}"
    raise ValueError(
      f"`{name}` must be finite and in {lo}, {hi}; got {v!r}. {hint}".rstrip()
    )


def _check_params(params: Any) -> None:
  if params is None:
    raise ValueError(
      "You are using a transformation that requires the current value of"
      " parameters, but you are not passing `params` when calling `update`."
      " FTP needs them: `init(params)` stores the pretrained weights θ0 and"
      " `update(grads, state, params)` projects the step back toward them."
    )


def _check_channel_axis_arg(channel_axis: Any) -> Any:
  """Validates the form of ``channel_axis``; returns it with arrays as ints."""
  if channel_axis is None or callable(channel_axis):
    return channel_axis
  if isinstance(channel_axis, jax.core.Tracer):
    raise TypeError(
      "`channel_axis` must be a static Python int or tuple of ints, but it"
      " was given as a traced array. With optax.inject_hyperparams, declare"
      " it static: `optax.inject_hyperparams(profit_optax.ftp,"
      " static_args=('channel_axis',))`."
    )
  if isinstance(channel_axis, (jax.Array, np.ndarray, np.generic)):
    if np.ndim(channel_axis) == 0 and jnp.issubdtype(
      jnp.result_type(channel_axis), jnp.integer
    ):
      return int(channel_axis)
  if isinstance(channel_axis, (bool, np.bool_)) or not (
    isinstance(channel_axis, numbers.Integral)
    or (
      isinstance(channel_axis, tuple)
      and all(
        isinstance(a, numbers.Integral) and not isinstance(a, (bool, np.bool_))
        for a in channel_axis
      )
    )
  ):
    raise TypeError(
      "`channel_axis` must be None (the last axis, the layout of Flax"
      " kernels), an int, a tuple of ints, or a callable (path, leaf) ->"
      f" int | tuple | None; got {channel_axis!r} of type"
      f" {type(channel_axis).__name__}."
    )
  return channel_axis


def _row_axes(spec: Any, ndim: int, name: str) -> tuple[int, ...]:
  """``spec`` (int or tuple of ints) as sorted non-negative axes of a leaf."""
  if (
    isinstance(spec, (jax.Array, np.ndarray, np.generic)) and np.ndim(spec) == 0
  ):
    spec = int(spec)
  axes = (spec,) if isinstance(spec, numbers.Integral) else spec
  if isinstance(spec, (bool, np.bool_)) or not (
    isinstance(axes, tuple)
    and all(
      isinstance(a, numbers.Integral) and not isinstance(a, (bool, np.bool_))
      for a in axes
    )
  ):
    raise TypeError(
      f"`channel_axis` for leaf {name} must be an int, a tuple of ints or"
      f" None; got {spec!r} of type {type(spec).__name__}."
    )
  out = []
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(
        f"`channel_axis` {spec!r} is out of range for leaf {name}, which has"
        f" {ndim} dimension(s): pass axes in [-{ndim}, {ndim}) (the axes"
        " that index output channels), or give `channel_axis` as a callable"
        " (path, leaf) -> axes to choose per leaf."
      )
    out.append(int(a) % ndim)
  if len(set(out)) != len(out):
    raise ValueError(
      f"`channel_axis` {spec!r} names an axis of leaf {name} twice; pass"
      " each output-channel axis once."
    )
  return tuple(sorted(out))


def _reduce_axes(channel_axis: Any, path: Any, leaf: Any) -> tuple[int, ...]:
  """The axes a leaf's row norms sum over (all axes but its row axes)."""
  ndim = len(jnp.shape(leaf))
  name = _leaf_name(path)
  spec = channel_axis(path, leaf) if callable(channel_axis) else channel_axis
  if spec is None:
    rows = (ndim - 1,) if ndim >= 2 else ()
  elif ndim < 2 and not callable(channel_axis):
    rows = ()  # a global choice is for kernels; a vector is one row.
  else:
    rows = _row_axes(spec, ndim, name)
  return tuple(i for i in range(ndim) if i not in rows)


def _expand_mask(mask: MaskOrFn, params: Any, treedef: Any) -> list[bool]:
  """The mask as one Python bool per leaf of ``params`` (flattened)."""
  if mask is None:
    return [True] * treedef.num_leaves
  tree = mask(params) if callable(mask) else mask
  _check_mask_arg("mask", tree)
  try:
    flags = treedef.flatten_up_to(_broadcast_mask(tree, params))
  except (ValueError, TypeError) as e:
    raise ValueError(
      "`mask` must be a pytree of bools with the structure of `params` (or a"
      " prefix of it: a bool at a subtree applies to all its leaves), or a"
      " callable of the params returning one; True projects a leaf, False"
      " lets it take the inner optimizer's step unchanged. Got mask:"
      f" {jax.tree_util.tree_structure(tree)}; params: {treedef}."
    ) from e
  for (path, _), flag in zip(
    jax.tree_util.tree_flatten_with_path(params)[0], flags
  ):
    if not isinstance(flag, (bool, np.bool_)):
      raise TypeError(
        f"`mask` leaf for {_leaf_name(path)} must be a Python bool, got"
        f" {flag!r} of type {type(flag).__name__}. Masks are static (they"
        " choose which computation each leaf gets): compute them from the"
        " tree structure or the names, not from array values."
      )
  return [bool(f) for f in flags]


def _plan(params: Any, mask: MaskOrFn, channel_axis: Any) -> tuple:
  """(treedef, per-leaf reduce axes); None for leaves FTP does not project."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  if not with_path:
    # optax.tree.map_params calls init with a leafless placeholder.
    return treedef, []
  flags = _expand_mask(mask, params, treedef)
  plan = []
  for (path, leaf), project in zip(with_path, flags):
    if not project:
      plan.append(None)
      continue
    dtype = _dtype_of(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
        f"FTP projects real floating-point parameters, but `params` leaf"
        f" {_leaf_name(path)} has dtype {dtype}. Exclude it with `mask`"
        " (False for that leaf), or convert it to a float dtype."
      )
    plan.append(_reduce_axes(channel_axis, path, leaf))
  return treedef, plan


def _flatten_like(name: str, treedef: Any, tree: Any) -> list:
  try:
    return treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    hint = ""
    if name.startswith("state."):
      hint = (
        " Pass the state that `init` returned for parameters of this"
        " structure (and the same `mask`)."
      )
    raise ValueError(
      f"`{name}` must have the tree structure of `params` (one leaf per"
      f" parameter leaf). Got {name}: {jax.tree_util.tree_structure(tree)};"
      f" params: {treedef}.{hint}"
    ) from e


# --------------------------------------------------------------------------
# Per-leaf state
# --------------------------------------------------------------------------


def _copy(p: Any) -> Any:
  """A fresh copy of a parameter: never an alias (donating the parameters
  must not delete θ0); it keeps the parameter's sharding, also under jit."""
  if isinstance(p, jax.ShapeDtypeStruct):
    return jnp.zeros_like(p)
  return jnp.array(p, copy=True)


def _row_shape(shape: tuple[int, ...], reduce_axes: tuple[int, ...]) -> tuple:
  return tuple(1 if i in reduce_axes else n for i, n in enumerate(shape))


# --------------------------------------------------------------------------
# The transformation
# --------------------------------------------------------------------------


def ftp(
  optimizer: optax.GradientTransformation,
  *,
  k: jax.typing.ArrayLike = 1.0,
  gamma_learning_rate: optax.ScalarOrSchedule = 1e-2,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  gamma_init: jax.typing.ArrayLike = 1e-8,
  gamma_min: jax.typing.ArrayLike = 1e-8,
  norm_eps: jax.typing.ArrayLike = 1e-8,
  mask: MaskOrFn | None = None,
  channel_axis: ChannelAxis = None,
) -> optax.GradientTransformationExtraArgs:
  r"""FTP: Fast Trainable Projection around an inner optimizer.

  FTP keeps a fine-tuned model close to its pretrained weights
  :math:`\theta_0` (a copy of the ``params`` given to ``init``) by projecting
  each parameter tensor back into a ball around :math:`\theta_0` whose radius
  :math:`\gamma` it learns. At step :math:`t` (``t = count + 1``), with the
  current parameters :math:`\theta_t`, the gradient :math:`g_t` at them (the
  ``updates`` given to ``update``) and the inner optimizer's update
  :math:`u_t`, each projected leaf computes its unconstrained displacement and
  its row norms

  .. math::
    c_t = (\theta_t + u_t) - \theta_0, \qquad
    n_{t,r} = \textstyle\sum_{i \in r} |c_{t,i}| + \epsilon_n ,

  updates its radius with a scalar Adam on the hypergradient (for
  :math:`t > 1`; :math:`\gamma_1 = \gamma_\text{init}`)

  .. math::
    h_t &= \textstyle\sum_r \frac{1}{n_{t-1,r}} \sum_{i \in r}
      g_{t,i}\, c_{t-1,i}, \qquad h_t \leftarrow k\, h_t
      \ \text{if}\ h_t > 0, \\
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) h_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) h_t^2, \\
    \gamma_t &= \operatorname{clip}\Big(\gamma_{t-1} - \mu\,
      \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon},
      \ \gamma_\text{min},\ \max_r n_{t,r}\Big),

  and projects every row :math:`r` of the displacement:

  .. math::
    \theta_{t+1} = \theta_0 + \min\big(1,\ \gamma_t / n_{t,r}\big)\, c_{t,r} .

  The returned update is :math:`\theta_{t+1} - \theta_t`, so that
  ``optax.apply_updates(params, updates)`` lands on the projected point (up
  to one rounding). :math:`h_t` is the derivative of the loss at
  :math:`\theta_t = \theta_0 + (\gamma_{t-1}/n_{t-1}) c_{t-1}` with respect
  to :math:`\gamma_{t-1}`, taken as if no row had been clipped at 1, as the
  reference code does. Leaves with ``mask`` False take the inner optimizer's
  update unchanged.

  This follows the reference implementation (``util/FTP.py`` of
  github.com/GT-RIPL/FTP) operation by operation, including two details of
  it: the moments are first updated at :math:`t = 2` while the bias
  correction uses :math:`t`, and :math:`\gamma_1 = \gamma_\text{init}` is
  not clipped. Its ``SGDP`` is ``ftp(optax.chain(optax.add_decayed_weights(
  wd), optax.sgd(lr, momentum)))`` and its ``AdamP`` is
  ``ftp(optax.adamw(lr, b1, b2, eps, weight_decay=wd))``: transformations
  *inside* ``optimizer`` shape the step, while the hypergradient uses the
  gradient FTP receives, as the reference uses the raw ``p.grad``.

  Rows. A row is a slice of a tensor along its output-channel axes; its norm
  sums over all other axes. The reference code (PyTorch layout) sums over
  dims ``1..``, so rows are indexed by the first axis, the output channel of
  a PyTorch ``Linear`` ``(out, in)`` or ``Conv2d`` ``(out, in, kh, kw)``
  weight. Flax and Haiku put the output channel last (``Dense`` ``(in,
  out)``, ``Conv`` ``(kh, kw, in, out)``), so by default rows are indexed by
  the **last** axis of every leaf with two or more dimensions. Equinox and
  other PyTorch-layout weights need ``channel_axis=0``.

  Vectors and scalars. For a 1-D tensor (a bias, a normalization scale) the
  reference sums over ``dim=()``, which PyTorch reads as *every* dimension:
  the whole vector is one row, with one ratio :math:`\gamma / \|c\|_1`. This
  implementation does the same by default (0-D leaves likewise form one
  row), because that is what produced the paper's results and it is the
  per-tensor constraint the paper describes: the MARS norm of a vector read
  as one row is its L1 norm. Per-element rows for a vector are available
  through a callable ``channel_axis`` returning ``0`` for it.

  Numerics: FTP computes in at least float32 (float64 for float64
  parameters); updates keep each parameter leaf's dtype. A non-finite
  gradient makes the step non-finite, as in the reference; wrap FTP in
  ``optax.apply_if_finite`` to skip such steps.

  Args:
    optimizer: the inner optimizer, any optax transformation (a chain with
      weight decay, clipping or a schedule is fine). Its update is computed
      at the current parameters and then projected.
    k: the annealing factor of positive hypergradients (those that shrink
      :math:`\gamma`), in ``[0, 1]``: 1 (the default, the reference's and the
      strongest) keeps them, 0 drops them (the radius is then only pushed
      up). Injectable with ``optax.inject_hyperparams``.
    gamma_learning_rate: :math:`\mu`, the learning rate of the scalar Adam
      on :math:`\gamma` (the reference's fixed ``1e-2``); a float >= 0 or an
      optax schedule of the update count. Injectable.
    b1: :math:`\beta_1` of the scalar Adam, in ``[0, 1)``. Injectable.
    b2: :math:`\beta_2` of the scalar Adam, in ``[0, 1)``. Injectable.
    eps: :math:`\epsilon`, added to the scalar Adam's denominator, >= 0.
      Injectable.
    gamma_init: :math:`\gamma_\text{init}`, the radius of the first step,
      >= 0 (the reference's ``1e-8``: the first step stays at
      :math:`\theta_0`). Injectable.
    gamma_min: :math:`\gamma_\text{min}`, the lower end of the clip of
      :math:`\gamma`, >= 0 (the reference's ``1e-8``); the upper end is the
      largest row norm of the current displacement. Injectable.
    norm_eps: :math:`\epsilon_n`, added to every row norm, > 0 (the
      reference's ``1e-8``); it keeps a row that has not moved from dividing
      by zero. Injectable.
    mask: which leaves FTP projects (``True``) rather than letting them take
      the inner optimizer's step unchanged (``False``): a pytree of bools
      with the structure of the parameters (or a prefix of it), or a callable
      of the params returning one, as in ``optax.masked``. The reference
      excludes the new head, which has no pretrained value. Default None:
      every leaf is projected. Static; with ``optax.inject_hyperparams`` a
      callable ``mask`` must be listed in ``static_args``.
    channel_axis: the output-channel (row) axes of the leaves with two or
      more dimensions: None (default) for the last axis (Flax/Haiku layout),
      an int such as ``0`` (PyTorch/Equinox layout), or a tuple of ints
      (e.g. ``(-2, -1)`` for a Flax ``DenseGeneral`` kernel ``(in, heads,
      head_dim)``). 0-D and 1-D leaves are one row whatever this is, unless
      ``channel_axis`` is a callable ``(path, leaf) -> int | tuple | None``,
      which chooses for every projected leaf (``None``: the default rule,
      ``()``: the whole leaf as one row). Static: with
      ``optax.inject_hyperparams`` an int or a callable must be listed in
      ``static_args``.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` whose state is an
    :class:`FTPState`. Extra keyword arguments of ``update`` are forwarded to
    ``optimizer``; those it does not know are ignored.

  Raises:
    TypeError: if ``optimizer`` is not a transformation, a hyperparameter is
      not a number (or a schedule for ``gamma_learning_rate``), a mask leaf is
      not a bool, ``channel_axis`` has the wrong type or is traced, a
      projected parameter is not real floating-point, or ``state`` is not an
      :class:`FTPState`.
    ValueError: if a hyperparameter is out of its range or not finite,
      ``params`` is missing, ``mask`` or the updates do not match the
      parameters' tree, or ``channel_axis`` is out of range for a leaf.

  Examples:
    One step: γ starts at 1e-8, so the projected leaf stays at θ0 while the
    excluded head takes the plain SGD step.

    >>> import jax, jax.numpy as jnp, optax, profit_optax
    >>> params = {'w': jnp.ones((2, 3)), 'head': jnp.zeros(3)}
    >>> tx = profit_optax.ftp(optax.sgd(0.1), mask={'w': True, 'head': False})
    >>> state = tx.init(params)  # stores θ0 = params
    >>> grads = {'w': jnp.ones((2, 3)), 'head': jnp.ones(3)}
    >>> updates, state = tx.update(grads, state, params)
    >>> print(updates['head'], float(jnp.abs(updates['w']).max()) < 1e-7)
    [-0.1 -0.1 -0.1] True

    Fine-tuning toward a new optimum: the radius grows while the gradients
    keep pointing away from θ0, and each output channel (column) stays
    within it.

    >>> tx = profit_optax.ftp(optax.sgd(0.1))
    >>> w0 = jnp.zeros((2, 3))
    >>> params, state = w0, tx.init(w0)
    >>> grad = jax.grad(lambda w: jnp.sum((w - 1.0) ** 2))
    >>> step = jax.jit(tx.update)
    >>> for _ in range(40):
    ...   updates, state = step(grad(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(f"{float(state.gamma):.3f}")
    0.378
    >>> print(jnp.abs(params - w0).sum(axis=0).round(3))  # one L1 per column
    [0.378 0.378 0.378]
    >>> print(params.round(3))  # plain SGD would be at 1.0 by now
    [[0.189 0.189 0.189]
     [0.189 0.189 0.189]]

  References:
    Tian et al., `Fast Trainable Projection for Robust Fine-Tuning
    <https://arxiv.org/abs/2310.19182>`_, 2023
  """
  _check_transformation(
    "optimizer", optimizer, "optax.sgd(1e-2, momentum=0.9) or optax.adamw(1e-4)"
  )
  optimizer = optax.with_extra_args_support(optimizer)
  _check_number(
    "k",
    k,
    low=0.0,
    high=1.0,
    hint="It scales the positive γ-gradients; the reference uses 1.",
  )
  _check_number(
    "gamma_learning_rate",
    gamma_learning_rate,
    low=0.0,
    schedule=True,
    hint="The reference uses 1e-2.",
  )
  _check_number("b1", b1, low=0.0, high=1.0, high_open=True, hint="E.g. 0.9.")
  _check_number("b2", b2, low=0.0, high=1.0, high_open=True, hint="E.g. 0.999.")
  _check_number("eps", eps, low=0.0, hint="E.g. 1e-8.")
  _check_number("gamma_init", gamma_init, low=0.0, hint="E.g. 1e-8.")
  _check_number("gamma_min", gamma_min, low=0.0, hint="E.g. 1e-8.")
  _check_number(
    "norm_eps",
    norm_eps,
    low=0.0,
    low_open=True,
    hint="It keeps a row that has not moved from dividing by zero; e.g. 1e-8.",
  )
  if mask is not None and not callable(mask):
    if isinstance(mask, (jax.Array, np.ndarray)):
      raise TypeError(
        "`mask` must be a pytree of Python bools or a callable of the params"
        " returning one, as in optax.masked; got an array. Masks are static:"
        " use True/False, not arrays."
      )
  channel_axis = _check_channel_axis_arg(channel_axis)

  def init_fn(params):
    _check_params(params)
    treedef, plan = _plan(params, mask, channel_axis)
    leaves = treedef.flatten_up_to(params)

    def per_leaf(fn):
      return treedef.unflatten(
        [
          optax.MaskedNode() if red is None else fn(p, red)
          for p, red in zip(leaves, plan)
        ]
      )

    acc = lambda p: _acc_dtype(_dtype_of(p))
    return FTPState(
      count=jnp.zeros((), jnp.int32),
      inner_state=optimizer.init(params),
      pretrained=per_leaf(lambda p, red: _copy(p)),
      gamma=per_leaf(lambda p, red: jnp.asarray(gamma_init).astype(acc(p))),
      gamma_mu=per_leaf(lambda p, red: jnp.zeros((), acc(p))),
      gamma_nu=per_leaf(lambda p, red: jnp.zeros((), acc(p))),
      prev_displacement=per_leaf(lambda p, red: _zeros_like_sharded(p)),
      prev_scale=per_leaf(
        lambda p, red: jnp.zeros(_row_shape(jnp.shape(p), red), acc(p))
      ),
    )

  def update_fn(updates, state, params=None, **extra_args):
    _check_params(params)
    _check_state(state, FTPState)
    treedef, plan = _plan(params, mask, channel_axis)
    grads = _flatten_like("updates", treedef, updates)
    inner_updates, inner_state = optimizer.update(
      updates, state.inner_state, params, **extra_args
    )
    inner = _flatten_like(
      "the inner optimizer's updates", treedef, inner_updates
    )
    fields = [
      _flatten_like(f"state.{name}", treedef, getattr(state, name))
      for name in (
        "pretrained",
        "gamma",
        "gamma_mu",
        "gamma_nu",
        "prev_displacement",
        "prev_scale",
      )
    ]
    if callable(gamma_learning_rate):
      mu = gamma_learning_rate(state.count)
    else:
      mu = gamma_learning_rate
    first = state.count == 0

    def project(p, g, u, p0, gamma, m, v, c_prev, s_prev, red):
      acc = _acc_dtype(_dtype_of(p))
      t = state.count.astype(acc) + 1
      pa = jnp.asarray(p).astype(acc)
      # c_t = (curr - d_p) - pre: the unconstrained displacement from θ0.
      c = (pa + u.astype(acc)) - p0.astype(acc)
      norms = jnp.sum(jnp.abs(c), axis=red, keepdims=True) + norm_eps
      # The hypergradient: per-row <g, c_prev> times the previous 1/norms.
      dot = jnp.sum(g.astype(acc) * c_prev.astype(acc), axis=red, keepdims=True)
      h = jnp.sum(dot * s_prev)
      h = jnp.where(h > 0, h * k, h)
      new_m = b1 * m + (1 - b1) * h
      new_v = b2 * v + (1 - b2) * h**2
      m_hat = new_m / (1 - b1**t)
      v_hat = new_v / (1 - b2**t)
      new_gamma = gamma - mu * m_hat / (jnp.sqrt(v_hat) + eps)
      new_gamma = jnp.clip(new_gamma, gamma_min, jnp.max(norms))
      # The first step uses gamma_init and leaves the moments at zero.
      new_gamma = jnp.where(first, gamma_init, new_gamma).astype(gamma.dtype)
      new_m = jnp.where(first, m, new_m).astype(m.dtype)
      new_v = jnp.where(first, v, new_v).astype(v.dtype)
      scale = 1 / norms
      ratio = jnp.clip(new_gamma * scale, 0, 1)
      new_p = p0.astype(acc) + ratio * c
      out = (new_p - pa).astype(_dtype_of(p))
      return (
        out,
        new_gamma,
        new_m,
        new_v,
        c.astype(c_prev.dtype),
        scale.astype(s_prev.dtype),
      )

    outs = []
    new_fields = [[] for _ in range(5)]
    for i, (p, g, u, red) in enumerate(
      zip(treedef.flatten_up_to(params), grads, inner, plan)
    ):
      if red is None:
        outs.append(u)
        for f in new_fields:
          f.append(optax.MaskedNode())
        continue
      out, *rest = project(p, g, u, *(f[i] for f in fields), red)
      outs.append(out)
      for f, x in zip(new_fields, rest):
        f.append(x)
    gamma, gamma_mu, gamma_nu, prev_c, prev_s = (
      treedef.unflatten(f) for f in new_fields
    )
    new_state = FTPState(
      count=optax.safe_increment(state.count),
      inner_state=inner_state,
      pretrained=state.pretrained,
      gamma=gamma,
      gamma_mu=gamma_mu,
      gamma_nu=gamma_nu,
      prev_displacement=prev_c,
      prev_scale=prev_s,
    )
    return treedef.unflatten(outs), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
