"""The image benchmark's data loaders: IDX files, rotation, digits."""

import gzip

import numpy as np
import pytest

from benchmarks.image import data as _data


def _write_idx(path, array, dtype_code=0x08):
  header = bytes([0, 0, dtype_code, array.ndim])
  header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
  raw = header + array.tobytes()
  if path.suffix == ".gz":
    raw = gzip.compress(raw)
  path.write_bytes(raw)


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_read_idx_round_trips(tmp_path, name):
  images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), np.uint8)
  _write_idx(tmp_path / name, images)
  np.testing.assert_array_equal(_data.read_idx(tmp_path / name), images)


def test_read_idx_big_endian_ints(tmp_path):
  values = np.arange(7, dtype=">i4")
  _write_idx(tmp_path / "v-idx1", values, dtype_code=0x0C)
  np.testing.assert_array_equal(_data.read_idx(tmp_path / "v-idx1"), values)


def test_read_idx_rejects_bad_files(tmp_path):
  (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
  with pytest.raises(ValueError, match="not an IDX file"):
    _data.read_idx(tmp_path / "bad")
  images = np.zeros((5, 28, 28), np.uint8)
  _write_idx(tmp_path / "short", images)
  (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-10])
  with pytest.raises(ValueError, match="truncated"):
    _data.read_idx(tmp_path / "short")


def test_loads_an_idx_dataset(tmp_path):
  rng = np.random.default_rng(0)
  for prefix, n in (("train", 12), ("t10k", 4)):
    _write_idx(
      tmp_path / f"{prefix}-images-idx3-ubyte.gz",
      rng.integers(0, 256, (n, 28, 28), np.uint8),
    )
    _write_idx(
      tmp_path / f"{prefix}-labels-idx1-ubyte",
      rng.integers(0, 10, n, np.uint8),
    )
  data = _data.load_idx_dataset("Tiny", [tmp_path / "nowhere", tmp_path])
  assert data.train.images.shape == (12, 28, 28)
  assert data.train.images.dtype == np.float32
  assert 0.0 <= data.train.images.min() and data.train.images.max() <= 1.0
  assert data.test.labels.dtype == np.int32 and len(data.test) == 4


def test_missing_data_says_how_to_fetch(tmp_path):
  with pytest.raises(_data.DataMissingError) as err:
    _data.load_idx_dataset("MNIST", [tmp_path])
  message = str(err.value)
  assert "scripts/fetch_data.sh" in message and "--data digits" in message


def test_rotation():
  rng = np.random.default_rng(0)
  images = rng.random((3, 28, 28)).astype(np.float32)
  np.testing.assert_allclose(_data.rotate(images, 0.0), images, atol=1e-6)
  # A quarter turn is a pure permutation of the pixels.
  quarter = _data.rotate(images, 90.0)
  turned = [np.rot90(images, k, axes=(1, 2)) for k in (1, 3)]
  assert min(np.abs(quarter - t).max() for t in turned) < 1e-5
  # An off-grid rotation keeps the mass of a centred blob.
  blob = np.zeros((1, 28, 28), np.float32)
  blob[0, 10:18, 10:18] = 1.0
  assert abs(_data.rotate(blob, 30.0).sum() - blob.sum()) < 0.5


def test_digits_fallback():
  data = _data.digits((0, 1, 2, 3, 4))
  assert data.num_classes == 5
  assert data.train.images.shape[1:] == (28, 28)
  assert set(np.unique(data.train.labels)) == {0, 1, 2, 3, 4}
  assert len(data.train) + len(data.test) == 901


def test_real_mnist_when_fetched():
  try:
    data = _data.mnist()
  except _data.DataMissingError:
    pytest.skip("MNIST not fetched (scripts/fetch_data.sh)")
  assert data.train.images.shape == (60000, 28, 28)
  assert data.test.images.shape == (10000, 28, 28)
  assert np.bincount(data.test.labels).tolist()[:2] == [980, 1135]
