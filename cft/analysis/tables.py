"""The paper's tables from the finished runs of a sweep, as Markdown, CSV and LaTeX.

Rows are cells of the study (Phase-1 data, Phase-2 data, model, strategy), in the paper's order of
strategies (`cft.analysis.paper`); several seeds of a cell are shown as mean ± std (sample std).
Scores in [0, 1] are shown as percentages. The best value of each score column is marked (bold in
Markdown and LaTeX, `best` in the CSV). Metric keys are read through `cft.run.keys` only.

- `summary`        TA and LA averages after Phase 1 and Phase 2 (the table `analyze.py` always prints)
- `ta`             TA per benchmark, Phase 1 vs Phase 2, with averages (Tables 1, A1)
- `la`             LA per benchmark likewise (Tables 2, A2)
- `la_<task>`      one LA benchmark per language, the paper's languages in its order (Tables B3 to B5)
- `en`             the English part of the multilingual benchmarks (recorded beside LA, never in it)
- `strategies`     the strategy comparison after Phase 2: a Phase-1 row, then the strategies (Tables 3, C6)
- `des`, `mpd`     DES per data pair; MPD per cell, normalised by the largest MPD of the same model

A table with a TA or LA average that covers other benchmarks than the paper's (fewer, or others:
`<phase>/ta_avg_tasks`, `<phase>/ta_avg_over`) carries a footnote saying so.

Uncertainty (cft.evaluation.uncertainty): where runs record standard errors (`<key>_stderr`), a
score reads "26.6 ± 1.4", ± being the standard error over the evaluated items (over several seeds:
the error of their mean, sqrt(sum se^2)/n), and the seed spread follows apart as "(sd 0.8)". Runs
without standard errors keep the older "mean ± sd over seeds". In the strategy table, ΔTA and ΔLA
(Phase 2 - Phase 1) and the columns "vs full" (a strategy's Phase-2 score minus full fine-tuning's,
same Phase-1 model and seed) are tested on the same items where the run folders hold per-item
scores: a paired bootstrap 95% interval, and † where it excludes 0 (written to the CSV as
ci_low, ci_high, significant).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from cft.analysis import paper
from cft.analysis.runs import Run
from cft.evaluation.summary import PUNKT_NOTE, lower_better_note
from cft.evaluation.uncertainty import Interval, paired_interval, propagated, read_items
from cft.run import keys, layout
from cft.run.layout import CELL_KEYS

INDEX_LABELS = {
    "phase1_data": "Phase 1 data",
    "phase2_data": "Phase 2 data",
    "model": "Model",
    "strategy": "Strategy",
    "variant": "Overrides",
    "transition": "Transition",
    "module": "Module",
}
MISSING = "—"


SIGNIFICANT = "†"  # a difference whose paired bootstrap 95% interval excludes 0


@dataclass
class Stat:
    mean: float
    std: float | None  # None with one value (the spread over seeds)
    n: int
    se: float | None = None  # standard error over items (of the mean over seeds), where the runs record it
    interval: Interval | None = None  # a difference's paired bootstrap interval (over items)


def stat(values: Sequence[float], errors: Sequence[float | None] | None = None) -> Stat | None:
    """Mean and seed spread of `values`; with `errors` (each value's standard error), the error of the mean."""
    pairs = [
        (float(v), e)
        for v, e in zip(values, errors if errors is not None else [None] * len(values))
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))
    ]
    if not pairs:
        return None
    values = [v for v, _ in pairs]
    se = propagated([e for _, e in pairs]) if errors is not None else None
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values), se)


@dataclass
class Table:
    name: str
    title: str
    index_cols: list[str]  # keys of `index` rows, shown with INDEX_LABELS
    index: list[dict[str, str]]
    columns: list[str]
    cells: list[list[Stat | None]]
    scale: float = 100.0
    digits: int = 1
    mark_best: bool = True
    higher_is_better: bool = True
    note: str = ""
    counts: list[int] = field(default_factory=list)  # runs per row (the Seeds column)
    count_label: str = "Seeds"
    footnotes: list[str] = field(default_factory=list)  # printed under the table (what an average covers, ...)
    reference_rows: set[int] = field(default_factory=set)  # rows shown for comparison, never marked best
    lower_better: set[int] = field(default_factory=set)  # columns where lower is better (FLORES bits per byte)

    def fmt(self, s: Stat | None, column: int | None = None) -> str:
        if s is None:
            return MISSING
        # Bits per byte (lower-is-better columns) are shown as they are, not as a percentage.
        scale, digits = (1.0, 3) if column in self.lower_better and self.scale == 100.0 else (self.scale, self.digits)
        text = f"{s.mean * scale:.{digits}f}"
        if s.se is not None:  # ± the item error; the seed spread apart
            text += f" ± {s.se * scale:.{digits}f}"
            if s.std is not None:
                text += f" (sd {s.std * scale:.{digits}f})"
        elif s.std is not None:
            text += f" ± {s.std * scale:.{digits}f}"
        if s.interval is not None and s.interval.significant:
            text += SIGNIFICANT
        return text

    def best(self) -> list[list[bool]]:
        """Per cell, whether it holds the best value of its column (ties at display precision all marked)."""
        marks = [[False] * len(self.columns) for _ in self.index]
        if not self.mark_best:
            return marks
        for j in range(len(self.columns)):
            shown = {
                i: round(row[j].mean * self.scale, self.digits + (2 if j in self.lower_better else 0))
                for i, row in enumerate(self.cells)
                if row[j] is not None and i not in self.reference_rows
            }
            if len(shown) < 2:
                continue
            higher = self.higher_is_better and j not in self.lower_better
            target = max(shown.values()) if higher else min(shown.values())
            for i, v in shown.items():
                marks[i][j] = v == target
        return marks

    def _header(self) -> list[str]:
        return [INDEX_LABELS.get(k, k) for k in self.index_cols] + ([self.count_label] if self.counts else []) + self.columns

    def _rows(self, bold: Callable[[str], str]) -> list[list[str]]:
        marks = self.best()
        out = []
        for i, idx in enumerate(self.index):
            row = [idx.get(k, "") for k in self.index_cols] + ([str(self.counts[i])] if self.counts else [])
            row += [bold(self.fmt(s, j)) if marks[i][j] else self.fmt(s, j) for j, s in enumerate(self.cells[i])]
            out.append(row)
        return out

    def to_markdown(self) -> str:
        header = self._header()
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" if i < len(self.index_cols) else "---:" for i in range(len(header))) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in self._rows(lambda t: f"**{t}**")]
        if self.footnotes:
            lines += [""] + [f"*Note: {f}*" for f in self.footnotes]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        header = self._header()
        align = "l" * len(self.index_cols) + "r" * (len(header) - len(self.index_cols))
        body = [" & ".join(_latex_escape(c) for c in header) + r" \\", r"\midrule"]
        for row in self._rows(lambda t: "\x00" + t + "\x01"):
            cells = [_latex_escape(c).replace("\x00", r"\textbf{").replace("\x01", "}") for c in row]
            body.append(" & ".join(cells) + r" \\")
        notes = [rf"\par\footnotesize {_latex_escape(f)}" for f in self.footnotes]
        return "\n".join(
            [
                r"\begin{table}[t]",
                r"\centering",
                rf"\caption{{{_latex_escape(self.title)}}}",
                rf"\label{{tab:{self.name}}}",
                rf"\begin{{tabular}}{{{align}}}",
                r"\toprule",
                *body,
                r"\bottomrule",
                r"\end{tabular}",
                *notes,
                r"\end{table}",
                "",
            ]
        )

    def to_csv(self, path: str | Path) -> None:
        """Tidy numbers (one line per row and column, unscaled): index columns, column, mean, std, n, best."""
        marks = self.best()
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.index_cols + ["column", "mean", "std", "n", "best", "se", "ci_low", "ci_high", "significant"])
            for i, idx in enumerate(self.index):
                for j, col in enumerate(self.columns):
                    s = self.cells[i][j]
                    w.writerow(
                        [idx.get(k, "") for k in self.index_cols]
                        + [
                            col,
                            "" if s is None else repr(s.mean),
                            "" if s is None or s.std is None else repr(s.std),
                            0 if s is None else s.n,
                            int(marks[i][j]),
                            "" if s is None or s.se is None else repr(s.se),
                            "" if s is None or s.interval is None else repr(s.interval.low),
                            "" if s is None or s.interval is None else repr(s.interval.high),
                            "" if s is None or s.interval is None else int(s.interval.significant),
                        ]
                    )

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"md": out_dir / f"{self.name}.md", "csv": out_dir / f"{self.name}.csv", "tex": out_dir / f"{self.name}.tex"}
        paths["md"].write_text(self.to_markdown())
        paths["tex"].write_text(self.to_latex())
        self.to_csv(paths["csv"])
        return paths

    def wandb_rows(self) -> tuple[list[str], list[list[str]]]:
        return self._header(), self._rows(lambda t: t + " *")


def _latex_escape(text: str) -> str:
    text = str(text)
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("$", r"\$"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("~", r"\textasciitilde{}"),
        ("^", r"\textasciicircum{}"),
    ):
        text = text.replace(a, b)
    return (
        text.replace("±", r"$\pm$").replace("—", "--").replace("Δ", r"$\Delta$").replace(SIGNIFICANT, r"\textsuperscript{\dag}")
    )


# ----------------------------------------------------------------------------- building


def cell_keys(runs: Iterable[Run]) -> tuple[str, ...]:
    """The row keys: the four choices, plus the overrides folder when it tells cells apart (a sweep whose
    cells all share one, e.g. settings given once for the whole sweep, does not repeat it on every row)."""
    variants = {r.choices.get("variant", "") for r in runs}
    return CELL_KEYS + (("variant",) if len(variants) > 1 else ())


def group_cells(runs: Iterable[Run], keys: Sequence[str] | None = None) -> list[tuple[dict[str, str], list[Run]]]:
    """Runs grouped by cell, in a stable order (data pair, model, then the paper's strategy order)."""
    runs = list(runs)
    keys = cell_keys(runs) if keys is None else keys
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(str(r.choices.get(k, "" if k == "variant" else "?")) for k in keys), []).append(r)

    def order(item):
        values = dict(zip(keys, item[0]))
        return tuple(paper.strategy_key(values[k]) if k == "strategy" else (0, values[k]) for k in keys)

    return [(dict(zip(keys, k)), v) for k, v in sorted(groups.items(), key=order)]


def _table(
    name: str,
    title: str,
    runs: list[Run],
    columns: list[tuple[str, Callable[[dict], float | None]]],
    keys: Sequence[str] | None = None,
    **kwargs,
) -> Table | None:
    """A table whose cell (row, column) is the Stat over the row's runs of column_fn(run.metrics)."""
    keys = cell_keys(runs) if keys is None else keys
    groups = group_cells(runs, keys)
    if not columns or not groups:
        return None
    cells = [[_with_interval(_stat(rs, fn), _change_of(rs, fn)) for _, fn in columns] for _, rs in groups]
    if all(c is None for row in cells for c in row):
        return None
    kwargs.setdefault("lower_better", _lower_better(runs, columns))
    return Table(
        name=name,
        title=title,
        index_cols=list(keys),
        index=[g for g, _ in groups],
        columns=[c for c, _ in columns],
        cells=cells,
        counts=[len(rs) for _, rs in groups],
        **kwargs,
    )


def _change_of(runs: Sequence[Run], fn: Callable) -> Interval | None:
    """The paired interval of a Phase 2 - Phase 1 column (`_change`), else None."""
    name = getattr(fn, "change_of", None)
    return phase_change_interval(runs, name) if name is not None else None


def _change(name: str) -> Callable[[dict], float | None]:
    """Phase 2 - Phase 1 of score `name` (no phase), tested on the same items in the tables."""
    fn = _delta(f"phase2/{name}", f"phase1/{name}")
    fn.change_of = name
    return fn


def _has_items(runs: Iterable[Run]) -> bool:
    return any(_phase_flat(r, p) is not None for r in runs for p in keys.PHASES)


def _get(key: str) -> Callable[[dict], float | None]:
    fn = lambda m: m.get(key)  # noqa: E731 - a lambda with the key it reads, for its standard error
    fn.key = key
    return fn


def _lower_better(runs: Sequence[Run], columns: Sequence[tuple[str, Callable]]) -> set[int]:
    """Columns reading a score that the runs mark lower-is-better (keys.lower_is_better), deltas of one included."""
    out = set()
    for j, (_, fn) in enumerate(columns):
        key = getattr(fn, "key", None) or getattr(fn, "direction_key", None)
        if key is not None and any(keys.marked_lower_better(r.metrics, key) for r in runs):
            out.add(j)
    return out


def lower_better_footnotes(runs: Iterable[Run]) -> list[str]:
    """Which scores are lower-is-better (FLORES bits per byte and an average over it): never read them as the paper's LA."""
    names = sorted(
        {
            k.split(f"{keys.LOWER_IS_BETTER}/", 1)[1]
            for r in runs
            for k in r.metrics
            if f"{keys.LOWER_IS_BETTER}/" in k and k.startswith(keys.PHASES)
        }
    )
    if not names:
        return []
    return [lower_better_note(names)]


def _stat(runs: Sequence[Run], fn: Callable[[dict], float | None]) -> Stat | None:
    """The Stat of a column over runs, with the standard error where the column reads a score that runs record one of."""
    key = getattr(fn, "key", None)
    errors = None
    if key is not None and any(keys.stderr(key) in r.metrics for r in runs):
        errors = [r.metrics.get(keys.stderr(key)) for r in runs]
    return stat([fn(r.metrics) for r in runs], errors)


def _delta(after: str, before: str) -> Callable[[dict], float | None]:
    def fn(m: dict) -> float | None:
        a, b = m.get(after), m.get(before)
        return a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None

    fn.direction_key = after  # a change of a lower-is-better score is better when lower
    return fn


def _all_keys(runs: Iterable[Run]) -> list[str]:
    return list(dict.fromkeys(k for r in runs for k in r.metrics))


def _names(value) -> tuple[str, ...] | None:
    """The benchmark names of a `<phase>/<ability>_avg_over` / `_avg_of` value (comma-separated text), or None."""
    return tuple(t.strip() for t in value.split(",") if t.strip()) if isinstance(value, str) else None


def _covered(runs: Iterable[Run], ability: str) -> list[str]:
    """The benchmarks the runs say their average of `ability` covers, in their order."""
    seen: dict[str, None] = {}
    for r in runs:
        for phase in keys.PHASES:
            seen.update(dict.fromkeys(_names(r.metrics.get(keys.average_over(ability, phase=phase))) or ()))
    return list(seen)


def task_names(runs: Iterable[Run], ability: str) -> list[str]:
    """Benchmarks of one ability with a headline score in any run: the paper's in its column order,
    then the others in the order the runs' averages list them, then as first seen."""
    runs = list(runs)
    found = keys.tasks(_all_keys(runs), ability)
    return paper.order(paper.order(found, _covered(runs, ability)), paper.columns(ability))


def languages(runs: Iterable[Run], task: str, ability: str = "la") -> list[str]:
    """The languages of `task` with a score, in the paper's order (Tables B3 to B5)."""
    runs = list(runs)
    return paper.language_order(task, keys.languages(_all_keys(runs), task, ability), [r.config for r in runs])


def average_footnotes(runs: Iterable[Run], abilities: Sequence[str]) -> list[str]:
    """One footnote per distinct coverage of an average that differs from the paper's (fewer or other
    benchmarks than `paper.averages()`), with how many runs and which phases it concerns. The reference
    is the paper's set, not the suite's own definition (`<ability>_avg_of`): the note is there so that
    no one sets an average beside the paper's by mistake."""
    notes: dict[tuple, dict] = {}
    for ability in abilities:
        if ability not in paper.averages():
            continue
        for r in runs:
            for phase in keys.PHASES:
                if not isinstance(r.metrics.get(keys.average(ability, phase=phase)), (int, float)):
                    continue
                expected = paper.averages()[ability]
                count = r.metrics.get(keys.average_tasks(ability, phase=phase))
                names = _names(r.metrics.get(keys.average_over(ability, phase=phase)))
                if not isinstance(count, (int, float)):
                    # A run from before `<ability>_avg_tasks` existed: its average is over the headline scores it has.
                    names = tuple(keys.tasks([k for k in r.metrics if (p := keys.parse(k)) and p.phase == phase], ability))
                    count = len(names)
                if int(count) >= len(expected) and (names is None or set(names) == set(expected)):
                    continue
                entry = notes.setdefault((ability, int(count), names, expected), {"runs": set(), "phases": set()})
                entry["runs"].add(r.name)
                entry["phases"].add(phase)
    out = []
    for (ability, count, names, expected), entry in notes.items():
        label = paper.ABILITY_NAMES.get(ability, ability)
        which = f" ({', '.join(names)})" if names else " (which ones is not recorded)"
        phases = " and ".join(paper.PHASE_NAMES[p] for p in keys.PHASES if p in entry["phases"])
        out.append(
            f"{label} avg covers {count} benchmark{'s' if count != 1 else ''}{which} in {len(entry['runs'])} run(s), "
            f"{phases}; the paper's {label} average covers {len(expected)} ({', '.join(expected)}): do not compare the two."
        )
    return out


def summary_table(runs: list[Run]) -> Table | None:
    cols = [(f"{a.upper()} {paper.PHASE_SHORT[p]}", _get(keys.average(a, phase=p))) for a in ("ta", "la") for p in keys.PHASES]
    return _table(
        "summary",
        "TA and LA averages (%), Phase 1 vs Phase 2",
        runs,
        cols,
        footnotes=average_footnotes(runs, ("ta", "la")) + uncertainty_footnotes(runs),
    )


PHASE_TABLE_TITLES = {
    "ta": "Task ability (TA, %) per benchmark, Phase 1 vs Phase 2 (paper Tables 1, A1)",
    "la": "Language ability (LA, %) per benchmark, Phase 1 vs Phase 2 (paper Tables 2, A2)",
    "en": "English part of the multilingual benchmarks (%), Phase 1 vs Phase 2 (recorded beside LA, not in it)",
}


def phase_table(runs: list[Run], ability: str) -> Table | None:
    tasks = task_names(runs, ability)
    changes = _has_items(runs)  # with per-item scores: each change, tested on the same items
    cols = []
    for t in tasks:
        cols += [(f"{t} {paper.PHASE_SHORT[p]}", _get(keys.score(ability, t, phase=p))) for p in keys.PHASES]
        cols += [(f"{t} Δ", _change(keys.score(ability, t)))] if changes else []
    if ability in paper.averages():
        cols += [(f"Avg {paper.PHASE_SHORT[p]}", _get(keys.average(ability, phase=p))) for p in keys.PHASES]
        cols += [("Avg Δ", _change(keys.average(ability)))] if changes else []
    return _table(
        ability,
        PHASE_TABLE_TITLES[ability],
        runs,
        cols if tasks else [],
        footnotes=average_footnotes(runs, (ability,)) + uncertainty_footnotes(runs),
    )


def language_tables(runs: list[Run]) -> list[Table]:
    """Tables B3 to B5: one LA benchmark per language, Phase 1 vs Phase 2 (English is the `en` ability, not here)."""
    tables = []
    for task in task_names(runs, "la"):
        cols = [
            (f"{lang} {paper.PHASE_SHORT[p]}", _get(keys.score("la", task, lang, phase=p)))
            for lang in languages(runs, task)
            for p in keys.PHASES
        ]
        unit = "bits per byte, lower is better" if _lower_better(runs, cols) else "%"
        t = _table(f"la_{task}", f"{task} per language ({unit}), Phase 1 vs Phase 2 (paper Tables B3 to B5)", runs, cols)
        if t:
            tables.append(t)
    return tables


def strategy_table(runs: list[Run]) -> Table | None:
    """Tables 3 and C6: per model and data pair, the Phase-1 model's scores, then each strategy's after Phase 2."""
    ta, la = task_names(runs, "ta"), task_names(runs, "la")

    def columns(phase: str) -> list[tuple[str, Callable[[dict], float | None]]]:
        cols = [(t, _get(keys.score("ta", t, phase=phase))) for t in ta] + [("TA avg", _get(keys.average("ta", phase=phase)))]
        cols += [(t, _get(keys.score("la", t, phase=phase))) for t in la] + [("LA avg", _get(keys.average("la", phase=phase)))]
        return cols

    after = columns("phase2") + [
        ("ΔTA", _delta(keys.average("ta", phase="phase2"), keys.average("ta", phase="phase1"))),
        ("ΔLA", _delta(keys.average("la", phase="phase2"), keys.average("la", phase="phase1"))),
    ]
    before = columns("phase1") + [("ΔTA", lambda m: None), ("ΔLA", lambda m: None)]
    changes = {"ΔTA": keys.average("ta"), "ΔLA": keys.average("la")}
    versus = {"TA vs full": keys.average("ta"), "LA vs full": keys.average("la")}
    row_keys = cell_keys(runs)
    block_keys = [k for k in row_keys if k != "strategy"]
    index, cells, counts, reference = [], [], [], set()
    for block, block_runs in group_cells(runs, block_keys):
        # The Phase-1 model is shared by the strategies of a block: one run per seed, not one per strategy.
        per_seed = list({r.seed: r for r in block_runs}.values())
        row = [_stat(per_seed, fn) for _, fn in before]
        if any(c is not None for c in row):
            reference.add(len(index))
            index.append({**block, "strategy": paper.PHASE1_ROW})
            cells.append(row)
            counts.append(len(per_seed))
        full = {r.seed: r for r in block_runs if r.choices.get("strategy") == "full"}
        for idx, rs in group_cells(block_runs, row_keys):
            index.append(idx)
            row = [_stat(rs, fn) for _, fn in after]
            for j, (label, _) in enumerate(after):
                if label in changes:
                    row[j] = _with_interval(row[j], phase_change_interval(rs, changes[label]))
            for name in versus.values():
                interval = None if idx.get("strategy") == "full" or not full else versus_interval(rs, full, name)
                diffs = (
                    [
                        r.metrics.get(f"phase2/{name}", math.nan) - full[r.seed].metrics.get(f"phase2/{name}", math.nan)
                        for r in rs
                        if r.seed in full
                    ]
                    if interval is not None
                    else []
                )
                row.append(_with_interval(stat(diffs), interval))
            cells.append(row)
            counts.append(len(rs))
        for i in range(len(cells)):
            if len(cells[i]) < len(after) + len(versus):  # the Phase-1 row
                cells[i] += [None] * (len(after) + len(versus) - len(cells[i]))
    if not any(c is not None for row in cells for c in row):
        return None
    labels = [c for c, _ in after]
    if all(row[j] is None for row in cells for j in range(len(after), len(after) + len(versus))):
        cells = [row[: len(after)] for row in cells]  # no paired items: no "vs full" columns
    else:
        labels += list(versus)
    return Table(
        name="strategies",
        title="Strategies after Phase 2 (%), with the Phase-1 model and the change from it (paper Tables 3, C6)",
        index_cols=list(row_keys),
        index=index,
        columns=labels,
        cells=cells,
        counts=counts,
        reference_rows=reference,
        lower_better=_lower_better(runs, after)
        | {len(after) + i for i, key in enumerate(versus.values()) if _lower_better(runs, [("", _get(f"phase2/{key}"))])},
        footnotes=average_footnotes(runs, ("ta", "la")) + uncertainty_footnotes(runs),
    )


@lru_cache(maxsize=256)
def _read_items(path: str) -> dict | None:
    return read_items(path)


def _phase_flat(run: Run, phase: str) -> tuple[dict, dict] | None:
    """(scores without the phase prefix, per-item scores) of one phase of a run, or None without items."""
    if run.path is None:
        return None
    items = _read_items(str(layout.eval_items(run.path, phase)))
    if items is None:
        return None
    return {k[len(phase) + 1 :]: v for k, v in run.metrics.items() if k.startswith(phase + "/")}, items


def phase_change_interval(runs: Sequence[Run], name: str) -> Interval | None:
    """Paired bootstrap interval of Phase 2 - Phase 1 of score `name`, over the runs' (seeds') items."""
    pairs = []
    for r in runs:
        before, after = _phase_flat(r, "phase1"), _phase_flat(r, "phase2")
        if before is None or after is None:
            return None
        pairs.append((before, after))
    return paired_interval(pairs, name) if pairs else None


def versus_interval(runs: Sequence[Run], reference: dict, name: str) -> Interval | None:
    """Paired interval of a strategy's Phase-2 score minus the reference's (full), seed by seed."""
    pairs = []
    for r in runs:
        ref = reference.get(r.seed)
        mine, theirs = _phase_flat(r, "phase2"), _phase_flat(ref, "phase2") if ref is not None else None
        if mine is None or theirs is None:
            return None
        pairs.append((theirs, mine))
    return paired_interval(pairs, name) if pairs else None


def _with_interval(s: Stat | None, interval: Interval | None) -> Stat | None:
    if s is None or interval is None:
        return s
    # A paired difference's standard error, read off its bootstrap interval.
    return Stat(s.mean, s.std, s.n, (interval.high - interval.low) / (2 * 1.959963984540054), interval)


UNCERTAINTY_NOTE = (
    "± is the standard error over the evaluated items (of the mean over seeds); (sd x) is the spread over seeds; "
    f"{SIGNIFICANT} marks a difference whose paired bootstrap 95% interval over the same items excludes 0"
)


def uncertainty_footnotes(runs: Iterable[Run]) -> list[str]:
    """How to read ± and †, where runs record standard errors; lower-is-better scores; the IFEval Punkt
    fallback, where used."""
    runs = list(runs)
    notes = lower_better_footnotes(runs)
    if any(keys.parse_stderr(k) for r in runs for k in r.metrics):
        notes.append(UNCERTAINTY_NOTE)
    if any(r.metrics.get(keys.punkt(phase=p)) == "fallback" for r in runs for p in keys.PHASES):
        notes.append(PUNKT_NOTE)
    return notes


def des_table(runs: list[Run]) -> Table | None:
    return _table(
        "des",
        "Dataset embedding similarity (DES) of the Phase-1 and Phase-2 data",
        runs,
        [("DES", _get("des"))],
        keys=("phase1_data", "phase2_data"),
        scale=1.0,
        digits=3,
        mark_best=False,
        count_label="Runs",
    )


def mpd_table(runs: list[Run]) -> Table | None:
    """MPD per cell, and normalised by the largest MPD among the cells of the same model."""
    per_run_max: dict[str, float] = {}
    for r in runs:
        if isinstance(r.metrics.get("mpd"), (int, float)):
            model = r.choices.get("model", "?")
            per_run_max[model] = max(per_run_max.get(model, 0.0), float(r.metrics["mpd"]))

    table = _table(
        "mpd",
        "Model parameter distance (MPD) to the base fine-tuned on the Phase-2 data alone",
        runs,
        [("MPD", _get("mpd"))],
        scale=1.0,
        digits=3,
        mark_best=False,
    )
    if table is None:
        return None
    norm_cells = []
    for idx, row in zip(table.index, table.cells):
        top = per_run_max.get(idx["model"], 0.0)
        s = row[0]
        norm_cells.append(None if s is None or top <= 0 else Stat(s.mean / top, None if s.std is None else s.std / top, s.n))
    table.columns.append("MPD (normalised per model)")
    for row, extra in zip(table.cells, norm_cells):
        row.append(extra)
    return table


def all_tables(runs: list[Run]) -> list[Table]:
    """Every table the sweep's metrics allow, in report order."""
    tables = [
        summary_table(runs),
        phase_table(runs, "ta"),
        phase_table(runs, "la"),
        *language_tables(runs),
        phase_table(runs, "en"),
        strategy_table(runs),
        des_table(runs),
        mpd_table(runs),
    ]
    return [t for t in tables if t is not None]


MODULE_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def layer_rank_table(changes, name: str, title: str) -> Table | None:
    """Layer-change ranks (1 = largest relative change) per transition and module type, one column per layer.

    `changes` is a run's layer_changes.csv as a DataFrame (columns transition, module, layer, change[, rank]).
    """
    frame = changes[changes["layer"].notna()].copy()
    if frame.empty:
        return None
    if "transition" not in frame:
        frame["transition"] = "change"
    if "rank" not in frame:
        frame["rank"] = frame.groupby(["transition", "module"])["change"].rank(ascending=False, method="first")
    frame["layer"] = frame["layer"].astype(int)
    layers = sorted(frame["layer"].unique())
    index, cells = [], []
    for transition in dict.fromkeys(frame["transition"]):
        part = frame[frame["transition"] == transition]
        modules = paper.order(sorted(set(part["module"])), MODULE_ORDER)
        for module in modules:
            ranks = part[part["module"] == module].set_index("layer")["rank"]
            index.append({"transition": str(transition), "module": module})
            cells.append([Stat(float(ranks[layer]), None, 1) if layer in ranks.index else None for layer in layers])
    return Table(
        name=name,
        title=title,
        index_cols=["transition", "module"],
        index=index,
        columns=[f"L{i}" for i in layers],
        cells=cells,
        scale=1.0,
        digits=0,
        mark_best=False,
    )
