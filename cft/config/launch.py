"""The launch rule at compose time: a cell that cannot train where this command runs stops before any
work (cft.config.checks calls `problems`), naming the command to run instead or the setting to change.
The numbers come from cft.training.memory; this module only reads them out of a resolved config.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from cft.training import memory

log = logging.getLogger(__name__)


def model_shape(model: dict[str, Any]) -> memory.Shape | None:
    """The shape of the model a cell trains: built in code, the checkpoint's config.json (a local folder
    or the hub's cache), else `model.shape` (the config numbers written in conf/model for checkpoints not
    downloaded yet); None when none is known (the checkpoint check names the missing checkpoint)."""
    if model.get("build") and not model.get("base"):
        return memory.Shape.of({**model["build"], "vocab_size": 259})  # the byte tokenizer of built models
    import json
    from pathlib import Path

    for which in ("base", "instruct"):
        ref = model.get(which)
        if not ref or model.get("gguf_file"):
            continue
        path = Path(str(ref)).expanduser() / "config.json"
        if not path.is_file():  # a hub id: its cached copy only, never the network (compose time must be quick)
            from huggingface_hub import try_to_load_from_cache

            try:
                cached = try_to_load_from_cache(str(ref), "config.json")
            except Exception:  # not a valid hub id either
                cached = None
            path = Path(cached) if isinstance(cached, str) else None
        if path is not None:
            try:
                return memory.Shape.of(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError, KeyError):
                continue
    return memory.Shape.of(model["shape"]) if model.get("shape") else None


def _trainable(strategy: dict[str, Any], shape: memory.Shape) -> tuple[str, float]:
    from hydra.utils import instantiate

    name = str(strategy.get("_target_", "?")).rsplit(".", 1)[-1]
    try:
        return name, float(instantiate(strategy).trainable_share(shape))
    except Exception:  # a strategy that cannot be built here is reported by the recipe's own checks
        return name, 1.0


def problems(values: dict[str, Any], launcher: tuple[int, int] | None = None) -> list[str]:
    """The launch problem of one resolved train config (empty: it fits where it is launched). `launcher`:
    (ranks, GPUs per node) of the jobs a launcher submits (SLURM), which run elsewhere than this process."""
    model = values.get("model") or {}
    if not model.get("base") and not model.get("instruct"):
        return []  # a model built in code (demo, tests): small by construction
    shape = model_shape(model)
    if shape is None:
        return []
    from cft.recipes.common import phase_train_config

    gpus = memory.gpus_available()
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launcher is not None:  # the jobs' ranks and GPUs, not this (login) node's
        world, gpus = launcher
    name, trainable = _trainable(values.get("strategy") or {}, shape)
    # A launcher's GPUs are not this node's: their size is CFT_GPU_MEMORY_GB, else an 80 GB card.
    capacity = float(os.environ.get(memory.GPU_MEMORY_ENV) or 80.0) if launcher is not None else memory.device_memory_gb()
    phases = ["phase2"] if (values.get("phase1_data") or {}).get("use_instruct_checkpoint") else ["phase1", "phase2"]
    for phase in phases:
        train = phase_train_config(values["train"], phase)
        precision = train.get("precision", "auto")
        bf16 = precision == "bf16" or (precision == "auto" and gpus > 0)
        kwargs = dict(micro_batch=int(train["micro_batch_size"]), seq_len=int(train["max_length"]), bf16=bf16)
        # Composed here for ranks launched elsewhere: the config those ranks resolve (train=paper's multi-GPU one).
        chosen = train.get("deepspeed") or (values["train"].get("multi_gpu_deepspeed") if world > 1 and gpus else None)
        deepspeed = memory.with_stage(
            chosen,
            memory.stage_that_fits(shape, world=world, capacity_gb=capacity, trainable=trainable, **kwargs),
        )
        problem = memory.launch_problem(
            shape,
            strategy=f"Phase 2, {name}" if phase == "phase2" else "Phase 1, full fine-tune",
            trainable=trainable if phase == "phase2" else 1.0,
            deepspeed=deepspeed,
            gradient_checkpointing=bool(train.get("gradient_checkpointing", False)),
            world=world,
            gpus=gpus,
            capacity_gb=capacity,
            **kwargs,
        )
        if problem:
            return [problem]
    return []
