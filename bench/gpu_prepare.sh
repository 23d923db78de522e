#!/usr/bin/env bash
# Fill bench/gpu_wheels/ (git-ignored) with what bench/gpu.sh needs on the device machine and its image lacks
# (KINDS.md: Python 3.12, torch, transformers, accelerate, peft there; no deepspeed, pydantic, hjson, liger-kernel).
# Run here, where PyPI is reachable; about 10 MB, well under the 64 MiB a device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
W=bench/gpu_wheels
mkdir -p "$W"
# The versions of this venv, so the device runs what the tests here ran (pydantic and pydantic-core go together).
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
PLATFORMS=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d "$W" \
  "pydantic==$(ver pydantic)" "pydantic-core==$(ver pydantic-core)" "annotated-types==$(ver annotated-types)" \
  "typing-inspection==$(ver typing-inspection)" "hjson==$(ver hjson)" "liger-kernel==${LIGER_VERSION:-0.8.5}"
# DeepSpeed ships as a source archive only: build its pure-Python wheel here (DS_BUILD_OPS=0: no op is compiled;
# ops JIT-compile on first use there, and the ZeRO-2 step with torch's AdamW needs none).
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$W" "deepspeed==$(ver deepspeed)"
ls -la "$W"
du -sh "$W"
