"""Evaluation: task ability (TA, English benchmarks) and language ability (LA, the non-English
languages of the multilingual benchmarks), with English results of those recorded as `en`.

A suite (conf/eval/<suite>.yaml) lists tasks by `_target_`; an evaluation task is any object with
`run(model, tokenizer, *, out_dir) -> list[TaskScores]`. The recipes call:

    suite = build_suite(cfg.eval)          # every task built and checked, before any model work
    scores = suite.evaluate(model, tokenizer, out_dir=...)   # flat keys, no phase prefix
    metrics.update(keys.phased("phase2", scores))

The modules: `scores` (TaskScores, the flat keys and averages), `suite` and `config` (suites),
`benchmark` (benchmark files, cft/evaluation/benchmarks/<name>/), `taskfiles` (lm-eval task YAMLs),
`harness` (running lm-eval), `lmeval` (LMEvalTask), `alpaca_eval`, `demo`, `metrics`, `summary`,
`uncertainty` (standard errors, items.json, paired bootstrap intervals).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from cft.evaluation.scores import TaskScores, flatten
from cft.evaluation.suite import Suite, build_suite

log = logging.getLogger(__name__)

__all__ = ["SCORING_PROTOCOL", "EvalTask", "Suite", "TaskScores", "build_suite", "evaluate", "flatten"]

# Part of every cached evaluation's key: bumped when the same settings score differently, so a cached
# Phase-1 evaluation made under an older protocol is not reused. 2: standard errors and per-item
# scores recorded; QA F1/EM as the official scripts; the suite's eval.dtype.
SCORING_PROTOCOL = 2


class EvalTask(Protocol):
    def run(self, model, tokenizer, *, out_dir: Path) -> list[TaskScores]: ...


def evaluate(
    model,
    tokenizer,
    tasks: Mapping[str, EvalTask],
    *,
    out_dir: str | Path,
    limit: int | None = None,
    sharded: bool = False,
) -> dict[str, float | int | str]:
    """Run every task of a suite on an in-memory model and return the flat metrics.

    `tasks` is a `Suite` (build_suite) or any mapping of name -> task. `limit` is for callers that
    pass the suite's limit here: a task whose own `limit` is unset takes it (build_suite already
    gave every task the suite's limit, so for a Suite it changes nothing). `sharded`: every rank calls this
    with the same weights, each scores its share, rank 0 gets the metrics (`Suite.evaluate`).
    """
    if limit is not None:
        for task in tasks.values():
            if getattr(task, "limit", None) is None and hasattr(task, "limit"):
                task.limit = limit
    suite = tasks if isinstance(tasks, Suite) else Suite(tasks)
    return suite.evaluate(model, tokenizer, out_dir=out_dir, sharded=sharded)
