"""Phase-2 strategies (mitigations against forgetting). Each is one YAML in conf/strategy with a
`_target_` naming one small class here; the recipe and the loop only call its hooks."""

from cft.strategies.base import Strategy, StrategyContext

__all__ = ["Strategy", "StrategyContext"]
