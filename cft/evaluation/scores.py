"""What an evaluation task returns (`TaskScores`) and how a suite's results become flat metric keys.

Every key is built by `cft.run.keys` (`<ability>/<task>[/<lang>][:<metric>]`, see its docstring):

    ta/ifeval                  headline score of a TA benchmark
    ta/ifeval:inst_loose       another of its metrics
    la/xquad                   an LA benchmark: the mean over its non-English languages
    la/xquad/de, la/xquad/de:em   one language: headline, another metric
    la/xquad:em                another metric, mean over the non-English languages
    en/xquad, en/xquad:em      the English part of a multilingual benchmark (never inside la_avg)
    ta_avg, la_avg             the mean of the headline scores of the benchmarks the average is defined over
    ta_avg_tasks, ta_avg_over  how many and which of them had a score (AlpacaEval without a judge: 3 of 4)
    ta_avg_of                  the benchmarks the suite defines the average over (only where it defines them)
    not_computed/ta/alpaca_eval    why a score is missing (never recorded as 0)
    <any of the above>_stderr  a headline score's or an average's standard error over items
                               (cft.evaluation.uncertainty; an average's propagated from its parts)

`items(results)` gathers the per-item headline scores a suite writes beside its samples (items.json).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cft.evaluation.metrics import mean
from cft.evaluation.uncertainty import propagated
from cft.run import keys

log = logging.getLogger(__name__)

# Abilities with a headline average (ta_avg, la_avg); `en` is recorded beside LA, never averaged.
AVERAGED = tuple(a for a in keys.ABILITIES if keys.average(a) in keys.HEADLINE_AVERAGES)


@dataclass
class TaskScores:
    """The result of one task for one ability: a headline score in [0, 1], and any further metrics."""

    name: str
    ability: str  # "ta", "la" or "en" (cft.run.keys.ABILITIES)
    score: float
    per_language: dict[str, float] = field(default_factory=dict)  # headline score per language
    metrics: dict[str, float] = field(default_factory=dict)  # the other metrics (e.g. "inst_loose"), overall
    language_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # lang -> the other metrics there
    not_computed: str | None = None  # reason, when the score could not be computed (never reported as 0)
    stderr: float | None = None  # standard error of `score` over the items (None: not known)
    language_stderr: dict[str, float] = field(default_factory=dict)  # lang -> standard error of its headline score
    # Per-item headline scores, {lang or "": {item id: score}} ("" = the benchmark as a whole): the
    # paired bootstrap of differences reads them (cft.evaluation.uncertainty).
    items: dict[str, dict[str, float]] = field(default_factory=dict)
    higher_is_better: bool = True  # False: a lower score is better (FLORES bits per byte)
    # Further flat keys (no phase) about how the task ran, e.g. keys.punkt() -> "fallback".
    reports: dict[str, str | float] = field(default_factory=dict)


def items(results: Iterable[TaskScores]) -> dict[str, dict[str, float]]:
    """{score key (no phase): {item id: score}} of every scored task (cft.run.layout.EVAL_ITEMS)."""
    out: dict[str, dict[str, float]] = {}
    for r in results:
        if r.not_computed:
            continue
        for lang, per_item in r.items.items():
            out[keys.score(r.ability, r.name, lang or None)] = {str(i): float(v) for i, v in per_item.items()}
    return out


def flatten(results: Iterable[TaskScores], averages: Mapping[str, Sequence[str]] | None = None) -> dict[str, float | int | str]:
    """Turn task results into flat metric keys, with the headline averages.

    `averages` maps an ability ("ta", "la") to the task names its average is defined over (a suite's
    `averages`, the paper's in conf/eval); an ability it does not name averages every task of that
    ability. A task without a score is left out of the average, the average records how many and
    which tasks it covers, and a task of the definition that has no score and no reason yet gets one.
    """
    results = list(results)
    flat: dict[str, float | int | str] = {}
    scored: dict[str, dict[str, float]] = {a: {} for a in keys.ABILITIES}
    errors: dict[str, dict[str, float | None]] = {a: {} for a in keys.ABILITIES}
    lower: dict[str, set[str]] = {a: set() for a in keys.ABILITIES}
    seen: dict[str, list[str]] = {a: [] for a in keys.ABILITIES}
    for r in results:
        if r.ability not in keys.ABILITIES:
            raise ValueError(f"task {r.name}: ability must be one of {keys.ABILITIES}, not {r.ability!r}")
        seen[r.ability].append(r.name)
        flat.update(r.reports)
        if r.not_computed:
            log.warning("%s/%s not computed: %s", r.ability, r.name, r.not_computed)
            flat[keys.not_computed(r.ability, r.name)] = r.not_computed
            continue
        scored[r.ability][r.name] = float(r.score)
        errors[r.ability][r.name] = r.stderr
        flat[keys.score(r.ability, r.name)] = float(r.score)
        if not r.higher_is_better:
            lower[r.ability].add(r.name)
            flat[keys.lower_is_better(keys.score(r.ability, r.name))] = 1
        if r.stderr is not None:
            flat[keys.stderr(keys.score(r.ability, r.name))] = float(r.stderr)
        for lang, value in r.per_language.items():
            flat[keys.score(r.ability, r.name, lang)] = float(value)
            if r.language_stderr.get(lang) is not None:
                flat[keys.stderr(keys.score(r.ability, r.name, lang))] = float(r.language_stderr[lang])
        for metric, value in r.metrics.items():
            flat[keys.score(r.ability, r.name, metric=metric)] = float(value)
        for lang, values in r.language_metrics.items():
            for metric, value in values.items():
                flat[keys.score(r.ability, r.name, lang, metric)] = float(value)
    for ability in AVERAGED:
        declared = averages is not None and ability in averages
        defined = list(averages[ability]) if declared else list(dict.fromkeys(seen[ability]))
        if not defined:
            continue
        covered = [name for name in defined if name in scored[ability]]
        for name in defined:
            if name not in scored[ability] and keys.not_computed(ability, name) not in flat:
                flat[keys.not_computed(ability, name)] = (
                    f"no {ability} score from {name} (none of its languages counts for {ability})"
                )
        if covered and 0 < len(lower[ability] & set(covered)) < len(covered):
            raise ValueError(
                f"{keys.average(ability)} would mix scores where higher is better with ones where lower is better "
                f"({', '.join(sorted(lower[ability] & set(covered)))}): define the suite's averages apart"
            )
        if covered and lower[ability] & set(covered):
            flat[keys.lower_is_better(keys.average(ability))] = 1
        if covered:
            flat[keys.average(ability)] = mean(scored[ability][name] for name in covered)
            error = propagated([errors[ability][name] for name in covered])
            if error is not None:
                flat[keys.stderr(keys.average(ability))] = error
        flat[keys.average_tasks(ability)] = len(covered)
        flat[keys.average_over(ability)] = ",".join(covered)
        if declared:
            flat[keys.average_of(ability)] = ",".join(defined)
    return flat
