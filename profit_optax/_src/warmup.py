"""The paper's "PROFIT (warmup)" recipe as one optax transformation.

Chakravarthy et al. (arXiv 2412.01930, Sec. 4, Table 5) fine-tune far from
the pre-training distribution by warming up with AdamW for the first tenth of
training, then switching to PROFIT. :func:`profit_warmup` keeps both states
and switches once, on a count in the state: one compiled ``update`` serves
the whole run.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from profit_optax._src._common import (
  _check_state,
  _check_transformation,
  _dtype_of,
)
from profit_optax._src.profit import (
  _check_params,
  _map_profit,
  _match_state_types,
  find_profit_state,
)

__all__ = ["ProfitWarmupState", "profit_warmup"]

# Keyword arguments meant for PROFIT only: the warmup optimizer never sees
# them.
_PROFIT_ONLY = ("grad_fn", "profit_phase")


class ProfitWarmupState(NamedTuple):
  """State of the transformation returned by :func:`profit_warmup`.

  Attributes:
    count: int32 scalar, how many ``update`` calls have been made
      (saturating). Calls ``0..warmup_steps-1`` step the warmup optimizer;
      the later ones step PROFIT.
    warmup_state: the warmup optimizer's state; ``optax.EmptyState()`` with
      ``share_moments=True``, where the warmup optimizer steps PROFIT's main
      optimizer's state instead.
    profit_state: the state of the PROFIT transformation. It is restarted
      from the parameters at the switch (keeping, with ``share_moments``, the
      main optimizer's state). :func:`find_profit_state` and
      :func:`get_diagnostics` find it in a :class:`ProfitWarmupState`.

  Examples:
    >>> import jax.numpy as jnp, optax, profit_optax
    >>> tx = profit_optax.profit_warmup(
    ...     optax.adamw(1e-3), profit_optax.profit(optax.adamw(1e-3), 1e-4),
    ...     warmup_steps=2)
    >>> params = jnp.ones(3)
    >>> state = tx.init(params)
    >>> for _ in range(4):
    ...   updates, state = tx.update(jnp.ones(3), state, params)
    ...   print(int(state.count), int(state.profit_state.count))
    1 0
    2 0
    3 1
    4 0

  References:
    Chakravarthy et al., `PROFIT: A Specialized Optimizer for Deep Fine
    Tuning <https://arxiv.org/abs/2412.01930>`_, 2024
  """

  count: jax.Array
  warmup_state: optax.OptState
  profit_state: optax.OptState


def _with_inner(state: optax.OptState, inner: optax.OptState) -> Any:
  return _map_profit(lambda s: s._replace(inner_state=inner), state)


def _warmup_call(
  warmup: optax.GradientTransformationExtraArgs,
  share: bool,
  extra_args: dict[str, Any],
  grads: optax.Updates,
  state: ProfitWarmupState,
  params: optax.Params,
) -> tuple[optax.Updates, ProfitWarmupState]:
  """One step of the warmup optimizer; PROFIT's state waits (shared moments
  aside, which this step advances)."""
  if share:
    inner = find_profit_state(state.profit_state).inner_state
    updates, new = warmup.update(grads, inner, params, **extra_args)
    profit_state = _with_inner(
      state.profit_state, _match_state_types(new, inner)
    )
    state = state._replace(profit_state=profit_state)
  else:
    updates, new = warmup.update(
      grads, state.warmup_state, params, **extra_args
    )
    state = state._replace(
      warmup_state=_match_state_types(new, state.warmup_state)
    )
  return optax.tree.cast_like(updates, params), state


def _restart(
  profit_tx: optax.GradientTransformationExtraArgs,
  share: bool,
  profit_state: optax.OptState,
  params: optax.Params,
) -> optax.OptState:
  """PROFIT's state initialised at the parameters of the switch; with
  ``share``, its main optimizer keeps the state the warmup left."""
  fresh = profit_tx.init(params)
  if share:
    fresh = _with_inner(fresh, find_profit_state(profit_state).inner_state)
  return _match_state_types(fresh, profit_state)


def _keep(profit_state: optax.OptState, params: optax.Params) -> Any:
  del params
  return profit_state


def _profit_call(
  profit_tx: optax.GradientTransformationExtraArgs,
  warmup_steps: int,
  share: bool,
  extra_args: dict[str, Any],
  grads: optax.Updates,
  state: ProfitWarmupState,
  params: optax.Params,
) -> tuple[optax.Updates, ProfitWarmupState]:
  """One call of PROFIT, restarted from ``params`` on the first one."""
  profit_state = jax.lax.cond(
    state.count == warmup_steps,
    functools.partial(_restart, profit_tx, share),
    _keep,
    state.profit_state,
    params,
  )
  updates, new = profit_tx.update(grads, profit_state, params, **extra_args)
  new = _match_state_types(new, state.profit_state)
  return optax.tree.cast_like(updates, params), state._replace(profit_state=new)


def profit_warmup(
  warmup_optimizer: optax.GradientTransformation,
  profit_tx: optax.GradientTransformation,
  warmup_steps: int,
  *,
  share_moments: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Warms up with one optimizer, then switches to PROFIT, once.

  The paper's *PROFIT (warmup)* recipe: where the fine-tuning distribution
  is far from the pre-training one, a short AdamW warmup (a tenth of
  training) first moves the model near the new task, and PROFIT fine-tunes
  from there. With :math:`t` the number of ``update`` calls so far and
  :math:`W` = ``warmup_steps``:

  .. math::
    u_t = \begin{cases} O_w(g_t) & t < W \\
    \mathrm{PROFIT}(g_t) & t \ge W \end{cases}

  One gradient per call during the warmup (``warmup_steps`` counts batches).
  PROFIT's state is initialised from the parameters of call :math:`W` (by
  ``profit_tx.init``), so the run equals ``warmup_steps`` steps of the
  warmup optimizer followed by a fresh PROFIT. The switch is a
  ``lax.cond`` on the count in the state: ``update`` compiles once for the
  whole run, and the warmup optimizer does no work after it (nor PROFIT
  before it).

  Moments at the switch: by default (``share_moments=False``) PROFIT's main
  optimizer starts fresh, as the paper's two-phase recipe reads. With
  ``share_moments=True`` the warmup optimizer steps the state of PROFIT's
  main optimizer itself (the two must have states of one structure, e.g.
  ``optax.adamw`` for both), so that PROFIT's main optimizer continues from
  the warmup's moments and step count, with no second copy of them.

  :func:`profit_step` works throughout: during the warmup each of its
  ``n_ref + 1`` sub-steps is one warmup step on its own batch (the phase it
  gives is ignored), and after the switch it drives PROFIT as usual. To keep
  its calls on PROFIT's cycle boundaries, ``warmup_steps`` must be a multiple
  of ``n_ref + 1`` in the one-gradient-per-call drive (``init`` checks). In
  opaque mode (``opaque_mode=True``) a warmup call is one step on ``grads``
  (``grad_fn`` is not called) and each later call a whole PROFIT step.

  Args:
    warmup_optimizer: the optimizer of the warmup, e.g. ``optax.adamw(lr)``.
    profit_tx: a :func:`profit` transformation, or a transformation
      containing exactly one (e.g. in an ``optax.chain``).
    warmup_steps: how many ``update`` calls (batches) the warmup takes, a
      static int >= 0 (the paper: 10 % of training).
    share_moments: whether PROFIT's main optimizer continues from the
      warmup optimizer's state (``True``) or starts fresh (``False``).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` whose state is a
    :class:`ProfitWarmupState`. ``update`` forwards its keyword arguments to
    PROFIT, and all but ``grad_fn`` and ``profit_phase`` to the warmup
    optimizer.

  Raises:
    TypeError: if an optimizer is not a transformation, or ``warmup_steps``
      is not an int.
    ValueError: if ``warmup_steps < 0``; at ``init``, if ``profit_tx`` holds
      no PROFIT, ``warmup_steps`` is not a multiple of ``n_ref + 1``, or, with
      ``share_moments``, the two optimizers' states differ in structure.

  Examples:
    AdamW for the first 4 batches, then PROFIT (2 batches a step):

    >>> import jax, jax.numpy as jnp, optax, profit_optax
    >>> tx = profit_optax.profit_warmup(
    ...     optax.adamw(0.1), profit_optax.profit(optax.adamw(0.1), 0.01),
    ...     warmup_steps=4, share_moments=True)
    >>> params = jnp.array([1.0, -1.0])
    >>> state = tx.init(params)
    >>> update = jax.jit(tx.update)
    >>> loss = lambda p: jnp.sum((p - 0.5) ** 2)
    >>> for _ in range(10):
    ...   updates, state = update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> int(profit_optax.find_profit_state(state).step), update._cache_size()
    (3, 1)

  References:
    Chakravarthy et al., `PROFIT: A Specialized Optimizer for Deep Fine
    Tuning <https://arxiv.org/abs/2412.01930>`_, 2024
  """
  _check_transformation("warmup_optimizer", warmup_optimizer)
  _check_transformation("profit_tx", profit_tx)
  warmup = optax.with_extra_args_support(warmup_optimizer)
  profit_tx = optax.with_extra_args_support(profit_tx)
  if isinstance(warmup_steps, (bool, np.bool_)) or not isinstance(
    warmup_steps, numbers.Integral
  ):
    raise TypeError(
      "`warmup_steps` must be a static Python int (the number of update"
      f" calls of the warmup); got {warmup_steps!r}."
    )
  if warmup_steps < 0:
    raise ValueError(
      f"`warmup_steps` must be >= 0 (the paper warms up for 10 % of"
      f" training); got {warmup_steps}."
    )
  warmup_steps = int(warmup_steps)
  share = bool(share_moments)

  def init_fn(params):
    _check_params(params)
    profit_state = profit_tx.init(params)
    found = find_profit_state(profit_state)  # raises if none, or several
    n = int(found.n_ref.value) + 1
    if not isinstance(found.delta, optax.EmptyState) and warmup_steps % n:
      raise ValueError(
        f"`warmup_steps` ({warmup_steps}) must be a multiple of n_ref + 1 ="
        f" {n}, so that PROFIT's cycles (and `profit_step`'s calls) start on"
        f" a cycle boundary after the warmup; use e.g."
        f" {warmup_steps - warmup_steps % n or n}."
      )
    warmup_state = warmup.init(params)
    if share:
      inner = found.inner_state
      same = jax.tree_util.tree_structure(
        warmup_state
      ) == jax.tree_util.tree_structure(inner) and all(
        jnp.shape(a) == jnp.shape(b) and _dtype_of(a) == _dtype_of(b)
        for a, b in zip(
          jax.tree_util.tree_leaves(warmup_state),
          jax.tree_util.tree_leaves(inner),
        )
      )
      if not same:
        raise ValueError(
          "`share_moments=True` needs a warmup optimizer whose state has the"
          " structure of PROFIT's main optimizer's (the same optimizer, e.g."
          " optax.adamw for both); got"
          f" {jax.tree_util.tree_structure(warmup_state)} and"
          f" {jax.tree_util.tree_structure(inner)}. Use the same optimizer,"
          " or `share_moments=False`."
        )
      profit_state = _with_inner(profit_state, warmup_state)
      warmup_state = optax.EmptyState()
    return ProfitWarmupState(
      count=jnp.zeros((), jnp.int32),
      warmup_state=warmup_state,
      profit_state=profit_state,
    )

  def update_fn(updates, state, params=None, **extra_args):
    _check_params(params)
    _check_state(state, ProfitWarmupState)
    warmup_args = {k: v for k, v in extra_args.items() if k not in _PROFIT_ONLY}
    # The branches close over the keyword arguments (which may be
    # callables); the arrays are the operands.
    updates, state = jax.lax.cond(
      state.count < warmup_steps,
      functools.partial(_warmup_call, warmup, share, warmup_args),
      functools.partial(
        _profit_call, profit_tx, warmup_steps, share, extra_args
      ),
      updates,
      state,
      params,
    )
    return updates, state._replace(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
