"""L2-SP, weight decay toward the pretrained weights, for optax.

L2-SP (Li, Grandvalet and Davoine, arXiv 1802.01483) regularizes a fine-tuned
network with the penalty

  Ω(w) = α/2 ‖w_S − w⁰_S‖² + β/2 ‖w_S̄‖²,

where ``w_S`` are the backbone weights shared with the pretrained model,
``w⁰_S`` their pretrained values and ``w_S̄`` the weights of the new head. This
module adds its gradient, ``α(w − w⁰)`` on the backbone and ``β w`` on the
head, to the gradient (the paper's form), or applies it as a decoupled update
scaled by a learning rate (the AdamW-style form).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from profit_optax._src._common import (
  MaskOrFn,
  _acc_dtype,
  _check_hyperparameter,
  _check_init_args,
  _check_mask_arg,
  _check_update_args,
  _expand_mask,
  _init_pretrained,
  _is_concrete_number,
  _value_at,
)

__all__ = ["L2SPState", "l2sp"]


class L2SPState(NamedTuple):
  """State of the transformation returned by :func:`l2sp`.

  Attributes:
    count: int32 scalar, the number of ``update`` calls so far (saturating).
      Schedules for ``alpha``, ``beta`` and ``learning_rate`` are evaluated at
      it.
    pretrained: the pretrained weights ``w⁰`` the backbone is pulled toward:
      a copy of the ``params`` given to ``init`` (or of ``pretrained=``), with
      the parameters' tree, shapes, dtypes and sharding. Head leaves are
      stored too (their values are not used), so that the state mirrors the
      parameters for ``optax.tree.map_params`` and checkpointing.

  Examples:
    >>> import jax.numpy as jnp, profit_optax
    >>> params = {'w': jnp.array([1.0, 2.0]), 'head': jnp.array([0.5])}
    >>> tx = profit_optax.l2sp(0.1, 0.01, head_mask={'w': False, 'head': True})
    >>> state = tx.init(params)
    >>> int(state.count), state.pretrained['w']
    (0, Array([1., 2.], dtype=float32))
    >>> state.pretrained['w'] is params['w']  # a copy, safe to donate params
    False

  References:
    Li, Grandvalet and Davoine, `Explicit Inductive Bias for Transfer Learning
    with Convolutional Networks <https://arxiv.org/abs/1802.01483>`_, 2018
  """

  count: jax.Array
  pretrained: optax.Params


_L2SP_HINT = (
  "Pass a small rate such as 0.01 (tune alpha and beta on validation data),"
  " or an optax schedule."
)


def l2sp(
  alpha: optax.ScalarOrSchedule,
  beta: optax.ScalarOrSchedule = 0.0,
  *,
  head_mask: MaskOrFn | None = None,
  pretrained: optax.Params | None = None,
  decoupled: bool = False,
  learning_rate: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""L2-SP: an L2 penalty toward the pretrained weights for fine-tuning.

  L2-SP replaces weight decay toward zero by a pull toward the starting point
  ``w⁰`` of fine-tuning, the pretrained weights, on the backbone ``S``, and
  keeps ordinary weight decay on the new head ``S̄``:

  .. math::
    \Omega(w) = \frac{\alpha}{2} \|w_S - w^0_S\|^2
      + \frac{\beta}{2} \|w_{\bar S}\|^2 .

  ``w⁰`` is a copy of the ``params`` given to ``init`` (or of ``pretrained``),
  stored in the state. Which leaves are head and which are backbone is given
  by ``head_mask``. Per leaf, with :math:`r = \alpha (w - w^0)` on the
  backbone and :math:`r = \beta w` on the head:

  * *coupled* (``decoupled=False``, the paper's form): the gradient of
    :math:`\Omega` is added to the incoming updates, :math:`u \leftarrow g +
    r`. Chain it **before** the optimizer, like
    ``optax.add_decayed_weights``: ``optax.chain(l2sp(...), optax.sgd(lr,
    momentum=0.9))``. Under an adaptive optimizer such as Adam the penalty is
    then preconditioned along with the loss gradient, as plain L2
    regularization is; the decoupled form avoids that.
  * *decoupled* (``decoupled=True``): the pull is applied directly to the
    optimizer's update, scaled by ``learning_rate``, as AdamW decouples its
    weight decay: :math:`u \leftarrow u - \eta\, r`. Chain it **after** the
    optimizer, whose output is already a descent step:
    ``optax.chain(optax.adam(lr), l2sp(..., decoupled=True,
    learning_rate=lr))``. With plain SGD (no momentum) and the same
    ``learning_rate``, both forms give the same trajectory.

  A transformation cannot tell a gradient from a step, so the placement is
  the user's to get right: in the coupled form ``r`` has the sign of a
  gradient, in the decoupled form ``-η r`` has the sign of a step.

  The regularizer is computed in at least float32 and the result is cast back
  to each update leaf's dtype. To exempt leaves from the penalty altogether
  (normalization scales, biases), wrap the transformation in
  ``optax.masked``; give ``head_mask`` as a callable there, since it then
  sees the masked parameters.

  Args:
    alpha: strength :math:`\alpha` of the pull of the backbone toward
      ``w⁰``: a non-negative float or an optax schedule of the update count.
      Injectable with ``optax.inject_hyperparams``.
    beta: strength :math:`\beta` of the ordinary weight decay of the head
      leaves: a non-negative float or a schedule (default 0). Must be 0 when
      ``head_mask`` is None (there is no head). Injectable.
    head_mask: which leaves belong to the new head (``True``) rather than the
      pretrained backbone (``False``): a pytree of bools with the structure
      of the parameters, or a prefix of it, or a callable of the params
      returning one, as in ``optax.masked``. Default None: every leaf is
      backbone. Static; with ``optax.inject_hyperparams``, a callable
      ``head_mask`` must be listed in ``static_args``.
    pretrained: the weights ``w⁰`` to pull toward, with the parameters' tree
      and shapes (values of head leaves are ignored). Default None: the
      ``params`` given to ``init``. Stored as a copy cast to the parameters'
      dtypes and, outside ``jit``, placed with the parameters' sharding.
    decoupled: whether to apply the pull as a decoupled update scaled by
      ``learning_rate`` (chain after the optimizer) instead of adding its
      gradient to the updates (chain before). A static Python bool.
    learning_rate: the rate :math:`\eta` that scales the decoupled pull,
      usually the optimizer's own learning rate or schedule (a schedule is
      evaluated at this transformation's update count). Required when
      ``decoupled=True``, and must be None otherwise. Injectable.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` whose state is an
    :class:`L2SPState`. Extra keyword arguments of ``update`` are ignored.

  Raises:
    TypeError: if a hyperparameter is not a number or a schedule,
      ``decoupled`` is not a bool, a mask leaf is not a bool, or a parameter
      is not floating-point.
    ValueError: if a hyperparameter is negative or not finite, ``beta`` is
      set without ``head_mask``, ``learning_rate`` and ``decoupled`` do not
      agree, ``params`` is missing, or ``head_mask``, ``pretrained`` or the
      updates do not match the parameters' tree.

  Examples:
    The penalty's gradient for parameters that moved from ``w⁰``:

    >>> import jax, jax.numpy as jnp, optax, profit_optax
    >>> params = {'backbone': jnp.array([1.0, 2.0]), 'head': jnp.array([3.0])}
    >>> mask = {'backbone': False, 'head': True}
    >>> reg = profit_optax.l2sp(0.1, 0.01, head_mask=mask)
    >>> state = reg.init(params)  # stores w0 = params
    >>> moved = {'backbone': jnp.array([1.5, 2.0]), 'head': jnp.array([3.0])}
    >>> zeros = jax.tree.map(jnp.zeros_like, params)
    >>> updates, state = reg.update(zeros, state, moved)
    >>> print(updates['backbone'], updates['head'])  # 0.1 * 0.5, 0.01 * 3
    [0.05 0.  ] [0.03]

    Fine-tuning with the coupled form before SGD: the backbone settles between
    the pretrained value and the new optimum.

    >>> tx = optax.chain(profit_optax.l2sp(1.0), optax.sgd(0.1))
    >>> params = jnp.array([0.0])  # pretrained; the new task wants 2.0
    >>> state = tx.init(params)
    >>> grad = jax.grad(lambda p: jnp.sum((p - 2.0) ** 2))
    >>> for _ in range(100):
    ...   updates, state = tx.update(grad(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(params.round(3))  # argmin of (p - 2)^2 + 0.5 p^2
    [1.333]

  References:
    Li, Grandvalet and Davoine, `Explicit Inductive Bias for Transfer Learning
    with Convolutional Networks <https://arxiv.org/abs/1802.01483>`_, 2018
  """
  _check_hyperparameter("alpha", alpha, _L2SP_HINT)
  _check_hyperparameter("beta", beta, _L2SP_HINT)
  if not isinstance(decoupled, (bool, np.bool_)):
    raise TypeError(
      f"`decoupled` must be a Python bool; got {decoupled!r}. With"
      " optax.inject_hyperparams, leave it out of the injected values (bools"
      " are static there by default)."
    )
  decoupled = bool(decoupled)
  if decoupled:
    if learning_rate is None:
      raise ValueError(
        "`decoupled=True` needs `learning_rate`: the decoupled pull is"
        " applied as `-learning_rate * alpha * (w - w0)` after the optimizer;"
        " pass the optimizer's learning rate (or schedule), e.g."
        " optax.chain(optax.adam(lr), l2sp(alpha, decoupled=True,"
        " learning_rate=lr))."
      )
    _check_hyperparameter("learning_rate", learning_rate, "")
  elif learning_rate is not None:
    raise ValueError(
      "`learning_rate` is used only by the decoupled form: pass"
      " `decoupled=True` (and chain l2sp after the optimizer), or drop"
      " `learning_rate` and chain l2sp before the optimizer (the coupled"
      " form, which adds the penalty's gradient)."
    )
  _check_mask_arg("head_mask", head_mask)
  if head_mask is None and not (
    isinstance(beta, jax.core.Tracer)
    or (_is_concrete_number(beta) and float(beta) == 0.0)
  ):
    raise ValueError(
      f"`beta` (the weight decay of the new head) is {beta!r} but no"
      " `head_mask` says which leaves are the head: pass `head_mask=` (a"
      " pytree of bools, True for head leaves, or a callable of the params),"
      " or leave `beta` at 0."
    )

  def head_tree(params):
    return _expand_mask("head_mask", head_mask, params, default=False)

  def init_fn(params):
    _check_init_args(params, "l2sp", head_tree)
    return L2SPState(
      count=jnp.zeros((), jnp.int32),
      pretrained=_init_pretrained(pretrained, params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _check_update_args(updates, state, params, "l2sp", L2SPState)
    is_head = head_tree(params)
    a = _value_at(alpha, state.count)
    b = _value_at(beta, state.count)
    lr = _value_at(learning_rate, state.count) if decoupled else None

    def leaf(u, p, p0, head):
      acc = _acc_dtype(jnp.result_type(p))
      if head:
        reg = b * p.astype(acc)
      else:
        reg = a * (p.astype(acc) - p0.astype(acc))
      if decoupled:
        out = u.astype(acc) - lr * reg
      else:
        out = u.astype(acc) + reg
      return out.astype(u.dtype)

    new_updates = jax.tree.map(leaf, updates, params, state.pretrained, is_head)
    return new_updates, L2SPState(
      count=optax.safe_increment(state.count), pretrained=state.pretrained
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
