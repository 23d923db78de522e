"""How sure a score is: standard errors over items, their propagation into averages, and paired
bootstrap intervals of differences measured on the same items.

- A score's standard error is lm-eval's `_stderr` where lm-eval computes one (the closed form for a
  mean: sample sd / sqrt(n)); for cft's own metrics, and where lm-eval reports none, a bootstrap
  over items (`bootstrap_stderr`).
- An average of scores (la/xquad over its languages, ta_avg over its benchmarks) carries the
  propagated error of a mean of independent estimates, sqrt(sum se^2) / n (`propagated`).
- A difference of two scores on the same items (Phase 2 - Phase 1 of one run; a strategy against
  full fine-tuning on the same Phase-1 model) gets a paired bootstrap 95% interval
  (`paired_interval`): the items of every benchmark (and language) are resampled together for both
  sides, the score is recomputed as it is defined (a mean of items; of languages; of benchmarks),
  and the 2.5th and 97.5th percentiles of the differences are the interval. A difference whose
  interval excludes 0 is marked significant. Several seeds: each seed's pair is resampled on its own
  and the seed-mean difference is taken, so the interval is over items only (seed spread is shown apart).

Per-item scores come from an evaluation's `items.json` (cft.run.layout.EVAL_ITEMS):
{score key without phase: {item id: headline score of that item}}, one entry per leaf score (a
benchmark, or one language of a multilingual benchmark).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cft.run import keys

Items = Mapping[str, Mapping[str, float]]
BOOTSTRAP_ITERS = 1000
LEVEL = 0.95


def mean_stderr(values: Sequence[float]) -> float | None:
    """Standard error of a mean (sample sd / sqrt(n), lm-eval's `mean_stderr`); None under two items."""
    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def bootstrap_stderr(values: Sequence[float], *, iters: int = BOOTSTRAP_ITERS, seed: int = 0) -> float | None:
    """Bootstrap standard error of the mean of `values` (items resampled with replacement); None under two items."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(iters, x.size))].mean(axis=1)
    return float(means.std(ddof=1))


def propagated(errors: Sequence[float | None]) -> float | None:
    """Standard error of the mean of independent estimates with these errors: sqrt(sum se^2) / n (None if any is unknown)."""
    if not errors or any(e is None or not math.isfinite(e) for e in errors):
        return None
    return math.sqrt(sum(e * e for e in errors)) / len(errors)


# ------------------------------------------------------------------------------------ items


def read_items(path: str | Path) -> dict[str, dict[str, float]] | None:
    """An evaluation's per-item scores, or None when it has none (an older run, a failed evaluation)."""
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_items(path: str | Path, items: Items) -> None:
    Path(path).write_text(json.dumps({k: dict(v) for k, v in items.items()}, ensure_ascii=False, sort_keys=True))


def structure(key: str, flat: Mapping[str, Any], items: Items):
    """How the score `key` (no phase prefix) is computed from items: a leaf key of `items`, or
    ("mean", [children]) for an average over benchmarks or languages; None when items are missing."""
    if key in items:
        return key
    for ability in keys.ABILITIES:
        if key == keys.average(ability):
            over = [t for t in str(flat.get(keys.average_over(ability)) or "").split(",") if t]
            children = [structure(keys.score(ability, t), flat, items) for t in over]
            return ("mean", children) if children and all(c is not None for c in children) else None
    p = keys.parse(key)
    if p is None or p.lang is not None or not p.headline:
        return None
    langs = [k for k in items if (q := keys.parse(k)) and (q.ability, q.task) == (p.ability, p.task) and q.lang and q.headline]
    return ("mean", sorted(langs)) if langs else None


def _leaves(node) -> list[str]:
    return [node] if isinstance(node, str) else [leaf for child in node[1] for leaf in _leaves(child)]


def _combine(node, leaf_values):
    """The score of `node` (a leaf, or a mean of children) from its leaves' values (numbers or arrays)."""
    if isinstance(node, str):
        return leaf_values[node]
    parts = [_combine(c, leaf_values) for c in node[1]]
    return sum(parts) / len(parts)


@dataclass(frozen=True)
class Interval:
    """A difference (after - before) with its paired bootstrap interval."""

    diff: float
    low: float
    high: float
    items: int  # items paired (over every leaf and seed)

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_interval(
    pairs: Sequence[tuple[tuple[Mapping[str, Any], Items], tuple[Mapping[str, Any], Items]]],
    key: str,
    *,
    iters: int = BOOTSTRAP_ITERS,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval | None:
    """Paired bootstrap interval of score `key` (no phase prefix), after minus before, over the
    items both sides scored. `pairs` holds one ((flat, items) before, (flat, items) after) per seed;
    the difference is their mean. None where either side lacks the items of the score."""
    import numpy as np

    rng = np.random.default_rng(seed)
    total = np.zeros(iters)
    observed, n_items = 0.0, 0
    for (flat_a, items_a), (flat_b, items_b) in pairs:
        node = structure(key, flat_a, items_a)
        if node is None or structure(key, flat_b, items_b) is None:
            return None
        draws: dict[str, tuple[float, np.ndarray]] = {}
        for leaf in _leaves(node):
            a, b = items_a.get(leaf), items_b.get(leaf)
            if not a or not b:
                return None
            ids = sorted(set(a) & set(b))
            if not ids:
                return None
            d = np.array([float(b[i]) - float(a[i]) for i in ids])
            idx = rng.integers(0, d.size, size=(iters, d.size))
            draws[leaf] = (float(d.mean()), d[idx].mean(axis=1))
            n_items += d.size

        observed += _combine(node, {leaf: d[0] for leaf, d in draws.items()})
        total += _combine(node, {leaf: d[1] for leaf, d in draws.items()})
    k = len(pairs)
    if not k:
        return None
    low, high = np.percentile(total / k, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return Interval(observed / k, float(low), float(high), n_items)
