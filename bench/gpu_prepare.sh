#!/usr/bin/env bash
# Build here (PyPI reachable) everything the GPU kit (bench/gpu_e2e.sh) needs on the device machine beyond
# the working tree, into git-ignored folders that the device call carries:
#   bench/gpu_wheels/  a wheel of every distribution in bench/gpu_requirements.txt (what the GPU image lacks,
#                      pinned to this venv's versions: hydra-core, omegaconf, lm-eval and its needs, datasets,
#                      wandb, deepspeed, pydantic, liger-kernel, ...), Python 3.12 manylinux or pure-Python;
#   bench/gpu_data/    small subsets of the real data (Alpaca, MultiAlpaca es+ja, MMLU, HellaSwag, IFEval, XQuAD), read
#                      from CFT_DATA, else data/, else ../shared/data (bench/common.py's DATA_DIR).
# Then it fails unless project + wheels + data fit the 64 MiB one device call carries.
#   bash bench/gpu_prepare.sh            # about a minute; rerun after a dependency changes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
W=bench/gpu_wheels
rm -rf "$W" && mkdir -p "$W"
PLATFORMS=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64
           --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux1_x86_64)
grep -v '^#' bench/gpu_requirements.txt | grep . | while read -r spec; do
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d "$W" "$spec" 2>/dev/null; then
    # Source archives only (deepspeed, antlr4-python3-runtime, langdetect, ...): a pure-Python wheel built here.
    # DeepSpeed with DS_BUILD_OPS=0: no op compiled; ops JIT-compile on first use there (torch's AdamW needs none).
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$W" "$spec"
  fi
done
# Every pin became exactly one wheel (two versions of one name would stop the install there).
"$PY" - <<'PY'
from pathlib import Path
from packaging.utils import canonicalize_name, parse_wheel_filename
pins = {canonicalize_name(l.split("==")[0]) for l in Path("bench/gpu_requirements.txt").read_text().splitlines() if l and not l.startswith("#")}
have = [canonicalize_name(parse_wheel_filename(p.name)[0]) for p in Path("bench/gpu_wheels").glob("*.whl")]
assert len(have) == len(set(have)), f"two wheels of one name: {sorted(have)}"
assert set(have) == pins, f"missing {sorted(pins - set(have))}, extra {sorted(set(have) - pins)}"
print(f"{len(have)} wheels, one per pin")
PY
rm -rf bench/gpu_data
DATA=$(PYTHONPATH=$PWD "$PY" -c "import sys; sys.path.insert(0, 'bench'); import common; print(common.DATA_DIR)")
PYTHONPATH=$PWD "$PY" -c "import sys; sys.path.insert(0, 'bench'); import gpu_e2e; from pathlib import Path; gpu_e2e.subset_data(Path('$DATA'), Path('bench/gpu_data'))"
cp "$DATA/SOURCES.md" bench/gpu_data/SOURCES.md   # where the subsets come from, and their licenses
PYTHONPATH=$PWD "$PY" bench/gpu_bundle.py size
