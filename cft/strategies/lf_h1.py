"""`lf_h1`: layer freezing, heuristic 1 of arXiv 2410.16006 -- freeze a seeded random set of k
decoder layers in Phase 2 (the paper uses k = 10), as the control for the change-ranked LF_H2."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field

from cft.strategies.base import (
    PhaseLR,
    Strategy,
    StrategyContext,
    check_count,
    check_modules,
    freeze,
    layers_text,
    param_layer_module,
    parameter_report,
)


class RandomLayerFreeze(Strategy):
    """Freeze k random decoder layers (all their parameters), or only the listed `modules` in them."""

    def __init__(
        self,
        k: Annotated[int, Field(ge=1, description="layers frozen (paper: 10 of 32)")] = 10,
        modules: Annotated[Sequence[str] | None, Field(description="modules frozen in those layers; null = all")] = None,
        seed: Annotated[int | None, Field(ge=0, description="which layers; null = the run's seed")] = None,
        lr: PhaseLR = None,
    ):
        self.lr = lr
        self.k = k
        self.modules = list(modules) if modules else None
        self.seed = seed
        self.layers: list[int] = []
        self._report: dict[str, Any] = {}

    def validate(self, model_config) -> None:
        n = int(model_config.num_hidden_layers)
        check_count("strategy.k", self.k, n, f"the model has {n} layers")
        if self.modules is not None:
            check_modules("strategy.modules", self.modules, model_config)

    def trainable_share(self, shape) -> float:
        """Frozen layers (requires_grad=False) have no gradients and no optimizer states: k layers' share
        (of their `modules` only, when set) is left out of the memory estimate."""
        return 1.0 - shape.frozen_share(min(self.k, shape.layers), self.modules)

    def prepare(self, model, ctx: StrategyContext):
        n = int(model.config.num_hidden_layers)
        seed = ctx.seed if self.seed is None else self.seed
        self.layers = sorted(random.Random(f"lf_h1/{seed}").sample(range(n), self.k))
        chosen, modules = set(self.layers), set(self.modules) if self.modules else None

        def in_chosen(name: str) -> bool:
            layer, module = param_layer_module(name)
            return layer in chosen and (modules is None or module in modules)

        frozen = freeze(model, in_chosen)
        self._report = {
            "frozen_layers": layers_text(self.layers),
            "k": self.k,
            "frozen_tensors": len(frozen),
            **parameter_report(model),
        }
        return model

    def report(self) -> dict[str, Any]:
        return dict(self._report)
