"""The hook interface every Phase-2 strategy implements, and the context it receives.

A strategy is a small class with no-op defaults. The recipe calls, in order:

    validate(model_config)              before any training: reject bad options early
    phase2_train(train)                 the Phase-2 train settings, e.g. the strategy's own `lr`
    phase2_data(examples, ctx)          e.g. mix in replay examples (ER, GR)
    prepare(model, ctx)                 e.g. freeze layers, wrap LoRA, set up gradient masks
    -- the training loop calls penalty(model, batch), on_before_optimizer_step(model) and
       on_examples_trained(positions) (which examples each step trained on, e.g. to count replay) --
    finalize(model, ctx)                e.g. merge LoRA weights back for evaluation and saving
    report()                            what to record: frozen modules, replay share, ranks...
    tables()                            tables for the tracker (e.g. layer-change ranks)

Nothing outside a strategy ever asks which strategy it is.
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from cft.data.records import Example
from cft.errors import ConfigError


@dataclass
class StrategyContext:
    """What a strategy may need beyond the model and data. Expensive items are lazy callables."""

    base_ref: str  # hub id or folder of the base checkpoint
    phase1_dir: Path  # folder of the Phase-1 checkpoint (model + tokenizer)
    tokenizer: Any
    cache_dir: Path  # the artifact cache (cft.run.artifacts.cached)
    run_dir: Path
    seed: int
    phase2_size: int = 0  # number of Phase-2 examples before any mixing
    counterpart: Callable[[], list[Example]] = list  # English counterpart of the Phase-2 data
    counterpart_spec: dict = field(default_factory=dict)  # its config, for cache keys
    phase1_key: str = ""  # cache key of the Phase-1 artifact, for keys of derived artifacts
    load_phase1: Callable[[], Any] | None = None  # the Phase-1 model on the accelerator (for generation)
    max_length: int = 512
    base: Any = None  # cft.models.handle.Checkpoint of the base model (None when the cell has none)
    phase1: Any = None  # cft.models.handle.Checkpoint of the Phase-1 model
    cache: Any = None  # cft.run.artifacts.Cache (None: one is made on cache_dir)

    def artifact(self, kind: str, spec: Any, build: Callable[[Path], None], *, collective: bool = False) -> Path:
        """The one way a strategy makes a cached thing (cft.run.artifacts): folder of `kind` for `spec`.
        `collective`: with several ranks every rank runs `build` (sharded work); rank 0 alone writes."""
        from cft.run.artifacts import Cache

        return (self.cache or Cache(self.cache_dir)).artifact(kind, spec, build, collective=collective)


# Every strategy takes `lr`: its own Phase-2 learning rate (a method may want another rate than full
# fine-tuning, e.g. LoRA), which wins over train.lr and train.phase2.lr in Phase 2 only.
PhaseLR = Annotated[
    float | None, Field(gt=0, le=1, description="Phase-2 learning rate of this strategy; null = train.phase2.lr or train.lr")
]


class Strategy:
    """End-to-end fine-tuning: every hook is a no-op. Other strategies override what they need."""

    lr: float | None = None  # the strategy's own Phase-2 learning rate (PhaseLR), set by __init__

    # What the strategy reads beyond the model and the Phase-2 data, so the recipe checks it before any
    # model work: "base" (the base checkpoint's weights), "counterpart" (the English counterpart data).
    NEEDS: frozenset[str] = frozenset()

    def needs(self) -> frozenset[str]:
        return self.NEEDS

    def validate(self, model_config) -> None:
        """Raise ConfigError for options that cannot work with this model (before any training)."""

    def phase2_train(self, train: dict[str, Any]) -> dict[str, Any]:
        """The Phase-2 train settings (train.<key> updated by train.phase2.<key>), with the strategy's `lr`."""
        return train if self.lr is None else {**train, "lr": float(self.lr)}

    def trainable_share(self, shape) -> float:
        """The share of the model's parameters that train (a cft.training.memory.Shape): the memory estimate
        of the launch check. Strategies that freeze little keep the default, which errs on the safe side."""
        return 1.0

    def phase2_data(self, examples: list[Example], ctx: StrategyContext) -> list[Example]:
        return examples

    def prepare(self, model, ctx: StrategyContext):
        return model

    def penalty(self, model, batch):
        return None

    def on_before_optimizer_step(self, model) -> None:
        pass

    def on_examples_trained(self, positions) -> None:
        """After each optimizer step: positions (in the list phase2_data returned) of the examples it trained on."""

    def finalize(self, model, ctx: StrategyContext):
        return model

    def report(self) -> dict[str, Any]:
        return {}

    def tables(self) -> dict[str, tuple[list[str], list[list[Any]]]]:
        """Tables for the tracker (e.g. layer-change ranks): {name: (columns, rows)}. Written after report()."""
        return {}


# ---------------------------------------------------------------- helpers shared by strategies

LAYER_PARAM_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:.+\.)?([^.]+)\.(weight|bias)$")


def param_layer_module(name: str) -> tuple[int | None, str | None]:
    """(layer index, module name) of a parameter name: '...layers.3.self_attn.q_proj.weight' -> (3, 'q_proj').

    Works on plain and PEFT-wrapped models; parameters outside decoder layers give (None, None)."""
    m = LAYER_PARAM_RE.search(name)
    return (int(m.group(1)), m.group(2)) if m else (None, None)


def module_names(model_config, *, layers_only: bool = True) -> set[str]:
    """Names of the modules with weights inside the decoder layers (q_proj, up_proj, input_layernorm...),
    or anywhere in the model (also lm_head, embed_tokens), read from a model built on the meta device,
    so options can be checked before anything loads."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    if layers_only:
        names = {param_layer_module(n)[1] for n, _ in model.named_parameters()}
        names.discard(None)
        return names  # type: ignore[return-value]
    return {
        name.rsplit(".", 1)[-1] for name, m in model.named_modules() if name and any(True for _ in m.parameters(recurse=False))
    }


def check_modules(option: str, modules, model_config, *, layers_only: bool = True) -> list[str]:
    """Reject module names that are not in the model (ConfigError names the option and lists the known names)."""
    modules = list(modules or [])
    if not modules:
        raise ConfigError(f"{option} is empty: name at least one module, e.g. [q_proj, k_proj, v_proj]")
    known = module_names(model_config, layers_only=layers_only)
    unknown = [m for m in modules if m not in known]
    if unknown:
        where = "this model's layers have" if layers_only else "this model has"
        raise ConfigError(f"{option}: unknown module name(s) {unknown}; {where} {sorted(known)}")
    return modules


def check_ratio(option: str, value) -> float:
    """A share in (0, 1]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < float(value) <= 1:
        raise ConfigError(f"{option}={value!r} must be a number in (0, 1]")
    return float(value)


def check_count(option: str, value, upper: int, what: str) -> int:
    """An integer in [1, upper] (e.g. k layers of a model with `upper` layers)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= upper:
        raise ConfigError(f"{option}={value!r} must be an integer from 1 to {upper} ({what})")
    return value


def freeze(model, should_freeze: Callable[[str], bool]) -> list[str]:
    """Set requires_grad=False on every parameter whose name `should_freeze`; returns their names.

    Strategies only ever freeze (never unfreeze), so freezing strategies compose by intersection.
    It must happen before the optimizer is built: the loop optimizes requires_grad parameters only."""
    frozen = []
    for name, param in model.named_parameters():
        if param.requires_grad and should_freeze(name):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def parameter_report(model) -> dict[str, Any]:
    from cft.training.gradients import numel

    total = sum(numel(p) for p in model.parameters())
    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total, "trainable_share": trainable / total if total else 0.0}


def layers_text(layers) -> str:
    """A short, sorted, comma-separated list of layer indices for metrics.json."""
    return ",".join(str(i) for i in sorted(layers))


def sample(items: list, n: int, seed: int, what: str) -> list:
    """`n` items drawn without replacement in an order fixed by `seed`."""
    if n > len(items):
        raise ConfigError(f"{what}: {n} examples needed but only {len(items)} available")
    return random.Random(seed).sample(items, n)


def write_csv(path: Path, columns: list[str], rows: list[list[Any]]) -> Path:
    """Write a table into the run folder (rank 0 alone writes run files)."""
    from cft.training import distributed

    if not distributed.is_main():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return path
