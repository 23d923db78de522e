# Every target sets itself up: the first `make demo` or `make test` creates .venv and installs cft.
# torch: the CUDA build where an NVIDIA GPU is present, the CPU build (2.13.0) elsewhere.
# On a CPU machine with no local CPU wheel, add TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# to avoid downloading the CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cft-installed
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= $(if $(HAS_GPU),torch>=2.3,torch==2.13.0)
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
# One pytest-xdist worker per core, a whole test module per worker (its module fixtures built once), in
# the order tests/conftest.py gives (the longest modules first).
TEST_WORKERS ?= auto
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(PY) train.py

# DeepSpeed's C++ ops for the CPU, compiled once per Python environment into a per-user cache, in a folder
# named after the environment's path (torch's build records the absolute paths of the sources it compiled,
# which lie in the environment: two environments sharing one folder would rebuild each other's ops on every
# switch). TORCH_EXTENSIONS_DIR= moves it. When they are not built yet, `make test` compiles them beside the
# suite, not before it (about 110 s of one core): a DeepSpeed test that needs an op before it is built waits
# on torch's build lock in that folder (whichever process takes the lock first builds, the others wait, then
# load the op), while the suite's other tests keep both cores busy. torch's build (ninja) recompiles an op
# whose sources are newer than its build, as they are in a new environment, even at the same path: so the
# stamp that says the ops are built lives in the environment, and goes with it. tests/conftest.py names the
# same folder for a direct pytest run.
TORCH_EXTENSIONS_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/cft/torch_extensions/$(subst /,-,$(patsubst /%,%,$(abspath $(VENV))))
export TORCH_EXTENSIONS_DIR
OPS := $(VENV)/.cft-ops-built
OPS_LOG := $(TORCH_EXTENSIONS_DIR)/build.log
# $(call with_ops,COMMAND): COMMAND, with the ops built beside it when they are not yet; fails if either fails.
with_ops = ops=; if [ ! -e $(OPS) ]; then mkdir -p $(TORCH_EXTENSIONS_DIR); \
	echo "DeepSpeed's CPU ops: compiling beside the tests (log: $(OPS_LOG))"; \
	$(MAKE) --no-print-directory $(OPS) >$(OPS_LOG) 2>&1 & ops=$$!; fi; \
	$(1); status=$$?; \
	if [ -n "$$ops" ] && ! wait $$ops; then echo "DeepSpeed's CPU ops failed to build:"; tail -n 20 $(OPS_LOG); status=1; fi; \
	exit $$status

$(OPS): $(STAMP)
	$(if $(HAS_GPU),,DS_ACCELERATOR=cpu $(PY) -c \
		"from deepspeed.ops.op_builder.cpu import CPUAdamBuilder, ShareMemCommBuilder; [b().load() for b in (ShareMemCommBuilder, CPUAdamBuilder)]")
	mkdir -p $(dir $@) && touch $@

test: $(STAMP)
	@$(call with_ops,$(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS))

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The README's performance figures: every bench/ script, twice, JSON in bench/results/, README rewritten (2 to 3 h on 2 busy cores).
bench: $(STAMP)
	PY=$(PY) bash bench/run_all.sh

test-fast: $(STAMP)
	@$(call with_ops,$(PY) -m pytest -q $(XDIST) -m "not slow and not integration" $(PYTEST_ARGS))

clean:
	rm -rf outputs multirun .pytest_cache
