"""The paper's image-classification protocol (Sec. 4.2, Table 2) on offline data.

The paper pretrains on CIFAR10 and fine-tunes on CIFAR100; here the old task
is MNIST, and a converged model is fine-tuned on one of two nearby new tasks:

* ``new-labels``: Fashion-MNIST with a new, randomly initialised head (a new
  label set on images of the same size and style, as CIFAR100 is to CIFAR10);
* ``rotated``: MNIST rotated by 30 degrees, same labels and the same head (a
  covariate shift).

Two architectures, mirroring Table 2's ResNet and ViT: a small CNN (two 3x3
stride-2 convolutions and a dense layer) and a small ViT (7x7 patches, 2
blocks of width 64, 4 heads). Methods, every one taking the same number of
optimizer steps from the same pretrained weights:

* ``full-<opt>``: the whole model with SGD (momentum 0.9), Adam, AdamW,
  Lookahead(Adam) or Adan;
* ``head-adamw``: the head only;
* ``profit``: PROFIT with AdamW as the main optimizer, ``n_ref = 1`` and
  ``lr_ref = lr / 10`` (each step evaluates two gradients, on two batches);
* ``profit-warmup``: the paper's "PROFIT (warmup)" recipe (Sec. 4.4): the
  first 10% of the steps with AdamW, the rest with PROFIT.

``acc_old`` is the MNIST test accuracy of the old head on the fine-tuned trunk
(for ``rotated`` the head is shared, so it is the fine-tuned model itself);
``acc_new`` is the new task's test accuracy. The pretrained model is trained
once per architecture and cached; the seeds differ in the new head's
initialisation and in the stream of fine-tuning batches, and run side by side
(``jax.vmap``).

Usage::

  bash scripts/fetch_data.sh              # MNIST and Fashion-MNIST, once
  python -m benchmarks.image              # ~16 min on 2 CPU cores
  python -m benchmarks.image --quick      # a smoke run on sklearn's digits

Without the fetched files, ``--data digits`` runs the same protocol on
scikit-learn's 8x8 digits (old task: digits 0-4; new labels: digits 5-9).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import pathlib
import shlex
import sys
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import profit_optax
from benchmarks import _data, _optimizers, _report

CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "image"
ARCHS = ("cnn", "vit")
SHIFTS = ("new-labels", "rotated")
FULL_OPTIMIZERS = ("sgd", "adam", "adamw", "lookahead", "adan")
PRETRAIN_SEED = 0
N_REFS = (1, 2, 5)
RATIOS = (10, 100, 1000, 10000)


@dataclasses.dataclass(frozen=True)
class ImageConfig:
  """Settings of one run of the benchmark."""

  data: str = "mnist"  # or "digits"
  rotation: float = 30.0
  pretrain_steps: int = 2000
  pretrain_lr: float = 1e-3
  pretrain_batch: int = 128
  finetune_steps: int = 400
  finetune_lr: float = 1e-4  # Adam, AdamW, Lookahead, Adan, PROFIT's main
  sgd_lr: float = 1e-2  # SGD with momentum 0.9
  batch_size: int = 64
  ratio: float = 10.0  # lr_main / lr_ref of `profit`
  n_ref: int = 1
  warmup_fraction: float = 0.1
  chunk: int = 20  # update calls per compiled chunk
  eval_batch: int = 1000
  # The full fine-tuning baselines (a subset in the quick run, which is
  # dominated by compilation; the toy benchmark's quick run covers the rest).
  optimizers: tuple[str, ...] = FULL_OPTIMIZERS

  @property
  def warmup_steps(self) -> int:
    return max(1, round(self.warmup_fraction * self.finetune_steps))

  def quick(self) -> ImageConfig:
    return dataclasses.replace(
      self,
      data="digits",
      pretrain_steps=100,
      pretrain_batch=self.batch_size,
      finetune_steps=20,
      chunk=2,
      eval_batch=113,
      optimizers=("adamw",),
    )


# --------------------------------------------------------------------------
# Models: a trunk that maps (batch, 28, 28) images to features, and a head.


class Conv3x3(nn.Module):
  """``nn.Conv(features, (3, 3), strides, padding="SAME")`` written as
  image patches and a dense layer: the same function and parameter count,
  about three times faster on XLA:CPU for these few channels."""

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    patches = jax.lax.conv_general_dilated_patches(
      x,
      (3, 3),
      (self.strides, self.strides),
      "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return nn.Dense(self.features)(patches)


class CNN(nn.Module):
  """Two 3x3 stride-2 convolutions (16, 32 channels), then 64 features."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(Conv3x3(16, 2)(x[..., None]))
    x = nn.relu(Conv3x3(32, 2)(x))
    return nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))


class ViT(nn.Module):
  """7x7 patches (16 tokens), pre-norm blocks, mean-pooled features."""

  patch: int = 7
  width: int = 64
  depth: int = 2
  heads: int = 4
  mlp: int = 128

  @nn.compact
  def __call__(self, x):
    p = self.patch
    x = nn.Conv(self.width, (p, p), strides=p, padding="VALID")(x[..., None])
    x = x.reshape(x.shape[0], -1, self.width)
    pos = self.param("pos", nn.initializers.normal(0.02), x.shape[1:])
    x = x + pos
    for _ in range(self.depth):
      y = nn.LayerNorm()(x)
      x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(y, y)
      y = nn.LayerNorm()(x)
      x = x + nn.Dense(self.width)(nn.gelu(nn.Dense(self.mlp)(y)))
    return nn.LayerNorm()(x).mean(axis=1)


TRUNKS = {"cnn": CNN, "vit": ViT}


FEATURES = 64  # both trunks end in 64 features


def init_params(arch: str, num_classes: int, key: jax.Array) -> dict:
  """``{"trunk": ..., "head": ...}`` for 28x28 inputs."""
  k_trunk, k_head = jax.random.split(key)
  trunk = TRUNKS[arch]().init(k_trunk, jnp.zeros((1, 28, 28)))["params"]
  return {"trunk": trunk, "head": init_head(num_classes, k_head)}


def init_head(num_classes: int, key: jax.Array) -> dict:
  """A linear head, initialised as ``nn.Dense`` does."""
  dense = nn.Dense(num_classes)
  return dense.init(key, jnp.zeros((1, FEATURES)))["params"]


def make_apply(arch: str) -> Callable:
  """``apply(params, images) -> logits``."""
  trunk = TRUNKS[arch]()

  def apply(params, images):
    features = trunk.apply({"params": params["trunk"]}, images)
    head = params["head"]
    return features @ head["kernel"] + head["bias"]

  return apply


def make_loss(arch: str) -> Callable:
  apply = make_apply(arch)

  def loss(params, images, labels):
    logits = apply(params, images)
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, labels
    ).mean()

  return loss


def accuracy_fn(arch: str) -> Callable:
  """A jitted ``(params, images, labels) -> accuracy``.

  ``images`` and ``labels`` come from :func:`batched`: whole batches, with
  label -1 on the padding, which never counts as correct.
  """
  apply = make_apply(arch)

  @jax.jit
  def accuracy(params, images, labels):
    def body(correct, batch):
      x, y = batch
      hits = jnp.argmax(apply(params, x), axis=-1) == y
      return correct + jnp.sum(hits), None

    correct, _ = jax.lax.scan(body, jnp.int32(0), (images, labels))
    return correct / jnp.sum(labels >= 0)

  return accuracy


def batched(split: _data.Split, batch: int) -> tuple[jax.Array, jax.Array]:
  """Images (n_batches, batch, 28, 28) and labels padded with -1."""
  pad = -len(split) % batch
  images = np.concatenate([split.images, np.zeros((pad, 28, 28), np.float32)])
  labels = np.concatenate([split.labels, -np.ones(pad, np.int32)])
  return (
    jnp.asarray(images.reshape(-1, batch, 28, 28)),
    jnp.asarray(labels.reshape(-1, batch)),
  )


# --------------------------------------------------------------------------
# Training


def make_runner(arch, make_tx, batch_size, length) -> Callable:
  """A jitted ``(params, state, key, value, images, labels)`` that takes
  ``length`` calls of ``make_tx(value)``, each on a fresh random batch.

  ``value`` is traced, so a sweep over it (reference rates) compiles once.
  """
  grad_fn = jax.value_and_grad(make_loss(arch))

  @jax.jit
  def run(params, state, key, value, images, labels):
    tx = make_tx(value)

    def body(carry, k):
      params, state = carry
      idx = jax.random.randint(k, (batch_size,), 0, labels.shape[0])
      loss, grads = grad_fn(params, images[idx], labels[idx])
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss

    (params, state), losses = jax.lax.scan(
      body, (params, state), jax.random.split(key, length)
    )
    return params, state, jnp.mean(losses)

  return run


def pretrain(arch, old, cfg, runners, use_cache, progress):
  """The converged model of the old task (cached): AdamW, cosine decay."""
  fields = {
    k: getattr(cfg, k)
    for k in ("data", "pretrain_steps", "pretrain_lr", "pretrain_batch")
  }
  digest = hashlib.sha256(
    json.dumps({**fields, "arch": arch, "seed": PRETRAIN_SEED}).encode()
  ).hexdigest()[:12]
  path = CACHE / f"{cfg.data}-{arch}-{digest}.npz"
  init = jax.jit(functools.partial(init_params, arch, old.num_classes))
  params = init(jax.random.PRNGKey(PRETRAIN_SEED))
  leaves, treedef = jax.tree.flatten(params)
  if use_cache and path.exists():
    with np.load(path) as f:
      stored = [jnp.asarray(f[f"leaf{i}"]) for i in range(len(leaves))]
    return jax.tree.unflatten(treedef, stored)
  # AdamW whose rate follows a cosine decay, updated once per chunk: the rate
  # is the runner's traced value, so pretraining shares its compiled program
  # with the fine-tuning runs of AdamW when the batch sizes agree.
  schedule = optax.cosine_decay_schedule(cfg.pretrain_lr, cfg.pretrain_steps)
  make_tx = _adamw
  run = make_runner(arch, make_tx, cfg.pretrain_batch, cfg.chunk)
  if cfg.pretrain_batch == cfg.batch_size:
    run, _ = runners.get(arch, Phase("adamw", make_tx, 0))
  images, labels = jnp.asarray(old.train.images), jnp.asarray(old.train.labels)
  state, key = (
    make_tx(cfg.pretrain_lr).init(params),
    jax.random.PRNGKey(PRETRAIN_SEED),
  )
  chunks = range(cfg.pretrain_steps // cfg.chunk)
  for k in tqdm(chunks, desc=f"pretrain {arch}", disable=not progress):
    lr = jnp.float32(schedule(k * cfg.chunk))
    params, state, _ = run(
      params, state, jax.random.fold_in(key, k), lr, images, labels
    )
  if use_cache:
    CACHE.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree.leaves(params)
    np.savez(path, **{f"leaf{i}": np.asarray(x) for i, x in enumerate(leaves)})
  return params


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  steps: int  # optimizer steps (PROFIT steps for PROFIT)
  calls: int  # update calls = gradient evaluations = batches
  info: dict


@dataclasses.dataclass(frozen=True)
class Phase:
  """``calls`` update calls of ``make_tx(value)``, from a fresh state.

  Phases with the same ``key`` share one compiled program.
  """

  key: str
  make_tx: Callable[[jax.Array], optax.GradientTransformation]
  calls: int
  value: float | None = None  # overrides the program's value


@dataclasses.dataclass(frozen=True)
class Program:
  """Methods that differ in one float only (``values``, one per method);
  each runs the phases in order."""

  methods: tuple[Method, ...]
  phases: tuple[Phase, ...]
  values: tuple[float, ...] = (0.0,)


def _adamw(lr):
  return optax.adamw(lr)


def _head_only(tx):
  def labels(params):
    return {
      "trunk": jax.tree.map(lambda _: "frozen", params["trunk"]),
      "head": jax.tree.map(lambda _: "train", params["head"]),
    }

  return optax.multi_transform(
    {"train": tx, "frozen": optax.set_to_zero()}, labels
  )


def programs(cfg: ImageConfig, ablations: bool) -> list[Program]:
  """Every fine-tuning run of one (shift, arch) setting."""
  lr, steps = cfg.finetune_lr, cfg.finetune_steps
  out = []
  for o in cfg.optimizers:
    info = {"optimizer": o, "lr": cfg.sgd_lr if o == "sgd" else lr}
    make = lambda _, o=o: _optimizers.full_optimizers(lr, cfg.sgd_lr)[o]
    phase = Phase(o, make, steps)
    if o == "adamw":  # optax defaults: the same as full_optimizers' AdamW
      phase = Phase("adamw", _adamw, steps, value=lr)
    out.append(Program((Method(f"full-{o}", steps, steps, info),), (phase,)))
  info = {"optimizer": "adamw", "lr": lr}
  head = Phase("head-adamw", lambda _: _head_only(optax.adamw(lr)), steps)
  out.append(Program((Method("head-adamw", steps, steps, info),), (head,)))

  def profit(n_ref):
    return lambda ratio: profit_optax.profit(
      optax.adamw(lr), lr / ratio, n_ref=n_ref
    )

  def info(n_ref, ratio, **extra):
    return {
      "optimizer": "adamw",
      "lr": lr,
      "lr_ref": lr / ratio,
      "ratio": ratio,
      "n_ref": n_ref,
      **extra,
    }

  n, r = cfg.n_ref, cfg.ratio
  calls = steps * (n + 1)
  if ablations:
    out.append(
      Program(
        tuple(
          Method(f"profit-ratio{x}", steps, calls, info(n, x)) for x in RATIOS
        ),
        (Phase(f"profit-nref{n}", profit(n), calls),),
        tuple(float(x) for x in RATIOS),
      )
    )
    for k in N_REFS:
      if k != n:
        kcalls = steps * (k + 1)
        out.append(
          Program(
            (Method(f"profit-nref{k}", steps, kcalls, info(k, r)),),
            (Phase(f"profit-nref{k}", profit(k), kcalls),),
            (r,),
          )
        )
  else:
    out.append(
      Program(
        (Method("profit", steps, calls, info(n, r)),),
        (Phase(f"profit-nref{n}", profit(n), calls),),
        (r,),
      )
    )
  warm = cfg.warmup_steps
  out.append(
    Program(
      (
        Method(
          "profit-warmup",
          steps,
          warm + (steps - warm) * (n + 1),
          info(n, r, warmup_steps=warm),
        ),
      ),
      (
        Phase("adamw", _adamw, warm, value=lr),
        Phase(f"profit-nref{n}", profit(n), (steps - warm) * (n + 1)),
      ),
      (r,),
    )
  )
  return out


def aliases(cfg: ImageConfig, ablations: bool) -> dict[str, str]:
  """Names that report another method's run (the ablations' defaults)."""
  if not ablations:
    return {}
  default = f"profit-ratio{cfg.ratio:g}"
  return {"profit": default, f"profit-nref{cfg.n_ref}": default}


def order(cfg: ImageConfig, ablations: bool) -> list[str]:
  names = [f"full-{o}" for o in cfg.optimizers]
  names += ["head-adamw", "profit", "profit-warmup"]
  if ablations:
    names += [f"profit-nref{k}" for k in N_REFS]
    names += [f"profit-ratio{r}" for r in RATIOS]
  return names


class Runners:
  """Compiled runners, shared by every setting and method of an
  architecture that runs the same phase (the shifts' data have one shape)."""

  def __init__(self, cfg):
    self.cfg, self._cache = cfg, {}

  def get(self, arch: str, phase: Phase):
    key = (arch, phase.key)
    if key not in self._cache:
      self._cache[key] = (
        make_runner(arch, phase.make_tx, self.cfg.batch_size, self.cfg.chunk),
        jax.jit(lambda params, value: phase.make_tx(value).init(params)),
      )
    return self._cache[key]


def finetune(arch, program, value, start, key, data, runners, cfg, bar):
  """Runs ``program``'s phases with ``value`` from ``start``."""
  params, done = start, 0
  for phase in program.phases:
    if phase.calls % cfg.chunk:
      raise ValueError(
        f"{phase.key}: {phase.calls} calls is not a multiple of the chunk"
        f" ({cfg.chunk}); choose finetune_steps and warmup accordingly."
      )
    run, init = runners.get(arch, phase)
    v = jnp.float32(value if phase.value is None else phase.value)
    state = init(params, v)
    for _ in range(phase.calls // cfg.chunk):
      k = jax.random.fold_in(key, done)
      params, state, _ = run(params, state, k, v, *data)
      done += cfg.chunk
      bar.update(cfg.chunk)
  return params


def load_tasks(cfg: ImageConfig):
  """(old task, {shift: new task}); every training set has one size."""
  if cfg.data == "mnist":
    old, new_labels = _data.mnist(), _data.fashion_mnist()
  elif cfg.data == "digits":
    old = _data.digits(tuple(range(5)))
    new_labels = _data.digits(tuple(range(5, 10)))
  else:
    raise ValueError(f"data must be 'mnist' or 'digits'; got {cfg.data!r}.")
  n = min(len(old.train), len(new_labels.train))
  trim = lambda d: dataclasses.replace(
    d, train=_data.Split(d.train.images[:n], d.train.labels[:n])
  )
  old, new_labels = trim(old), trim(new_labels)
  return old, {
    "new-labels": new_labels,
    "rotated": _data.rotated(old, cfg.rotation),
  }


def run(
  cfg: ImageConfig,
  seeds,
  archs=ARCHS,
  shifts=SHIFTS,
  ablations=False,
  use_cache=True,
  progress=True,
):
  """Every method on every (shift, arch) setting and seed.

  Returns the records and, per architecture, the pretrained model's facts.
  """
  old, new_tasks = load_tasks(cfg)
  old_test = batched(old.test, cfg.eval_batch)
  runners, records, pretrained_info = Runners(cfg), [], {}
  progs = programs(cfg, ablations)
  per_seed = sum(len(p.values) * sum(f.calls for f in p.phases) for p in progs)
  for arch in archs:
    pretrained = pretrain(arch, old, cfg, runners, use_cache, progress)
    accuracy = accuracy_fn(arch)
    pretrained_info[arch] = {
      "acc_old_test": float(accuracy(pretrained, *old_test)),
      "trunk_parameters": sum(
        x.size for x in jax.tree.leaves(pretrained["trunk"])
      ),
    }
    for shift in shifts:
      task = new_tasks[shift]
      data = (jnp.asarray(task.train.images), jnp.asarray(task.train.labels))
      new_test = batched(task.test, cfg.eval_batch)
      setting = {
        "shift": shift,
        "arch": arch,
        "old_task": old.name,
        "new_task": task.name,
      }
      base = {"steps": 0, "calls": 0, "seconds": 0.0, **setting}
      acc_old = pretrained_info[arch]["acc_old_test"]
      # The old head on the new task: meaningful only for the same labels.
      if shift == "rotated":
        acc_new = float(accuracy(pretrained, *new_test))
      for s in seeds:
        records.append(
          {
            "method": "pretrained",
            "seed": s,
            "metric": "acc_old",
            "value": acc_old,
            **base,
          }
        )
        if shift == "rotated":  # a new head has no accuracy to speak of
          records.append(
            {
              "method": "pretrained",
              "seed": s,
              "metric": "acc_new",
              "value": acc_new,
              **base,
            }
          )

      def start(seed, shift=shift, task=task, pretrained=pretrained):
        # The pretrained trunk, and for a new label set a new head.
        if shift == "rotated":
          return pretrained
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
        return {**pretrained, "head": init_head(task.num_classes, key)}

      results = {}  # name -> (method, [(acc_old, acc_new) per seed], seconds)
      bar = tqdm(
        total=per_seed * len(seeds),
        desc=f"{arch} {shift}",
        disable=not progress,
      )
      for program in progs:
        for method, value in zip(program.methods, program.values):
          t0, accs = time.perf_counter(), []
          for seed in seeds:
            key = jax.random.fold_in(jax.random.PRNGKey(seed), 2000)
            tuned = finetune(
              arch, program, value, start(seed), key, data, runners, cfg, bar
            )
            # The old task through the old head (shared when rotated).
            old_model = (
              tuned
              if shift == "rotated"
              else {**tuned, "head": pretrained["head"]}
            )
            accs.append(
              (
                float(accuracy(old_model, *old_test)),
                float(accuracy(tuned, *new_test)),
              )
            )
          seconds = (time.perf_counter() - t0) / len(seeds)
          results[method.name] = (method, accs, seconds)
      bar.close()
      for alias, name in aliases(cfg, ablations).items():
        method, accs, seconds = results[name]
        info = {**method.info, "same_run_as": name}
        method = dataclasses.replace(method, name=alias, info=info)
        results[alias] = (method, accs, seconds)
      for name in order(cfg, ablations):
        method, accs, seconds = results[name]
        for seed, pair in zip(seeds, accs):
          for metric, value in zip(("acc_old", "acc_new"), pair):
            records.append(
              {
                "method": name,
                "seed": seed,
                "metric": metric,
                "value": value,
                **setting,
                "steps": method.steps,
                "calls": method.calls,
                "seconds": seconds,
                **method.info,
              }
            )
  return records, pretrained_info


# --------------------------------------------------------------------------
# Report

# The paper's Table 2 (CIFAR10 -> CIFAR100 accuracy, %), for reference.
PAPER_TABLE2 = {
  "ResNet-18": {
    "SGD": (24.49, 74.59),
    "Adam": (34.64, 73.11),
    "Lookahead": (26.10, 73.82),
    "Adan": (35.17, 72.70),
    "PROFIT": (35.26, 74.70),
  },
  "ViT-Tiny": {
    "SGD": (53.63, 61.98),
    "Adam": (56.00, 58.99),
    "Lookahead": (55.64, 61.35),
    "Adan": (53.04, 61.62),
    "PROFIT": (58.53, 62.20),
  },
}
LABELS = {
  "pretrained": "pretrained on the old task",
  "full-sgd": "full, SGD (momentum 0.9)",
  "full-adam": "full, Adam",
  "full-adamw": "full, AdamW",
  "full-lookahead": "full, Lookahead(Adam)",
  "full-adan": "full, Adan",
  "head-adamw": "head only, AdamW",
  "profit": "PROFIT (AdamW)",
  "profit-warmup": "PROFIT (warmup)",
  **{f"profit-nref{k}": f"PROFIT, n_ref {k}" for k in N_REFS},
  **{f"profit-ratio{r}": f"PROFIT, lr_ref = lr / {r}" for r in RATIOS},
}


def _acc(records, **where) -> list[float]:
  return [100 * v for v in _report.values(records, **where)]


def _acc_at(records, at, name, metric):
  return _acc(records, method=name, metric=metric, **at)


def _mean_at(records, at, name, metric):
  return _report.mean_std(_acc_at(records, at, name, metric))


def _verdict_at(records, at, a, b, metric):
  """``a`` against ``b``: a tie if the means are within one sample std."""
  (m, s), (bm, bs) = (
    _mean_at(records, at, a, metric),
    _mean_at(records, at, b, metric),
  )
  if abs(m - bm) <= max(s, bs):
    return "ties with"
  return "beats" if m > bm else "loses to"


_OUTCOME = {"ties with": "a tie", "beats": "a win", "loses to": "a loss"}


def verdicts(records, cfg, shifts, archs) -> list[str]:
  """Plain statements of where PROFIT wins, ties and loses.

  PROFIT is compared with the best full fine-tuning on each metric (possibly
  a different optimizer for each) and, seed by seed, with full fine-tuning by
  its own main optimizer (AdamW). A tie: means within one sample standard
  deviation of each other.
  """
  lines = []
  full = [f"full-{o}" for o in cfg.optimizers]
  for shift in shifts:
    for arch in archs:
      at = {"shift": shift, "arch": arch}
      acc = functools.partial(_acc_at, records, at)
      mean = functools.partial(_mean_at, records, at)
      verdict = functools.partial(_verdict_at, records, at)

      for name in ("profit", "profit-warmup"):
        if not _report.select(records, method=name, **at):
          continue
        parts = []
        for metric, what in (("acc_old", "old task"), ("acc_new", "new task")):
          best = max(full, key=lambda f, metric=metric: mean(f, metric)[0])
          parts.append(
            f"{what} {mean(name, metric)[0]:.1f}%"
            f" {verdict(name, best, metric)} the best full fine-tuning"
            f" (`{best}`, {mean(best, metric)[0]:.1f}%)"
          )
        if "full-adamw" in full:
          pair = []
          for metric, what in (("acc_old", "old"), ("acc_new", "new")):
            xs, ys = acc(name, metric), acc("full-adamw", metric)
            wins = sum(x > y for x, y in zip(xs, ys))
            diff = mean(name, metric)[0] - mean("full-adamw", metric)[0]
            outcome = _OUTCOME[verdict(name, "full-adamw", metric)]
            pair.append(
              f"{what} {diff:+.1f} points ({outcome}; higher on"
              f" {wins}/{len(xs)} seeds)"
            )
          parts.append("against `full-adamw`: " + ", ".join(pair))
        lines.append(f"{shift} / {arch}: `{name}`: " + "; ".join(parts) + ".")
  return lines


def to_markdown(records, info, cfg, seeds, shifts, archs, command, wall, mach):
  lines = [
    "# Image benchmark: the paper's Table 2 protocol on offline data",
    "",
    f"Command: `{command}`",
    "",
    f"Old task: {_report.select(records, method='pretrained')[0]['old_task']}."
    f" Pretraining: {cfg.pretrain_steps} AdamW steps, batch"
    f" {cfg.pretrain_batch}, cosine decay from {cfg.pretrain_lr:g}, seed"
    f" {PRETRAIN_SEED}; test accuracy "
    + ", ".join(
      f"{a} {100 * info[a]['acc_old_test']:.2f}%"
      f" ({info[a]['trunk_parameters']} trunk parameters)"
      for a in archs
    )
    + f". Fine-tuning: {cfg.finetune_steps} optimizer steps, batch"
    f" {cfg.batch_size}, rate {cfg.finetune_lr:g} (SGD {cfg.sgd_lr:g});"
    f" PROFIT: AdamW main optimizer, n_ref {cfg.n_ref}, lr_ref = lr /"
    f" {cfg.ratio:g}, two batches per step; PROFIT (warmup):"
    f" {cfg.warmup_steps} AdamW steps, then PROFIT. Accuracy (%) on the"
    f" full test sets, mean ± sample std over {len(seeds)} seeds"
    f" ({', '.join(map(str, seeds))}). Wall time {wall / 60:.1f} min on"
    f" {mach['device']} ({mach['backend']}, {mach['cpu_count']} cores), jax"
    f" {mach['jax']}, optax {mach['optax']}.",
    "",
  ]
  names = [n for n in LABELS if _report.select(records, method=n)]
  extra = sorted(
    {r["method"] for r in records} - set(names),
    key=lambda n: (n.startswith("profit-ratio"), n),
  )
  for shift in shifts:
    tasks = _report.select(records, method="pretrained", shift=shift)[0]
    lines += [
      f"## {shift}: {tasks['old_task']} → {tasks['new_task']}",
      "",
      "| method | "
      + " | ".join(f"{a} old task | {a} new task" for a in archs)
      + " |",
      "| --- |" + " ---: | ---: |" * len(archs),
    ]
    for name in names + extra:
      cells = []
      for arch in archs:
        for metric in ("acc_old", "acc_new"):
          xs = _acc(records, method=name, metric=metric, shift=shift, arch=arch)
          cells.append(_report.fmt(xs, digits=2) if xs else "—")
      lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    lines.append("")
  lines += [
    "## Verdicts (a tie: means within one standard deviation)",
    "",
    *("- " + v for v in verdicts(records, cfg, shifts, archs)),
    "",
    "## For reference: the paper's Table 2 (CIFAR10 → CIFAR100, %)",
    "",
    "| backbone | optimizer | CIFAR10 (old) | CIFAR100 (new) |",
    "| --- | --- | ---: | ---: |",
  ]
  for backbone, rows in PAPER_TABLE2.items():
    for opt, (old, new) in rows.items():
      lines.append(f"| {backbone} | {opt} | {old:.2f} | {new:.2f} |")
  return "\n".join(lines) + "\n"


def figure(records, path, shifts, archs) -> None:
  """Old- against new-task accuracy of every method, per setting."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(
    len(shifts),
    len(archs),
    figsize=(6.5 * len(archs), 5 * len(shifts)),
    squeeze=False,
    layout="constrained",
  )
  # The main methods (the ablations would crowd the plot).
  names = [n for n in list(LABELS)[1:9] if _report.select(records, method=n)]
  for row, shift in enumerate(shifts):
    for col, arch in enumerate(archs):
      ax = axes[row][col]
      at = {"shift": shift, "arch": arch}
      for i, name in enumerate(names):
        old = np.array(_acc(records, method=name, metric="acc_old", **at))
        new = np.array(_acc(records, method=name, metric="acc_new", **at))
        style = dict(ms=9, capsize=3, color=f"C{i}", label=LABELS[name])
        marker = "*" if name.startswith("profit") else "o"
        sd = lambda x: x.std(ddof=1) if len(x) > 1 else 0.0
        ax.errorbar(
          new.mean(),
          old.mean(),
          xerr=sd(new),
          yerr=sd(old),
          fmt=marker,
          **style,
        )
        ax.scatter(new, old, s=12, color=f"C{i}", alpha=0.4)
      base = _acc(records, method="pretrained", metric="acc_old", **at)
      ax.axhline(
        base[0], color="k", ls="--", lw=1, label="pretrained, old task"
      )
      task = _report.select(records, method="pretrained", **at)[0]
      ax.set(
        xlabel=f"new task accuracy (%): {task['new_task']}",
        ylabel=f"old task accuracy (%): {task['old_task']}",
        title=f"{shift}, {arch}: mean ± std (bars), seeds (dots)",
      )
      ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=8, loc="lower left")
  fig.suptitle("Fine-tuning a converged model: upper right is better")
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog="The default configuration (3 seeds, both shifts, both"
    " architectures) takes about 16 minutes on 2 CPU cores, including"
    " pretraining on the first run. --ablations adds the n_ref and lr ratio"
    " sweeps of Tables 3-4, 2.5 times the work per setting (each CNN setting"
    " then takes about 5.5 minutes): restrict it with --shifts and --archs.",
  )
  _report.add_arguments(parser, seeds=3)
  parser.add_argument(
    "--data",
    choices=("mnist", "digits"),
    default=None,
    help="MNIST/Fashion-MNIST from .cache/data (scripts/fetch_data.sh), or"
    " scikit-learn's digits (the default with --quick)",
  )
  parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
  parser.add_argument(
    "--shifts", nargs="+", choices=SHIFTS, default=list(SHIFTS)
  )
  parser.add_argument(
    "--ablations",
    action="store_true",
    help="add profit-nref{1,2,5} and profit-ratio{10,100,1000,10000}",
  )
  args = _report.parse_args(parser, argv)
  cfg = ImageConfig().quick() if args.quick else ImageConfig()
  if args.data is not None:
    cfg = dataclasses.replace(cfg, data=args.data)
  seeds = list(range(2 if args.quick else args.seeds))
  out = args.out or (_report.OUT if args.quick else _report.RESULTS)
  argv = sys.argv[1:] if argv is None else list(argv)
  command = ("python -m benchmarks.image " + shlex.join(argv)).strip()
  start = time.perf_counter()
  try:
    records, info = run(
      cfg,
      seeds,
      archs=args.archs,
      shifts=args.shifts,
      ablations=args.ablations,
      use_cache=not args.no_cache,
      progress=not args.no_progress,
    )
  except _data.DataMissingError as e:
    parser.exit(2, f"error: {e}\n")
  wall = time.perf_counter() - start
  name = "image_quick" if args.quick else "image"
  if args.ablations:
    name += "_ablations"
  for chosen, every in ((args.shifts, SHIFTS), (args.archs, ARCHS)):
    if list(chosen) != list(every):  # a subset: say which in the file name
      name += "_" + "_".join(chosen)
  report = to_markdown(
    records,
    info,
    cfg,
    seeds,
    args.shifts,
    args.archs,
    command,
    wall,
    _report.machine(),
  )
  _report.write(out, name, records, report)
  figure(records, out / f"{name}.png", args.shifts, args.archs)
  print(report)
  return records


if __name__ == "__main__":
  main()
