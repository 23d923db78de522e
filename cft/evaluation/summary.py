"""The tables a run prints at its end: Phase-1 vs Phase-2 headline scores per benchmark with the
averages (train.py), or one evaluation's (evaluate.py), each with a footnote wherever an average
covers fewer benchmarks than it is defined over (AlpacaEval without a judge: 3 of the 4 TA ones).

A score is shown with its standard error over items ("0.266 ± 0.014"). The change Phase 2 - Phase 1
of a training run is tested on the same items where the run folder holds both phases' per-item
scores: its paired bootstrap 95% interval is shown, with `*` where the interval excludes 0."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cft.evaluation.uncertainty import Interval, paired_interval, read_items
from cft.run import keys, layout

PUNKT_NOTE = (
    "IFEval split sentences with cft's minimal Punkt fallback (NLTK's punkt_tab was not installed and could not "
    "be downloaded): its sentence-count instructions may score differently from the official IFEval"
)
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


def lower_better_note(names: Sequence[str]) -> str:
    """The footnote of lower-is-better scores (FLORES bits per byte and an average over it): a negative
    change is a gain, and this LA is never the paper's. The one wording of train.py's, evaluate.py's and
    the analysis tables."""
    return (
        f"lower is better for {', '.join(names)} (bits per byte: FLORES-200, conf/eval/small.yaml); "
        "a negative change there is a gain. This LA is not the paper's (MLQA, XQuAD, XL-Sum)."
    )


def _lower_better_names(metrics: Mapping[str, Any], phase: str | None) -> list[str]:
    marker = f"{phase}/{keys.LOWER_IS_BETTER}/" if phase else f"{keys.LOWER_IS_BETTER}/"
    return sorted(k[len(marker) :] for k in metrics if k.startswith(marker))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(metrics: Mapping[str, Any], phase: str | None, name: str) -> str:
    key = f"{phase}/{name}" if phase else name
    value = metrics.get(key)
    if _is_number(value):
        error = metrics.get(keys.stderr(key))
        return f"{value:.3f} ± {error:.3f}" if _is_number(error) else f"{value:.3f}"
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
    if metrics.get(keys.punkt(phase=phase)) == "fallback":
        notes.append(PUNKT_NOTE)
    if lower := _lower_better_names(metrics, phase):
        notes.append(lower_better_note(lower))
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


def phase_intervals(metrics: Mapping[str, Any], run_dir: str | Path | None) -> dict[str, Interval]:
    """Paired bootstrap intervals of Phase 2 - Phase 1 per score name (no phase), from the run
    folder's per-item scores; empty where it has none."""
    if run_dir is None:
        return {}
    before, after = read_items(layout.eval_items(run_dir, "phase1")), read_items(layout.eval_items(run_dir, "phase2"))
    if before is None or after is None:
        return {}
    flat = {p: {k[len(p) + 1 :]: v for k, v in metrics.items() if k.startswith(p + "/")} for p in keys.PHASES}
    out = {}
    for name in _names(metrics, keys.PHASES):
        interval = paired_interval([((flat["phase1"], before), (flat["phase2"], after))], name)
        if interval is not None:
            out[name] = interval
    return out


def summary_table(metrics: Mapping[str, Any], run_dir: str | Path | None = None) -> str:
    """Phase-1 vs Phase-2 headline scores per benchmark, the averages first, and the footnotes; with
    `run_dir`, the paired 95% interval of each change (`*`: it excludes 0)."""
    from tabulate import tabulate

    phases = keys.PHASES
    intervals = phase_intervals(metrics, run_dir)
    rows = []
    for name in _names(metrics, phases):
        p1, p2 = metrics.get(f"phase1/{name}"), metrics.get(f"phase2/{name}")
        delta = f"{p2 - p1:+.3f}" if _is_number(p1) and _is_number(p2) else "-"
        lower = any(keys.lower_is_better(f"{p}/{name}") in metrics for p in phases)
        label = f"{name} (lower is better)" if lower else name
        row = [label, _cell(metrics, "phase1", name), _cell(metrics, "phase2", name), delta]
        if intervals:
            i = intervals.get(name)
            row.append(f"[{i.low:+.3f}, {i.high:+.3f}]{' *' if i.significant else ''}" if i else "-")
        rows.append(row)
    headers = ["score", "phase 1", "phase 2", "change"] + (["95% interval (paired)"] if intervals else [])
    table = tabulate(rows, headers=headers, disable_numparse=True, colalign=("left",) + ("right",) * (len(headers) - 1))
    footer = _footer(metrics, phases)
    if intervals:
        footer += (
            "\n* ± is the standard error over items; the interval of a change is a paired bootstrap over the same "
            "items (* = it excludes 0)"
        )
    return table + footer


def evaluation_table(scores: Mapping[str, Any], suite: str) -> str:
    """One evaluation's headline scores (evaluate.py), the averages first, and the footnotes."""
    from tabulate import tabulate

    rows = [
        [f"{name} (lower is better)" if keys.lower_is_better(name) in scores else name, _cell(scores, None, name)]
        for name in _names(scores, [None])
    ]
    table = tabulate(rows, headers=["score", suite], disable_numparse=True, colalign=("left", "right"))
    return table + _footer(scores, [None])


def print_summary(metrics: Mapping[str, Any], run_dir: Path) -> None:
    print(f"\n{summary_table(metrics, run_dir)}\n\nRun folder: {run_dir}")
