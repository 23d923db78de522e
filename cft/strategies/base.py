"""The hook interface every Phase-2 strategy implements, and the context it receives.

A strategy is a small class with no-op defaults. The recipe calls, in order:

    validate(model_config)              before any training: reject bad options early
    phase2_data(examples, ctx)          e.g. mix in replay examples (ER, GR)
    prepare(model, ctx)                 e.g. freeze layers, wrap LoRA, set up gradient masks
    -- the training loop calls penalty(model, batch) and on_before_optimizer_step(model) --
    finalize(model, ctx)                e.g. merge LoRA weights back for evaluation and saving
    report()                            what to record: frozen modules, replay share, ranks...

Nothing outside a strategy ever asks which strategy it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cft.data.records import Example


@dataclass
class StrategyContext:
    """What a strategy may need beyond the model and data. Expensive items are lazy callables."""

    base_ref: str  # hub id or folder of the base checkpoint
    phase1_dir: Path  # folder of the Phase-1 checkpoint (model + tokenizer)
    tokenizer: Any
    cache_dir: Path  # the artifact cache (cft.artifacts.cached)
    run_dir: Path
    seed: int
    phase2_size: int = 0  # number of Phase-2 examples before any mixing
    counterpart: Callable[[], list[Example]] = list  # English counterpart of the Phase-2 data
    counterpart_spec: dict = field(default_factory=dict)  # its config, for cache keys
    phase1_key: str = ""  # cache key of the Phase-1 artifact, for keys of derived artifacts
    load_phase1: Callable[[], Any] | None = None  # a fresh Phase-1 model (for generation)
    max_length: int = 512


class Strategy:
    """End-to-end fine-tuning: every hook is a no-op. Other strategies override what they need."""

    def validate(self, model_config) -> None:
        """Raise ConfigError for options that cannot work with this model (before any training)."""

    def phase2_data(self, examples: list[Example], ctx: StrategyContext) -> list[Example]:
        return examples

    def prepare(self, model, ctx: StrategyContext):
        return model

    def penalty(self, model, batch):
        return None

    def on_before_optimizer_step(self, model) -> None:
        pass

    def finalize(self, model, ctx: StrategyContext):
        return model

    def report(self) -> dict[str, Any]:
        return {}
