"""Evaluation: task ability (TA, English benchmarks) and language ability (LA, multilingual ones).

An evaluation task is any object with a `run(model, tokenizer, *, limit, out_dir)` method that
returns a list of `TaskScores`; suites in `conf/eval/` list tasks by `_target_`. `evaluate` runs
them and flattens the scores into the metric keys every run records:

    ta/<task>            headline score of a TA task (e.g. ta/ifeval)
    ta/<task>/<metric>   its other metrics (e.g. ta/ifeval/inst_loose)
    la/<task>            an LA task's mean over languages
    la/<task>/<lang>     per language (e.g. la/xquad/de)
    ta_avg, la_avg       the paper's averages over tasks
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

ABILITIES = ("ta", "la")


@dataclass
class TaskScores:
    """The result of one task: a headline score in [0, 1], and any further metrics."""

    name: str
    ability: str  # "ta" or "la"
    score: float
    per_language: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # keys relative to the task, e.g. "inst_loose"
    not_computed: str | None = None  # reason, when the score could not be computed (never reported as 0)


class EvalTask(Protocol):
    def run(self, model, tokenizer, *, limit: int | None, out_dir: Path) -> list[TaskScores]: ...


def flatten(results: list[TaskScores]) -> dict[str, float | str]:
    """Turn task results into flat metric keys, with the TA and LA averages. A task that could not
    be scored gets `not_computed/<ability>/<task>` = its reason (so metrics.json and W&B say why a
    column is empty) and stays out of the averages."""
    flat: dict[str, float | str] = {}
    headline: dict[str, list[float]] = {a: [] for a in ABILITIES}
    for r in results:
        if r.ability not in ABILITIES:
            raise ValueError(f"task {r.name}: ability must be one of {ABILITIES}, not {r.ability!r}")
        if r.not_computed:
            log.warning("%s/%s not computed: %s", r.ability, r.name, r.not_computed)
            flat[f"not_computed/{r.ability}/{r.name}"] = r.not_computed
            continue
        prefix = f"{r.ability}/{r.name}"
        flat[prefix] = float(r.score)
        headline[r.ability].append(float(r.score))
        for lang, value in r.per_language.items():
            flat[f"{prefix}/{lang}"] = float(value)
        for key, value in r.metrics.items():
            flat[f"{prefix}/{key}"] = float(value)
    for ability, scores in headline.items():
        if scores:
            flat[f"{ability}_avg"] = sum(scores) / len(scores)
    return flat


def evaluate(
    model, tokenizer, tasks: Mapping[str, EvalTask], *, limit: int | None, out_dir: str | Path
) -> dict[str, float | str]:
    """Run every task of a suite on an in-memory model and return the flat metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[TaskScores] = []
    for name, task in tasks.items():
        log.info("Evaluating %s", name)
        results.extend(task.run(model, tokenizer, limit=limit, out_dir=out_dir / name))
    return flatten(results)
