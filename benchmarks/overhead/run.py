"""The measurements: step times against the floor, the optimizer-only cost,
peak memory, compilations and the PyTorch peer."""

from __future__ import annotations

import functools
import os
import re
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import profit_optax
from benchmarks._common import report as rep
from benchmarks.overhead.by_hand import by_hand_main_call, by_hand_step
from benchmarks.overhead.models import MODELS, Model
from benchmarks.overhead.naive import naive_profit
from profit_optax._src import profit as _profit
from profit_optax._src import step as _step

LR, LR_REF = 1e-3, 1e-4


def machine() -> dict:
  """``rep.machine()`` and the 1-minute load average at the start."""
  return {**rep.machine(), "load_average_1m": os.getloadavg()[0]}


def block(tree):
  return jax.block_until_ready(tree)


def compiled_runner(fn: Callable, args: tuple) -> tuple[float, Callable]:
  """(compile seconds, a warmed-up no-argument runner of ``jit(fn)(*args)``)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  run = lambda: block(compiled(*args))
  run()  # warm-up
  return compile_s, run


def interleaved(runners: dict[str, Callable], rounds: int) -> dict:
  """Times every runner once per round, in turn, for ``rounds`` rounds.

  Interleaving puts the variants under the same machine conditions, so that
  a slow spell (another process, frequency scaling) hits all of them rather
  than one: ratios are taken within a round, then the median over rounds.
  Returns ``{name: [seconds of each round]}``.
  """
  times = {name: [] for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  return times


def median_ratio(times: list[float], base: list[float]) -> float:
  """The median over rounds of ``times[r] / base[r]``."""
  return statistics.median(t / b for t, b in zip(times, base))


# -- training loops: all scan over the same pre-made batches ------------------


def per_call_loop(model: Model, tx, unroll: bool = False):
  """One gradient per `update` call, inside a jitted lax.scan (``unroll``:
  the scan written out, no loop left in the compiled program)."""
  grad = jax.grad(model.loss)

  def loop(params, state, batches):
    def body(carry, batch):
      params, state = carry
      updates, state = tx.update(grad(params, batch), state, params)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(body, (params, state), batches, unroll=unroll)[0]

  return loop


def whole_step_loop(model: Model, tx, n: int):
  """The whole PROFIT step in one `update` call (grad_fn), inside lax.scan."""
  grad = jax.grad(model.loss)

  def loop(params, state, batches):
    steps = jax.tree.map(lambda x: x.reshape(-1, n, *x.shape[1:]), batches)

    def body(carry, step_batches):
      params, state = carry
      pick = lambda i: jax.tree.map(lambda x: x[i], step_batches)
      updates, state = tx.update(
        grad(params, pick(0)),
        state,
        params,
        grad_fn=lambda p, i: grad(p, pick(i + 1)),
      )
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(body, (params, state), steps)[0]

  return loop


def _step_chunks(batches, n: int) -> list:
  """The batches of each PROFIT step (``n`` each), ready on the device."""
  steps = jax.tree.leaves(batches)[0].shape[0] // n
  return block(
    [
      jax.tree.map(lambda x, k=k: x[k * n : (k + 1) * n], batches)
      for k in range(steps)
    ]
  )


def _first_run(run: Callable) -> tuple[float, Callable]:
  """(seconds of ``run``'s first call, compilation included; ``run``)."""
  start = time.perf_counter()
  run()
  return time.perf_counter() - start, run


def floor_per_step_runner(model: Model, tx, params, batches, n, unroll):
  """(first call seconds, runner): the floor's ``n`` Adam steps of each
  PROFIT step as one jitted call from Python, once per PROFIT step, as
  ``profit_step`` is called by default (nothing donated): the floor plus
  one dispatch per step. The ``n`` steps are a ``lax.scan``, or with
  ``unroll`` written out (XLA:CPU runs either faster, by model)."""
  call = jax.jit(per_call_loop(model, tx, unroll))
  return _once_per_step(call, tx, params, batches, n)


def _once_per_step(step: Callable, tx, params, batches, n):
  """(first call seconds, runner): ``step(params, state, batches)`` called
  from Python once per PROFIT step (``n`` batches each), from ``params``
  and ``tx.init(params)``."""
  chunks = _step_chunks(batches, n)

  def run():
    p, s = params, tx.init(params)
    for chunk in chunks:
      p, s = step(p, s, chunk)
    return block(p)

  return _first_run(run)


def _adam_config(n_ref: int = 1):
  """The private configuration of the benchmark's PROFIT (Adam, ``LR_REF``),
  for the diagnostics built from PROFIT's pieces."""
  return _profit._Config(
    optax.with_extra_args_support(optax.adam(LR)), None, LR_REF, n_ref, None
  )


def cond_guarded(n_ref: int = 1):
  """A diagnostic, not an option: the benchmark's PROFIT (Adam, ``LR_REF``)
  whose static main call guards against non-finite gradients with a
  ``lax.cond`` (the main step, or the return to the anchor) instead of the
  select of the old and new moments that PROFIT uses; the other calls are
  PROFIT's own."""
  tx = profit_optax.profit(optax.adam(LR), LR_REF, n_ref=n_ref)
  cfg = _adam_config(n_ref)

  def skip(grads, sq_norms, state, params):
    back = jax.tree.map(jnp.negative, state.delta)
    return back, _profit._end_cycle(cfg, state, params)

  def update(grads, state, params, profit_phase=None):
    if profit_phase != "main":
      return tx.update(grads, state, params, profit_phase=profit_phase)
    sq_norms = _profit._sq_norms(grads)
    ok = jnp.logical_and(state.finite, _profit._finite(sq_norms))
    step = functools.partial(_profit._main_call, cfg, {}, None)
    return jax.lax.cond(ok, step, skip, grads, sq_norms, state, params)

  return optax.GradientTransformationExtraArgs(tx.init, update)


def profit_step_runner(
  model: Model, tx, params, batches, n, per_call=True, donate=False
):
  """(first call seconds, runner): ``profit_step`` called from Python once
  per PROFIT step (``per_call``), or once for all of them (``num_steps``),
  with its default ``donate=False`` or with ``donate=True``."""
  steps = jax.tree.leaves(batches)[0].shape[0] // n
  if per_call:
    chunks, kwargs = _step_chunks(batches, n), {}
  else:
    chunks = block(
      [jax.tree.map(lambda x: x.reshape(steps, n, *x.shape[1:]), batches)]
    )
    kwargs = {"num_steps": steps}

  def run():
    p = jax.tree.map(jnp.copy, params) if donate else params
    s = tx.init(p)
    for chunk in chunks:
      out = profit_optax.profit_step(
        model.loss, tx, p, s, chunk, donate=donate, **kwargs
      )
      p, s = out.params, out.opt_state
    return block(p)

  return _first_run(run)


def by_hand_runner(model: Model, params, batches, n, checked: bool):
  """(first call seconds, runner): Algorithm 1 by hand (``by_hand_step``),
  one jitted call per PROFIT step from Python, as ``profit_step`` is called
  (nothing donated)."""
  base = optax.adam(LR)
  step = by_hand_step(model.loss, base, LR_REF, n - 1, checked)
  return _once_per_step(step, base, params, batches, n)


def _passes(compiled, param_bytes: int) -> float:
  """The bytes XLA's cost analysis counts for ``compiled``, in passes over
  ``param_bytes``."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return cost["bytes accessed"] / param_bytes


def step_passes(model: Model, n_ref: int) -> dict:
  """The bytes XLA's cost analysis counts for one PROFIT step called once
  per step, in passes over the parameter bytes: the floor (Adam's ``n_ref +
  1`` steps written out), Algorithm 1 by hand (bare and checked) and
  ``profit_step``. Model work (activations, batches) is counted in all.
  ``profit_step``'s is the program it dispatches (its compiled core, with
  the arguments it passes), not ``profit_step`` traced inside another jit,
  which would add the copy of the ``Δ`` it passes through."""
  n = n_ref + 1
  params = model.init(jax.random.PRNGKey(0))
  batches = model.batches(jax.random.PRNGKey(1), n)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  base = optax.adam(LR)
  steps = {
    "floor": jax.jit(per_call_loop(model, base, unroll=True)),
    "by_hand": by_hand_step(model.loss, base, LR_REF, n_ref),
    "by_hand_checked": by_hand_step(
      model.loss, base, LR_REF, n_ref, checked=True
    ),
  }
  args = (params, base.init(params), batches)
  out = {
    name: _passes(fn.lower(*args).compile(), param_bytes)
    for name, fn in steps.items()
  }
  profit = profit_optax.profit(optax.adam(LR), LR_REF, n_ref=n_ref)
  core, args, _ = _step._core_call(
    model.loss,
    profit,
    params,
    profit.init(params),
    batches,
    has_aux=False,
    model_state=None,
    donate=False,
    num_steps=None,
  )
  out["profit_step"] = _passes(core.lower(*args).compile(), param_bytes)
  return out


# -- the benchmarks -----------------------------------------------------------

# The runners called from Python once per PROFIT step, judged against the
# floor called the same way.
PER_STEP = (
  "profit_step",
  "profit_step_cond_guard",
  "by_hand",
  "by_hand_checked",
  "floor_per_step_scan",
  "floor_per_step_unrolled",
)


def step_times(model: Model, n_ref: int, calls: int, rounds: int) -> dict:
  """Per-PROFIT-step seconds of each drive and of the floor."""
  n = n_ref + 1
  params = model.init(jax.random.PRNGKey(0))
  batches = block(model.batches(jax.random.PRNGKey(1), calls))
  steps = calls // n
  base = optax.adam(LR)
  profit = profit_optax.profit(optax.adam(LR), LR_REF, n_ref=n_ref)
  opaque = profit_optax.profit(optax.adam(LR), LR_REF, n_ref, opaque_mode=True)
  naive = naive_profit(optax.adam(LR), LR_REF, n_ref=n_ref)
  out, runners = {}, {}
  for name, loop, tx in (
    ("floor", per_call_loop(model, base), base),
    ("per_call", per_call_loop(model, profit), profit),
    ("whole_step", whole_step_loop(model, opaque, n), opaque),
    ("naive_blend", per_call_loop(model, naive), naive),
  ):
    compile_s, runners[name] = compiled_runner(
      loop, (params, tx.init(params), batches)
    )
    out[name] = {"compile_s": compile_s}
  first, runners["profit_step"] = profit_step_runner(
    model, profit, params, batches, n
  )
  out["profit_step"] = {"first_call_s": first}
  first, runners["profit_step_k"] = profit_step_runner(
    model, profit, params, batches, n, per_call=False
  )
  out["profit_step_k"] = {"first_call_s": first, "num_steps": steps}
  for name, unroll in (("scan", False), ("unrolled", True)):
    first, runners[f"floor_per_step_{name}"] = floor_per_step_runner(
      model, base, params, batches, n, unroll
    )
    out[f"floor_per_step_{name}"] = {"first_call_s": first}
  first, runners["profit_step_cond_guard"] = profit_step_runner(
    model, cond_guarded(n_ref), params, batches, n
  )
  out["profit_step_cond_guard"] = {"first_call_s": first}
  first, runners["profit_step_donated"] = profit_step_runner(
    model, profit, params, batches, n, donate=True
  )
  out["profit_step_donated"] = {"first_call_s": first}
  for name, checked in (("by_hand", False), ("by_hand_checked", True)):
    first, runners[name] = by_hand_runner(model, params, batches, n, checked)
    out[name] = {"first_call_s": first}
  times = interleaved(runners, rounds)
  # The floor called once per step: round by round, the faster of the two.
  times["floor_per_step"] = [
    min(a, b)
    for a, b in zip(
      times["floor_per_step_scan"], times["floor_per_step_unrolled"]
    )
  ]
  out["floor_per_step"] = {}
  for name, t in times.items():
    out[name]["step_s"] = statistics.median(t) / steps
    out[name]["ratio"] = median_ratio(t, times["floor"])
    out[name]["rounds_s"] = t
  # What is called once per step, against the floor dispatched as often.
  for name in PER_STEP:
    out[name]["ratio_per_step_floor"] = median_ratio(
      times[name], times["floor_per_step"]
    )
  # What profit_step adds to Algorithm 1 written by hand.
  for name in ("by_hand", "by_hand_checked"):
    out["profit_step"][f"ratio_{name}"] = median_ratio(
      times["profit_step"], times[name]
    )
  # Donation, on PROFIT alone (the floors are not donated).
  out["profit_step_donated"]["ratio_undonated"] = median_ratio(
    times["profit_step_donated"], times["profit_step"]
  )
  return out


def optimizer_only(
  n_leaves: int, leaf_size: int, rounds: int, calls: int = 10
) -> dict:
  """One optimizer call of PROFIT vs Adam's, in a jitted train step that
  donates the parameters and the state (as a training loop does), with the
  state carried from call to call.

  The PROFIT calls are timed with the phase given statically
  (``profit_phase``, as ``profit_step`` calls them) and read from the state
  (the ``lax.cond`` of the per-call drive; the count is set before each
  call so that every call is of the phase named). Besides the time: XLA's
  own count of the bytes each compiled step accesses, in passes over the
  parameters (a branch of a conditional is counted whether it runs or not),
  and the parameter-sized copies XLA inserted.
  """
  keys = jax.random.split(jax.random.PRNGKey(0), n_leaves)
  params = {
    f"p{i}": jax.random.normal(k, (leaf_size,)) for i, k in enumerate(keys)
  }
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  grads = jax.tree.map(lambda x: 0.01 * x, params)
  base = optax.adam(LR)
  profit = profit_optax.profit(optax.adam(LR), LR_REF)
  naive = naive_profit(optax.adam(LR), LR_REF)
  variants = {
    "base_update": (base, None, {}),
    # optax's own non-finite guard around Adam (a select of the old and new
    # state): what a guard costs on a plain optimizer.
    "guarded_adam": (optax.apply_if_finite(optax.adam(LR), 10), None, {}),
    "profit_reference_call": (profit, None, {"profit_phase": "reference"}),
    "profit_main_call": (profit, None, {"profit_phase": "main"}),
    "profit_reference_call_cond": (profit, 0, {}),
    "profit_main_call_cond": (profit, 1, {}),
    "naive_main_call": (naive, 1, {}),
    # A diagnostic, not a usable optimizer: the static main call without
    # the non-finite guard (a NaN gradient would corrupt the moments). It
    # measures what the guard costs.
    "profit_main_call_unguarded": (_Unguarded(profit), None, {}),
    # A diagnostic: the static main call guarded by a lax.cond instead.
    "profit_main_call_cond_guard": (
      cond_guarded(),
      None,
      {"profit_phase": "main"},
    ),
    # PROFIT's main call written by hand, with no guard and no bookkeeping:
    # what the algorithm's main call costs on this backend.
    "main_call_by_hand": (by_hand_main_call(optax.adam(LR)), None, {}),
    # What a conditional costs on this backend: Adam alone, inside a
    # lax.cond on a predicate read from the state (both branches Adam).
    "adam_in_cond": (_InCond(base), None, {}),
  }
  out, runners = {}, {}
  for name, (tx, count, kwargs) in variants.items():
    step = _donated_step(tx, count, **kwargs)
    state = tx.init(params)
    start = time.perf_counter()
    compiled = step.lower(grads, params, state).compile()
    out[name] = {"compile_s": time.perf_counter() - start}
    out[name]["passes"] = _passes(compiled, param_bytes)
    out[name]["copies_step"] = _leaf_copies(compiled, leaf_size)
    runners[name] = _carried_runner(compiled, grads, state, params, calls)
    out[name]["fresh_pages"] = _fresh_pages(runners[name], calls, param_bytes)
  times = interleaved(runners, rounds)
  for name, t in times.items():
    out[name]["update_s"] = statistics.median(t) / calls
    out[name]["ratio"] = median_ratio(t, times["base_update"])
  out["n_params"] = n_leaves * leaf_size
  return out


class _Unguarded:
  """PROFIT's main call without its non-finite guard (the private pieces)."""

  def __init__(self, tx):
    self._cfg = _adam_config()
    self.init = tx.init

  def update(self, grads, state, params):
    return _profit._main_call(
      self._cfg, {}, None, grads, _profit._sq_norms(grads), state, params
    )


class _InCond:
  """``tx`` inside a ``lax.cond`` whose two branches are ``tx.update``."""

  def __init__(self, tx):
    self._tx = tx
    self.init = tx.init

  def update(self, grads, state, params):
    pred = optax.tree.get(state, "count") >= 0
    return jax.lax.cond(
      pred, self._tx.update, self._tx.update, grads, state, params
    )


def _donated_step(tx, count=None, **kwargs):
  """A jitted train step (grads, params, state) -> (params, state) that
  donates the parameters and the state; ``count`` fixes the state's count.

  The donated arguments come in the order of the outputs: JAX pairs donated
  buffers with outputs of the same shape in order, so a step that takes
  ``(state, params)`` and returns ``(params, state)`` makes XLA copy buffers
  around (for Adam alone, four copies per leaf).
  """

  def step(grads, params, state):
    if count is not None:
      state = state._replace(count=jnp.full((), count, jnp.int32))
    updates, state = tx.update(grads, state, params, **kwargs)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(1, 2))


def _carried_runner(compiled, grads, state, params, calls: int) -> Callable:
  """A warmed-up runner of ``calls`` calls of ``compiled``, carrying the
  (donated) parameters and state from call to call and across runs."""
  carry = [jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, state)]

  def run():
    p, s = carry
    for _ in range(calls):
      p, s = compiled(grads, p, s)
    carry[:] = [block(p), s]

  run()  # warm-up
  return run


def _fresh_pages(run: Callable, calls: int, param_bytes: int) -> float | None:
  """Memory newly mapped per call, in parameter bytes: the process's minor
  page faults over one (warm) run of ``calls`` calls, times the page size.

  A buffer that XLA:CPU allocates per call outside its reused memory (a
  copy, a temporary) is mapped afresh and faulted in page by page; that
  cost is in the time but not in the passes. ``None`` where the platform
  does not count page faults.
  """
  try:
    import resource  # noqa: PLC0415 (Unix only)
  except ImportError:
    return None
  start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  run()
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
  return faults * resource.getpagesize() / calls / param_bytes


def _leaf_copies(compiled, leaf_size: int) -> int:
  """The number of copy instructions of one leaf's size in compiled HLO."""
  text = compiled.as_text()
  return len(re.findall(rf"= f32\[{leaf_size}\]\{{0\}} copy\(", text))


def _peak_bytes(compiled) -> int | None:
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return (
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )


def memory(model: Model) -> dict:
  """Peak bytes of one compiled train call (params and state donated): Adam,
  PROFIT's per-call drive (the phase read from the state), and PROFIT's
  main call with the phase static (what ``profit_step`` runs)."""
  params = model.init(jax.random.PRNGKey(0))
  batch = jax.tree.map(lambda x: x[0], model.batches(jax.random.PRNGKey(1), 1))
  grad = jax.grad(model.loss)
  out = {"param_bytes": int(sum(x.nbytes for x in jax.tree.leaves(params)))}
  profit = profit_optax.profit(optax.adam(LR), LR_REF)
  for name, tx, kwargs in (
    ("base", optax.adam(LR), {}),
    ("profit", profit, {}),
    ("profit_main", profit, {"profit_phase": "main"}),
    ("profit_main_cond_guard", cond_guarded(), {"profit_phase": "main"}),
  ):

    def call(params, state, batch, tx=tx, kwargs=kwargs):
      updates, state = tx.update(grad(params, batch), state, params, **kwargs)
      return optax.apply_updates(params, updates), state

    compiled = (
      jax.jit(call, donate_argnums=(0, 1))
      .lower(params, tx.init(params), batch)
      .compile()
    )
    out[f"{name}_peak_bytes"] = _peak_bytes(compiled)
  if out["base_peak_bytes"] is not None:
    for name, key in (
      ("profit", "extra"),
      ("profit_main", "extra_main"),
      ("profit_main_cond_guard", "extra_main_cond_guard"),
    ):
      extra = out[f"{name}_peak_bytes"] - out["base_peak_bytes"]
      out[f"{key}_over_param_bytes"] = extra / out["param_bytes"]
  return out


def compile_count(model: Model, steps: int) -> dict:
  """Compilations of a jitted per-call step and of profit_step over ``steps``."""
  tx = profit_optax.profit(optax.adam(LR), LR_REF)
  grad = jax.grad(model.loss)
  params = model.init(jax.random.PRNGKey(0))
  batches = model.batches(jax.random.PRNGKey(1), 2)

  @jax.jit
  def call(params, state, batch):
    updates, state = tx.update(grad(params, batch), state, params)
    return optax.apply_updates(params, updates), state

  p, s = params, tx.init(params)
  for i in range(steps):
    p, s = call(p, s, jax.tree.map(lambda x, i=i: x[i % 2], batches))
  per_call = call._cache_size()
  p, s = params, tx.init(params)
  for _ in range(steps // 2):
    out = profit_optax.profit_step(model.loss, tx, p, s, batches)
    p, s = out.params, out.opt_state
  core = profit_optax._src.step._build_core(
    model.loss, tx, 1, False, False, False, True
  )
  return {"per_call": per_call, "profit_step": core._cache_size()}


def torch_peer(calls: int, rounds: int) -> dict | None:
  """Algorithm 1 written plainly in PyTorch on the toy MLP, vs JAX."""
  try:
    import torch
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count() or 1)
  model = MODELS["mlp"]
  x, y = (np.array(a) for a in model.batches(jax.random.PRNGKey(1), calls))
  net = torch.nn.Sequential(
    torch.nn.Linear(2, 500),
    torch.nn.ReLU(),
    torch.nn.Linear(500, 500),
    torch.nn.ReLU(),
    torch.nn.Linear(500, 1),
  )
  xs, ys = torch.from_numpy(x), torch.from_numpy(y)
  params = list(net.parameters())

  def grads_at(i):
    net.zero_grad(set_to_none=True)
    loss = ((net(xs[i])[:, 0] - ys[i]) ** 2).mean()
    loss.backward()
    return [p.grad for p in params]

  def profit_run():
    opt = torch.optim.Adam(params, lr=LR)
    for i in range(0, calls, 2):
      with torch.no_grad():
        anchor = [p.detach().clone() for p in params]
      g = grads_at(i)
      with torch.no_grad():
        for p, gi in zip(params, g):
          p.sub_(LR_REF * gi)
        delta = [p - a for p, a in zip(params, anchor)]
      g = grads_at(i + 1)
      with torch.no_grad():
        omega = sum((d * gi).sum() for d, gi in zip(delta, g))
        if omega < 0:
          coef = omega / sum((d * d).sum() for d in delta)
          for gi, d in zip(g, delta):
            gi.sub_(coef * d)
        for p, a in zip(params, anchor):
          p.copy_(a)
      opt.step()

  def base_run():
    opt = torch.optim.Adam(params, lr=LR)
    for i in range(calls):
      grads_at(i)
      opt.step()

  # The JAX implementation on the same batches, timed in the same rounds.
  jparams = model.init(jax.random.PRNGKey(0))
  jbatches = block(model.batches(jax.random.PRNGKey(1), calls))
  jtx = profit_optax.profit(optax.adam(LR), LR_REF)
  _, jax_run = compiled_runner(
    per_call_loop(model, jtx), (jparams, jtx.init(jparams), jbatches)
  )
  base_run()
  profit_run()
  times = interleaved(
    {
      "torch_floor": base_run,
      "torch_profit": profit_run,
      "jax_profit": jax_run,
    },
    rounds,
  )
  out = {"torch_version": torch.__version__}
  for name, t in times.items():
    out[name] = {"step_s": statistics.median(t) / (calls // 2)}
  out["torch_profit"]["ratio"] = median_ratio(
    times["torch_profit"], times["torch_floor"]
  )
  out["torch_over_jax"] = median_ratio(
    times["torch_profit"], times["jax_profit"]
  )
  return out
