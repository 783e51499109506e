"""The optimizers a user would pick instead of PROFIT, as optax transforms.

Every one works on plain parameter pytrees, so the benchmarks drive them all
with one training loop: ``optax.lookahead`` needs ``LookaheadParams`` (fast
and slow weights side by side), so :func:`lookahead` keeps the slow weights in
its state instead.
"""

from __future__ import annotations

from typing import NamedTuple

import optax

# Lookahead's defaults from Zhang et al. (2019): k = 5 fast steps, alpha = 0.5.
LOOKAHEAD_SYNC_PERIOD = 5
LOOKAHEAD_SLOW_STEP = 0.5
# SGD with the usual heavy-ball momentum.
SGD_MOMENTUM = 0.9


class _LookaheadState(NamedTuple):
  inner: optax.OptState
  slow: optax.Params


def lookahead(
  fast: optax.GradientTransformation,
  sync_period: int = LOOKAHEAD_SYNC_PERIOD,
  slow_step_size: float = LOOKAHEAD_SLOW_STEP,
) -> optax.GradientTransformation:
  """``optax.lookahead(fast, ...)`` on plain parameters.

  The parameters the caller holds are the fast weights; the slow weights live
  in the state. After every ``sync_period``-th call the two coincide, so a
  run whose number of calls is a multiple of ``sync_period`` ends on the
  slow weights, which Lookahead evaluates.
  """
  inner = optax.lookahead(fast, sync_period, slow_step_size)

  def init(params):
    return _LookaheadState(
      inner.init(optax.LookaheadParams.init_synced(params)), params
    )

  def update(grads, state, params):
    pair = optax.LookaheadParams(fast=params, slow=state.slow)
    updates, inner_state = inner.update(grads, state.inner, pair)
    slow = optax.apply_updates(state.slow, updates.slow)
    return updates.fast, _LookaheadState(inner_state, slow)

  return optax.GradientTransformation(init, update)
