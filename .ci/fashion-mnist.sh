#!/usr/bin/env bash
# Fashion-MNIST from Debian (dataset-fashion-mnist): installs the four gzipped IDX files in
# /usr/share/datasets/fashion-mnist, where rnp's fashion_mnist data set finds them. Idempotent.
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
[ -s "$dir/train-images-idx3-ubyte.gz" ] && exit 0
[ "$(id -u)" = 0 ] || { echo "fashion-mnist: not installed and not root (sudo apt-get install dataset-fashion-mnist)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends dataset-fashion-mnist >/tmp/fashion-apt.log 2>&1 \
  || { apt-get update >>/tmp/fashion-apt.log 2>&1 && apt-get install -y --no-install-recommends dataset-fashion-mnist >>/tmp/fashion-apt.log 2>&1; } \
  || { echo "fashion-mnist: apt-get install failed, see /tmp/fashion-apt.log" >&2; exit 1; }
