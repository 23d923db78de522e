"""Shared test set-up: offline hub, temporary W&B/HF folders, tiny models built in code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

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
# DeepSpeed compiles C++ ops on first use; keep them between tests (and CI runs) in one place.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parent.parent / ".cache" / "torch_extensions"))

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

TINY_ARCH = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
}


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: uses the real data in ../shared/data (skipped when absent)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    if SHARED_DATA.exists():
        return
    skip = pytest.mark.skip(reason=f"real data not found at {SHARED_DATA}")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


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
