"""analyze.py's config schema (cft.analysis.config.AnalyzeConfig): every mode of conf/mode/ composes
and validates; unknown keys and out-of-range values are rejected naming the key, before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compose
from omegaconf import OmegaConf
from pydantic import ValidationError

from cft.analysis.config import MODES, AnalyzeConfig

REPO = Path(__file__).resolve().parent.parent


def _values(overrides: list[str]) -> dict:
    cfg = compose(overrides, config_name="analyze")
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_composes_and_validates(mode, monkeypatch):
    monkeypatch.setenv("CFT_OUTPUT_ROOT", "/tmp/cft-out")
    config = AnalyzeConfig.model_validate(_values([f"mode={mode}"]))
    assert config.mode == mode and config.paths.output_root == "/tmp/cft-out"
    assert config.paths.cache_dir == "/tmp/cft-out/cache"
    others = [m for m in MODES if m != mode and m != "sweep"]
    assert all(getattr(config, m) is None for m in others)
    if mode != "sweep":
        assert config.options is getattr(config, mode)


def test_mode_settings_are_read_from_their_own_key():
    config = AnalyzeConfig.model_validate(
        _values(["mode=similarity", "similarity.n=7", "similarity.datasets=[alpaca,multialpaca]", "embedder=hashing"])
    )
    assert (config.similarity.n, config.similarity.datasets) == (7, ["alpaca", "multialpaca"])
    assert config.similarity.cache_dir == config.paths.cache_dir  # mean embeddings go to the shared cache
    assert config.embedder["_target_"] == "cft.measures.similarity.HashingEmbedder"
    layers = AnalyzeConfig.model_validate(_values(["mode=layers", "layers.models={base: /b, phase1: /p1}"]))
    assert layers.layers.models == {"base": "/b", "phase1": "/p1"}


@pytest.mark.parametrize(
    "overrides, loc, message",
    [
        (["mode=similarity", "similarity.n=0"], ("similarity", "n"), "greater than or equal to 1"),
        (["mode=similarity", "+similarity.samples=3"], ("similarity", "samples"), "Extra inputs are not permitted"),
        (["+output_root=/x"], ("output_root",), "Extra inputs are not permitted"),  # the old name: paths.output_root now
        (["tracking.mode=onlin"], ("tracking", "mode"), "'offline', 'online' or 'disabled'"),
        (["mode=dashboard", "dashboard.report=maybe"], ("dashboard", "report"), "valid boolean"),
        (
            ["mode=representations", "representations.batch_size=0"],
            ("representations", "batch_size"),
            "greater than or equal to 1",
        ),
        (["mode=layers", "layers.models={base: /b, phase3: /c}"], ("layers",), "may only name base, phase1 and phase2"),
        (["source=s3"], ("source",), "'local' or 'wandb'"),
    ],
)
def test_bad_values_are_rejected_with_the_key(overrides, loc, message):
    with pytest.raises(ValidationError) as info:
        AnalyzeConfig.model_validate(_values(overrides))
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [loc] and message in errors[0]["msg"]


def test_settings_of_another_mode_are_refused():
    values = _values(["mode=sweep"])
    values["similarity"] = {"n": 3}
    with pytest.raises(ValidationError, match=r"similarity: the settings of mode=similarity, but mode=sweep"):
        AnalyzeConfig.model_validate(values)


def test_cli_rejects_a_bad_value_before_any_work(tmp_path):
    env = {**os.environ, "CFT_OUTPUT_ROOT": str(tmp_path / "out"), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "analyze.py", "mode=similarity", "similarity.n=0", "similarity.datasets=[demo]"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cft: error: similarity.n=0: input should be greater than or equal to 1" in proc.stderr
    assert not (tmp_path / "out").exists()
