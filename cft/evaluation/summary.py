"""The tables a run prints at its end: Phase-1 vs Phase-2 headline scores per benchmark with the
averages (train.py), or one evaluation's (evaluate.py), each with a footnote wherever an average
covers fewer benchmarks than it is defined over (AlpacaEval without a judge: 3 of the 4 TA ones)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cft.run import keys

ABILITY_NAMES = {"ta": "TA", "la": "LA", "en": "English"}


def _names(metrics: Mapping[str, Any], phases: Sequence[str | None]) -> list[str]:
    """Rows: the averages, then each benchmark's headline score (scored or not computed)."""
    averages, tasks = {}, {}
    for key in metrics:
        p = keys.parse(key) or keys.parse_not_computed(key)
        if p is not None and p.phase in phases and p.lang is None and p.headline:
            tasks[keys.score(p.ability, p.task)] = None
    for phase in phases:
        for ability in keys.ABILITIES:
            if keys.average(ability, phase=phase) in metrics:
                averages[keys.average(ability)] = None
    return sorted(averages) + sorted(tasks)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(metrics: Mapping[str, Any], phase: str | None, name: str) -> str:
    value = metrics.get(f"{phase}/{name}" if phase else name)
    if _is_number(value):
        return f"{value:.3f}"
    p = keys.parse(name)
    if p is not None and keys.not_computed(p.ability, p.task, phase=phase) in metrics:
        return "not computed"
    return "-"


def footnotes(metrics: Mapping[str, Any], phase: str | None = None) -> list[str]:
    """One line per average of `phase` that covers fewer benchmarks than it is defined over."""
    notes = []
    for ability in keys.ABILITIES:
        count = metrics.get(keys.average_tasks(ability, phase=phase))
        if not _is_number(count):
            continue
        over = str(metrics.get(keys.average_over(ability, phase=phase)) or "")
        covered = [t for t in over.split(",") if t]
        declared = metrics.get(keys.average_of(ability, phase=phase))
        if isinstance(declared, str):
            defined = [t for t in declared.split(",") if t]
        else:  # the suite defines no list: the average is over every task of that ability it ran
            missing = [
                p.task
                for k in metrics
                if (p := keys.parse_not_computed(k)) is not None and p.phase == phase and p.ability == ability
            ]
            defined = covered + [t for t in missing if t not in covered]
        if len(covered) >= len(defined):
            continue
        reasons = "; ".join(
            f"{t} not computed: {metrics.get(keys.not_computed(ability, t, phase=phase), 'no score')}"
            for t in defined
            if t not in covered
        )
        label = ABILITY_NAMES.get(ability, ability)
        note = f"{keys.average(ability)} covers {int(count)} of the {len(defined)} {label} benchmarks ({reasons})"
        if isinstance(declared, str):
            note += f"; the paper's average covers {len(defined)}"
        notes.append(note)
    return notes


def _footer(metrics: Mapping[str, Any], phases: Sequence[str | None]) -> str:
    per_phase = {phase: footnotes(metrics, phase) for phase in phases}
    lines: list[str] = []
    if len(phases) > 1 and len({tuple(v) for v in per_phase.values()}) == 1:
        lines = per_phase[phases[0]]  # the same in every phase: said once
    else:
        for phase, notes in per_phase.items():
            prefix = f"{phase.replace('phase', 'phase ')}: " if phase and len(phases) > 1 else ""
            lines += [prefix + n for n in notes]
    return "".join(f"\n* {line}" for line in lines)


def summary_table(metrics: Mapping[str, Any]) -> str:
    """Phase-1 vs Phase-2 headline scores per benchmark, the averages first, and the footnotes."""
    from tabulate import tabulate

    phases = keys.PHASES
    rows = []
    for name in _names(metrics, phases):
        p1, p2 = metrics.get(f"phase1/{name}"), metrics.get(f"phase2/{name}")
        delta = f"{p2 - p1:+.3f}" if _is_number(p1) and _is_number(p2) else "-"
        rows.append([name, _cell(metrics, "phase1", name), _cell(metrics, "phase2", name), delta])
    table = tabulate(
        rows,
        headers=["score", "phase 1", "phase 2", "change"],
        disable_numparse=True,
        colalign=("left", "right", "right", "right"),
    )
    return table + _footer(metrics, phases)


def evaluation_table(scores: Mapping[str, Any], suite: str) -> str:
    """One evaluation's headline scores (evaluate.py), the averages first, and the footnotes."""
    from tabulate import tabulate

    rows = [[name, _cell(scores, None, name)] for name in _names(scores, [None])]
    table = tabulate(rows, headers=["score", suite], disable_numparse=True, colalign=("left", "right"))
    return table + _footer(scores, [None])


def print_summary(metrics: Mapping[str, Any], run_dir: Path) -> None:
    print(f"\n{summary_table(metrics)}\n\nRun folder: {run_dir}")
