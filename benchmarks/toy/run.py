"""Runs of the toy benchmark: the calibration grid, pretraining, fine-tuning
along every front, and the curvature measurements. Returns records only."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from tqdm.auto import tqdm

import profit_optax
from benchmarks._common import cache, loop
from benchmarks.toy import task

CHUNK = 250  # update calls per compiled chunk
EVAL_EVERY = 1_000  # pretraining steps between convergence-curve points

# The calibration grid (the paper's unknowns).
GRID_BATCHES = (32, 128, 512)
GRID_SCHEDULES = ("constant", "cosine")
GRID_DECAYS = (0.9, 0.99)  # tested at the chosen (batch, schedule) only

# The fronts. Every family has its Table-1 configuration among its knobs.
FULL_LRS = (1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3)
WISE_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
RATIOS = (10, 100, 1000, 10000)
N_REFS = (1, 2, 3, 5)
DEFAULT_RATIO, DEFAULT_N_REF = 10, 1

# The fine-tuning-without-forgetting toolkit (``--toolkit``), each wrapping
# RMSProp at the fine-tuning rate. Knob grids, from weak to strong:
# - ``ref_trust_radius`` bounds ‖Δ‖ / ‖anchor‖. At the pretrained weights a
#   reference step at lr/10 is ~1e-6 of ‖anchor‖ on a flat seed and ~5e-5 on
#   a steep one (λ_max ~ 300), so 1e-6 binds on every seed, 1e-4 only once a
#   steep seed's gradient grows, 1e-2 only in a blow-up.
# - L2-SP's alpha: full fine-tuning moves a hidden weight by ~5e-3 (RMS) and
#   its gradient at the pretrained weights is ~1e-3 on a flat seed, ~3e-2 on
#   a steep one, so the pull alpha (w - w0) is negligible at 1e-3, matches
#   the gradient at ~0.3 (flat) to ~5 (steep) and dominates at 100.
# - FTP's k lies in [0, 1] (0: the radius only grows; 1: the reference).
# - SPD's weight_decay in (0, 1] keeps a decayed step between the inner
#   step and the pretrained weights (1: the whole added deviation).
TRUST_RADII = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
L2SP_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
FTP_KS = (0.0, 0.25, 0.5, 0.75, 1.0)
SPD_DECAYS = (0.03, 0.1, 0.3, 1.0)
# PROFIT (warmup): the warmup optimizer takes this share of the run's
# update calls (batches), as the paper's 10 of 100 epochs.
WARMUP_SHARE = 0.1
TOOLKIT_FRONTS = (
  "profit-trust",
  "profit-precond",
  "profit-leaf",
  "profit-warmup",
  "l2sp",
  "ftp",
  "spd",
)


@dataclasses.dataclass(frozen=True)
class Config:
  finetune: task.FineTune = task.FineTune()
  pretrain_steps: int = 10_000
  chunk: int = CHUNK
  eval_every: int = EVAL_EVERY

  def quick(self) -> Config:
    return dataclasses.replace(
      self,
      finetune=dataclasses.replace(self.finetune, steps=100),
      pretrain_steps=200,
      chunk=50,
      eval_every=100,
    )


def _keys(seed: int) -> dict[str, jax.Array]:
  key = jax.random.PRNGKey(seed)
  return {
    name: jax.random.fold_in(key, i)
    for name, i in (
      ("init", 0),
      ("pretrain", 1),
      ("finetune", 2000),
      ("eval", 99),
      ("hessian", 7),
    )
  }


def pretrain(
  protocol: task.Protocol,
  seed: int,
  cfg: Config,
  use_cache: bool = True,
  curve: list | None = None,
) -> task.Params:
  """The baseline of ``seed`` under ``protocol`` (cached).

  ``curve``, if given, receives ``(step, mse_old, mse_new)`` every
  ``cfg.eval_every`` steps (only when the weights are computed, not loaded).
  """
  protocol = dataclasses.replace(protocol, steps=cfg.pretrain_steps)
  keys = _keys(seed)
  template = task.init_mlp(keys["init"])
  make_tx = lambda _: protocol.optimizer()

  def build():
    run = loop.make_runner(
      task.mse_loss,
      make_tx,
      task.sampler(protocol.batch, task.OLD_DOMAIN),
      cfg.chunk,
    )
    per_eval = cfg.eval_every // cfg.chunk

    def on_chunk(k, params):
      if curve is not None and (k + 1) % per_eval == 0:
        m = task.evaluate(params, keys["eval"])
        curve.append(
          ((k + 1) * cfg.chunk, float(m["mse_old"]), float(m["mse_new"]))
        )

    params, _ = loop.train(
      run,
      template,
      make_tx(0).init(template),
      keys["pretrain"],
      0.0,
      None,
      protocol.steps // cfg.chunk,
      on_chunk,
    )
    return params

  fields = {**dataclasses.asdict(protocol), "seed": seed, "chunk": cfg.chunk}
  return cache.cached("toy", fields, template, build, use_cache)


def _evaluate(params, seed) -> dict[str, float]:
  return {
    k: float(v) for k, v in task.evaluate(params, _keys(seed)["eval"]).items()
  }


def calibrate(
  seeds,
  cfg: Config,
  use_cache=True,
  progress=True,
  batches=GRID_BATCHES,
  schedules=GRID_SCHEDULES,
) -> list[dict]:
  """Pretrained errors of every grid cell and seed, with convergence curves.

  The batch x schedule grid runs at RMSProp decay 0.9; the decay is then
  varied at the cell closest to the paper's baseline row (``choose``).
  """
  records = []

  def cell(protocol, seed):
    curve = []
    params = pretrain(protocol, seed, cfg, use_cache, curve)
    common = {
      "protocol": "grid",
      "batch": protocol.batch,
      "schedule": protocol.schedule,
      "decay": protocol.decay,
      "seed": seed,
      "method": "pretrained",
    }
    for metric, value in _evaluate(params, seed).items():
      records.append({**common, "metric": metric, "value": value})
    for step, old, _ in curve:
      records.append(
        {**common, "metric": "curve_mse_old", "step": step, "value": old}
      )

  grid = list(itertools.product(batches, schedules, seeds))
  for b, s, seed in tqdm(grid, desc="calibration grid", disable=not progress):
    cell(task.Protocol(batch=b, schedule=s), seed)
  best = choose(records)
  for decay in GRID_DECAYS:
    if decay == best.decay:
      continue
    for seed in tqdm(seeds, desc=f"decay {decay}", disable=not progress):
      cell(dataclasses.replace(best, decay=decay), seed)
  return records


def distance_to_paper(old: float, new: float) -> float:
  """|log(old / 0.0054)| + |log(new / 1.907)|: how far a cell's median
  pretrained errors are from the paper's baseline row (Table 1)."""
  p_old, p_new = task.PAPER_TABLE1["pretrained"]
  return abs(jnp.log(old / p_old)) + abs(jnp.log(new / p_new))


def cells(records) -> dict[tuple, dict[str, list[float]]]:
  """``{(batch, schedule, decay): {metric: [value per seed]}}``."""
  out = {}
  for r in records:
    if r["metric"] in ("mse_old", "mse_new"):
      key = (r["batch"], r["schedule"], r["decay"])
      out.setdefault(key, {}).setdefault(r["metric"], []).append(r["value"])
  return out


def choose(records) -> task.Protocol:
  """The grid cell whose medians are closest to the paper's baseline row."""
  import statistics

  scored = []
  for (b, s, d), m in cells(records).items():
    dist = float(
      distance_to_paper(
        statistics.median(m["mse_old"]), statistics.median(m["mse_new"])
      )
    )
    scored.append((dist, b, s, d))
  _, b, s, d = min(scored)
  return task.Protocol(batch=b, schedule=s, decay=d)


# -- fine-tuning --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Family:
  """Runs that share one compiled program: ``make_tx(knob)`` with a traced
  knob, ``calls_per_step`` update calls per optimizer step."""

  name: str
  knob_name: str
  knobs: tuple[float, ...]
  make_tx: Callable[[jax.Array], optax.GradientTransformation]
  calls_per_step: int = 1
  # PROFIT families: the reference rate of a knob (recorded with its
  # stability, ``lr_ref < 2 / lambda_max``); None for the others.
  lr_ref: Callable[[float], float] | None = None
  # A knob that must be a Python number (e.g. ``ref_trust_radius``): one
  # compiled program per knob instead of one for the family.
  static: bool = False

  def builder(self, knob: float):
    """``hyper -> transformation`` of the run at ``knob``."""
    if self.static:
      return lambda _: self.make_tx(knob)
    return self.make_tx


def families(cfg: Config, n_refs=N_REFS, ratios=RATIOS) -> list[Family]:
  lr = cfg.finetune.lr
  out = [
    Family("full", "lr", FULL_LRS, lambda x: optax.rmsprop(x)),
    Family("head", "lr", (lr,), lambda x: task.head_only(optax.rmsprop(x))),
    Family(
      "profit-ratio",
      "ratio",
      tuple(float(r) for r in ratios),
      lambda r: profit_optax.profit(
        optax.rmsprop(lr), lr / r, n_ref=DEFAULT_N_REF
      ),
      DEFAULT_N_REF + 1,
      lambda r: lr / r,
    ),
  ]
  for k in n_refs:
    if k != DEFAULT_N_REF:
      out.append(
        Family(
          f"profit-nref{k}",
          "n_ref",
          (float(k),),
          lambda _, k=k: profit_optax.profit(
            optax.rmsprop(lr), lr / DEFAULT_RATIO, n_ref=k
          ),
          k + 1,
          lambda _: lr / DEFAULT_RATIO,
        )
      )
  return out


def warmup_calls(cfg: Config, n_ref: int = DEFAULT_N_REF) -> int:
  """The update calls of PROFIT (warmup)'s warmup: ``WARMUP_SHARE`` of the
  run's calls, rounded to a multiple of ``n_ref + 1`` (a PROFIT cycle)."""
  cycle = n_ref + 1
  return cycle * round(WARMUP_SHARE * cfg.finetune.steps)


def _leaves_of(part: str) -> dict[str, bool]:
  """The mask of the ``"head"``'s (the last layer's) or the ``"backbone"``'s
  leaves."""
  return {k: (k in task.HEAD_KEYS) == (part == "head") for k in task.PARAM_KEYS}


def toolkit_families(cfg: Config, ratios=RATIOS) -> list[Family]:
  """One family per method of the toolkit, each around RMSProp at the
  fine-tuning rate. The head (the last layer) is left free by L2-SP, FTP
  and SPD, which pull only the backbone toward the pretrained weights."""
  lr, cycle = cfg.finetune.lr, DEFAULT_N_REF + 1
  ratios = tuple(float(r) for r in ratios)
  main = lambda: optax.rmsprop(lr)
  by_ratio = lambda r: lr / r

  def profit(r, **kw):
    return profit_optax.profit(main(), lr / r, n_ref=DEFAULT_N_REF, **kw)

  return [
    Family(
      "profit-trust",
      "ref_trust_radius",
      TRUST_RADII,
      lambda t: profit(DEFAULT_RATIO, ref_trust_radius=t),
      cycle,
      lambda _: lr / DEFAULT_RATIO,
      static=True,
    ),
    Family(
      "profit-precond",
      "ratio",
      ratios,
      lambda r: profit(r, ref_preconditioner="main"),
      cycle,
      by_ratio,
    ),
    Family(
      "profit-leaf",
      "ratio",
      ratios,
      lambda r: profit(r, projection_groups="leaf"),
      cycle,
      by_ratio,
    ),
    Family(
      "profit-warmup",
      "ratio",
      ratios,
      lambda r: profit_optax.profit_warmup(
        main(), profit(r), warmup_calls(cfg)
      ),
      cycle,
      by_ratio,
    ),
    Family(
      "l2sp",
      "alpha",
      L2SP_ALPHAS,
      lambda a: optax.chain(
        profit_optax.l2sp(a, head_mask=_leaves_of("head")), main()
      ),
    ),
    Family(
      "ftp",
      "k",
      FTP_KS,
      lambda k: profit_optax.ftp(main(), k=k, mask=_leaves_of("backbone")),
    ),
    Family(
      "spd",
      "weight_decay",
      SPD_DECAYS,
      lambda w: profit_optax.spd(main(), w, mask=_leaves_of("backbone")),
    ),
  ]


def method_name(family: str, knob: float, cfg: Config) -> tuple[str, str]:
  """(method, front) of one run; the Table-1 configurations get their names."""
  lr = cfg.finetune.lr
  if family in TOOLKIT_FRONTS:
    return f"{family}{knob:g}", family
  if family == "full":
    return ("full" if knob == lr else f"full-lr{knob:g}"), "full"
  if family == "head":
    return "head", "head"
  if family == "profit-ratio":
    return (
      "profit" if knob == DEFAULT_RATIO else f"profit-ratio{knob:g}"
    ), "profit-ratio"
  return f"profit-nref{int(knob)}", "profit-nref"


class Runners:
  """One compiled runner per family, reused across seeds and protocols."""

  def __init__(self, cfg: Config):
    self.cfg, self._runs = cfg, {}

  def __call__(self, family: Family, knob: float | None = None):
    key = (family.name, knob) if family.static else family.name
    if key not in self._runs:
      self._runs[key] = loop.make_runner(
        task.mse_loss,
        family.builder(knob),
        task.sampler(self.cfg.finetune.batch, task.NEW_DOMAIN),
        self.cfg.chunk,
      )
    return self._runs[key]


def finetune_seed(
  protocol_name: str,
  params0,
  seed: int,
  cfg: Config,
  runners: Runners,
  fams: list[Family],
  keep: set[str] = frozenset(),
) -> tuple[list[dict], dict]:
  """Every front's runs from one pretrained model.

  Returns records and ``{method: weights}`` for the methods in ``keep``.
  """
  keys = _keys(seed)
  records, kept = [], {}
  common = {"protocol": protocol_name, "seed": seed}

  def emit(method, front, knob_name, knob, params, extra=None):
    for metric, value in _evaluate(params, seed).items():
      records.append(
        {
          **common,
          "method": method,
          "front": front,
          "knob_name": knob_name,
          "knob": knob,
          "metric": metric,
          "value": value,
          **(extra or {}),
        }
      )
    if method in keep:
      kept[method] = params

  emit("pretrained", "pretrained", None, None, params0)
  lam = float(task.lambda_max(params0, keys["hessian"]))
  records.append(
    {**common, "method": "pretrained", "metric": "lambda_max", "value": lam}
  )
  full_ft = None
  for fam in fams:
    calls = cfg.finetune.steps * fam.calls_per_step
    for knob in fam.knobs:
      run = runners(fam, knob)
      state = loop.init_state(fam.builder(knob), params0, jnp.float32(knob))
      tuned, _ = loop.train(
        run,
        params0,
        state,
        keys["finetune"],
        jnp.float32(knob),
        None,
        calls // cfg.chunk,
      )
      method, front = method_name(fam.name, knob, cfg)
      extra = {"calls": calls, "steps": cfg.finetune.steps}
      if fam.lr_ref is not None:
        lr_ref = fam.lr_ref(knob)
        extra |= {"lr_ref": lr_ref, "ref_stable": bool(lr_ref < 2 / lam)}
      # Blown up: a weight that is not finite (its errors then are not).
      extra["diverged"] = not all(
        bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tuned)
      )
      emit(method, front, fam.knob_name, knob, tuned, extra)
      if method == "full":
        full_ft = tuned
  for alpha in WISE_ALPHAS:
    mixed = jax.tree.map(
      lambda a, b, t=alpha: (1 - t) * a + t * b, params0, full_ft
    )
    emit(f"wise-ft{alpha:g}", "wise-ft", "alpha", alpha, mixed)
  return records, kept


def run_protocols(
  protocols: dict[str, task.Protocol],
  seeds,
  cfg: Config,
  use_cache=True,
  progress=True,
  keep=frozenset(),
  fams=None,
) -> tuple[list[dict], dict]:
  """Pretrain and fine-tune every seed under every protocol.

  Returns records and ``{protocol: {method: first seed's weights}}``.
  """
  runners, records, figures = Runners(cfg), [], {}
  fams = families(cfg) if fams is None else fams
  for name, protocol in protocols.items():
    for i, seed in enumerate(tqdm(seeds, desc=name, disable=not progress)):
      params0 = pretrain(protocol, seed, cfg, use_cache)
      recs, kept = finetune_seed(
        name, params0, seed, cfg, runners, fams, keep if i == 0 else frozenset()
      )
      records += recs
      if i == 0:
        figures[name] = kept
  return records, figures
