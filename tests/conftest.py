"""Shared test set-up: offline hub, temporary W&B/HF folders, tiny models built in code, and what
pytest-xdist needs (`make test` runs one worker per core, each module on one worker): one torch thread
per worker, the longest modules handed out first, and `build_once` for set-ups shared by every worker."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

# The fault-injection modules' shared fixtures (prepared, root): a plugin, so that pytest rewrites its asserts.
pytest_plugins = ["faults_common"]

# Before any import of transformers/wandb: nothing may reach a hub, and nothing is written to ~.
_TMP = Path(tempfile.mkdtemp(prefix="cft-tests-"))
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    WANDB_MODE="offline",
    WANDB_SILENT="true",
    TOKENIZERS_PARALLELISM="false",
)
os.environ.setdefault("HF_HOME", str(_TMP / "hf"))
os.environ.setdefault("WANDB_DIR", str(_TMP / "wandb"))
os.environ.setdefault("NLTK_DATA", str(_TMP / "nltk"))
# DeepSpeed compiles C++ ops on first use; keep them between test runs in the per-user folder of this
# Python environment that `make test` compiles them into (Makefile: TORCH_EXTENSIONS_DIR, named after the
# environment's path, as torch's build records the absolute paths of the sources it compiled).
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR",
    str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "cft"
        / "torch_extensions"
        / str(Path(sys.prefix)).strip("/").replace("/", "-")
    ),
)
# Under xdist there is one worker process per core: torch in each (and every run it starts) uses one
# thread, as two threads per process on two busy cores spin-wait for each other (cft.training.threads).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
# The real data (README, "Real data"): CFT_DATA, else the project's data/, else ../shared/data, resolved in
# one place (bench/common.py, cheap to import) and exported, absolute, as CFT_DATA before any test runs:
# the configs' paths.data_dir reads it, in compose() here and in the train.py runs the tests start.
sys.path.append(str(REPO / "bench"))  # appended: bench/'s script names never shadow an installed module
from common import DATA_DIR, DATA_LOOKED  # noqa: E402

os.environ["CFT_DATA"] = str(DATA_DIR)  # a relative CFT_DATA made absolute (runs start in other folders)

TINY_ARCH = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
}


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: uses the real data in CFT_DATA (skipped when absent)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


# The longest modules, in seconds on a quiet 2-core machine under `make test` (their tests' --durations,
# summed; the bench smoke modules run two scripts at a time): handed out first, longest first, so that the
# many short modules fill in at the end and both workers finish together. Other modules follow: those with
# slow tests first, then the rest, each group in file order.
MODULE_SECONDS = {
    "test_faults_disk": 110,
    "test_faults_sweep": 78,
    "test_cluster": 75,
    "test_faults": 72,
    "test_spine": 65,
    "test_scale": 60,
    "test_gpu_kit": 55,
    "test_real_model": 44,
    "test_demo_study": 40,
    "test_bench_smoke": 40,
    "test_resume": 37,
    "test_bench_smoke_runs": 35,
    "test_strategies_e2e": 24,
    "test_config": 22,
    "test_bench_smoke_gpu": 18,
    "test_evaluation_lmeval": 18,
    "test_gguf": 16,
    "test_artifacts_scale": 8,
}


def pytest_collection_modifyitems(config, items):
    # Whole modules move (a module fixture is torn down when the module changes): xdist (`make test`: --dist
    # loadfile, one module per worker at a time, in this order) hands out the long ones while there is still
    # other work to balance them.
    slow = {item.module.__name__ for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: (-MODULE_SECONDS.get(item.module.__name__, 0), item.module.__name__ not in slow))
    if DATA_DIR.is_dir():
        return
    looked = " or ".join(str(p) for p in DATA_LOOKED)
    skip = pytest.mark.skip(reason=f"real data not found (looked at {looked}): set CFT_DATA=<the data folder>")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    """The real data folder (CFT_DATA; integration tests only: skipped where it is absent)."""
    return DATA_DIR


@pytest.fixture
def tiny_arch() -> dict:
    return dict(TINY_ARCH)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama + byte tokenizer saved with save_pretrained (read-only: copy before changing)."""
    from cft.models import save_built_model

    return save_built_model(tmp_path_factory.mktemp("tiny-model"), TINY_ARCH, seed=0)


@pytest.fixture
def tiny_model(tiny_model_dir):
    from cft.models import load_model

    return load_model(str(tiny_model_dir))


def run_root(tmp_path_factory) -> Path:
    """The folder every worker of this test run shares: under xdist the parent of the workers' own
    temporary roots, else this process's temporary root (a new one per run, cleaned like tmp_path)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def build_once(tmp_path_factory) -> Callable[[str, Callable[[Path], object]], Path]:
    """`build_once(name, build)`: the folder `build(folder)` filled once per test run, in whichever worker
    asks first; the others wait on a file lock and get the same folder (read-only: copy before changing).
    A build that raised leaves no mark, so the next test that asks tries again (and fails the same way)."""
    root = run_root(tmp_path_factory) / "built-once"
    root.mkdir(exist_ok=True)

    def get(name: str, build: Callable[[Path], object]) -> Path:
        folder, done = root / name, root / f"{name}.done"
        with FileLock(root / f"{name}.lock"):
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                build(folder)
                done.touch()
        return folder

    return get


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """The artifact cache (`paths.cache_dir`) of this test run's runs of the demo model at its defaults
    (the README's fresh run, the reduced demo study): its phase-0 base and the Phase-1 model they share
    are built once, by whichever run asks first, under the cache's own lock (cft.run.artifacts)."""
    folder = run_root(tmp_path_factory) / "demo-cache"
    folder.mkdir(exist_ok=True)
    return folder
