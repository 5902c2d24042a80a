#!/usr/bin/env bash
# Prepares here what scripts/device_check.sh needs on a lent GPU machine, in the git-ignored
# .device/ (the device tool carries it): the four MNIST IDX files (gzipped, ~11 MB) and the
# tensorboardX wheel (~90 KB; the image lacks it). tensorflow-datasets is not carried: with
# --data-dir lenet-jax reads the IDX files itself, and one of tfds's needs (promise) has no wheel.
# Then prints the device call. Usage: scripts/prepare_device_check.sh [MNIST_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
mnist=${1:-${LENET_DATA_DIR:-../shared/data/mnist}}
python=${PYTHON:-python3}
rm -rf .device && mkdir -p .device/mnist .device/wheels
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ -f "$mnist/$name.gz" ]; then cp "$mnist/$name.gz" .device/mnist/; else gzip -c "$mnist/$name" >".device/mnist/$name.gz"; fi
done
tensorboardx=$("$python" -c 'import importlib.metadata as m; print(m.version("tensorboardX"))' 2>/dev/null || echo 2.6.5)
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .device/wheels "tensorboardX==$tensorboardx" 2>&1 | grep -v "is ignored" || true
ls .device/wheels/*.whl >/dev/null
git check-ignore -q .device || { echo "error: .device/ is not git-ignored (see .gitignore)"; exit 1; }
echo "prepared .device ($(du -sh .device | cut -f1)): $(ls .device/mnist .device/wheels | tr '\n' ' ')"
echo "the call (device tool): run(command=\"bash scripts/device_check.sh\", carry=[\".device\"], timeout_s=600)"
