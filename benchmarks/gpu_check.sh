#!/usr/bin/env bash
# bash benchmarks/gpu_check.sh                              # cuda: 512..8192, float32 + bfloat16
# bash benchmarks/gpu_check.sh --device cpu --max-size 1024 # dry run on a machine without a GPU
#
# Prints a table: size, dtype, median ms, IQR, spread, TFLOP/s, cold ms, h2d ms, rel error,
# peak MiB. Needs only torch: the measurement code is used straight from src/ (no install, no
# Hydra, no MLflow). About a minute on one H100; the timeout keeps it under 5 minutes anyway.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python3}"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv || true
exec timeout "${GPU_CHECK_TIMEOUT_S:-290}" "$python" "$root/benchmarks/gpu_matmul_sweep.py" "$@"
