"""What the recipes share: turning config nodes into the typed components they run."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cft.errors import CftError
from cft.training.loop import TrainSettings

log = logging.getLogger(__name__)

PHASE_KEYS = ("phase1", "phase2")
# Train config keys that only feed the config itself (train.deepspeed interpolates multi_gpu_deepspeed).
CONFIG_ONLY_KEYS = ("multi_gpu_deepspeed",)


def plain(node: Any) -> Any:
    """A config node as plain Python (interpolations resolved); anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build(node: Any) -> Any:
    """hydra.utils.instantiate, letting a CftError raised by the object (a bad option, a missing
    file) through as itself: Hydra wraps it in an InstantiationException, whose trace would bury it."""
    try:
        return instantiate(node)
    except Exception as exc:
        if isinstance(exc.__cause__, CftError):
            raise exc.__cause__ from None
        raise


def build_eval_tasks(eval_cfg: Any, model_dtype: str = "auto"):
    """The tasks of an evaluation suite, built (and so checked) before any model work: a
    cft.evaluation.Suite (the suite's shared defaults passed to its tasks; `Suite.evaluate`), whose
    `dtype: auto` follows `model_dtype` (model.dtype)."""
    from cft.evaluation import build_suite

    return build_suite(eval_cfg, model_dtype=str(model_dtype or "auto"))


def phase_train_config(train_cfg: Any, phase: str) -> dict[str, Any]:
    """The train settings of one phase: the shared ones, updated by `train.<phase>` (e.g. train.phase2.lr)."""
    train = plain(train_cfg)
    shared = {k: v for k, v in train.items() if k not in PHASE_KEYS + CONFIG_ONLY_KEYS}
    return {**shared, **{k: v for k, v in (train.get(phase) or {}).items() if v is not None}}


def train_settings(train: Mapping[str, Any], *, seed: int = 0) -> TrainSettings:
    """The loop's settings from one phase's train config (see `phase_train_config`)."""
    return TrainSettings.from_config(train, seed=seed)


def model_shape(model_cfg: Mapping[str, Any], *, use_instruct: bool = False):
    """The model's config (layer and head counts) without building or loading any weights, so
    strategy options are checked against it before phase 0 or Phase 1 trains. Read from the checkpoint
    the cell trains from: the Instruct model's with phase1_data=instruct (the base may not be on disk)."""
    if model_cfg.get("build") and not model_cfg.get("base"):
        from transformers import LlamaConfig

        return LlamaConfig(**{k: v for k, v in model_cfg["build"].items() if k != "seed"})
    which = "instruct" if (use_instruct and model_cfg.get("instruct")) or not model_cfg.get("base") else "base"
    what = {"instruct": "Instruct model", "base": "base model"}[which]
    from cft.models.handle import Checkpoint

    return Checkpoint(
        str(model_cfg.get(which)), key="", what=what, gguf_file=model_cfg.get("gguf_file"), setting=f"model.{which}"
    ).config()
