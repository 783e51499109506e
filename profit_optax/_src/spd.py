"""Selective Projection Decay (SPD) around any optax optimizer.

SPD (Tian et al., arXiv 2411.01713) decays a fine-tuned layer back toward its
pretrained weights only when that layer's step looks inconsistent, and then
only by the fraction of its distance to the pretrained weights that the step
added. It is written here as in the authors' reference implementation
(``AdamSPD`` in GT-RIPL/Selective-Projection-Decay), generalized from Adam to
any inner optax optimizer.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from profit_optax._src._common import (
  MaskOrFn,
  _acc_dtype,
  _check_hyperparameter,
  _check_init_args,
  _check_mask_arg,
  _check_transformation,
  _check_update_args,
  _check_updates,
  _expand_mask,
  _init_pretrained,
  _value_at,
)

__all__ = ["SPDState", "spd"]


class SPDState(NamedTuple):
  """State of the transformation returned by :func:`spd`.

  Attributes:
    count: int32 scalar, the number of ``update`` calls so far (saturating).
      A ``weight_decay`` schedule is evaluated at it.
    inner_state: the state of the wrapped optimizer.
    pretrained: the pretrained weights ``θ₀`` that SPD decays toward: a copy
      of the ``params`` given to ``init`` (or of ``pretrained=``), with the
      parameters' tree, shapes, dtypes and sharding. Leaves outside ``mask``
      are stored too (their values are not used), so that the state mirrors
      the parameters for ``optax.tree.map_params`` and checkpointing.

  Examples:
    >>> import jax.numpy as jnp, optax, profit_optax
    >>> tx = profit_optax.spd(optax.adam(1e-3), weight_decay=0.5)
    >>> state = tx.init({'w': jnp.array([1.0, 2.0])})
    >>> int(state.count), state.pretrained['w']
    (0, Array([1., 2.], dtype=float32))
    >>> type(state.inner_state[0]).__name__  # optax.adam's state
    'ScaleByAdamState'

  References:
    Tian et al., `Rethinking Weight Decay for Robust Fine-Tuning of
    Foundation Models <https://arxiv.org/abs/2411.01713>`_, 2024
  """

  count: jax.Array
  inner_state: optax.OptState
  pretrained: optax.Params


_SPD_HINT = (
  "It is the SPD strength lambda (weight_decay of the reference AdamSPD);"
  " values in [0, 1] keep each decayed step between the inner optimizer's"
  " result and the pretrained weights."
)


def spd(
  optimizer: optax.GradientTransformation,
  weight_decay: optax.ScalarOrSchedule,
  *,
  mask: MaskOrFn | None = None,
  pretrained: optax.Params | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Selective Projection Decay: decay toward the pretrained weights on demand.

  SPD wraps an optimizer. Each ``update`` runs the inner optimizer, then
  examines every parameter leaf (every tensor, a "layer" in the paper) on its
  own. With :math:`g` the incoming gradient of the leaf, :math:`\theta` its
  current value, :math:`\tilde\theta = \theta + u` its value after the inner
  update :math:`u`, and :math:`\theta_0` its pretrained value, SPD computes

  .. math::
    c = -\langle g, \theta - \theta_0 \rangle, \qquad
    r = \operatorname{clip}\Bigl(
      \frac{\|\tilde\theta - \theta_0\| - \|\theta - \theta_0\|}
           {\|\tilde\theta - \theta_0\|}, 0, 1\Bigr),

  and, where :math:`c < 0`,

  .. math::
    \theta \leftarrow \tilde\theta - \lambda\, r\, (\tilde\theta - \theta_0),

  while elsewhere :math:`\theta \leftarrow \tilde\theta`. The returned update
  is therefore :math:`u - \lambda r (\theta + u - \theta_0)` for the decayed
  leaves and :math:`u` for the others. Norms are Euclidean (Frobenius) over
  the whole leaf.

  :math:`c < 0` says that the descent direction :math:`-g` points back
  toward :math:`\theta_0`, against the way the layer has moved since the
  start of fine-tuning: its deviation is no longer consistently reducing the
  loss. :math:`r` is the share of the new distance to :math:`\theta_0` that
  the step added, zero when the step does not increase the distance. So a
  layer is pulled back only when both hold, and only by
  :math:`\lambda r` of its new deviation. This follows the authors'
  reference ``AdamSPD`` exactly, for any inner optimizer:

  * the sign test uses the raw gradient given to ``update`` (before the
    inner optimizer), and the parameters before the step;
  * ``weight_decay`` multiplies the projection directly; the learning rate
    enters only through the inner update :math:`u` (it is not multiplied
    into :math:`\lambda`, unlike AdamW's decay);
  * the test is strict: :math:`c = 0`, as at the first step where
    :math:`\theta = \theta_0`, decays nothing. So a decayed leaf always has
    :math:`\|\theta - \theta_0\| > 0`; where the step lands exactly on
    :math:`\theta_0` the reference's ratio is :math:`-\infty`, clipped to
    0, and here :math:`r = 0` is taken directly, without dividing by zero.
    There is no epsilon in the ratio, as in the reference.

  ``spd(optax.adam(lr), weight_decay)`` is the reference ``AdamSPD(lr=lr,
  weight_decay=weight_decay)``. SPD should see the gradient: put it first in
  a chain, or after transformations that only rescale it (e.g.
  ``optax.clip_by_global_norm``), and put weight decay or other update
  transformations inside ``optimizer``. The inner products and norms are
  computed in at least float32 and each update keeps its leaf's dtype.

  Args:
    optimizer: the inner optimizer, any optax transformation; it sees every
      leaf, including those outside ``mask``.
    weight_decay: the SPD strength :math:`\lambda`: a non-negative float or an
      optax schedule of the update count. Values in ``[0, 1]`` keep each
      decayed step between :math:`\tilde\theta` and :math:`\theta_0`; 0 gives
      the inner optimizer unchanged. Injectable with
      ``optax.inject_hyperparams``.
    mask: which leaves SPD acts on (``True``); the others get the inner
      optimizer's update unchanged (e.g. a new head that has no pretrained
      value). A pytree of bools with the structure of the parameters, or a
      prefix of it, or a callable of the params returning one, as in
      ``optax.masked``. Default None: every leaf. Static; with
      ``optax.inject_hyperparams``, a callable ``mask`` must be listed in
      ``static_args``.
    pretrained: the weights :math:`\theta_0`, with the parameters' tree and
      shapes. Default None: the ``params`` given to ``init``. Pass zeros for
      parameter-efficient adapters (such as LoRA) whose pretrained update is
      zero: the reference's ``pre=None``. Stored as a copy cast to the
      parameters' dtypes and, outside ``jit``, placed with their sharding.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` whose state is an
    :class:`SPDState`. Extra keyword arguments of ``update`` are forwarded to
    ``optimizer``; those it does not know are ignored.

  Raises:
    TypeError: if ``optimizer`` is not a transformation, ``weight_decay`` is
      not a number or a schedule, a mask leaf is not a bool, or a parameter is
      not floating-point.
    ValueError: if ``weight_decay`` is negative or not finite, ``params`` is
      missing, or ``mask``, ``pretrained`` or the updates do not match the
      parameters' tree.

  Examples:
    One step where the gradient points back toward the pretrained weights
    (``c < 0``) while momentum carries the parameters farther away: SPD
    removes half (``λ = 0.5``) of the added share ``r`` of the deviation.

    >>> import jax, jax.numpy as jnp, optax, profit_optax
    >>> tx = profit_optax.spd(optax.sgd(1.0, momentum=1.0), weight_decay=0.5)
    >>> state = tx.init(jnp.array([0.0]))  # theta0 = 0
    >>> params = jnp.array([0.0])
    >>> updates, state = tx.update(jnp.array([-1.0]), state, params)
    >>> params = optax.apply_updates(params, updates)  # c = 0: plain step
    >>> print(params)
    [1.]
    >>> updates, state = tx.update(jnp.array([0.5]), state, params)
    >>> print(params + updates)  # theta~ = 1.5, r = 1/3: 1.5 - 0.5 * 1.5 / 3
    [1.25]

    Fine-tuning with AdamSPD on noisy batches, jitted: SPD ends closer to the
    pretrained weights (here zero) than plain Adam (``weight_decay=0``).

    >>> loss = lambda p, x: jnp.sum((p['w'] - x) ** 2)
    >>> def distance_after_fit(weight_decay):
    ...   tx = profit_optax.spd(optax.adam(0.05), weight_decay)
    ...   params = {'w': jnp.zeros(3)}
    ...   state = tx.init(params)
    ...   @jax.jit
    ...   def step(params, state, x):
    ...     grads = jax.grad(loss)(params, x)
    ...     updates, state = tx.update(grads, state, params)
    ...     return optax.apply_updates(params, updates), state
    ...   for key in jax.random.split(jax.random.PRNGKey(0), 200):
    ...     x = 0.5 + jax.random.normal(key, (3,))
    ...     params, state = step(params, state, x)
    ...   return float(jnp.linalg.norm(params['w']))
    >>> print(f"{distance_after_fit(0.0):.2f} {distance_after_fit(1.0):.2f}")
    0.92 0.90

  References:
    Tian et al., `Rethinking Weight Decay for Robust Fine-Tuning of
    Foundation Models <https://arxiv.org/abs/2411.01713>`_, 2024
  """
  _check_transformation("optimizer", optimizer, "optax.adam(1e-4)")
  optimizer = optax.with_extra_args_support(optimizer)
  _check_hyperparameter("weight_decay", weight_decay, _SPD_HINT)
  _check_mask_arg("mask", mask)

  def mask_tree(params):
    return _expand_mask("mask", mask, params, default=True)

  def init_fn(params):
    _check_init_args(params, "spd", mask_tree)
    return SPDState(
      count=jnp.zeros((), jnp.int32),
      inner_state=optimizer.init(params),
      pretrained=_init_pretrained(pretrained, params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    _check_update_args(updates, state, params, "spd", SPDState)
    selected = mask_tree(params)
    inner_updates, inner_state = optimizer.update(
      updates, state.inner_state, params, **extra_args
    )
    _check_updates(inner_updates, params)
    lam = _value_at(weight_decay, state.count)

    def leaf(g, u, p, p0, on):
      if not on:
        return u
      acc = _acc_dtype(jnp.result_type(p))
      progress = p.astype(acc) - p0.astype(acc)  # θ - θ0
      step = u.astype(acc)
      moved = progress + step  # θ~ - θ0, with θ~ = θ + u
      condition = -jnp.sum(g.astype(acc) * progress)
      prev_norm = jnp.sqrt(jnp.sum(progress * progress))
      curr_norm = jnp.sqrt(jnp.sum(moved * moved))
      nonzero = curr_norm > 0
      ratio = jnp.clip(
        (curr_norm - prev_norm) / jnp.where(nonzero, curr_norm, 1.0), 0.0, 1.0
      )
      ratio = jnp.where(nonzero, ratio, 0.0)
      # A select, not a blend: an inf in `moved` must not turn the undecayed
      # update into NaN.
      out = jnp.where(condition < 0, step - (lam * ratio) * moved, step)
      return out.astype(u.dtype)

    new_updates = jax.tree.map(
      leaf, updates, inner_updates, params, state.pretrained, selected
    )
    return new_updates, SPDState(
      count=optax.safe_increment(state.count),
      inner_state=inner_state,
      pretrained=state.pretrained,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
