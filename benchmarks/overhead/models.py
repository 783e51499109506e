"""Models for the overhead benchmark, in plain JAX: the paper's toy MLP (the
one of ``benchmarks.toy.task``), a small CNN and a small transformer (about
2.5e5, 4.2e5 and 3.4e6 parameters).

Each model is ``(init(key) -> params, loss(params, batch), batches(key, n))``
where ``batches`` returns ``n`` batches stacked on a leading axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.toy import task


@dataclasses.dataclass(frozen=True)
class Model:
  name: str
  init: Callable[[jax.Array], Any]
  loss: Callable[[Any, Any], jax.Array]
  batches: Callable[[jax.Array, int], Any]
  description: str


def _dense(key, fan_in, fan_out):
  return jax.random.normal(key, (fan_in, fan_out)) * jnp.sqrt(2.0 / fan_in)


# -- the toy MLP of the paper (Sec. 4.1): init and loss from benchmarks.toy ----


def _mlp_batches(key, n, batch=256):
  """``n`` batches from the new domain [0.8, 1.5]², labels with N(0, 1) noise."""
  kx, kn = jax.random.split(key)
  x = jax.random.uniform(kx, (n, batch, 2), minval=0.8, maxval=1.5)
  y = task.target(x)
  return x, y + jax.random.normal(kn, y.shape)


# -- a small CNN on 28x28 images ------------------------------------------------


def _conv(x, w, stride):
  return jax.lax.conv_general_dilated(
    x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _cnn_init(key):
  k = jax.random.split(key, 4)
  return {
    "c1": jax.random.normal(k[0], (3, 3, 1, 32)) * jnp.sqrt(2 / 9),
    "c1b": jnp.zeros(32),
    "c2": jax.random.normal(k[1], (3, 3, 32, 64)) * jnp.sqrt(2 / 288),
    "c2b": jnp.zeros(64),
    "d1": _dense(k[2], 7 * 7 * 64, 128),
    "d1b": jnp.zeros(128),
    "d2": _dense(k[3], 128, 10),
    "d2b": jnp.zeros(10),
  }


def _cnn_loss(params, batch):
  x, y = batch
  h = jax.nn.relu(_conv(x, params["c1"], 2) + params["c1b"])
  h = jax.nn.relu(_conv(h, params["c2"], 2) + params["c2b"])
  h = h.reshape(h.shape[0], -1)
  h = jax.nn.relu(h @ params["d1"] + params["d1b"])
  logits = h @ params["d2"] + params["d2b"]
  return -jnp.mean(
    jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1)
  )


def _cnn_batches(key, n, batch=32):
  kx, ky = jax.random.split(key)
  x = jax.random.normal(kx, (n, batch, 28, 28, 1))
  return x, jax.random.randint(ky, (n, batch), 0, 10)


# -- a small transformer language model ---------------------------------------

VOCAB, D, LAYERS, HEADS, FF, SEQ = 512, 256, 4, 4, 1024, 32


def _tf_init(key):
  keys = iter(jax.random.split(key, 4 + 6 * LAYERS))
  params = {
    "embed": jax.random.normal(next(keys), (VOCAB, D)) * 0.02,
    "pos": jax.random.normal(next(keys), (SEQ, D)) * 0.02,
    "out": _dense(next(keys), D, VOCAB),
  }
  for i in range(LAYERS):
    params[f"l{i}"] = {
      "qkv": _dense(next(keys), D, 3 * D),
      "proj": _dense(next(keys), D, D),
      "ff1": _dense(next(keys), D, FF),
      "ff2": _dense(next(keys), FF, D),
      "ln1": jnp.ones(D),
      "ln2": jnp.ones(D),
    }
  return params


def _layer_norm(x, scale):
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.var(x, -1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale


def _tf_loss(params, batch):
  tokens = batch
  x = params["embed"][tokens[:, :-1]] + params["pos"][: SEQ - 1]
  t = x.shape[1]
  mask = jnp.tril(jnp.ones((t, t), bool))
  for i in range(LAYERS):
    p = params[f"l{i}"]
    h = _layer_norm(x, p["ln1"])
    q, k, v = jnp.split(h @ p["qkv"], 3, axis=-1)
    split = lambda a: a.reshape(a.shape[0], t, HEADS, D // HEADS)
    q, k, v = split(q), split(k), split(v)
    att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(D // HEADS)
    att = jax.nn.softmax(jnp.where(mask, att, -1e9), axis=-1)
    h = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(x.shape)
    x = x + h @ p["proj"]
    x = x + jax.nn.gelu(_layer_norm(x, p["ln2"]) @ p["ff1"]) @ p["ff2"]
  logits = x @ params["out"]
  targets = tokens[:, 1:]
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1))


def _tf_batches(key, n, batch=8):
  return jax.random.randint(key, (n, batch, SEQ), 0, VOCAB)


MODELS = {
  "mlp": Model(
    "mlp",
    task.init_mlp,
    task.mse_loss,
    _mlp_batches,
    "toy MLP 2-500-500-1, batch 256",
  ),
  "cnn": Model(
    "cnn",
    _cnn_init,
    _cnn_loss,
    _cnn_batches,
    "CNN 28x28, 2 conv + 2 dense, batch 32",
  ),
  "transformer": Model(
    "transformer",
    _tf_init,
    _tf_loss,
    _tf_batches,
    f"transformer {LAYERS} layers d={D}, seq {SEQ}, batch 8",
  ),
}


def n_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
