"""`combine`: several mitigations in one Phase 2 (e.g. generative replay plus layer freezing), which
arXiv 2410.16006 names as the next step. The parts are ordinary strategy configs; this class only
calls each part's hooks in turn, so no pair of strategies needs its own class.

Data hooks chain (each replay part adds its share of the original Phase-2 size), `prepare` runs
the parts in order (freezing only ever freezes, so frozen sets add up), penalties add, gradient
hooks run in order, and `finalize` runs in reverse order (e.g. a LoRA merge last-in first-out).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field

from cft.errors import ConfigError
from cft.strategies.base import PhaseLR, Strategy, StrategyContext, parameter_report


class Compose(Strategy):
    def __init__(
        self,
        parts: Annotated[Mapping[str, Any] | None, Field(description="the strategies combined, by name, in order")] = None,
        lr: PhaseLR = None,
    ):
        self.lr = lr
        self.parts: dict[str, Strategy] = dict(parts or {})
        self._params: dict[str, Any] = {}

    def needs(self) -> frozenset[str]:
        return frozenset().union(*(part.needs() for part in self.parts.values() if isinstance(part, Strategy)))

    def validate(self, model_config) -> None:
        if not self.parts:
            raise ConfigError(
                "strategy=combine has no parts: add them with "
                "+strategy@strategy.parts.<name>=<strategy>, e.g. +strategy@strategy.parts.gr=gr10"
            )
        for name, part in self.parts.items():
            if not isinstance(part, Strategy):
                raise ConfigError(f"strategy.parts.{name} is not a strategy config (it has no _target_ naming a Strategy)")
            part.validate(model_config)

    def phase2_data(self, examples, ctx: StrategyContext):
        for part in self.parts.values():
            examples = part.phase2_data(examples, ctx)
        return examples

    def prepare(self, model, ctx: StrategyContext):
        for part in self.parts.values():
            model = part.prepare(model, ctx)
        self._params = parameter_report(model)
        return model

    def penalty(self, model, batch):
        terms = [t for t in (part.penalty(model, batch) for part in self.parts.values()) if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def on_before_optimizer_step(self, model) -> None:
        for part in self.parts.values():
            part.on_before_optimizer_step(model)

    def phase2_train(self, train: dict[str, Any]) -> dict[str, Any]:
        for part in self.parts.values():  # a part's lr applies; the combination's own `lr` wins
            train = part.phase2_train(train)
        return super().phase2_train(train)

    def on_examples_trained(self, positions) -> None:
        for part in self.parts.values():
            part.on_examples_trained(positions)

    def finalize(self, model, ctx: StrategyContext):
        for part in reversed(list(self.parts.values())):
            model = part.finalize(model, ctx)
        return model

    def report(self) -> dict[str, Any]:
        out = {"parts": ",".join(self.parts)}
        for name, part in self.parts.items():
            out.update({f"{name}/{k}": v for k, v in part.report().items()})
        out.update(self._params)  # what finally trains, after every part
        return out

    def tables(self):
        return {f"{name}/{t}": table for name, part in self.parts.items() for t, table in part.tables().items()}
