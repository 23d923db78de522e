#!/usr/bin/env bash
# The GPU kit of issue 22: the whole pipeline on one GPU, then the step benchmark, in one command
# (the pipeline within 6 minutes on one H100/H200: the e2e sweep gets up to $E2E_BUDGET s, replay generation's
# levers $GEN_BUDGET s, the step benchmark's levers, compile and Liger among them, the rest of $TOTAL = 500 s).
#
# Here, once (PyPI and the real data reachable):   bash bench/gpu_prepare.sh
#     -> bench/gpu_wheels/ (what the GPU image lacks) and bench/gpu_data/ (data subsets), checked <= 64 MiB.
# On the device machine (the device tool's run, which copies the working tree):
#     run(command="bash bench/gpu_e2e.sh", carry=["bench/gpu_wheels", "bench/gpu_data"], timeout_s=570)
# Results in $OUT there (8 files, they come back): gpu_e2e.md (the table), gpu_e2e.json, gpu_e2e.csv, gpu.json
# (the step benchmark), generation.json (replay generation's levers) and the logs of the sweep, the ZeRO-3
# cell and analyze.py; elsewhere in bench/results/gpu_e2e/.
# The table is printed last, so the device tool's output tail holds it.
# On the CPU, the same scripts on the tiny shape:   bash bench/gpu_e2e.sh --cpu-smoke [--data-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
[ -x .venv/bin/python ] && [ -z "${OUT:-}" ] && PY=.venv/bin/python   # here: the project's venv; there: the image's python3
SMOKE=""; DATA=bench/gpu_data
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) SMOKE=--cpu-smoke ;;
    --data-dir) DATA=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
RESULTS=${OUT:-${CFT_GPU_E2E_OUT:-bench/results/gpu_e2e}}
mkdir -p "$RESULTS"
[ -d "$DATA" ] || { echo "no data subsets in $DATA: run bash bench/gpu_prepare.sh here first" >&2; exit 2; }

# What the image lacks, from the carried wheels, into a folder of its own first on the path (no network there).
if [ -z "$SMOKE" ] && compgen -G "bench/gpu_wheels/*.whl" >/dev/null; then
  SITE=${CFT_GPU_SITE:-/tmp/cft-gpu-site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" bench/gpu_wheels/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$SITE/bin:$PATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # cft from the working tree, not installed there
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export WANDB_MODE=offline WANDB_SILENT=true
export HF_HOME=${HF_HOME:-/tmp/cft-hf} NLTK_DATA=${NLTK_DATA:-/tmp/cft-nltk}
[ -z "$SMOKE" ] && command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true

# The CPU smoke has no time target (2 busy cores): only the GPU run is held to its budget.
if [ -n "$SMOKE" ]; then TOTAL=${TOTAL:-3600}; E2E_BUDGET=${E2E_BUDGET:-3600}; else TOTAL=${TOTAL:-500}; E2E_BUDGET=${E2E_BUDGET:-285}; fi
GEN_BUDGET=${GEN_BUDGET:-100}   # replay generation's levers (GPU only); the step benchmark gets the rest of $TOTAL
start=$(date +%s)
rc=0
# gpu_e2e.py gives each of its commands what is left of the budget, and writes the table of what finished.
# The sweep's many files stay out of $OUT (what comes back from the device machine is at most 8 files).
WORK=${CFT_GPU_E2E_WORK:-$(mktemp -d /tmp/cft-gpu-e2e.XXXX)}
timeout "$(( E2E_BUDGET + 60 ))" "$PY" bench/gpu_e2e.py $SMOKE --data-dir "$DATA" --out "$RESULTS" --work "$WORK" \
  --budget "$E2E_BUDGET" >&2 || rc=$?
# Replay generation: each lever of cft.models.generate (batch x4, unsorted, static cache, its compiled step)
# against one prompt at a time, at the 1B shape (issue 22 item 3); the JSON is written after every method.
if [ -n "$SMOKE" ]; then
  "$PY" bench/generation.py --smoke --levers --out "$RESULTS/generation.json" > /dev/null || rc=$?
else
  timeout "$GEN_BUDGET" "$PY" bench/generation.py --levers --device cuda --dtype bf16 --shape 1b --prompts 32 \
    --batch-size 16 --max-new-tokens 32 --rounds 1 --out "$RESULTS/generation.json" > /dev/null || rc=$?
fi
left=$(( TOTAL - ($(date +%s) - start) ))
if [ -n "$SMOKE" ]; then
  # What the GPU run below leaves out, the smoke leaves out too: ZeRO-2 (the ZeRO-3 cell ran DeepSpeed) and the
  # generation benchmark (generation.py ran its levers above; gpu_bench would run it again in a child).
  "$PY" bench/gpu_bench.py --cpu-smoke --levers --skip zero2,generation --out "$RESULTS/gpu.json" > /dev/null || rc=$?
else
  # The step benchmark, each lever on its own, in what time is left (its JSON is written as it goes).
  timeout "$(( left > 60 ? left : 60 ))" "$PY" bench/gpu_bench.py --levers --rounds 1 --steps 12 --warmup 3 \
    --skip zero2,generation --out "$RESULTS/gpu.json" > /dev/null || rc=$?
fi
echo "gpu_e2e.sh: done in $(( $(date +%s) - start )) s (rc $rc); results in $RESULTS, the sweep in $WORK" >&2
cat "$RESULTS/gpu_e2e.md" 2>/dev/null || true   # the table, last, where the device tool's output tail shows it
exit $rc
