#!/usr/bin/env bash
# The one call on a lent GPU: `python -m benchmarks device-check` over the carried MNIST folder,
# every line under $OUT (docs/device-check.md). scripts/prepare_device_check.sh prepares what it
# carries (.device/) and prints the call. Extra arguments go to device-check (--quick, --checks ...).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
python=${PYTHON:-python3}
site=/tmp/lenet-jax-site  # carried wheels (tensorboardX): nothing of the image's is replaced
if compgen -G ".device/wheels/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .device/wheels/*.whl || exit 1
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"  # the project by path: no pip install
{
    date -u
    nvidia-smi || echo "no nvidia-smi"
    "$python" -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|flax|optax|orbax|chex|numpy|protobuf|tensorboardx)'
} >"$OUT/machine.txt" 2>&1
"$python" -m benchmarks device-check --data-dir .device/mnist --out "$OUT" "$@" 2>"$OUT/stderr.log"
status=$?
[ "$status" = 0 ] || tail -n 20 "$OUT/stderr.log"  # the reply shows the end of the output
echo "device-check exit $status; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$status"
