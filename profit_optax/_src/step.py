"""``profit_step``: one whole PROFIT step over ``n_ref + 1`` batches, jitted."""

from __future__ import annotations

import collections.abc
import functools
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from profit_optax._src.profit import _map_profit, find_profit_state

__all__ = ["ProfitStepOutput", "profit_step"]


class ProfitStepOutput(NamedTuple):
  """What :func:`profit_step` returns.

  Attributes:
    params: the parameters after the PROFIT step.
    opt_state: the optimizer state after the PROFIT step (at a cycle
      boundary). Its ``delta`` is the one passed in: ``Δ`` is not meaningful
      at a boundary, and ``profit_step`` neither reads nor writes it.
    metrics: a dict of arrays: ``loss`` (shape ``(n_ref + 1,)``, the loss of
      each sub-step: ``n_ref`` reference batches, then the main batch at the
      displaced parameters), ``omega``, ``cos``, ``projected`` and
      ``delta_norm`` (scalars, see :class:`ProfitDiagnostics`). With
      ``num_steps=K`` each gains a leading axis of length ``K``.
    model_state: the new model state (e.g. Flax ``batch_stats``) when
      ``model_state`` was given, else ``None``.
    aux: with ``has_aux=True``, the auxiliary output of every sub-step stacked
      on a leading axis of length ``n_ref + 1``; else ``None``.

  Examples:
    >>> import jax.numpy as jnp, optax, profit_optax
    >>> tx = profit_optax.profit(optax.sgd(0.1), ref_learning_rate=0.01)
    >>> def loss_fn(params, batch):
    ...   return jnp.mean((batch - params['w']) ** 2)
    >>> params = {'w': jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> batches = jnp.ones((2, 4, 2))  # n_ref + 1 = 2 batches, stacked
    >>> out = profit_optax.profit_step(loss_fn, tx, params, state, batches)
    >>> sorted(out.metrics)
    ['cos', 'delta_norm', 'loss', 'omega', 'projected']
    >>> out.metrics['loss'].shape, out.model_state, out.aux
    ((2,), None, None)
    >>> params, state = out.params, out.opt_state  # ready for the next step

  References:
    Chakravarthy et al., `PROFIT: A Specialized Optimizer for Deep Fine
    Tuning <https://arxiv.org/abs/2412.01930>`_, 2024
  """

  params: optax.Params
  opt_state: optax.OptState
  metrics: dict[str, jax.Array]
  model_state: Any
  aux: Any


def _with_delta(opt_state: optax.OptState, delta: Any) -> optax.OptState:
  """``opt_state`` with its PROFIT state's ``delta`` replaced."""
  return _map_profit(lambda s: s._replace(delta=delta), opt_state)


def _cycle_start(
  optimizer: optax.GradientTransformation,
  opt_state: optax.OptState,
  params: optax.Params,
) -> optax.OptState:
  """``opt_state`` at the start of a cycle anchored at ``params``.

  Its PROFIT state's count, ``Δ`` and reference-optimizer state are those of
  ``optimizer.init(params)``; the rest (the main optimizer's state, the step
  count, the diagnostics) is kept. At a cycle boundary this changes no value
  that is read (``Δ`` is not, until the first reference call starts it),
  and the count and ``Δ`` become constants of the program: each sub-step's
  phase bookkeeping (the first call of the cycle, whether ``Δ`` grows) is
  known when it compiles, and XLA folds ``Δ``'s zeros into the first
  reference update. A state taken in the middle of a per-call cycle starts a
  new cycle at ``params``.
  """
  fresh = find_profit_state(optimizer.init(params))
  return _map_profit(
    lambda s: s._replace(
      count=fresh.count, ref_state=fresh.ref_state, delta=fresh.delta
    ),
    opt_state,
  )


def _split_loss_output(out: Any, has_aux: bool, with_model_state: bool):
  """Returns (loss, (new_model_state, aux)) from what loss_fn returned."""
  if not with_model_state and not has_aux:
    loss, new_ms, aux = out, None, None
  else:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
      want = (
        "(loss, (new_model_state, aux))"
        if with_model_state and has_aux
        else "(loss, new_model_state)"
        if with_model_state
        else "(loss, aux)"
      )
      raise TypeError(
        f"`loss_fn` must return {want} with these options; got a"
        f" {type(out).__name__}."
      )
    loss, rest = out
    if with_model_state and has_aux:
      if not (isinstance(rest, (tuple, list)) and len(rest) == 2):
        raise TypeError(
          "With `model_state` and `has_aux=True`, `loss_fn` must return"
          " (loss, (new_model_state, aux))."
        )
      new_ms, aux = rest
    elif with_model_state:
      new_ms, aux = rest, None
    else:
      new_ms, aux = None, rest
  if jnp.ndim(loss) != 0:
    raise TypeError(
      "`loss_fn` must return a scalar loss (reduce over the batch, e.g."
      f" with jnp.mean); got shape {jnp.shape(loss)}."
    )
  return loss, (new_ms, aux)


@functools.lru_cache(maxsize=128)
def _build_core(
  loss_fn: Callable[..., Any],
  optimizer: optax.GradientTransformation,
  n_ref: int,
  has_aux: bool,
  with_model_state: bool,
  donate: bool,
  single: bool = False,
):
  """Builds the jitted core once per (loss_fn, optimizer, options).

  The core runs ``K`` PROFIT steps (batches stacked ``[K, n_ref + 1, ...]``)
  in a ``lax.scan``; with ``single``, one step (batches stacked
  ``[n_ref + 1, ...]``, metrics without the leading axis) and no loop at
  all. Inside each step, written out one after the other, the ``n_ref``
  reference sub-steps are calls with ``profit_phase="reference"`` and the
  main sub-step one call with ``profit_phase="main"``, so the phase is
  static: no conditional on it, and under ``jax.vmap`` the reference
  sub-steps do no main-optimizer work. Written out rather than looped, the
  model's gradients compile as they do in a hand-written train step: on
  XLA:CPU a convolution's gradient inside a loop body (even one of a single
  iteration) runs a kernel several times slower.

  The core takes and returns the state without ``Δ`` (``None`` in its
  place). Each step starts a cycle at its parameters (:func:`_cycle_start`),
  with ``Δ`` and the count constants: no pass over ``Δ``, neither a read nor
  a write of a parameter-sized output, and the sub-steps' phase bookkeeping
  compiles away.
  """

  def sub_loss(params, model_state, batch):
    if with_model_state:
      out = loss_fn(params, model_state, batch)
    else:
      out = loss_fn(params, batch)
    return _split_loss_output(out, has_aux, with_model_state)

  value_and_grad = jax.value_and_grad(sub_loss, has_aux=True)

  def sub_step(params, opt_state, model_state, batch, phase):
    # Every sub-step sees the model state of the anchor: the forward passes
    # of the reference sub-steps leave no trace in it.
    (loss, (new_ms, aux)), grads = value_and_grad(params, model_state, batch)
    updates, opt_state = optimizer.update(
      grads, opt_state, params, profit_phase=phase
    )
    return optax.apply_updates(params, updates), opt_state, (loss, new_ms, aux)

  def one_step(carry, batches):
    params, opt_state, model_state = carry
    # The step is a whole cycle from the anchor ``params``; Δ leaves the
    # step stripped from the state.
    opt_state = _cycle_start(optimizer, opt_state, params)
    losses, auxes = [], []
    for i in range(n_ref + 1):  # written out: no loop in the program
      params, opt_state, (loss, new_ms, aux) = sub_step(
        params,
        opt_state,
        model_state,
        jax.tree.map(lambda x, i=i: x[i], batches),
        "reference" if i < n_ref else "main",
      )
      losses.append(loss)
      auxes.append(aux)
    losses = jnp.stack(losses)
    aux = jax.tree.map(lambda *xs: jnp.stack(xs), *auxes)
    # Keep the model state of the main sub-step's forward pass.
    model_state = new_ms if with_model_state else model_state
    diag = find_profit_state(opt_state).diagnostics
    opt_state = _with_delta(opt_state, None)
    metrics = {
      "loss": losses,
      "omega": diag.omega,
      "cos": diag.cos,
      "projected": diag.projected,
      "delta_norm": diag.delta_norm,
    }
    return (params, opt_state, model_state), (metrics, aux)

  def core(params, opt_state, model_state, batches):
    carry = (params, opt_state, model_state)
    if single:
      carry, (metrics, aux) = one_step(carry, batches)
    else:
      carry, (metrics, aux) = jax.lax.scan(one_step, carry, batches)
    params, opt_state, model_state = carry
    return ProfitStepOutput(
      params,
      opt_state,
      metrics,
      model_state if with_model_state else None,
      aux if has_aux else None,
    )

  return jax.jit(core, donate_argnums=(0, 1, 2) if donate else ())


def _stack_batches(batches: Any, n: int, k: int | None) -> Any:
  """Batches stacked ``[k, n, ...]`` (``[n, ...]`` when ``k`` is None).

  Pulls them from an iterator, or checks an already stacked tree.
  """
  lead = (n,) if k is None else (k, n)
  want = (
    f"a leading axis of length n_ref + 1 = {n}"
    if k is None
    else f"leading axes of lengths (num_steps, n_ref + 1) = {lead}"
  )
  if isinstance(batches, collections.abc.Iterator):
    count = n * (k or 1)
    pulled = []
    for _ in range(count):
      try:
        pulled.append(next(batches))
      except StopIteration:
        raise ValueError(
          f"`batches` ran out after {len(pulled)} of the {count} batches"
          f" this call needs ({'' if k is None else f'{k} PROFIT steps of '}"
          f"n_ref + 1 = {n}); nothing was applied. Give an iterator with"
          " enough batches (e.g. cycle over epochs)."
        ) from None
    structs = [jax.tree_util.tree_structure(b) for b in pulled]
    if any(s != structs[0] for s in structs):
      raise ValueError(
        "The batches pulled from `batches` have different tree structures:"
        f" {structs}. Every batch must have the same structure."
      )

    def stack(*xs):
      if any(isinstance(x, jax.Array) for x in xs):
        out = jnp.stack(xs)
      else:
        out = np.stack([np.asarray(x) for x in xs])
      return out if k is None else out.reshape((k, n) + out.shape[1:])

    return jax.tree.map(stack, *pulled)

  leaves = jax.tree_util.tree_leaves(batches)
  if not leaves:
    raise ValueError(
      "`batches` is empty: pass an iterator of batches or a pytree of arrays"
      f" stacked on {want}."
    )
  for leaf in leaves:
    shape = np.shape(leaf)
    if tuple(shape[: len(lead)]) != lead:
      raise ValueError(
        "`batches` must be an iterator of batches, or a pytree whose every"
        f" leaf is stacked on {want}; got a leaf of shape {shape}. Wrap a"
        f" list of batches with iter(...), or stack exactly {lead} batches."
      )
  return batches


def profit_step(
  loss_fn: Callable[..., Any],
  optimizer: optax.GradientTransformation,
  params: optax.Params,
  opt_state: optax.OptState,
  batches: Any,
  *,
  has_aux: bool = False,
  model_state: Any | None = None,
  donate: bool = False,
  num_steps: int | None = None,
) -> ProfitStepOutput:
  """Runs one whole PROFIT step over ``n_ref + 1`` batches in one jitted call.

  A Python driver: it pulls ``n_ref + 1`` batches from ``batches`` (or takes
  them already stacked), then calls a jitted core, built once per
  ``(loss_fn, optimizer, options)`` and cached. Each sub-step computes the
  gradient of ``loss_fn`` on its batch at the current parameters and calls
  ``optimizer.update`` in the one-gradient-per-call mode of :func:`profit`,
  with the phase given statically (``profit_phase``): the ``n_ref``
  reference sub-steps, then the main sub-step, written out one after the
  other with no loop and no conditional on the phase, so that under
  ``jax.vmap`` (a sweep) the reference sub-steps do no main-optimizer work,
  and the model compiles as in a hand-written train step (its compile time
  grows with ``n_ref``). The step matches
  ``n_ref + 1`` hand-written calls exactly, and any chain around PROFIT
  (clipping, masking) sees every gradient.

  With ``num_steps=K``, one call runs ``K`` PROFIT steps in a ``lax.scan``
  (``K * (n_ref + 1)`` batches): one Python dispatch for ``K`` steps, and
  the metrics of every step, stacked on a leading axis of length ``K``. On
  XLA:CPU a convolution's gradient inside a loop body runs a slower kernel:
  for convolutional models there, call once per step (no loop).

  ``optimizer`` must contain a :func:`profit` transformation. Each call is a
  whole cycle anchored at ``params``: ``opt_state`` is at a cycle boundary
  after ``init`` and after every ``profit_step``; one taken in the middle of
  a cycle of per-call updates starts a new cycle at ``params`` (the
  reference steps already taken stay in ``params``; that cycle's ``Δ`` and
  reference-optimizer state are dropped).

  Model state (Flax ``batch_stats`` and the like): every sub-step's forward
  pass sees the model state given here (the anchor's); the updates that the
  reference forward passes make to it are discarded, and the state returned
  is the one produced by the main sub-step's forward pass. Like the
  parameters, the model state is restored to the anchor after the
  exploration, and it absorbs one batch per PROFIT step, as it would in one
  standard training step.

  Args:
    loss_fn: ``loss_fn(params, batch)`` returning a scalar loss, or
      ``(loss, aux)`` with ``has_aux=True``. With ``model_state`` given:
      ``loss_fn(params, model_state, batch)`` returning
      ``(loss, new_model_state)``, or ``(loss, (new_model_state, aux))`` with
      ``has_aux=True``. Define it once: the compiled core is cached per
      function object.
    optimizer: an optax transformation containing a :func:`profit`.
    params: the parameters (the anchor of this step).
    opt_state: the optimizer state (at a cycle boundary, or see above).
    batches: an iterator of batches (``n_ref + 1`` are pulled), or a pytree of
      arrays stacked on a leading axis of length ``n_ref + 1``.
    has_aux: whether ``loss_fn`` returns auxiliary data.
    model_state: optional model state threaded through ``loss_fn``.
    donate: donate ``params``, ``opt_state`` and ``model_state`` to the
      compiled step so that their buffers are reused (lower peak memory); the
      arrays passed in must not be used afterwards.
    num_steps: ``None`` (default) for one PROFIT step, or an int ``K >= 1``
      for ``K`` steps in one call: ``batches`` then yields ``K * (n_ref + 1)``
      batches, or is stacked ``[K, n_ref + 1, ...]``, and every metric (and
      ``aux``) gains a leading axis of length ``K``. Each ``K`` compiles once.

  Returns:
    A :class:`ProfitStepOutput` ``(params, opt_state, metrics, model_state,
    aux)``.

  Raises:
    ValueError: if ``opt_state`` holds no PROFIT state, ``params`` is
      ``None``, or ``batches`` runs dry or is stacked to the wrong length.
    TypeError: if ``loss_fn`` does not return what the options say.

  Examples:
    >>> import jax.numpy as jnp, optax, profit_optax
    >>> tx = profit_optax.profit(optax.sgd(0.1), ref_learning_rate=0.01)
    >>> def loss_fn(params, batch):
    ...   x, y = batch
    ...   return jnp.mean((x @ params['w'] - y) ** 2)
    >>> params = {'w': jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> batches = iter([(jnp.eye(2), jnp.array([1.0, 2.0]))] * 4)
    >>> for _ in range(2):
    ...   out = profit_optax.profit_step(loss_fn, tx, params, state, batches)
    ...   params, state = out.params, out.opt_state
    >>> out.metrics['loss'].shape
    (2,)
    >>> many = iter([(jnp.eye(2), jnp.array([1.0, 2.0]))] * 8)
    >>> out = profit_optax.profit_step(loss_fn, tx, params, state, many,
    ...                                num_steps=4)
    >>> out.metrics['loss'].shape, out.metrics['omega'].shape
    ((4, 2), (4,))

  References:
    Chakravarthy et al., `PROFIT: A Specialized Optimizer for Deep Fine
    Tuning <https://arxiv.org/abs/2412.01930>`_, 2024
  """
  core, args, delta = _core_call(
    loss_fn,
    optimizer,
    params,
    opt_state,
    batches,
    has_aux=has_aux,
    model_state=model_state,
    donate=donate,
    num_steps=num_steps,
  )
  out = core(*args)
  # The state leaves with the Δ it came in with (see ProfitState.delta).
  return out._replace(opt_state=_with_delta(out.opt_state, delta))


def _core_call(
  loss_fn: Callable[..., Any],
  optimizer: optax.GradientTransformation,
  params: optax.Params,
  opt_state: optax.OptState,
  batches: Any,
  *,
  has_aux: bool,
  model_state: Any | None,
  donate: bool,
  num_steps: int | None,
) -> tuple[Callable[..., ProfitStepOutput], tuple[Any, ...], Any]:
  """Checks :func:`profit_step`'s arguments; returns its compiled core, the
  core's arguments ``(params, opt_state without Δ, model_state, batches
  stacked)``, and the state's ``Δ``. The core returns the state without Δ.
  """
  if not callable(loss_fn):
    raise TypeError(f"`loss_fn` must be callable; got {loss_fn!r}.")
  if params is None:
    raise ValueError(
      "`params` is None: pass the model parameters (the anchor of the step)."
    )
  try:
    hash(loss_fn)
    hash(optimizer)
  except TypeError as e:
    raise TypeError(
      "`loss_fn` and `optimizer` must be hashable (the compiled step is"
      " cached per pair); pass a plain function and an optax"
      " transformation."
    ) from e
  if num_steps is not None and (
    isinstance(num_steps, (bool, np.bool_))
    or not isinstance(num_steps, numbers.Integral)
    or num_steps < 1
  ):
    raise ValueError(
      "`num_steps` must be None (one PROFIT step) or an int >= 1 (that many"
      f" PROFIT steps in one call); got {num_steps!r}."
    )
  state = find_profit_state(opt_state)
  if isinstance(state.delta, optax.EmptyState):
    raise TypeError(
      "`profit_step` drives PROFIT one gradient per call, but `optimizer`"
      " was built with `opaque_mode=True`: build it with the default"
      " `opaque_mode=False`."
    )
  n_ref = int(state.n_ref.value)
  stacked = _stack_batches(batches, n_ref + 1, num_steps)
  core = _build_core(
    loss_fn,
    optimizer,
    n_ref,
    bool(has_aux),
    model_state is not None,
    bool(donate),
    num_steps is None,
  )
  # Δ stays out of the core: never donated, and not read.
  bare = _with_delta(opt_state, None)
  return core, (params, bare, model_state, stacked), state.delta
