"""`lora`: LoRA (Hu et al. 2021, arXiv 2106.09685), the parameter-efficient baseline of arXiv
2410.16006 -- Phase 2 trains low-rank adapters on the chosen projections through peft, with the
Phase-1 weights frozen; the adapters are merged into the weights after training, so evaluation
and the saved checkpoint see a plain model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field

from cft.errors import ConfigError
from cft.strategies.base import PhaseLR, Strategy, StrategyContext, check_modules, parameter_report


class LoRA(Strategy):
    def __init__(
        self,
        r: Annotated[int, Field(ge=1, description="LoRA rank")] = 8,
        alpha: Annotated[float, Field(gt=0, description="LoRA scale numerator (scale = alpha / r)")] = 16,
        dropout: Annotated[float, Field(ge=0, lt=1, description="dropout on the LoRA input")] = 0.05,
        target_modules: Annotated[Sequence[str], Field(min_length=1, description="modules that get adapters")] = (
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ),
        lr: PhaseLR = 2e-4,  # conf/strategy/lora.yaml names the source
    ):
        self.lr = lr
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = list(target_modules or [])
        self._report: dict[str, Any] = {}

    def validate(self, model_config) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"strategy.r={self.r!r} must be a positive integer (the LoRA rank)")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ConfigError(f"strategy.alpha={self.alpha!r} must be a positive number")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"strategy.dropout={self.dropout!r} must be in [0, 1)")
        check_modules("strategy.target_modules", self.target_modules, model_config, layers_only=False)

    def trainable_share(self, shape) -> float:
        """r x (inputs + outputs) per adapted matrix and layer, over the model's parameters."""
        h, i, kv = shape.hidden, shape.intermediate, shape.kv_heads * (shape.hidden // shape.heads)
        sides = {"q_proj": h + h, "o_proj": h + h, "k_proj": h + kv, "v_proj": h + kv, "gate_proj": h + i, "up_proj": h + i}
        sides["down_proj"] = i + h
        per_layer = sum(sides.get(m, 2 * h) for m in self.target_modules) * self.r
        return min(1.0, per_layer * shape.layers / shape.params)

    def prepare(self, model, ctx: StrategyContext):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
        self._report = {
            "r": self.r,
            "alpha": self.alpha,
            "target_modules": ",".join(self.target_modules),
            **parameter_report(model),
        }
        return model

    def finalize(self, model, ctx: StrategyContext):
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        return model

    def report(self) -> dict[str, Any]:
        return dict(self._report)
