#!/usr/bin/env bash
# `make bench`: regenerate the figures of the README's "Performance" section.
#
# Runs every bench script with its defaults, one after another, BENCH_RUNS times (default 2: the README
# says how much each load-dependent figure moved between the two runs), writes each script's JSON to
# bench/results/<script>.json (run 1) and bench/results/<script>.run<N>.json (run N > 1), its log to
# bench/results/logs/, then rewrites the generated part of the README from the JSON
# (bench/readme_figures.py --write). About 80 minutes per run on a 2-core CPU machine at a load of 3 to 5.
#
#   make bench                                  # everything, twice
#   BENCH_RUNS=1 BENCH_SCRIPTS="threads strategy_cost" make bench   # a subset, once (others keep their JSON)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${BENCH_RUNS:-2}
SCRIPTS=${BENCH_SCRIPTS:-"threads strategy_cost run_timeline train_throughput generation sweep_cost evaluation memory_mpd scaling"}
RESULTS=bench/results
mkdir -p "$RESULTS/logs"
for run in $(seq 1 "$RUNS"); do
  suffix=$([ "$run" = 1 ] && echo "" || echo ".run$run")
  for script in $SCRIPTS; do
    out="$RESULTS/$script$suffix.json"
    echo "[bench] run $run: $script -> $out (load $(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo ?))" >&2
    # Profile tables go beside the JSON on the first run only.
    extra=()
    [ "$script" = strategy_cost ] && [ "$run" != 1 ] && extra=(--profile-dir "$RESULTS/logs")
    "$PY" "bench/$script.py" "${extra[@]}" >"$out.tmp" 2>"$RESULTS/logs/$script$suffix.log"
    mv "$out.tmp" "$out"
  done
done
"$PY" bench/readme_figures.py --write
