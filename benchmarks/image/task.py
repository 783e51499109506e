"""The image task: data splits, the two architectures, loss and accuracy.

The paper pretrains on CIFAR10 and fine-tunes on CIFAR100 (Sec. 4.2); here
the old task is MNIST and a converged model is fine-tuned on one of two
nearby new tasks:

* ``new-labels``: Fashion-MNIST with a new, randomly initialised head (a new
  label set on images of the same size and style, as CIFAR100 is to CIFAR10);
* ``rotated``: MNIST rotated by 30 degrees, with the same labels and head (a
  covariate shift).

Every training set is split into train and a held-out validation part (the
last ``VAL`` images): hyperparameters are chosen on validation accuracy, the
test sets are only reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.image import data as _data

ARCHS = ("cnn", "vit")
SHIFTS = ("new-labels", "rotated")
ROTATION = 30.0
FEATURES = 64  # both trunks end in 64 features


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
    return nn.relu(nn.Dense(FEATURES)(x.reshape(x.shape[0], -1)))


class ViT(nn.Module):
  """7x7 patches (16 tokens), 2 pre-norm blocks of width 64, 4 heads,
  mean-pooled features."""

  patch: int = 7
  width: int = FEATURES
  depth: int = 2
  heads: int = 4
  mlp: int = 128

  @nn.compact
  def __call__(self, x):
    p = self.patch
    x = nn.Conv(self.width, (p, p), strides=p, padding="VALID")(x[..., None])
    x = x.reshape(x.shape[0], -1, self.width)
    x = x + self.param("pos", nn.initializers.normal(0.02), x.shape[1:])
    for _ in range(self.depth):
      y = nn.LayerNorm()(x)
      x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(y, y)
      y = nn.LayerNorm()(x)
      x = x + nn.Dense(self.width)(nn.gelu(nn.Dense(self.mlp)(y)))
    return nn.LayerNorm()(x).mean(axis=1)


TRUNKS = {"cnn": CNN, "vit": ViT}


def init_head(num_classes: int, key: jax.Array) -> dict:
  """A linear head, initialised as ``nn.Dense`` does."""
  return nn.Dense(num_classes).init(key, jnp.zeros((1, FEATURES)))["params"]


def init_params(arch: str, num_classes: int, key: jax.Array) -> dict:
  """``{"trunk": ..., "head": ...}`` for 28x28 inputs."""
  k_trunk, k_head = jax.random.split(key)
  trunk = TRUNKS[arch]().init(k_trunk, jnp.zeros((1, 28, 28)))["params"]
  return {"trunk": trunk, "head": init_head(num_classes, k_head)}


def make_apply(arch: str) -> Callable:
  """``apply(params, images) -> logits``."""
  trunk = TRUNKS[arch]()

  def apply(params, images):
    features = trunk.apply({"params": params["trunk"]}, images)
    return features @ params["head"]["kernel"] + params["head"]["bias"]

  return apply


def make_loss(arch: str) -> Callable:
  """``loss(params, (images, labels))``: mean cross-entropy."""
  apply = make_apply(arch)

  def loss(params, batch):
    images, labels = batch
    return optax.softmax_cross_entropy_with_integer_labels(
      apply(params, images), labels
    ).mean()

  return loss


def sampler(batch: int, shift: int = 0) -> Callable:
  """``(key, (images, labels)) -> batch``: ``batch`` random examples.

  ``shift > 0`` translates each image by a random offset of up to ``shift``
  pixels in each direction (zero fill): the augmentation of pretraining.
  """

  def sample(key, data):
    images, labels = data
    k_idx, k_off = jax.random.split(key)
    idx = jax.random.randint(k_idx, (batch,), 0, labels.shape[0])
    x = images[idx]
    if shift:
      pad = jnp.pad(x, ((0, 0), (shift, shift), (shift, shift)))
      off = jax.random.randint(k_off, (batch, 2), 0, 2 * shift + 1)
      crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1]), (28, 28))
      x = jax.vmap(crop)(pad, off)
    return x, labels[idx]

  return sample


def accuracy_fn(arch: str) -> Callable:
  """A jitted ``(params, images, labels) -> accuracy`` over batched arrays
  from :func:`batched` (label -1 marks padding and never counts)."""
  apply = make_apply(arch)

  @jax.jit
  def accuracy(params, images, labels):
    def body(correct, batch):
      x, y = batch
      return correct + jnp.sum(jnp.argmax(apply(params, x), -1) == y), None

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


@dataclasses.dataclass(frozen=True)
class Task:
  """One classification task with train / validation / test splits."""

  name: str
  train: _data.Split
  val: _data.Split
  test: _data.Split
  num_classes: int


def _split(d: _data.Dataset, val: int) -> Task:
  n = len(d.train)
  if not 0 < val < n:
    raise ValueError(f"val must be in (0, {n}); got {val}.")
  cut = lambda s, a, b: _data.Split(s.images[a:b], s.labels[a:b])
  return Task(
    d.name,
    cut(d.train, 0, n - val),
    cut(d.train, n - val, n),
    d.test,
    d.num_classes,
  )


def load_tasks(source: str, val: int) -> tuple[Task, dict[str, Task]]:
  """(old task, {shift: new task}) from ``"mnist"`` or ``"digits"``.

  Raises ``_data.DataMissingError`` when MNIST files are missing.
  """
  if source == "mnist":
    old, new_labels = _data.mnist(), _data.fashion_mnist()
  elif source == "digits":
    old = _data.digits(tuple(range(5)))
    new_labels = _data.digits(tuple(range(5, 10)))
  else:
    raise ValueError(f"data must be 'mnist' or 'digits'; got {source!r}.")
  n = min(len(old.train), len(new_labels.train))
  trim = lambda d: dataclasses.replace(
    d, train=_data.Split(d.train.images[:n], d.train.labels[:n])
  )
  old, new_labels = trim(old), trim(new_labels)
  rotated = _data.rotated(old, ROTATION)
  return _split(old, val), {
    "new-labels": _split(new_labels, val),
    "rotated": _split(rotated, val),
  }
