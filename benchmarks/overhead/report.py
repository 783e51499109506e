"""The overhead report: markdown from the measured results."""

from __future__ import annotations

import statistics

TARGETS = {"mlp": 1.05, "cnn": 1.05, "transformer": 1.05}


def to_markdown(res: dict, command: str) -> str:
  m = res["machine"]
  lines = [
    "# PROFIT overhead benchmark",
    "",
    f"Command: `{command}`",
    "",
    f"Machine: {m['device']} ({m['backend']}), {m['cpu_count']} cores,"
    f" {m['processor']}; jax {m['jax']}, optax {m['optax']}; 1-minute load"
    f" average {m['load_average_1m']:.2f} at the start and"
    f" {res['load_average_end_1m']:.2f} at the end (a quiet machine reads"
    " below its core count; other processes make the absolute times, not the"
    " within-round ratios, unreliable).",
    "",
    "## Time per PROFIT step, relative to the floor",
    "",
    "The floor is `n_ref + 1` steps of Adam alone on the same model and"
    " batches, run as the drive it is compared with runs. The loops"
    " (per-call drive, whole-step drive, `profit_step k`, the naive blend)"
    " are one jitted `lax.scan` over all the calls, and so is their *scan"
    " floor*. `profit_step` is called from Python once per PROFIT step; its"
    " floor, *one call per step*, is Adam's `n_ref + 1` steps as one jitted"
    " call per PROFIT step: round by round, the faster of a `lax.scan` over"
    " them and the same steps written out. Each ratio is the median over"
    " interleaved rounds of the ratio within a round; ratios below 1.0 are"
    " timing noise. *met* judges the slowest of the four drives against its"
    " own floor and gives the quartiles of its ratio over the rounds, to"
    " tell a miss from noise. *scan ÷ one call*: the two floors per step;"
    " on XLA:CPU a convolution's gradient inside a loop body runs a slower"
    " kernel, so on the CNN the scan floor is several times the floor called"
    " once per step, and the loops' ratios there compare PROFIT's extra work"
    " with an inflated floor.",
    "",
    "| model | params | n_ref | scan floor ms | per-call drive"
    " | whole-step drive | profit_step k | naive blend"
    " | one call per step: floor ms | profit_step | scan ÷ one call"
    " | target | met |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    " ---: | ---: | --- |",
  ]
  # Each drive against its own floor: (label, ratio key, floor).
  drives = {
    "per_call": ("per-call", "ratio", "floor"),
    "whole_step": ("whole-step", "ratio", "floor"),
    "profit_step_k": ("profit_step k", "ratio", "floor"),
    "profit_step": ("profit_step", "ratio_per_step_floor", "floor_per_step"),
  }
  for row in res["steps"]:
    t = row["times"]
    slowest = max(drives, key=lambda k: t[k][drives[k][1]])
    label, key, base = drives[slowest]
    target = TARGETS[row["model"]]
    floors = t["floor"]["step_s"] / t["floor_per_step"]["step_s"]
    lines.append(
      f"| {row['model']} | {row['params']:,} | {row['n_ref']} |"
      f" {1e3 * t['floor']['step_s']:.2f} | {t['per_call']['ratio']:.3f} |"
      f" {t['whole_step']['ratio']:.3f} | {t['profit_step_k']['ratio']:.3f} |"
      f" {t['naive_blend']['ratio']:.3f} |"
      f" {1e3 * t['floor_per_step']['step_s']:.2f} |"
      f" {t['profit_step']['ratio_per_step_floor']:.3f} | {floors:.2f} |"
      f" ≤ {target} | {'yes' if t[slowest][key] <= target else 'NO'}"
      f" ({label} {_quartiles(t, slowest, base)}) |"
    )
  o = res["optimizer_only"]
  base_passes = o["base_update"]["passes"]
  lines += [
    "",
    "`profit_step` is called once per PROFIT step with its defaults;"
    " `profit_step k` is `profit_step(..., num_steps=k)`: all the loop's"
    " PROFIT steps in one call (target ≤ 1.03 on the MLP:"
    f" {'met' if all(r['times']['profit_step_k']['ratio'] <= 1.03 for r in res['steps'] if r['model'] == 'mlp') else 'NOT met'}).",
    "",
  ]
  lines += _by_hand_steps(res)
  lines += [""]
  lines += _diagnostic_steps(res)
  lines += [
    "",
    f"## Optimizer only: one call on {o['n_params']:,} parameters"
    f" in {res['optimizer_only_leaves']} leaves",
    "",
    "Each call is a jitted train step (`update` and `apply_updates`) that"
    " donates the parameters and the state, carried from call to call."
    " *static*: the phase given by `profit_phase` (how `profit_step` calls"
    " it); *cond*: read from the state by the per-call drive's `lax.cond`."
    " Passes: the bytes XLA's cost analysis counts for the compiled step,"
    " divided by the parameter bytes (a conditional's two branches are both"
    " counted). `profit_main_call_unguarded` is a diagnostic, not an option:"
    " the static main call without the guard that keeps a non-finite"
    " gradient from corrupting the moments (a select of the old and new"
    " moments, or a conditional), to measure what the guard costs."
    " `guarded_adam` is optax's own guard, `optax.apply_if_finite` around"
    " Adam. `profit_main_call_cond_guard` (a diagnostic) guards the static"
    " main call with a `lax.cond` instead of the select; `adam_in_cond` is"
    " Adam alone inside a `lax.cond` whose two branches are Adam (a"
    " predicate read from the state): what a conditional costs on this backend"
    " for the same work. `main_call_by_hand` is the main call written by"
    " hand (`benchmarks/overhead/by_hand.py`): Δ read from the state, the"
    " anchor, ω, the projection and Adam's step, with no guard and no"
    " bookkeeping; what the algorithm's main call costs here."
    " Fresh pages: memory newly mapped per call (minor page faults"
    " times the page size), in parameter bytes: buffers XLA allocates per"
    " call, faulted in page by page, a cost in the time but not in the"
    " passes.",
    "",
    "| call | ms | × Adam | passes | × Adam's passes | XLA copies per leaf"
    " | fresh pages |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for k in (
    "base_update",
    "guarded_adam",
    "profit_reference_call",
    "profit_main_call",
    "profit_reference_call_cond",
    "profit_main_call_cond",
    "naive_main_call",
    "profit_main_call_unguarded",
    "main_call_by_hand",
    "profit_main_call_cond_guard",
    "adam_in_cond",
  ):
    if k not in o:
      continue
    lines.append(
      f"| {k} | {1e3 * o[k]['update_s']:.2f} | {o[k]['ratio']:.2f} |"
      f" {o[k]['passes']:.1f} | {o[k]['passes'] / base_passes:.2f} |"
      f" {o[k]['copies_step'] / res['optimizer_only_leaves']:.1f} |"
      f" {_num(o[k].get('fresh_pages'))} |"
    )
  worst = max(
    o[k]["ratio"] for k in ("profit_main_call", "profit_main_call_cond")
  )
  lines += [
    "",
    f"Target: main call ≤ 1.6 × Adam's: {'met' if worst <= 1.6 else 'NOT met'}"
    f" (worst of the two main calls: {worst:.2f}).",
    "",
    "## Peak memory of one compiled train call (params and state donated)",
    "",
    "Adam's step (base), PROFIT's per-call drive (the phase read from the",
    "state) and PROFIT's main call with the phase static (what `profit_step`",
    "runs); extra: the peak above base, in parameter bytes. *cond guard*: the",
    "static main call guarded by a `lax.cond` instead (a diagnostic, as",
    "above; not in the target).",
    "",
    "| model | param MB | base peak MB | PROFIT peak MB | extra / param bytes"
    " | static main call peak MB | its extra | target ≤ 1.1 | cond guard:"
    " its extra |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
  ]
  for name, mem in res["memory"].items():
    if mem["base_peak_bytes"] is None:
      lines.append(
        f"| {name} | {mem['param_bytes'] / 2**20:.2f} | n/a | n/a | n/a |"
        " n/a | n/a | | n/a |"
      )
      continue
    ratio = mem["extra_over_param_bytes"]
    main = mem.get("extra_main_over_param_bytes")
    worst = max(ratio, ratio if main is None else main)
    main_cells = (
      "n/a | n/a"
      if main is None
      else f"{mem['profit_main_peak_bytes'] / 2**20:.2f} | {main:.2f}"
    )
    lines.append(
      f"| {name} | {mem['param_bytes'] / 2**20:.2f} |"
      f" {mem['base_peak_bytes'] / 2**20:.2f} |"
      f" {mem['profit_peak_bytes'] / 2**20:.2f} | {ratio:.2f} |"
      f" {main_cells} | {'yes' if worst <= 1.1 else 'NO'} |"
      f" {_num(mem.get('extra_main_cond_guard_over_param_bytes'))} |"
    )
  lines += [
    "",
    "## Compilations",
    "",
    "| model | steps | per-call jitted step | profit_step core |",
    "| --- | ---: | ---: | ---: |",
  ]
  for name, c in res["compiles"].items():
    lines.append(
      f"| {name} | {res['compile_steps']} | {c['per_call']} | {c['profit_step']} |"
    )
  lines += ["", "Compile seconds (first compilation of each loop):", ""]
  lines += ["| model | n_ref | floor | per-call | whole-step | naive |"]
  lines += ["| --- | ---: | ---: | ---: | ---: | ---: |"]
  for row in res["steps"]:
    t = row["times"]
    lines.append(
      f"| {row['model']} | {row['n_ref']} | {t['floor']['compile_s']:.2f} |"
      f" {t['per_call']['compile_s']:.2f} | {t['whole_step']['compile_s']:.2f} |"
      f" {t['naive_blend']['compile_s']:.2f} |"
    )
  tp = res.get("torch")
  lines += ["", "## PyTorch peer (toy MLP, n_ref = 1, same CPU)", ""]
  if tp is None:
    lines.append("torch not installed: skipped.")
  else:
    jax_mlp = next(
      r["times"]
      for r in res["steps"]
      if r["model"] == "mlp" and r["n_ref"] == 1
    )
    lines += [
      f"torch {tp['torch_version']}, {m['cpu_count']} threads.",
      "",
      "| implementation | ms per PROFIT step | × its own floor |",
      "| --- | ---: | ---: |",
      f"| profit_optax (per-call drive) | {1e3 * jax_mlp['per_call']['step_s']:.2f}"
      f" | {jax_mlp['per_call']['ratio']:.3f} |",
      f"| profit_optax (profit_step) | {1e3 * jax_mlp['profit_step']['step_s']:.2f}"
      f" | {jax_mlp['profit_step']['ratio_per_step_floor']:.3f} |",
      f"| PyTorch, Algorithm 1 | {1e3 * tp['torch_profit']['step_s']:.2f} |"
      f" {tp['torch_profit']['ratio']:.3f} |",
      "",
      "profit_optax (per-call drive, timed in the same rounds as PyTorch:"
      f" {1e3 * tp['jax_profit']['step_s']:.2f} ms) is"
      + (
        f" {tp['torch_over_jax']:.2f}× faster"
        if tp["torch_over_jax"] >= 1
        else f" {1 / tp['torch_over_jax']:.2f}× slower"
      )
      + " per PROFIT step than the PyTorch implementation.",
    ]
  return "\n".join(lines) + "\n"


def _by_hand_steps(res: dict) -> list[str]:
  """The table that splits ``profit_step``'s ratio into the algorithm's
  cost and the package's."""
  lines = [
    "What the algorithm costs and what `profit_step` adds, called once per"
    " step (same rounds). *by hand*: Algorithm 1 written out as one jitted"
    " function (`benchmarks/overhead/by_hand.py`): SGD reference steps, Δ,"
    " the projection and Adam's step from the anchor, nothing else;"
    " *checked*: the same with the package's handling of non-finite"
    " gradients (each gradient's squared norm before its step, selects that"
    " hold the step). Times against the floor called once per step, and"
    " `profit_step` against each. Passes: the bytes XLA's cost analysis"
    " counts for one step's compiled call, model work included, in passes"
    " over the parameter bytes.",
    "",
    "| model | n_ref | floor passes | by hand passes | checked passes"
    " | profit_step passes | by hand | checked | profit_step"
    " | profit_step ÷ by hand | profit_step ÷ checked |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    " ---: |",
  ]
  for row in res["steps"]:
    t, p = row["times"], row["passes"]
    lines.append(
      f"| {row['model']} | {row['n_ref']} | {p['floor']:.1f} |"
      f" {p['by_hand']:.1f} | {p['by_hand_checked']:.1f} |"
      f" {p['profit_step']:.1f} |"
      f" {t['by_hand']['ratio_per_step_floor']:.3f} |"
      f" {t['by_hand_checked']['ratio_per_step_floor']:.3f} |"
      f" {t['profit_step']['ratio_per_step_floor']:.3f} |"
      f" {t['profit_step']['ratio_by_hand']:.3f} |"
      f" {t['profit_step']['ratio_by_hand_checked']:.3f} |"
    )
  return lines


def _diagnostic_steps(res: dict) -> list[str]:
  """The table that takes the misses apart."""
  lines = [
    "What the misses are made of, in the same rounds. Against the scan"
    " floor: the floor called once per step, written as a `lax.scan` and"
    " written out (unrolled), and `profit_step`. *donated ÷ not*:"
    " `profit_step(..., donate=True)` against `profit_step`'s default (no"
    " donation, as the floors). *cond guard* (a diagnostic), against the"
    " floor called once per step: `profit_step` whose main call guards"
    " against non-finite gradients with a `lax.cond` instead of the select.",
    "",
    "| model | n_ref | one call per step, scan | one call per step, unrolled"
    " | profit_step | profit_step, donated ÷ not"
    " | profit_step, cond guard |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for row in res["steps"]:
    t = row["times"]
    lines.append(
      f"| {row['model']} | {row['n_ref']} |"
      f" {t['floor_per_step_scan']['ratio']:.3f} |"
      f" {t['floor_per_step_unrolled']['ratio']:.3f} |"
      f" {t['profit_step']['ratio']:.3f} |"
      f" {t['profit_step_donated']['ratio_undonated']:.3f} |"
      f" {t['profit_step_cond_guard']['ratio_per_step_floor']:.3f} |"
    )
  return lines


def _quartiles(times: dict, name: str, base: str) -> str:
  """The first and third quartiles over the rounds of ``name``'s ratio to
  the floor ``base``, from the rounds' seconds."""
  ratios = sorted(
    a / b for a, b in zip(times[name]["rounds_s"], times[base]["rounds_s"])
  )
  if len(ratios) < 2:  # a smoke run's single round
    return f"{ratios[0]:.3f}, one round"
  q1, q3 = statistics.quantiles(ratios, n=4, method="inclusive")[::2]
  return f"{q1:.3f}–{q3:.3f}"


def _num(value) -> str:
  """A number to two decimals, or n/a where the backend or an older run has
  none (peak memory, fresh pages)."""
  return "n/a" if value is None else f"{value:.2f}"
