#!/usr/bin/env bash
# The prepared accelerator check (bench/device_check.py): one command for a short GPU lend.
#
#   bench/device_check.sh               # on the GPU host, from the project root; ≤ 8 minutes
#   bench/device_check.sh --cpu-smoke   # tiny sizes on any CPU (what CI runs)
#
# Runs with the host's own python3 (its CUDA jax, flax, optax, orbax, chex) and PYTHONPATH=.;
# packages the host lacks (ml_collections) travel as wheels in .whl/ (bench/device_wheels.sh
# downloads them where a registry is reachable) and are installed into /tmp/site first.
# Writes device_check.{md,json} and the log under $OUT (default runs/device_check).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/device_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
  | tee "$OUT/gpu.txt" || true
"$PY" bench/device_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"
