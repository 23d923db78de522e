"""`er10`: English replay, the experience-replay baseline of arXiv 2410.16006 -- mix original
English examples of the Phase-2 data's English counterpart (e.g. Alpaca for MultiAlpaca) into
Phase 2, `ratio` x the Phase-2 size of them (paper: 10%), drawn with a fixed seed."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from cft.data.records import Example
from cft.errors import ConfigError
from cft.strategies.base import PhaseLR, Strategy, StrategyContext, check_ratio, sample


def replay_count(ratio: float, phase2_size: int) -> int:
    """How many replay examples `ratio` of the Phase-2 size is (rounded half up, at least 1)."""
    return max(1, int(ratio * phase2_size + 0.5))


def counterpart_sample(ctx: StrategyContext, n: int, seed: int, what: str) -> list[Example]:
    """`n` English counterpart examples, drawn in an order fixed by `seed`."""
    pool = list(ctx.counterpart())
    if not pool:
        raise ConfigError(
            f"{what} needs the English counterpart of the Phase-2 data, but phase2_data has no "
            "`counterpart` (set phase2_data.counterpart to an English dataset config)"
        )
    return sample(pool, n, seed, f"{what}: the English counterpart")


class CountsReplay(Strategy):
    """A strategy that appends replay examples to the Phase-2 data and reports, beside the configured
    share, how many of them the loop actually trained on (a short run sees only part of an epoch)."""

    _replay: tuple[int, int] = (0, 0)  # positions [start, end) of the replay examples in the mixed data
    _fed: int = 0  # examples trained on (repeats counted; all ranks)
    _replay_fed: int = 0  # ... of which replay

    def on_examples_trained(self, positions) -> None:
        start, end = self._replay
        self._fed += len(positions)
        self._replay_fed += sum(start <= p < end for p in positions)

    def report(self) -> dict[str, Any]:
        out = dict(self._report)
        if self._fed:
            out["replay_trained"] = self._replay_fed
            out["replay_share_trained"] = self._replay_fed / self._fed
        return out


class EnglishReplay(CountsReplay):
    """Add `ratio` x |Phase-2 data| original English counterpart examples to the Phase-2 data."""

    NEEDS = frozenset({"counterpart"})

    def __init__(
        self,
        ratio: Annotated[float, Field(gt=0, le=1, description="replayed examples as a share of the Phase-2 size")] = 0.1,
        seed: Annotated[int | None, Field(ge=0, description="which counterpart examples; null = the run's seed")] = None,
        lr: PhaseLR = None,
    ):
        self.lr = lr
        self.ratio = ratio
        self.seed = seed
        self._report: dict[str, Any] = {}

    def validate(self, model_config) -> None:
        check_ratio("strategy.ratio", self.ratio)

    def phase2_data(self, examples: list[Example], ctx: StrategyContext) -> list[Example]:
        n = replay_count(self.ratio, ctx.phase2_size or len(examples))
        seed = ctx.seed if self.seed is None else self.seed
        replay = counterpart_sample(ctx, n, seed, "English replay (er)")
        size = ctx.phase2_size or len(examples)
        self._report = {
            "replay_examples": len(replay),
            "replay_ratio": self.ratio,
            "replay_share": len(replay) / size,
            "phase2_examples": size,
        }
        self._replay = (len(examples), len(examples) + len(replay))
        return list(examples) + replay
