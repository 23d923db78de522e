#!/usr/bin/env bash
# The GPU figures of issue 17 in one run, within 10 minutes on one H100 or H200 (bench/gpu_bench.py says what).
#
# Here (a machine with network access), once:   bash bench/gpu_prepare.sh      # fills bench/gpu_wheels/ (git-ignored)
# On the device machine (the device tool's run, which copies the working tree):
#     run(command="bash bench/gpu.sh", carry=["bench/gpu_wheels"], timeout_s=600)
# The JSON lands in $OUT/gpu.json there (it comes back), else in bench/results/gpu.json.
# On the CPU, the same code paths at the smallest setting:   bash bench/gpu.sh --cpu-smoke
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
[ -x .venv/bin/python ] && [ -z "${OUT:-}" ] && PY=.venv/bin/python   # here: the project's venv; there: the image's python3

# The device image lacks deepspeed (and its pydantic, hjson) and liger-kernel: install the carried wheels
# into a folder of their own, first on the path; nothing is fetched there (no network).
if compgen -G "bench/gpu_wheels/*.whl" >/dev/null && [ "${1:-}" != "--cpu-smoke" ]; then
  SITE=${CFT_GPU_SITE:-/tmp/cft-gpu-site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" bench/gpu_wheels/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # cft from the working tree, not installed there
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled

RESULT=${OUT:-bench/results}/gpu.json
if [ "${1:-}" = "--cpu-smoke" ]; then
  shift
  RESULT=${CFT_GPU_SMOKE_OUT:-$(mktemp -d)/gpu.json}
  exec "$PY" bench/gpu_bench.py --cpu-smoke --out "$RESULT" "$@"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
exec timeout 570 "$PY" bench/gpu_bench.py --out "$RESULT" "$@"
